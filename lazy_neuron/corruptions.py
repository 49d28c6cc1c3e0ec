"""ImageNet-C's corruptions (Hendrycks & Dietterich, 2019) applied on the fly to eval batches.

The corruptions themselves are the `imagecorruptions` package's (ImageNet-C's 15 "common" corruptions
plus its 4 "extra" held-out ones, severities 1..5); this module makes them usable on any image
classification eval pipeline of lazy_neuron:

- **Any size.** `imagecorruptions` refuses images smaller than 32 px. A smaller image (Fashion-MNIST's
  28 px, digits' 8 px) is resized up (bilinear) so that its shorter side is 32 px, corrupted, and
  resized back (area averaging): the corruption acts at the 32 px scale. Every corruption works this
  way; at 8-16 px the fine-grained ones (glass_blur, jpeg_compression, pixelate, impulse_noise) are
  partly averaged away by the resize back, so they are weaker than their severity says.
- **Grayscale.** A 1-channel image is replicated to RGB, corrupted, and mapped back to one channel by
  the mean over channels (colour corruptions such as `saturate` then change little).
- **Float batches.** Batches normalised to [-1, 1] are mapped to uint8 (rounded), corrupted, and
  normalised back; uint8 batches (`image_dtype="uint8"`) are corrupted as they are.
- **Deterministic.** `imagecorruptions` draws from numpy's global (legacy) RNG. Each image is corrupted
  under a lock with that RNG seeded from (global example index, corruption, severity) and restored
  afterwards, so the same example gives the same corrupted image on every call, in every process and
  thread, and no other user of `np.random` sees a change.
- **Severity 0** is the clean image (the identity), so `NAME:0` is a clean baseline in the same table.

Spec strings (`lazy-neuron eval --corruptions=SPEC`): `all` (19), `common` (ImageNet-C's 15), `extra`
(the 4 held-out ones), or `NAME[,NAME...]`, each optionally followed by `:SEV` (one severity 0..5) or
`:LO-HI` (a range) that applies to every name of the spec; without it severities 1..5. Examples:
`all`, `common:3`, `gaussian_noise,frost:1-2`, `fog:0`.
"""
from __future__ import annotations

import contextlib
import threading
import types
import warnings
from typing import Callable, Sequence

import numpy as np

from lazy_neuron import checks
from lazy_neuron.data import pipeline
from lazy_neuron.errors import UserError

COMMON = ("gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur",
          "motion_blur", "zoom_blur", "snow", "frost", "fog", "brightness", "contrast",
          "elastic_transform", "pixelate", "jpeg_compression")
EXTRA = ("speckle_noise", "gaussian_blur", "spatter", "saturate")
NAMES = COMMON + EXTRA
GROUPS = {"all": NAMES, "common": COMMON, "extra": EXTRA}
SEVERITIES = (1, 2, 3, 4, 5)
MAX_SEVERITY = 5
MIN_SIZE = 32  # imagecorruptions' smallest side
_STREAM = 9100  # random_bits stream of the per-image seeds (+ the corruption's index)

_LOCK = threading.Lock()  # numpy's global RNG is shared by every thread of the process
_LIB = None


def parse(spec: str, name: str = "--corruptions") -> list[tuple[str, int]]:
  """A spec string -> [(corruption, severity), ...] in corruption-then-severity order, each once.
  UserError (one line) on an unknown corruption or severity."""
  spec = checks.string(name, spec)
  body, sep, sev = spec.strip().rpartition(":") if ":" in spec else (spec.strip(), "", "")
  valid = (f"use all, common, extra or comma-separated names from {', '.join(NAMES)}, optionally "
           f"followed by :SEVERITY (0..{MAX_SEVERITY}, 0 = clean) or :LO-HI")
  severities = SEVERITIES
  if sep:
    lo, dash, hi = sev.partition("-")
    try:
      lo_i, hi_i = int(lo), int(hi if dash else lo)
    except ValueError:
      raise checks.fail(name, spec, f"severity {sev!r} is not an integer; {valid}") from None
    if not 0 <= lo_i <= hi_i <= MAX_SEVERITY:
      raise checks.fail(name, spec, f"severity {sev!r} is outside 0..{MAX_SEVERITY}; {valid}")
    severities = tuple(range(lo_i, hi_i + 1))
  names: list[str] = []
  for part in body.split(","):
    part = part.strip().lower()
    if part in GROUPS:
      names += [n for n in GROUPS[part] if n not in names]
    elif part in NAMES:
      names += [part] if part not in names else []
    else:
      raise checks.fail(name, spec, f"{part or '(empty)'!r} is not a corruption; {valid}")
  return [(n, s) for n in names for s in severities]


