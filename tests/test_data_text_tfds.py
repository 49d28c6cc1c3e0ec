"""The TFDS text source (C4-style packed span corruption) with a small text builder made in the test,
random inputs, one-pass mode + check_steps, grain worker processes, and the JPEG (draft) decode path."""
from __future__ import annotations

import functools
import io
import json

import numpy as np
import pytest

from lazy_neuron import data
from lazy_neuron.data import span_corruption, text_tfds, tokenizer
from lazy_neuron.data.config import validate as resolved
from lazy_neuron.errors import UserError

tfds = pytest.importorskip("tensorflow_datasets")

WORDS = ("the lazy neuron phenomenon sparse activation maps in trained transformers are common "
         "across layers models and data sets").split()


@functools.lru_cache(maxsize=None)  # TFDS registers builder classes by name: define it once
def _builder_class(file_format_name="tiny_text"):
  class TinyText(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(
          {"text": tfds.features.Text(), "id": tfds.features.Scalar(np.int64)}))

    def _split_generators(self, dl_manager):
      return {"train": self._generate_examples(0, 120), "validation": self._generate_examples(1000, 30)}

    def _generate_examples(self, start, n):
      rng = np.random.default_rng(start)
      for i in range(start, start + n):
        yield i, {"text": " ".join(rng.choice(WORDS, size=int(rng.integers(3, 60)))), "id": i}

  return TinyText


@pytest.fixture(scope="module")
def text_dir(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("tfds_text"))
  tfds.display_progress_bar(False)
  _builder_class()(data_dir=root, file_format="array_record").download_and_prepare()
  return root


@pytest.fixture(scope="module")
def spm_model(tmp_path_factory):
  path = tmp_path_factory.mktemp("spm") / "tiny.model"
  rng = np.random.default_rng(0)
  texts = [" ".join(rng.choice(WORDS, size=40)) for _ in range(200)]
  path.write_bytes(tokenizer.train_sentencepiece(texts, 60))
  return str(path)


def _cfg(text_dir, **kw):
  base = dict(dataset="tiny_text", data_dir=text_dir, tokenizer="bytes", num_sentinels=20,
              inputs_length=32, eval_examples=20)
  return data.get_data_config("tfds_text", **{**base, **kw})


def _equal(a, b):
  return all(np.array_equal(x[k], y[k]) for x, y in zip(a, b) for k in x)


def test_packed_span_corruption_state_and_eval(text_dir, spm_model):
  cfg = _cfg(text_dir, tokenizer=spm_model)
  info = data.info(cfg)
  assert info.task == "span_corruption" and info.num_train_records == 120
  assert info.vocab_size == 60 + 20 and info.model_vocab_size == 128
  it = data.build(cfg, split="train", batch_size=4, seed=0)
  first = next(it)
  assert first["encoder_input_tokens"].shape == (4, 32)
  assert first["decoder_target_tokens"].shape == (4, info.targets_length)
  # packing: windows are consecutive slices of the concatenated documents, nothing padded away
  source = text_tfds.TfdsTextSource(resolved(cfg))
  raw = np.concatenate([source.doc_tokens(source._read("train", r), r, 0)
                        for r in np.asarray(__import__("grain").MapDataset.range(120).shuffle(seed=0))[:12]])
  for row in range(4):
    got = span_corruption.reconstruct(first["encoder_input_tokens"][row], first["decoder_target_tokens"][row],
                                      info.vocab_size, info.num_sentinels)
    np.testing.assert_array_equal(got, raw[row * source.tokens_length:(row + 1) * source.tokens_length])
  state = json.loads(json.dumps(it.get_state()))
  want = [next(it) for _ in range(40)]  # crosses an epoch (120 short documents)
  resumed = data.build(cfg, split="train", batch_size=4, seed=0)
  resumed.set_state(state)
  assert _equal([next(resumed) for _ in range(40)], want)
  synchronous = data.build({**resolved(cfg), "num_threads": 0}, split="train", batch_size=4, seed=0)
  assert _equal([next(synchronous) for _ in range(41)], [first] + want)  # threads do not change order
  evals = list(data.build(cfg, split="eval", batch_size=8, seed=5))
  assert len(evals) == 3 and sum(b["mask"].sum() for b in evals) == info.num_eval_examples == 20
  assert _equal(evals, list(data.build(cfg, split="eval", batch_size=8, seed=6)))


def test_text_process_shards_disjoint(text_dir):
  cfg = _cfg(text_dir)
  windows = []
  for p in range(2):
    it = data.build(cfg, split="train", batch_size=4, seed=1, process_index=p, process_count=2)
    windows.append(np.concatenate([next(it)["encoder_input_tokens"] for _ in range(3)]))
  assert windows[0].shape == (6, 32) and not np.array_equal(windows[0], windows[1])
  # the processes read disjoint documents that together are the split
  order = np.asarray(__import__("grain").MapDataset.range(120).shuffle(seed=1))
  assert set(order[0::2]).isdisjoint(order[1::2]) and set(order) == set(range(120))


