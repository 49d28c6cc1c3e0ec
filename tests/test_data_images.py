"""Image classification data: the generic TFDS source (with tfds.testing.mock_data), ViT preprocessing,
and the label-noise / random-label switches."""
from __future__ import annotations

import json

import numpy as np
import pytest

from lazy_neuron import data
from lazy_neuron.data import images
from lazy_neuron.errors import UserError

tfds = pytest.importorskip("tensorflow_datasets")


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("lazy_neuron_cache_images"))


@pytest.fixture
def mock_tfds():
  with tfds.testing.mock_data(num_examples=40):
    yield


@pytest.mark.parametrize("dataset, size, channels", [("cifar10", 32, 3), ("mnist", 16, 1), ("cifar10", 48, 3)])
def test_tfds_source_shapes_state_and_eval(mock_tfds, dataset, size, channels):
  cfg = data.get_data_config("tfds", dataset=dataset, image_size=size)
  info = data.info(cfg)
  assert info.task == "classification" and info.num_classes == 10
  assert info.image_shape == (size, size, channels) and info.num_train_examples == 40
  it = data.build(cfg, split="train", batch_size=8, seed=0)
  first = next(it)
  assert first["image"].shape == (8, size, size, channels) and first["image"].dtype == np.float32
  assert -1.0 <= first["image"].min() and first["image"].max() <= 1.0
  assert first["label"].dtype == np.int32
  state = json.loads(json.dumps(it.get_state()))
  expected = [next(it) for _ in range(3)]
  fresh = data.build(cfg, split="train", batch_size=8, seed=0)
  fresh.set_state(state)
  for want in expected:
    got = next(fresh)
    assert all(np.array_equal(got[k], want[k]) for k in want)
  evals = list(data.build(cfg, split="eval", batch_size=16, seed=0))
  assert len(evals) == 3 and sum(b["mask"].sum() for b in evals) == 40
  shards = [list(data.build(cfg, split="eval", batch_size=16, seed=0, process_index=p, process_count=2))
            for p in range(2)]
  for k, whole in enumerate(evals):
    for p in range(2):
      # Exact: each image is resized alone (PIL) and normalised elementwise, whatever its batch.
      np.testing.assert_array_equal(shards[p][k]["image"], whole["image"][p::2])
      np.testing.assert_array_equal(shards[p][k]["mask"], whole["mask"][p::2])


def test_uint8_batches_are_the_float_batches_before_normalisation(mock_tfds):
  floats = data.get_data_config("tfds", dataset="cifar10", image_size=24)
  raw = data.get_data_config("tfds", dataset="cifar10", image_size=24, image_dtype="uint8")
  assert data.info(raw).image_dtype == "uint8" and data.info(floats).image_dtype == "float32"
  for split in ("train", "eval"):
    f = next(iter(data.build(floats, split=split, batch_size=8, seed=3)))
    u = next(iter(data.build(raw, split=split, batch_size=8, seed=3)))
    assert u["image"].dtype == np.uint8 and f["image"].dtype == np.float32
    # Exact: the float32 batches are `normalize` of the same uint8 pixels (elementwise IEEE ops).
    np.testing.assert_array_equal(images.normalize(u["image"]), f["image"])
    np.testing.assert_array_equal(u["label"], f["label"])
  with pytest.raises(UserError, match=r"data.image_dtype='int8' is not valid"):
    data.info(data.get_data_config("tfds", dataset="cifar10", image_dtype="int8"))


def test_tfds_eval_examples_and_errors(mock_tfds):
  cfg = data.get_data_config("tfds", dataset="mnist", image_size=8, eval_examples=10)
  assert data.info(cfg).num_eval_examples == 10
  with pytest.raises(UserError, match="image_key"):
    data.info(data.get_data_config("tfds", dataset="mnist", image_key="img"))