def _library():
  """The `imagecorruptions` module, made to run on current scikit-image and NumPy.

  Its last release (1.1.2) calls `skimage.filters.gaussian(..., multichannel=True)` (removed in
  scikit-image 0.19: glass_blur, gaussian_blur) and `np.float_` (removed in NumPy 2.0: fog), and its
  impulse_noise calls `skimage.util.random_noise` without a seed (scikit-image >= 0.21 then draws from
  a fresh, unseeded Generator: not reproducible). These names are replaced inside that module only:
  `gaussian` by a wrapper that maps `multichannel` to `channel_axis`, `np` by a view of numpy that
  also has `float_`, and `sk` by a view of scikit-image whose `util.random_noise` takes its seed from
  numpy's (seeded) global RNG. Nothing else is changed.
  """
  global _LIB
  if _LIB is None:
    with warnings.catch_warnings():  # it imports pkg_resources, which warns on import
      warnings.simplefilter("ignore")
      try:
        import imagecorruptions
        from imagecorruptions import corruptions as mod
      except ImportError as e:
        raise UserError(f"the corruptions need the imagecorruptions package ({e}); "
                        "pip install imagecorruptions opencv-python-headless") from None
    from skimage.filters import gaussian

    def gaussian_compat(image, *args, multichannel=None, **kwargs):
      if multichannel:
        kwargs.setdefault("channel_axis", -1)
      return gaussian(image, *args, **kwargs)

    import skimage
    from skimage.util import random_noise

    def random_noise_seeded(image, *args, **kwargs):
      kwargs.setdefault("rng", int(np.random.randint(2**31)))
      return random_noise(image, *args, **kwargs)

    skimage_view = _view(skimage, "skimage")
    skimage_view.util = _view(skimage.util, "skimage.util", random_noise=random_noise_seeded)
    mod.gaussian = gaussian_compat
    mod.np = _view(np, "numpy", float_=np.float64)
    mod.sk = skimage_view
    _LIB = imagecorruptions
  return _LIB


def _view(module, name: str, **replaced) -> types.ModuleType:
  """A module that reads as `module` except for the `replaced` attributes."""
  view = types.ModuleType(name)
  view.__dict__["__getattr__"] = lambda attr: getattr(module, attr)  # PEP 562
  view.__dict__.update(replaced)
  return view


@contextlib.contextmanager
def _seeded(seed: int):
  """numpy's global RNG seeded with `seed` inside, restored to its previous state on exit."""
  with _LOCK:
    state = np.random.get_state()
    np.random.seed(seed)
    try:
      yield
    finally:
      np.random.set_state(state)


def seeds(name: str, severity: int, index: np.ndarray) -> np.ndarray:
  """The per-image seeds: a function of (global example index, corruption, severity) only."""
  bits = pipeline.random_bits(severity, _STREAM + NAMES.index(name), np.asarray(index), 1)[:, 0]
  return (bits & np.uint64(0xFFFFFFFF)).astype(np.int64)


def _resize(image: np.ndarray, height: int, width: int, resample) -> np.ndarray:
  from PIL import Image
  return np.asarray(Image.fromarray(image).resize((width, height), resample))


def corrupt_image(image: np.ndarray, name: str, severity: int, seed: int) -> np.ndarray:
  """One uint8 [H, W, C] image (C = 1 or 3, any size) -> corrupted uint8 [H, W, C]."""
  from PIL import Image

  if severity == 0:
    return image
  h, w, c = image.shape
  rgb = np.repeat(image, 3, axis=-1) if c == 1 else image
  scale = MIN_SIZE / min(h, w)
  if scale > 1:
    rgb = _resize(rgb, int(np.ceil(h * scale)), int(np.ceil(w * scale)), Image.Resampling.BILINEAR)
  lib = _library()
  with _seeded(int(seed)), warnings.catch_warnings():
    warnings.simplefilter("ignore")  # e.g. skimage's deprecations inside the library
    out = lib.corrupt(np.ascontiguousarray(rgb), corruption_name=name, severity=int(severity))
  if scale > 1:
    out = _resize(out, h, w, Image.Resampling.BOX)  # area averaging back to the input size
  if c == 1:
    out = np.rint(out.astype(np.float32).mean(-1, keepdims=True)).astype(np.uint8)
  return out


def corrupt_batch(images: np.ndarray, index: np.ndarray, name: str, severity: int) -> np.ndarray:
  """A batch [B, H, W, C] (uint8, or float in [-1, 1]) with every image corrupted, same dtype."""
  if severity == 0:
    return images
  raw = images.dtype == np.uint8
  pixels = images if raw else np.clip(np.rint((images.astype(np.float32) + 1.0) * 127.5),
                                      0, 255).astype(np.uint8)
  out = np.stack([corrupt_image(p, name, severity, s)
                  for p, s in zip(pixels, seeds(name, severity, index))])
  if raw:
    return out
  from lazy_neuron.data.images import normalize
  return normalize(out).astype(images.dtype)


def batch_transform(name: str, severity: int) -> Callable[[np.ndarray, dict], dict]:
  """`fn(global_indices, batch) -> batch` with the batch's "image" corrupted (for `data.build`)."""
  _library()  # imported here, in the caller's thread: a missing package is a UserError, not a crash
  def transform(index: np.ndarray, batch: dict) -> dict:
    return {**batch, "image": corrupt_batch(np.asarray(batch["image"]), index, name, severity)}
  transform.fingerprint = f"{name}:{severity}"
  return transform


def names_of(plan: Sequence[tuple[str, int]]) -> list[str]:
  return list(dict.fromkeys(n for n, _ in plan))
