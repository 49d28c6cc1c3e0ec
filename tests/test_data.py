"""Tests of lazy_neuron.data: determinism, resumable state, sharding, span corruption, eval masks,
the digits TFDS builder without TensorFlow, and one-line UserErrors."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from lazy_neuron import data
from lazy_neuron.data import span_corruption, tokenizer
from lazy_neuron.errors import UserError

SMALL_TEXT = dict(tokenizer="bytes", num_sentinels=32, inputs_length=64, max_corpus_bytes=300_000,
                  eval_fraction=0.1, eval_examples=50)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("lazy_neuron_cache"))


@pytest.fixture(scope="module")
def text_cfg(cache_dir):
  return data.get_data_config("docstrings", cache_dir=cache_dir, **SMALL_TEXT)


@pytest.fixture(scope="module")
def digits_cfg(cache_dir):
  return data.get_data_config("digits", cache_dir=cache_dir, image_size=16)


@pytest.fixture(scope="module")
def gauss_cfg(cache_dir):
  return data.get_data_config("gaussian", cache_dir=cache_dir, dim=16, num_classes=5, eval_examples=70)


def _take(it, n):
  return [next(it) for _ in range(n)]


def _equal(a, b):
  return len(a) == len(b) and all(
      x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x) for x, y in zip(a, b))


ALL = ["text_cfg", "digits_cfg", "gauss_cfg"]


# --- determinism and state ----------------------------------------------------------------------------
@pytest.mark.parametrize("cfg_name", ALL)
def test_same_seed_same_batches(cfg_name, request):
  cfg = request.getfixturevalue(cfg_name)
  a = _take(data.build(cfg, split="train", batch_size=8, seed=3), 4)
  b = _take(data.build(cfg, split="train", batch_size=8, seed=3), 4)
  c = _take(data.build(cfg, split="train", batch_size=8, seed=4), 4)
  assert _equal(a, b)
  assert not _equal(a, c)


@pytest.mark.parametrize("cfg_name", ALL)
def test_state_round_trip(cfg_name, request):
  cfg = request.getfixturevalue(cfg_name)
  it = data.build(cfg, split="train", batch_size=8, seed=1)
  _take(it, 3)
  state = json.loads(json.dumps(it.get_state()))  # must be JSON-serialisable
  expected = _take(it, 5)
  fresh = data.build(cfg, split="train", batch_size=8, seed=1)
  fresh.set_state(state)
  assert _equal(_take(fresh, 5), expected)


def test_state_survives_epochs(digits_cfg):
  # 1500 train digits / 64 per batch: the 30 batches below cross an epoch boundary (reshuffled).
  it = data.build(digits_cfg, split="train", batch_size=64, seed=0)
  _take(it, 22)
  state = it.get_state()
  expected = _take(it, 8)
  fresh = data.build(digits_cfg, split="train", batch_size=64, seed=0)
  fresh.set_state(state)
  assert _equal(_take(fresh, 8), expected)


def test_state_mismatch_is_user_error(gauss_cfg):
  state = data.build(gauss_cfg, split="train", batch_size=8, seed=1).get_state()
  other = data.build(gauss_cfg, split="train", batch_size=8, seed=2)
  with pytest.raises(UserError, match="seed"):
    other.set_state(state)
  with pytest.raises(UserError):
    other.set_state({"next_index": 3})


# --- sharding -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("cfg_name", ALL)
@pytest.mark.parametrize("split", ["train", "eval"])
def test_process_shards_are_disjoint_and_cover(cfg_name, split, request):
  cfg = request.getfixturevalue(cfg_name)
  whole = data.build(cfg, split=split, batch_size=8, seed=5)
  shards = [data.build(cfg, split=split, batch_size=8, seed=5, process_index=p, process_count=2)
            for p in range(2)]
  n = 3 if split == "train" else len(whole)
  if split == "eval":
    assert all(len(s) == len(whole) for s in shards)
  for _ in range(n):
    full = next(whole)
    parts = [next(s) for s in shards]
    for p, part in enumerate(parts):
      assert all(v.shape[0] == 4 for v in part.values())
      # Process p holds rows p, p+2, ... of the global batch. Exact, also for float features: each
      # example comes from (seed, index) alone through elementwise numpy ops (no reduction across
      # the batch), so its bits do not depend on which batch it is computed in.
      for k in full:
        np.testing.assert_array_equal(part[k], full[k][p::2])


def test_batch_not_divisible(gauss_cfg):
  with pytest.raises(UserError, match="divisible"):
    data.build(gauss_cfg, split="train", batch_size=9, seed=0, process_count=2)
  with pytest.raises(UserError, match="process_index"):
    data.build(gauss_cfg, split="train", batch_size=8, seed=0, process_index=2, process_count=2)


# --- eval ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cfg_name", ALL)
def test_eval_masks_every_example_once(cfg_name, request):
  cfg = request.getfixturevalue(cfg_name)
  num = data.info(cfg).num_eval_examples
  batches = list(data.build(cfg, split="eval", batch_size=16, seed=0))
  again = list(data.build(cfg, split="eval", batch_size=16, seed=0))
  assert _equal(batches, again)
  assert len(batches) == -(-num // 16)
  masks = np.concatenate([b["mask"] for b in batches])
  assert masks.dtype == np.float32 and masks.sum() == num
  np.testing.assert_array_equal(masks, (np.arange(len(masks)) < num).astype(np.float32))
  shapes = {k: v.shape for k, v in batches[0].items()}
  assert all({k: v.shape for k, v in b.items()} == shapes for b in batches)
  key = "encoder_input_tokens" if "encoder_input_tokens" in shapes else "image"
  rows = np.concatenate([b[key] for b in batches])[:num].reshape(num, -1)
  assert len(np.unique(rows, axis=0)) == num  # no example counted twice
  assert not np.any(np.concatenate([b[key] for b in batches])[num:])  # padding is zeros


# --- span corruption ----------------------------------------------------------------------------------
def test_span_corruption_invariants(text_cfg):
  info = data.info(text_cfg)
  assert info.task == "span_corruption" and info.vocab_size == 259 + 32
  assert (info.inputs_length, info.targets_length) == (64, span_corruption.random_spans_helper(64, 0.15, 3.0)[1])
  from lazy_neuron.data.text import TextSource

  source = TextSource(data.config.validate(text_cfg))
  it = data.build(text_cfg, split="train", batch_size=8, seed=0)
  batch = next(it)
  # Reconstruct the raw windows: the first batch holds global examples 0..7, records = the shuffle.
  raw = {tuple(source.windows("train", [r])[0]) for r in range(source.num_train)}
  enc, dec = batch["encoder_input_tokens"], batch["decoder_target_tokens"]
  for i in range(8):
    tokens = span_corruption.reconstruct(enc[i], dec[i], info.vocab_size, info.num_sentinels)
    assert len(tokens) == source.tokens_length  # nothing truncated
    assert tuple(tokens) in raw
    n_in = int((enc[i] != 0).sum())
    assert info.inputs_length - 1 <= n_in <= info.inputs_length and enc[i][n_in - 1] == 1
    assert dec[i][-1] == 1 and (dec[i] != 0).all()
  np.testing.assert_array_equal(batch["decoder_input_tokens"][:, 1:], dec[:, :-1])
  assert (batch["decoder_input_tokens"][:, 0] == 0).all()
  np.testing.assert_array_equal(batch["decoder_loss_weights"], (dec != 0).astype(np.float32))
  sentinels = enc >= info.vocab_size - info.num_sentinels
  assert sentinels.any() and (enc[sentinels] <= info.vocab_size - 1).all()


def test_noise_mask_statistics():
  tokens_length, _ = span_corruption.random_spans_helper(512, 0.15, 3.0)
  assert tokens_length == 568  # T5's number for 512 inputs
  mask = span_corruption.random_spans_noise_mask(tokens_length, 0.15, 3.0, seed=0, index=np.arange(200))
  assert abs(mask.mean() - 0.15) < 0.005
  starts = mask & ~np.concatenate([np.zeros((200, 1), bool), mask[:, :-1]], axis=1)
  assert abs(mask.sum() / starts.sum() - 3.0) < 0.1
  assert not mask[:, 0].any()  # T5: the first span is never noise
  again = span_corruption.random_spans_noise_mask(tokens_length, 0.15, 3.0, seed=0, index=np.arange(100, 200))
  np.testing.assert_array_equal(mask[100:], again)  # depends on (seed, index), not on the batch


def test_byte_tokenizer_round_trip():
  tok = tokenizer.ByteTokenizer()
  text = "Return the sum — of x and y."
  ids = tok.encode_many([text])[0]
  assert ids.min() >= 3 and ids.max() < 259 and tok.decode(ids) == text


def test_spm_tokenizer_trains_once_and_caches(cache_dir):
  cfg = data.get_data_config("docstrings", cache_dir=cache_dir, tokenizer="spm", vocab_size=400,
                             num_sentinels=20, max_corpus_bytes=300_000, eval_fraction=0.1,
                             inputs_length=32, eval_examples=20)
  info = data.info(cfg)
  assert info.vocab_size == 400 and info.num_sentinels == 20
  start = time.perf_counter()
  assert data.info(cfg) == info
  assert time.perf_counter() - start < 1.0  # cached
  batch = next(data.build(cfg, split="train", batch_size=4, seed=0))
  assert batch["encoder_input_tokens"].max() < 400 and batch["encoder_input_tokens"].shape == (4, 32)
  model = tokenizer.spm_cache_path(data.config.validate(cfg))
  path_cfg = data.get_data_config("docstrings", cache_dir=cache_dir, tokenizer=model, num_sentinels=20,
                                  max_corpus_bytes=300_000, eval_fraction=0.1)
  assert data.info(path_cfg).vocab_size == 400


def test_tokenizer_cli(tmp_path):
  corpus = tmp_path / "a.txt"
  corpus.write_text("\n".join(f"line {i} of some text about functions and classes" for i in range(300)))
  out = tmp_path / "t.model"
  assert tokenizer.main(["lazy-neuron tokenizer", "--corpus", str(corpus), "--vocab-size", "64",
                         "--out", str(out)]) == 0
  assert out.exists()
  assert tokenizer.main(["lazy-neuron tokenizer", "--corpus", str(tmp_path / "none*.txt"),
                         "--vocab-size", "64", "--out", str(out)]) == 2


# --- digits and gaussian ------------------------------------------------------------------------------
def test_digits_builder_without_tensorflow(tmp_path):
  cache_dir = str(tmp_path)  # a fresh cache: the subprocess prepares the builder, then reads it
  code = f"""