def test_tfds_missing_dataset_is_user_error(tmp_path):
  with pytest.raises(UserError, match="not_a_dataset_xyz"):
    data.info(data.get_data_config("tfds", dataset="not_a_dataset_xyz", data_dir=str(tmp_path)))
  with pytest.raises(UserError, match="tfds build mnist"):  # not prepared here: never downloads
    data.info(data.get_data_config("tfds", dataset="mnist", data_dir=str(tmp_path)))


@pytest.mark.parametrize("bad, match", [
    (dict(augment="mixup"), "augment"), (dict(label_noise=1.5), "label_noise"),
    (dict(random_labels="yes"), "random_labels"), (dict(channels=2), "channels"),
    (dict(eval_crop_fraction=0.0), "eval_crop_fraction"),
])
def test_tfds_config_errors(bad, match):
  with pytest.raises(UserError, match=match):
    data.validate(data.get_data_config("tfds", **bad))


def test_preprocess_train_and_eval():
  rng = np.random.default_rng(0)
  imgs = [rng.integers(0, 256, (40, 60, 3), dtype=np.uint8) for _ in range(4)]
  a = images.preprocess(imgs, 24, train=True, augment="inception_crop", channels=3, seed=1, index=np.arange(4))
  b = images.preprocess(imgs, 24, train=True, augment="inception_crop", channels=3, seed=1, index=np.arange(4))
  c = images.preprocess(imgs, 24, train=True, augment="inception_crop", channels=3, seed=2, index=np.arange(4))
  assert a.shape == (4, 24, 24, 3) and np.array_equal(a, b) and not np.array_equal(a, c)
  e = images.preprocess(imgs, 24, train=False, augment="inception_crop", channels=1)
  assert e.shape == (4, 24, 24, 1) and -1 <= e.min() and e.max() <= 1
  # an image already at the target size passes through eval unchanged (scaled to [-1, 1])
  same = images.preprocess([imgs[0][:24, :24]], 24, train=False, augment="none", channels=3)
  # float32 x * (2/255) - 1 against the float64 reference: the rounded constant (relative 6e-8,
  # times x <= 255 -> <= 1.2e-7), the product and the difference (half an ulp of 2 each, 1.2e-7)
  # stay under 4e-7, so atol=1e-6 holds on any CPU without hiding a wrong scale (steps of 7.8e-3).
  np.testing.assert_allclose(same[0], imgs[0][:24, :24] / 127.5 - 1, rtol=0, atol=1e-6)


def test_label_noise_switches_on_digits(cache_dir):
  def labels_and_images(**kw):
    cfg = data.get_data_config("digits", cache_dir=cache_dir, **kw)
    it = data.build(cfg, split="train", batch_size=500, seed=0)
    batches = [next(it) for _ in range(6)]  # two epochs of 1500
    return (np.concatenate([b["label"] for b in batches]), np.concatenate([b["image"] for b in batches]))

  clean, x = labels_and_images()
  noisy, xn = labels_and_images(label_noise=0.4)
  rand, xr = labels_and_images(random_labels=True)
  assert np.array_equal(x, xn) and np.array_equal(x, xr)  # only labels change
  changed = (noisy != clean)[:1500].mean()
  assert 0.30 < changed < 0.42  # 0.4 * 9/10 expected
  assert 0.8 < (rand != clean)[:1500].mean() < 0.95
  # fixed per image across epochs: the same image always has the same (noisy) label
  order = {x[i].tobytes(): noisy[i] for i in range(1500)}
  assert all(order[x[i].tobytes()] == noisy[i] for i in range(1500, 3000))
  # eval labels stay clean
  cfg = data.get_data_config("digits", cache_dir=cache_dir, random_labels=True)
  clean_eval = next(data.build(data.get_data_config("digits", cache_dir=cache_dir), split="eval", batch_size=64, seed=0))
  noisy_eval = next(data.build(cfg, split="eval", batch_size=64, seed=0))
  np.testing.assert_array_equal(clean_eval["label"], noisy_eval["label"])
