"""Image classification: preprocessing (ViT style), label-noise switches, and the generic `tfds` source.

`tfds` reads any TFDS dataset prepared in ArrayRecord format (`tfds build NAME
--file_format=array_record --data_dir=DIR`, or a data dir on gs://) by name through
`tfds.data_source`, without TensorFlow. Preprocessing is numpy + PIL, random choices come from
(seed, global example index):

- train `augment="inception_crop"`: random crop of `crop_min_area`..100% of the area with aspect ratio
  in [3/4, 4/3] (10 attempts, else a centre crop), resized to `image_size`, random horizontal flip;
  `"flip"`: resize + flip; `"none"`: resize.
- eval: resize the shorter side to `image_size / eval_crop_fraction` and take the central
  `image_size` square (big_vision's `resize_small|central_crop`; 0.875 = 224/256).
- values scaled to [-1, 1].

Label switches (train only; eval labels stay clean), fixed per record so that a noisy label is the same
in every epoch, seeded by `label_noise_seed`:
- `label_noise=p`: symmetric noise, each label replaced by a uniform random class with probability p.
- `random_labels=True`: every label replaced by a uniform random class (the paper's random-label ablation).
- `random_inputs=True`: every training image replaced by i.i.d. N(0, 1) pixels of the output shape and
  its label by a uniform random class, fixed per record (eval stays real).
"""
from __future__ import annotations

import io
import os

import numpy as np

from lazy_neuron.data import pipeline
from lazy_neuron.data.datainfo import DataInfo
from lazy_neuron.errors import UserError

_AUG, _NOISE, _INPUTS = 3000, 7000, 7100


def random_inputs(records: np.ndarray, shape, num_classes: int, cfg) -> dict[str, np.ndarray]:
  """The random-input ablation: i.i.d. N(0, 1) images of `shape` and uniform random labels, both fixed
  per record index (the same in every epoch) and seeded by `label_noise_seed`."""
  seed = int(cfg.get("label_noise_seed") or 0)
  records = np.asarray(records, np.int64)
  x = pipeline.random_normal(seed, _INPUTS, records, int(np.prod(shape))).astype(np.float32)
  labels = (pipeline.random_bits(seed, _NOISE, records, 1)[:, 0] % np.uint64(num_classes)).astype(np.int32)
  return {"image": x.reshape((len(records), *shape)), "label": labels}


def noisy_labels(labels: np.ndarray, records: np.ndarray, num_classes: int, cfg) -> np.ndarray:
  """Applies `label_noise` / `random_labels` (deterministic per record)."""
  if not cfg.get("random_labels") and not cfg.get("label_noise"):
    return labels
  seed = int(cfg.get("label_noise_seed") or 0)
  random = (pipeline.random_bits(seed, _NOISE, records, 1)[:, 0] % np.uint64(num_classes)).astype(np.int32)
  if cfg.get("random_labels"):
    return random
  flip = pipeline.random_uniform(seed, _NOISE + 1, records, 1)[:, 0] < float(cfg["label_noise"])
  return np.where(flip, random, labels).astype(np.int32)


def _to_pil(image: np.ndarray):
  from PIL import Image

  return Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)


def _inception_crop(h, w, u, min_area):
  """(top, left, height, width) of a random crop; u: 4 uniforms per attempt."""
  area = h * w
  for a in range(10):
    target = area * (min_area + (1.0 - min_area) * u[4 * a])
    ratio = np.exp(np.log(3 / 4) + (np.log(4 / 3) - np.log(3 / 4)) * u[4 * a + 1])
    cw = int(round(np.sqrt(target * ratio)))
    ch = int(round(np.sqrt(target / ratio)))
    if 0 < cw <= w and 0 < ch <= h:
      top = int(u[4 * a + 2] * (h - ch + 1))
      left = int(u[4 * a + 3] * (w - cw + 1))
      return top, left, ch, cw
  side = min(h, w)
  return (h - side) // 2, (w - side) // 2, side, side


def _load(item):
  """(PIL image, height, width, is_encoded). Encoded bytes are opened lazily (decoded on first use)."""
  from PIL import Image

  if isinstance(item, (bytes, np.bytes_)) or (isinstance(item, np.ndarray) and item.dtype.kind in "SO"):
    img = Image.open(io.BytesIO(item if isinstance(item, bytes) else bytes(item.item() if
                                                                         item.ndim == 0 else item)))
    w, h = img.size
    return img, h, w, True
  image = np.asarray(item, np.uint8)
  if image.ndim == 2:
    image = image[..., None]
  return _to_pil(image), image.shape[0], image.shape[1], False


def _draft(img, h, w, need_w, need_h):
  """JPEG: decode at the smallest 1/2, 1/4, 1/8 scale that keeps at least (need_w, need_h) pixels
  for the full image (libjpeg's DCT scaling: far less decoding work). Returns (sx, sy) scales."""
  if getattr(img, "format", None) == "JPEG":
    mode = img.mode if img.mode in ("L", "RGB") else None
    img.draft(mode, (max(1, int(np.ceil(need_w))), max(1, int(np.ceil(need_h)))))
  return img.size[0] / w, img.size[1] / h


