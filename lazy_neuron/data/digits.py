"""scikit-learn's bundled digits (1797 8x8 grayscale images, 10 classes) as a TFDS builder.

The builder writes ArrayRecord files (`file_format="array_record"`), so it prepares and reads without
TensorFlow: images are stored as encoded PNG bytes (made with PIL) and read back through
`tfds.data_source`, which decodes them with numpy/PIL. The split is deterministic: a fixed permutation
(seed 0) puts 1500 images in `train` and the remaining 297 in `test`.

Prepared on first use into `data.data_dir` (default `<cache>/tfds`); preparation runs under a file lock
and TFDS writes into a temporary folder that it renames at the end, so it is safe to interrupt.
"""
from __future__ import annotations

import io
import os

import numpy as np

from lazy_neuron.data import cache

NUM_TRAIN = 1500
NUM_CLASSES = 10
SPLIT_SEED = 0


def _builder_class():
  # Imported lazily: tensorflow_datasets is heavy and not installed everywhere.
  import tensorflow_datasets as tfds

  global _BUILDER
  if _BUILDER is not None:
    return _BUILDER

  class SklearnDigits(tfds.core.GeneratorBasedBuilder):
    """scikit-learn's `load_digits()`: 8x8 grayscale handwritten digits, 10 classes."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release: 1500 train / 297 test (fixed permutation, seed 0)."}

    def _info(self):
      return self.dataset_info_from_configs(
          features=tfds.features.FeaturesDict({
              "image": tfds.features.Image(shape=(8, 8, 1), encoding_format="png"),
              "label": tfds.features.ClassLabel(num_classes=NUM_CLASSES),
          }),
          supervised_keys=("image", "label"),
          homepage="https://scikit-learn.org/stable/modules/generated/sklearn.datasets.load_digits.html",
      )

    def _split_generators(self, dl_manager):
      del dl_manager  # nothing to download: the data ships with scikit-learn
      return {"train": self._generate_examples("train"), "test": self._generate_examples("test")}

    def _generate_examples(self, split):
      from PIL import Image
      from sklearn.datasets import load_digits

      digits = load_digits()
      order = np.random.default_rng(SPLIT_SEED).permutation(len(digits.target))
      order = order[:NUM_TRAIN] if split == "train" else order[NUM_TRAIN:]
      for i in order:
        pixels = np.round(digits.images[i] * (255.0 / 16.0)).astype(np.uint8)  # 0..16 -> 0..255
        buf = io.BytesIO()
        Image.fromarray(pixels, mode="L").save(buf, format="PNG")
        yield int(i), {"image": buf.getvalue(), "label": int(digits.target[i])}

  _BUILDER = SklearnDigits
  return _BUILDER


_BUILDER = None


def data_dir(data_config) -> str:
  return os.path.abspath(os.path.expanduser(
      data_config["data_dir"] or os.path.join(cache.cache_dir(data_config["cache_dir"]), "tfds")))


def builder(data_config):
  """The (prepared) TFDS builder in the configured data dir."""
  cls = _builder_class()
  root = data_dir(data_config)
  b = cls(data_dir=root, file_format="array_record")
  if not _is_prepared(b):
    with cache.locked(os.path.join(root, "sklearn_digits")):
      b = cls(data_dir=root, file_format="array_record")
      if not _is_prepared(b):
        import tensorflow_datasets as tfds

        tfds.display_progress_bar(False)
        try:
          b.download_and_prepare()
        finally:
          tfds.display_progress_bar(True)
  return b


def _is_prepared(b) -> bool:
  return os.path.exists(os.path.join(os.fspath(b.data_dir), "dataset_info.json"))


def data_source(data_config, split: str):
  """A random-access source of decoded examples: {"image": uint8 [8, 8, 1], "label": int}."""
  return builder(data_config).as_data_source(split=split)


def preprocess_images(images: np.ndarray, image_size: int, channels: int) -> np.ndarray:
  """uint8 [B, H, W, C] -> float32 [B, S, S, channels] in [-1, 1] (bilinear resize when S != H)."""
  x = images.astype(np.float32) * (2.0 / 255.0) - 1.0
  if x.shape[1] != image_size or x.shape[2] != image_size:
    from PIL import Image

    out = np.empty((x.shape[0], image_size, image_size, x.shape[3]), np.float32)
    for i in range(x.shape[0]):
      for c in range(x.shape[3]):
        out[i, :, :, c] = np.asarray(
            Image.fromarray(x[i, :, :, c], mode="F").resize((image_size, image_size), Image.BILINEAR))
    x = out
  if channels != x.shape[3]:
    x = np.repeat(x, channels, axis=3) if x.shape[3] == 1 else x[..., :channels]
  return x


class DigitsSource:

  def __init__(self, cfg):
    self.cfg = cfg
    self.image_size = int(cfg["image_size"])
    self.channels = int(cfg["channels"])
    self._sources = {}

  def source(self, split: str):
    if split not in self._sources:
      self._sources[split] = data_source(self.cfg, {"train": "train", "eval": "test"}[split])
    return self._sources[split]

  def _arrays(self, split: str) -> tuple[np.ndarray, np.ndarray]:
    """The whole split as (uint8 images [N, H, W, C], int32 labels [N]), decoded once and kept in
    memory (small datasets): a batch is then one fancy-index, not one decode per example (decoding
    per example held a batch of 1024 at ~0.1 ms per image, the input pipeline bottleneck)."""
    key = ("arrays", split)
    if key not in self._sources:
      src = self.source(split)
      if hasattr(src, "images") and hasattr(src, "labels"):  # already arrays (IDX files)
        self._sources[key] = (src.images, np.asarray(src.labels, np.int32))
      else:
        examples = [src[i] for i in range(len(src))]
        self._sources[key] = (np.stack([np.asarray(e["image"], np.uint8) for e in examples]),
                              np.asarray([int(e["label"]) for e in examples], np.int32))
    return self._sources[key]

  @property
  def num_train(self) -> int:
    return len(self.source("train"))

  @property
  def num_eval(self) -> int:
    return len(self.source("eval"))

  def info(self):
    from lazy_neuron.data.datainfo import DataInfo

    return DataInfo(task="classification", num_classes=NUM_CLASSES,
                    image_shape=(self.image_size, self.image_size, self.channels),
                    num_train_examples=self.num_train, num_eval_examples=self.num_eval)

  def _batch(self, split, records):
    if split == "train" and self.cfg["random_inputs"]:
      from lazy_neuron.data.images import random_inputs

      return random_inputs(records, (self.image_size, self.image_size, self.channels), NUM_CLASSES,
                           self.cfg)
    all_images, all_labels = self._arrays(split)
    records = np.asarray(records, np.int64)
    images, labels = all_images[records], all_labels[records]
    if split == "train":
      from lazy_neuron.data.images import noisy_labels

      labels = noisy_labels(labels, np.asarray(records), NUM_CLASSES, self.cfg)
    return {"image": preprocess_images(images, self.image_size, self.channels), "label": labels}

  def train_batch_fn(self, seed: int):
    del seed  # augmentation-free: the order is the pipeline's
    return lambda index, records: self._batch("train", records)

  def eval_batch_fn(self, seed: int):
    del seed
    return lambda index, records: self._batch("eval", records)