import sys
from lazy_neuron import data
cfg = data.get_data_config("digits", cache_dir={cache_dir!r})
info = data.info(cfg)
assert info.num_train_examples == 1500 and info.num_eval_examples == 297, info
b = next(data.build(cfg, split="train", batch_size=32, seed=0))
assert b["image"].shape == (32, 8, 8, 1) and b["label"].shape == (32,)
assert "tensorflow" not in sys.modules, "TensorFlow was imported"
"""
  env = dict(os.environ, PYTHONWARNINGS="ignore")
  subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=120)
  assert os.path.exists(os.path.join(cache_dir, "tfds", "sklearn_digits", "1.0.0", "dataset_info.json"))


def test_digits_values(digits_cfg):
  info = data.info(digits_cfg)
  assert info.image_shape == (16, 16, 1) and info.num_classes == 10
  b = next(data.build(digits_cfg, split="train", batch_size=64, seed=0))
  assert b["image"].dtype == np.float32 and b["image"].shape == (64, 16, 16, 1)
  assert -1.0 <= b["image"].min() < -0.9 and 0.9 < b["image"].max() <= 1.0
  assert b["label"].dtype == np.int32 and set(b["label"]) <= set(range(10)) and len(set(b["label"])) > 5


def test_gaussian_infinite_data(gauss_cfg):
  info = data.info(gauss_cfg)
  assert info.image_shape == (16,) and info.num_train_examples is None
  batches = _take(data.build(gauss_cfg, split="train", batch_size=256, seed=0), 4)
  x = np.concatenate([b["image"] for b in batches])
  assert abs(x.mean()) < 0.03 and abs(x.std() - 1) < 0.03
  assert len(np.unique(x, axis=0)) == len(x)
  labels = np.concatenate([b["label"] for b in batches])
  assert set(labels) == set(range(5))


# --- errors -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("make, match", [
    (lambda: data.get_data_config("imagenet"), "data.name='imagenet' is not valid; choose one of docstrings, "),
    (lambda: data.get_data_config("gaussian", dims=3), "data.dims"),
    (lambda: data.validate({"name": "gaussian", "dim": 0}), "data.dim=0"),
    (lambda: data.validate({"name": "nope"}), "nope"),
    (lambda: data.validate({"name": "docstrings", "tokenizer": "/no/such.model"}), "/no/such.model"),
    (lambda: data.validate({"name": "docstrings", "corpus_files": "/no/such*.txt"}), "/no/such"),
    (lambda: data.validate({"name": "docstrings", "noise_density": 1.5}), "noise_density"),
    (lambda: data.validate({"name": "docstrings", "targets_length": 3}), "targets_length"),
    (lambda: data.validate({"name": "docstrings", "tokenizer": "bytes", "vocab_size": 100}), "vocab_size"),
    (lambda: data.validate({"name": "digits", "channels": 2}), "channels"),
    (lambda: data.validate({"name": "digits", "num_workers": -2}), r"data.num_workers=-2 is not valid; use an integer >= -1 and <= 1024"),
    (lambda: data.build({"name": "gaussian"}, split="test", batch_size=8, seed=0), "split"),
])
def test_user_errors(make, match):
  with pytest.raises(UserError, match=match) as e:
    make()
  assert "\n" not in str(e.value)


@pytest.mark.parametrize("config, message", [
    ({"name": "docstrings", "noise_density": 1.0},
     "data.noise_density=1.0 is not valid; use a finite number > 0 and < 1"),
    ({"name": "docstrings", "eval_fraction": 0}, "data.eval_fraction=0 is not valid; use a finite number > 0 and < 1"),
    ({"name": "docstrings", "mean_noise_span_length": 0.5},
     "data.mean_noise_span_length=0.5 is not valid; use a finite number >= 1.0"),
    ({"name": "docstrings", "spm_model_type": "word"},
     "data.spm_model_type='word' is not valid; choose one of bpe, unigram"),
    ({"name": "docstrings", "random_inputs": 1}, "data.random_inputs=1 is not valid; use true or false"),
    ({"name": "docstrings", "stdlib_path": "\t"}, "data.stdlib_path='\\t' is not valid; use a non-empty string or None"),
    ({"name": "tfds", "label_noise": -0.5}, "data.label_noise=-0.5 is not valid; use a finite number >= 0.0 and <= 1.0"),
    ({"name": "tfds", "crop_min_area": 0.0}, "data.crop_min_area=0.0 is not valid; use a finite number > 0.0 and <= 1.0"),
    ({"name": "tfds", "num_classes": 1}, "data.num_classes=1 is not valid; use an integer >= 2 and <= 16777216 or None"),
    ({"name": "gaussian", "prefetch": True}, "data.prefetch=True is not valid; use an integer >= 0"),
    ({"name": "gaussian", "dims": 3}, "data.dims=3 is not valid; it is not a key of data source 'gaussian'; use one of "),
])
def test_config_messages(config, message):
  with pytest.raises(UserError) as e:
    data.validate(config)
  assert str(e.value).startswith(message)


@pytest.mark.parametrize("kwargs, message", [
    (dict(batch_size=True), "batch_size=True is not valid; use an integer >= 1"),
    (dict(batch_size=6, process_count=4, process_index=0),
     "batch_size=6 is not valid; it is not divisible by the process count 4; use a multiple of 4"),
    (dict(batch_size=8, process_count=4, process_index=4),
     "process_index=4 is not valid; use an integer >= 0 and <= 3"),
    (dict(batch_size=8, seed=1.0), "seed=1.0 is not valid; use an integer"),
])
def test_build_argument_messages(kwargs, message):
  kwargs = {"split": "train", "seed": 0, **kwargs}
  with pytest.raises(UserError) as e:
    data.build({"name": "gaussian"}, **kwargs)
  assert str(e.value) == message


def test_config_overrides_and_keys():
  cfg = data.get_data_config("docstrings", tokenizer="spm", vocab_size=2048, inputs_length=128)
  assert cfg.vocab_size == 2048 and cfg.name == "docstrings"
  cfg.corpus_files = "a.txt"  # placeholders accept command-line style overrides
  cfg.targets_length = 40
  for name in data.SOURCES:
    text_tfds = name in ("tfds_text", "c4")  # no default tokenizer: T5's model is the user's file
    data.validate(data.get_data_config(name, **({"tokenizer": "bytes"} if text_tfds else {})))