def test_random_input_tokens_and_one_pass(text_dir):
  cfg = _cfg(text_dir, random_inputs=True)
  info = data.info(cfg)
  batch = next(data.build(cfg, split="train", batch_size=8, seed=0))
  tokens = batch["encoder_input_tokens"]
  real = next(data.build(_cfg(text_dir), split="train", batch_size=8, seed=0))["encoder_input_tokens"]
  assert not np.array_equal(tokens, real)
  body = tokens[(tokens >= 3) & (tokens < 259)]
  assert len(np.unique(body)) > 150  # uniform over the byte ids, not the few letters of the words
  assert ((tokens < info.vocab_size - info.num_sentinels) | (tokens >= info.vocab_size - 20)).all()
  one = _cfg(text_dir, one_pass=True)
  info = data.info(one)
  source = text_tfds.TfdsTextSource(resolved(one))
  total = sum(len(source.doc_tokens(source._read("train", r), r, 0)) for r in range(120))
  assert info.one_pass and info.num_train_examples_estimated  # all 120 documents sampled: exact here
  assert info.num_train_examples == total // source.tokens_length
  data.check_steps(one, total_steps=1, batch_size=4, info=info)
  with pytest.raises(UserError, match="one_pass"):
    data.check_steps(one, total_steps=1000, batch_size=4)
  it = data.build(one, split="train", batch_size=16, seed=0)
  with pytest.raises(UserError, match="exhausted"):
    for _ in range(1000):
      next(it)


def test_text_bad_input(text_dir, tmp_path):
  with pytest.raises(UserError, match="tokenizer is not set"):
    data.validate(data.get_data_config("c4"))
  with pytest.raises(UserError, match="/no/spiece.model"):
    data.validate(data.get_data_config("c4", tokenizer="/no/spiece.model"))
  with pytest.raises(UserError, match=r"tfds build c4/en --file_format=array_record") as e:
    data.info(data.get_data_config("c4", tokenizer="bytes", data_dir=str(tmp_path)))
  assert "\n" not in str(e.value)
  with pytest.raises(UserError, match="eval_split='nope'"):
    data.info(_cfg(text_dir, eval_split="nope"))
  with pytest.raises(UserError, match="text_key"):
    data.info(_cfg(text_dir, text_key="body"))


@pytest.fixture(scope="module")
def tfrecord_dir(tmp_path_factory):
  pytest.importorskip("tensorflow")
  root = str(tmp_path_factory.mktemp("tfds_text_tfrecord"))
  _builder_class()(data_dir=root, file_format="tfrecord").download_and_prepare()
  return root


def test_tfrecord_path_with_tensorflow(tfrecord_dir):
  cfg = _cfg(tfrecord_dir)
  it = data.build(cfg, split="train", batch_size=4, seed=0)
  next(it)
  state = it.get_state()
  want = [next(it) for _ in range(30)]
  resumed = data.build(cfg, split="train", batch_size=4, seed=0)
  resumed.set_state(state)
  assert _equal([next(resumed) for _ in range(30)], want)
  assert sum(b["mask"].sum() for b in data.build(cfg, split="eval", batch_size=8, seed=0)) == 20


def test_tfrecord_without_tf_says_what_to_do(tmp_path, monkeypatch):
  """Prepared as TFRecord (files faked: preparing TFRecord needs TF) and no TF: a one-line UserError."""
  import builtins

  source = text_tfds.TfdsTextSource(resolved(_cfg(str(tmp_path))))
  monkeypatch.setattr(text_tfds.TfdsTextSource, "file_format", property(lambda self: "tfrecord"))
  monkeypatch.setattr(text_tfds.TfdsTextSource, "builder", lambda self: type("B", (), {"data_dir": "/d"})())
  real_import = builtins.__import__

  def no_tf(name, *a, **k):
    if name.split(".")[0] == "tensorflow":
      raise ImportError("No module named 'tensorflow'")
    return real_import(name, *a, **k)

  monkeypatch.setattr(builtins, "__import__", no_tf)
  with pytest.raises(UserError, match=r"pip install -e '\.\[tf\]'.*lazy-neuron convert --dataset=") as e:
    source.source("train")
  assert "\n" not in str(e.value)


# --- images: random inputs, one pass, workers, JPEG decode --------------------------------------------
@pytest.fixture(scope="module")
def digits_cfg(tmp_path_factory):
  return data.get_data_config("digits", cache_dir=str(tmp_path_factory.mktemp("ln_cache")), image_size=8)


