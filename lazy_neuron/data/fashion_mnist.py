"""Fashion-MNIST (Xiao et al., 2017): 60k train / 10k test 28x28 grayscale images of 10 clothing classes.

Read from one of two places (`data.source`):

- `"tfds"`: TFDS's `fashion_mnist` prepared as ArrayRecord in `data.data_dir` (None: TFDS's default
  data dir). With internet access, `tfds build fashion_mnist --file_format=array_record` prepares it;
  it is then read like any `tfds` dataset (`data/images.py`), without TensorFlow.
- `"idx"`: the original IDX files (`train-images-idx3-ubyte[.gz]` etc.) in `data.idx_dir`, e.g. from
  Debian's `dataset-fashion-mnist` package (`apt-get install dataset-fashion-mnist`, installed at
  /usr/share/datasets/fashion-mnist, the default; `$LAZY_NEURON_FASHION_MNIST_DIR` overrides the
  default, e.g. for `lazy-neuron reproduce`, which takes no config overrides). The four files are read
  into memory (55 MB) on first use.
- `"auto"` (default): TFDS when `fashion_mnist` is prepared there as ArrayRecord, else the IDX files,
  else a one-line error naming both ways.

The two hold the same images in different record orders (TFDS shuffles when it writes), so a run's
batches depend on which one it read; the iterator state records it (`backend`) and refuses to resume
from the other. Images are scaled to [-1, 1] and resized (bilinear) to `image_size` when it is not 28;
`channels=3` replicates the gray channel. The label switches (`label_noise`, `random_labels`,
`random_inputs`) and `eval_examples` (the first N test images) work as for the other image sources.
"""
from __future__ import annotations

import gzip
import os

import numpy as np

from lazy_neuron.data.digits import DigitsSource
from lazy_neuron.errors import UserError

NUM_CLASSES = 10
TFDS_NAME = "fashion_mnist"
FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
         "eval": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
SIZES = {"train": 60_000, "eval": 10_000}
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
               0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def read_idx(path: str) -> np.ndarray:
  """An IDX file (LeCun's MNIST format; gzipped or not) as a numpy array.

  Written here rather than taken from a package: the format is a 4-byte magic number (two zero
  bytes, the element type, the number of dimensions), the dimensions as big-endian int32, then the
  data; the packages that read it (idx2numpy, python-mnist) are unmaintained.
  """
  opener = gzip.open if path.endswith(".gz") else open
  with opener(path, "rb") as f:
    raw = f.read()
  if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
    raise UserError(f"{path!r} is not an IDX file (bad magic number {raw[:4].hex()}); give the "
                    "folder of Fashion-MNIST's original IDX files as data.idx_dir")
  ndim, dtype = raw[3], np.dtype(_IDX_DTYPES[raw[2]])
  shape = tuple(int(d) for d in np.frombuffer(raw, ">i4", count=ndim, offset=4))
  data = np.frombuffer(raw, dtype, offset=4 + 4 * ndim)
  if data.size != int(np.prod(shape)):
    raise UserError(f"{path!r} is truncated: {data.size} values for shape {shape}")
  return data.reshape(shape).astype(dtype.newbyteorder("="))


def _idx_path(folder: str, stem: str):
  for name in (stem, stem + ".gz"):
    path = os.path.join(folder, name)
    if os.path.isfile(path):
      return path
  return None


def idx_files(idx_dir: str):
  """{split: (images path, labels path)}, or None when a file is missing."""
  folder = os.path.expanduser(idx_dir)
  out = {}
  for split, stems in FILES.items():
    paths = tuple(_idx_path(folder, s) for s in stems)
    if None in paths:
      return None
    out[split] = paths
  return out


