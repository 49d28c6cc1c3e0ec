"""data.name="fashion_mnist" on small IDX files written here (the CI machine has no Fashion-MNIST):
the IDX reader, the source contract (deterministic, resumable, per-host shards, padded eval, label
switches, eval_examples) and the one-line errors when the data is missing."""
from __future__ import annotations

import gzip
import json
import os

import numpy as np
import pytest

from lazy_neuron import data
from lazy_neuron.data import fashion_mnist
from lazy_neuron.errors import UserError

N_TRAIN, N_EVAL = 96, 21


def write_idx(path, array):
  """`array` in IDX format (uint8: type 0x08), gzipped when `path` ends in .gz."""
  array = np.asarray(array)
  kind = {np.dtype(np.uint8): 0x08, np.dtype(">i4"): 0x0C}[array.dtype]
  raw = bytes([0, 0, kind, array.ndim]) + np.asarray(array.shape, ">i4").tobytes() + array.tobytes()
  with (gzip.open if path.endswith(".gz") else open)(path, "wb") as f:
    f.write(raw)


@pytest.fixture(scope="module")
def idx(tmp_path_factory):
  """A folder of the four files (train gzipped, test plain, as either may be) and their arrays."""
  root = tmp_path_factory.mktemp("fmnist")
  rng = np.random.default_rng(0)
  arrays = {"train": (rng.integers(0, 256, (N_TRAIN, 28, 28), dtype=np.uint8),
                      rng.integers(0, 10, N_TRAIN).astype(np.uint8)),
            "eval": (rng.integers(0, 256, (N_EVAL, 28, 28), dtype=np.uint8),
                     rng.integers(0, 10, N_EVAL).astype(np.uint8))}
  for split, (images, labels) in arrays.items():
    suffix = ".gz" if split == "train" else ""
    image_file, label_file = fashion_mnist.FILES[split]
    write_idx(str(root / (image_file + suffix)), images)
    write_idx(str(root / (label_file + suffix)), labels)
  return str(root), arrays


def cfg(idx, **kw):
  return data.get_data_config("fashion_mnist", source="idx", idx_dir=idx[0], **kw)


def _take(it, n):
  return [next(it) for _ in range(n)]


def _same(a, b):
  return all(np.array_equal(x[k], y[k]) for x, y in zip(a, b) for k in x)


def test_read_idx_round_trip_and_bad_files(tmp_path):
  a = np.arange(24, dtype=">i4").reshape(2, 3, 4)
  write_idx(str(tmp_path / "a.gz"), a)
  got = fashion_mnist.read_idx(str(tmp_path / "a.gz"))
  np.testing.assert_array_equal(got, a)
  assert got.dtype == np.int32 and got.dtype.isnative
  (tmp_path / "bad").write_bytes(b"\x01\x02\x08\x01" + b"\0" * 8)
  with pytest.raises(UserError, match="not an IDX file"):
    fashion_mnist.read_idx(str(tmp_path / "bad"))
  (tmp_path / "short").write_bytes(bytes([0, 0, 8, 1]) + np.asarray([5], ">i4").tobytes() + b"ab")
  with pytest.raises(UserError, match="truncated"):
    fashion_mnist.read_idx(str(tmp_path / "short"))


def test_values_shapes_and_eval(idx):
  c = cfg(idx)
  info = data.info(c)
  assert (info.num_classes, info.image_shape) == (10, (28, 28, 1))
  assert (info.num_train_examples, info.num_eval_examples) == (N_TRAIN, N_EVAL)
  batches = list(data.build(c, split="eval", batch_size=8, seed=0))
  assert len(batches) == 3  # 21 examples padded to 24
  images = np.concatenate([b["image"] for b in batches])
  mask = np.concatenate([b["mask"] for b in batches])
  np.testing.assert_array_equal(mask, np.arange(24) < N_EVAL)
  want = idx[1]["eval"][0][..., None] / 127.5 - 1.0  # [0, 255] -> [-1, 1], in test-file order
  np.testing.assert_allclose(images[:N_EVAL], want, rtol=0, atol=1e-6)
  assert not images[N_EVAL:].any()
  np.testing.assert_array_equal(np.concatenate([b["label"] for b in batches])[:N_EVAL],
                                idx[1]["eval"][1])
  # eval_examples: the first N; resize and channels
  small = data.build(cfg(idx, eval_examples=5, image_size=14, channels=3), split="eval",
                     batch_size=8, seed=0)
  (b,) = list(small)
  assert b["image"].shape == (8, 14, 14, 3) and b["mask"].sum() == 5