def preprocess(images, size: int, *, train: bool, augment: str, channels: int | None,
               crop_min_area: float = 0.05, eval_crop_fraction: float = 0.875,
               seed: int = 0, index: np.ndarray | None = None, dtype: str = "float32") -> np.ndarray:
  """uint8 [H, W, C] images or encoded (JPEG/PNG) bytes -> float32 [B, size, size, C'] in [-1, 1]
  (`dtype="uint8"`: the resized pixels, unnormalised).

  Encoded JPEGs are decoded with PIL's `draft` (DCT-domain downscaling to the smallest 1/2^k scale that
  still covers the output resolution), then cropped and resized in one `resize(box=...)`.
  """
  from PIL import Image

  n = len(images)
  u = pipeline.random_uniform(seed, _AUG, index if index is not None else np.arange(n), 41) if train else None
  raw = dtype == "uint8"
  out = np.empty((n, size, size, channels), np.uint8 if raw else np.float32) if channels else None
  rows = []
  for i, item in enumerate(images):
    img, h, w, encoded = _load(item)
    if train and augment == "inception_crop":
      top, left, ch, cw = _inception_crop(h, w, u[i], crop_min_area)
      sx, sy = _draft(img, h, w, w * size / cw, h * size / ch) if encoded else (1.0, 1.0)
      box = (left * sx, top * sy, (left + cw) * sx, (top + ch) * sy)
      img = img.resize((size, size), Image.Resampling.BILINEAR, box=box)
    elif train or (h == size and w == size):
      if (h, w) != (size, size):
        if encoded:
          _draft(img, h, w, size, size)
        img = img.resize((size, size), Image.Resampling.BILINEAR)
    else:
      short = max(size, int(round(size / eval_crop_fraction)))
      nh, nw = (short, max(short, int(round(w * short / h)))) if h <= w else (
          max(short, int(round(h * short / w))), short)
      if encoded:
        _draft(img, h, w, nw, nh)
      img = img.resize((nw, nh), Image.Resampling.BILINEAR)
      top, left = (nh - size) // 2, (nw - size) // 2
      img = img.crop((left, top, left + size, top + size))
    if train and augment in ("inception_crop", "flip") and u[i][40] < 0.5:
      img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if img.mode not in ("L", "RGB"):
      img = img.convert("RGB")
    if channels == 1 and img.mode != "L":
      img = img.convert("L")
    x = np.asarray(img)
    x = x[..., None] if x.ndim == 2 else x
    if channels is not None and x.shape[-1] != channels:
      x = np.repeat(x, channels, axis=-1) if x.shape[-1] == 1 else x[..., :channels]
    if out is not None and raw:
      out[i] = x
    elif out is not None:  # normalise image by image, straight into the batch (cache-hot, one pass)
      np.multiply(x, np.float32(2.0 / 255.0), out=out[i], dtype=np.float32)
      out[i] -= 1.0
    else:
      rows.append(x)
  if out is not None:
    return out
  return np.stack(rows) if raw else normalize(np.stack(rows))


def normalize(x: np.ndarray) -> np.ndarray:
  """uint8 -> float32 in [-1, 1]."""
  y = x.astype(np.float32)
  y *= 2.0 / 255.0
  y -= 1.0
  return y