def test_random_inputs_images(digits_cfg):
  cfg = resolved(digits_cfg)
  rand = {**cfg, "random_inputs": True}
  a = next(data.build(rand, split="train", batch_size=256, seed=0))
  b = next(data.build(rand, split="train", batch_size=256, seed=0))
  assert _equal([a], [b]) and a["image"].shape == (256, 8, 8, 1)
  assert abs(a["image"].mean()) < 0.05 and abs(a["image"].std() - 1) < 0.05
  assert len(set(a["label"])) == 10
  # fixed per record: epoch 2 shows the same (image, label) pairs
  it = data.build(rand, split="train", batch_size=500, seed=0)
  epoch1 = [next(it) for _ in range(3)]
  epoch2 = [next(it) for _ in range(3)]
  key = lambda bs: sorted((tuple(np.round(x.ravel()[:4], 5)), int(y)) for b in bs for x, y in zip(b["image"], b["label"]))
  assert key(epoch1) == key(epoch2)
  ev = next(data.build(rand, split="eval", batch_size=16, seed=0))  # eval stays real
  assert ev["image"].min() >= -1 and ev["image"].max() <= 1


def test_one_pass_images(digits_cfg):
  cfg = {**resolved(digits_cfg), "one_pass": True}
  info = data.info(cfg)
  assert info.one_pass and info.num_train_examples == info.num_train_records == 1500
  data.check_steps(cfg, total_steps=1500 // 64, batch_size=64)
  with pytest.raises(UserError, match=r"total_steps=24 x batch_size=64 = 1536 .* 1500 .* total_steps <= 23"):
    data.check_steps(cfg, total_steps=24, batch_size=64)
  data.check_steps(resolved(digits_cfg), total_steps=10**6, batch_size=64)  # repeats allowed
  batches = []
  it = data.build(cfg, split="train", batch_size=100, seed=0, process_index=1, process_count=2)
  with pytest.raises(UserError, match="exhausted"):
    while True:
      batches.append(next(it))
  assert len(batches) == 15


def test_workers_do_not_change_the_stream(digits_cfg):
  cfg = resolved(digits_cfg)
  want = [next(it) for it in [data.build({**cfg, "num_threads": 0}, split="train", batch_size=32, seed=2)]
          for _ in range(5)]
  threads = data.build({**cfg, "num_threads": 8, "prefetch": 2}, split="train", batch_size=32, seed=2)
  assert _equal([next(threads) for _ in range(5)], want)
  it = data.build({**cfg, "num_workers": 2}, split="train", batch_size=32, seed=2)
  got = [next(it) for _ in range(3)]
  state = it.get_state()
  got += [next(it) for _ in range(2)]
  assert _equal(got, want)
  # A state saved with 2 workers resumes with one worker per usable core (-1).
  resumed = data.build({**cfg, "num_workers": -1}, split="train", batch_size=32, seed=2)
  resumed.set_state(state)
  assert _equal([next(resumed) for _ in range(2)], want[3:])


def test_thread_buffer_and_worker_count_options(digits_cfg, monkeypatch):
  """Threads get a buffer of at least one batch each (a smaller one idles them); num_workers=-1 is
  one worker per usable core; each worker keeps at least 2 batches ready."""
  import grain

  from lazy_neuron.data import pipeline

  seen = {}
  real_read, real_mp = grain.ReadOptions, grain.MultiprocessingOptions
  monkeypatch.setattr(grain, "ReadOptions", lambda **kw: seen.setdefault("read", kw) and real_read(**kw))
  monkeypatch.setattr(grain, "MultiprocessingOptions",
                      lambda **kw: seen.setdefault("mp", kw) and real_mp(**kw))
  cfg = resolved(digits_cfg)
  it = data.build({**cfg, "num_threads": 8, "prefetch": 2}, split="train", batch_size=32, seed=2)
  it.close()
  assert seen["read"] == {"num_threads": 8, "prefetch_buffer_size": 8}
  it = data.build({**cfg, "num_workers": -1, "prefetch": 4}, split="train", batch_size=32, seed=2)
  it.close()
  assert seen["mp"] == {"num_workers": pipeline.usable_cores(), "per_worker_buffer_size": 2}


def test_jpeg_bytes_decode_with_draft():
  from PIL import Image

  from lazy_neuron.bench.input import synthetic_jpeg
  from lazy_neuron.data import images

  rng = np.random.default_rng(0)
  jpegs = [synthetic_jpeg(rng, 256, 500, 90) for _ in range(4)] + [synthetic_jpeg(rng, 900, 1000, 90)]
  arrays = [np.asarray(Image.open(io.BytesIO(j)).convert("RGB")) for j in jpegs]
  for train in (True, False):
    a = images.preprocess(jpegs, 64, train=train, augment="inception_crop", channels=3, index=np.arange(5))
    b = images.preprocess(arrays, 64, train=train, augment="inception_crop", channels=3, index=np.arange(5))
    assert a.shape == b.shape == (5, 64, 64, 3) and a.dtype == np.float32
    assert np.abs(a - b).mean() < 0.06  # draft (DCT downscaling) vs full decode: the same crop