def test_train_deterministic_resumable_and_sharded(idx):
  c = cfg(idx)
  a = _take(data.build(c, split="train", batch_size=8, seed=1), 14)  # > 1 epoch of 96
  assert _same(a, _take(data.build(c, split="train", batch_size=8, seed=1), 14))
  assert not _same(a, _take(data.build(c, split="train", batch_size=8, seed=2), 14))
  it = data.build(c, split="train", batch_size=8, seed=1)
  _take(it, 9)
  state = json.loads(json.dumps(it.get_state()))
  assert state["fingerprint"]["backend"] == "idx"
  fresh = data.build(c, split="train", batch_size=8, seed=1)
  fresh.set_state(state)
  assert _same(_take(fresh, 5), a[9:])
  shards = [data.build(c, split="train", batch_size=8, seed=1, process_index=p, process_count=2)
            for p in range(2)]
  for full in a[:3]:
    for p, shard in enumerate(shards):
      part = next(shard)
      for k in full:
        np.testing.assert_array_equal(part[k], full[k][p::2])


def test_label_switches(idx):
  def first_epoch(**kw):
    it = data.build(cfg(idx, **kw), split="train", batch_size=N_TRAIN // 2, seed=0)
    b = _take(it, 2)
    return np.concatenate([x["label"] for x in b]), np.concatenate([x["image"] for x in b])

  clean, x = first_epoch()
  noisy, xn = first_epoch(label_noise=0.5)
  assert np.array_equal(x, xn)  # only labels change
  changed = (noisy != clean).mean()
  assert 0.2 < changed < 0.7  # 0.45 expected; 96 draws
  rand, xr = first_epoch(random_inputs=True)
  assert xr.std() > 0.5 and not np.array_equal(xr, x)
  clean_eval = next(data.build(cfg(idx), split="eval", batch_size=8, seed=0))
  noisy_eval = next(data.build(cfg(idx, random_labels=True), split="eval", batch_size=8, seed=0))
  np.testing.assert_array_equal(clean_eval["label"], noisy_eval["label"])  # eval stays clean


def test_missing_data_is_one_line(tmp_path):
  empty_tfds = str(tmp_path / "tfds")
  os.makedirs(empty_tfds)
  c = data.get_data_config("fashion_mnist", idx_dir=str(tmp_path / "none"), data_dir=empty_tfds)
  with pytest.raises(UserError) as e:
    data.info(c)
  msg = str(e.value)
  assert "\n" not in msg and "tfds build fashion_mnist" in msg
  assert "apt-get install dataset-fashion-mnist" in msg
  with pytest.raises(UserError, match="data.source='web' is not valid"):
    data.validate(data.get_data_config("fashion_mnist", source="web"))


def test_tfds_copy_is_read_through_the_tfds_source():
  tfds = pytest.importorskip("tensorflow_datasets")
  with tfds.testing.mock_data(num_examples=24):
    c = data.get_data_config("fashion_mnist", source="tfds", label_noise=0.5, eval_examples=10)
    info = data.info(c)
    assert (info.image_shape, info.num_train_examples, info.num_eval_examples) == ((28, 28, 1), 24, 10)
    it = data.build(c, split="train", batch_size=8, seed=0)
    batch = next(it)
    assert batch["image"].shape == (8, 28, 28, 1) and -1 <= batch["image"].min() <= 1
    assert it.get_state()["fingerprint"]["backend"] == "tfds"  # never resumed from the IDX copy
    (ev,) = list(data.build(c, split="eval", batch_size=16, seed=0))
    assert ev["mask"].sum() == 10