class TfdsImageSource:
  """Any TFDS image-classification dataset in ArrayRecord format, by name."""

  def __init__(self, cfg):
    self.cfg = cfg
    self.name = cfg["dataset"]
    self._sources = {}
    self._builder = None

  def _tfds_error(self, e):
    where = self.cfg["data_dir"] or "the default TFDS data dir (~/tensorflow_datasets or $TFDS_DATA_DIR)"
    if "://" in str(self.cfg["data_dir"] or "") and "open() failed" in str(e):
      return UserError(
          f"data.data_dir={self.cfg['data_dir']!r}: array_record could not open the ArrayRecord files "
          f"there ({str(e).splitlines()[0][:200]}); check the credentials (`gcloud auth "
          "application-default login`), or mount the bucket with gcsfuse and set data.data_dir to the "
          "mount point (docs/data.md)")
    return UserError(
        f"data.dataset={self.name!r} is not available as ArrayRecord in {where} ({type(e).__name__}: "
        f"{str(e).splitlines()[0] if str(e) else ''}); prepare it with `tfds build {self.name.split(':')[0]} "
        f"--file_format=array_record --data_dir=DIR` and set data.data_dir=DIR")

  def builder(self):
    if self._builder is None:
      import tensorflow_datasets as tfds

      data_dir = self.cfg["data_dir"]
      if data_dir and "://" not in data_dir and not os.path.isdir(os.path.expanduser(data_dir)):
        raise UserError(f"data.data_dir={data_dir!r} does not exist (data.dataset={self.name!r}); give "
                        f"the TFDS data dir that holds {self.name.split(':')[0]}/<version>/ "
                        "(local or gs://)")
      try:
        self._builder = tfds.builder(self.name, data_dir=data_dir)
        info = self._builder.info
      except Exception as e:  # DatasetNotFoundError, bad version, unreadable data dir, ...
        raise self._tfds_error(e) from e
      fmt = getattr(info.file_format, "value", info.file_format)
      if fmt == "tfrecord" and self._builder.is_prepared():
        where = data_dir or "the default TFDS data dir"
        raise UserError(
            f"data.dataset={self.name!r} is prepared as TFRecord in {where}; the image pipeline reads "
            f"ArrayRecord (random access): convert it once with `lazy-neuron convert "
            f"--dataset={self.name} --data_dir={data_dir or '~/tensorflow_datasets'} "
            "--out_dir=NEW_DIR` and set data.data_dir=NEW_DIR")
      for key in (self.cfg["image_key"], self.cfg["label_key"]):
        if key not in info.features:
          raise UserError(f"data.{'image_key' if key == self.cfg['image_key'] else 'label_key'}={key!r} "
                          f"is not a feature of {self.name!r}; features: {', '.join(info.features)}")
    return self._builder

  def source(self, split: str):
    if split not in self._sources:
      import tensorflow_datasets as tfds

      self.builder()  # missing data dir, unknown dataset, TFRecord: the specific errors first
      name = self.cfg["train_split" if split == "train" else "eval_split"]
      try:
        kwargs = dict(split=name, data_dir=self.cfg["data_dir"], download=False)  # never download
        src = tfds.data_source(self.name, **kwargs)
        try:  # encoded bytes, decoded by `preprocess` (JPEG draft mode); mock_data needs TF for this
          raw = tfds.data_source(self.name, decoders={self.cfg["image_key"]: tfds.decode.SkipDecoding()},
                                 **kwargs)
          if len(raw):
            raw[0]
          src = raw
        except Exception:
          pass
        self._sources[split] = src
      except Exception as e:
        if isinstance(e, UserError):
          raise
        if "split" in str(e).lower() and "not" in str(e).lower() and "generated" not in str(e):
          raise UserError(f"data.{'train_split' if split == 'train' else 'eval_split'}={name!r} is not a "
                          f"split of {self.name!r}: {str(e).splitlines()[0]}") from e
        raise self._tfds_error(e) from e
    return self._sources[split]

  @property
  def num_classes(self) -> int:
    if self.cfg["num_classes"]:
      return int(self.cfg["num_classes"])
    feature = self.builder().info.features[self.cfg["label_key"]]
    if not hasattr(feature, "num_classes"):
      raise UserError(f"data.label_key={self.cfg['label_key']!r} of {self.name!r} is not a ClassLabel; "
                      "set data.num_classes")
    return int(feature.num_classes)

  @property
  def channels(self) -> int:
    if self.cfg["channels"]:
      return int(self.cfg["channels"])
    shape = getattr(self.builder().info.features[self.cfg["image_key"]], "shape", None)
    return int(shape[-1]) if shape and shape[-1] else 3

  @property
  def num_train(self) -> int:
    return len(self.source("train"))

  @property
  def num_eval(self) -> int:
    n = len(self.source("eval"))
    return min(n, int(self.cfg["eval_examples"])) if self.cfg["eval_examples"] else n

  def info(self) -> DataInfo:
    size = int(self.cfg["image_size"])
    return DataInfo(task="classification", num_classes=self.num_classes,
                    image_shape=(size, size, self.channels), num_train_examples=self.num_train,
                    num_eval_examples=self.num_eval, image_dtype=self.cfg["image_dtype"])

  def _batch(self, split, index, records, seed):
    cfg = self.cfg
    if split == "train" and cfg["random_inputs"]:  # no reading or decoding
      size = int(cfg["image_size"])
      return random_inputs(records, (size, size, self.channels), self.num_classes, cfg)
    src = self.source(split)
    records = [int(r) for r in records]
    try:  # one batched read where the source supports it (ArrayRecord does)
      examples = list(src.__getitems__(records))
    except (AttributeError, TypeError):  # e.g. tfds.testing.mock_data's source
      examples = [src[r] for r in records]
    train = split == "train"
    images = preprocess([e[cfg["image_key"]] for e in examples], int(cfg["image_size"]), train=train,
                        augment=cfg["augment"], channels=self.channels,
                        crop_min_area=cfg["crop_min_area"], eval_crop_fraction=cfg["eval_crop_fraction"],
                        seed=seed, index=index, dtype=cfg["image_dtype"])
    labels = np.asarray([int(e[cfg["label_key"]]) for e in examples], np.int32)
    if train:
      labels = noisy_labels(labels, np.asarray(records), self.num_classes, cfg)
    return {"image": images, "label": labels}

  def train_batch_fn(self, seed: int):
    self.source("train"), self.num_classes, self.channels  # fail early, outside grain threads
    return lambda index, records: self._batch("train", index, records, seed)

  def eval_batch_fn(self, seed: int):
    self.source("eval"), self.num_classes, self.channels
    return lambda index, records: self._batch("eval", index, records, seed)