def tfds_prepared(data_dir) -> bool:
  """Whether TFDS's fashion_mnist is prepared as ArrayRecord in `data_dir` (None: TFDS's default)."""
  from etils import epath

  root = data_dir or os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets"
  try:  # a cheap, quiet look first: TFDS itself logs warnings about half-written folders
    if not any(epath.Path(os.path.expanduser(root)).glob(f"{TFDS_NAME}/*/dataset_info.json")):
      return False
  except Exception:  # an unreadable data dir: not usable
    return False
  import tensorflow_datasets as tfds

  try:
    builder = tfds.builder(TFDS_NAME, data_dir=data_dir)
    fmt = getattr(builder.info.file_format, "value", builder.info.file_format)
    return builder.is_prepared() and fmt == "array_record"
  except Exception:  # an unreadable data dir, a version TFDS does not know: not usable
    return False


def missing_error(cfg) -> UserError:
  where = cfg["data_dir"] or "the default TFDS data dir"
  return UserError(
      f"Fashion-MNIST not found: no ArrayRecord fashion_mnist in {where} and no IDX files in "
      f"data.idx_dir={cfg['idx_dir']!r}; either `tfds build fashion_mnist "
      "--file_format=array_record` (needs internet; set data.data_dir if not the default), or "
      "`apt-get install dataset-fashion-mnist` (IDX files in /usr/share/datasets/fashion-mnist)")


def make_source(cfg):
  """The source that reads Fashion-MNIST from where `cfg["source"]` says (see the module doc)."""
  want = cfg["source"]
  if want in ("auto", "tfds") and (want == "tfds" or tfds_prepared(cfg["data_dir"])):
    from lazy_neuron.data import config as config_lib
    from lazy_neuron.data.images import TfdsImageSource

    tfds_cfg = config_lib.resolve({
        "name": "tfds", "dataset": TFDS_NAME, "data_dir": cfg["data_dir"], "augment": "none",
        "image_size": cfg["image_size"], "channels": cfg["channels"], "num_classes": NUM_CLASSES,
        "eval_crop_fraction": 1.0, "eval_examples": cfg["eval_examples"],
        **{k: cfg[k] for k in ("label_noise", "random_labels", "label_noise_seed", "random_inputs",
                               "one_pass", "cache_dir", "num_threads", "prefetch", "num_workers")}})
    source = TfdsImageSource(tfds_cfg)
    source.fingerprint = {"backend": "tfds"}
    return source
  files = idx_files(cfg["idx_dir"])
  if files is None:
    raise missing_error(cfg)
  return FashionMnistIdxSource(cfg, files)


class _Split:
  """One split's IDX arrays as a random-access source of {"image": uint8 [28, 28, 1], "label"}."""

  def __init__(self, images: np.ndarray, labels: np.ndarray):
    self.images, self.labels = images[..., None], labels

  def __len__(self) -> int:
    return len(self.labels)

  def __getitem__(self, i: int) -> dict:
    return {"image": self.images[i], "label": int(self.labels[i])}


class FashionMnistIdxSource(DigitsSource):
  """The IDX files, with the digits source's batching (preprocessing, label switches)."""

  fingerprint = {"backend": "idx"}

  def __init__(self, cfg, files):
    super().__init__(cfg)
    self.files = files

  def source(self, split: str):
    if split not in self._sources:
      images_path, labels_path = self.files[split]
      images, labels = read_idx(images_path), read_idx(labels_path)
      if images.ndim != 3 or labels.shape != images.shape[:1]:
        raise UserError(f"{images_path!r} and {labels_path!r} do not hold images [N, H, W] and their "
                        f"N labels (shapes {images.shape}, {labels.shape})")
      self._sources[split] = _Split(images.astype(np.uint8), labels.astype(np.int32))
    return self._sources[split]

  @property
  def num_eval(self) -> int:
    n = len(self.source("eval"))
    return min(n, int(self.cfg["eval_examples"])) if self.cfg["eval_examples"] else n

  def eval_batch_fn(self, seed: int):
    self.source("eval")  # fail early, outside grain threads
    return super().eval_batch_fn(seed)

  def train_batch_fn(self, seed: int):
    self.source("train")
    return super().train_batch_fn(seed)
