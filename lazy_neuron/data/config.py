"""Data configs: defaults per source, overrides, validation (cheap, before any work)."""
from __future__ import annotations

import copy
import numbers
import os
from typing import Any

from lazy_neuron.errors import UserError


class _Placeholder:
  """A None default of a given type; `get_data_config` turns it into an ml_collections placeholder.

  (ml_collections is imported only by `get_data_config`, so that `validate`/`info`/`build` on a plain
  dict need only numpy, grain and tensorflow_datasets: `lazy-neuron bench input` runs on such hosts.)
  """

  def __init__(self, field_type):
    self.field_type = field_type

  def __deepcopy__(self, memo):
    return self


class config_dict:  # noqa: N801  (the one name used from ml_collections.config_dict)
  placeholder = _Placeholder

_COMMON = {
    "cache_dir": config_dict.placeholder(str),  # None: $LAZY_NEURON_CACHE or ~/.cache/lazy_neuron
    "num_threads": 1,  # grain threads computing batches ahead (0: synchronous)
    "prefetch": 4,  # batches computed ahead (0: none)
    "num_workers": 0,  # grain worker processes computing whole batches (0: threads in this process;
                       # -1: one per usable core of the host)
}

_LABELS = {  # classification sources: label switches (train only, fixed per record)
    "label_noise": 0.0,  # symmetric: replace a label by a uniform random class with this probability
    "random_labels": False,  # replace every label by a uniform random class
    "label_noise_seed": 0,  # also seeds random_inputs
    "random_inputs": False,  # i.i.d. N(0, 1) images of the output shape, fixed per record, random labels
    "one_pass": False,  # never repeat a training example: an error before the run if it would
}

_TEXT_TFDS = {  # T5 span corruption on a TFDS text dataset (C4), packed to fixed lengths
    "dataset": "c4/en:3.1.0",  # TFDS name[:version]
    "data_dir": config_dict.placeholder(str),  # None: TFDS's default (~/tensorflow_datasets)
    "train_split": "train",
    "eval_split": "validation",
    "text_key": "text",
    "tokenizer": config_dict.placeholder(str),  # path (local or gs://) of a sentencepiece .model, or "bytes"
    "vocab_size": config_dict.placeholder(int),  # total incl. sentinels; None: pieces + num_sentinels
    "num_sentinels": 100,
    "inputs_length": 512,
    "targets_length": config_dict.placeholder(int),  # None: T5's random_spans_helper (114 for 512)
    "noise_density": 0.15,
    "mean_noise_span_length": 3.0,
    "max_document_tokens": 65536,  # a longer document contributes a random chunk of this many tokens (T5)
    "eval_examples": 512,  # packed windows of the eval split, in file order
    "eval_seed": 0,
    "random_inputs": False,  # every document's tokens replaced by uniform random tokens (same length)
    "random_seed": 0,  # seeds random_inputs
    "one_pass": False,  # never repeat a document: an error before the run if it would
    "estimate_documents": 2000,  # one_pass: documents tokenised to estimate the number of windows
}

DEFAULTS: dict[str, dict[str, Any]] = {
    "docstrings": {
        # corpus
        "corpus_files": config_dict.placeholder(str),  # comma-separated text files/globs instead of the stdlib
        "stdlib_path": config_dict.placeholder(str),  # None: sysconfig.get_paths()["stdlib"]
        "max_corpus_bytes": config_dict.placeholder(int),  # cap on the extracted text (tests)
        "eval_fraction": 0.05,  # modules held out for eval, by hash of their path
        # tokenizer
        "tokenizer": "spm",  # "spm" | "bytes" | path to a .model file
        "vocab_size": config_dict.placeholder(int),  # total incl. sentinels; None: 2048 for spm, 259+sentinels for bytes
        "num_sentinels": 100,
        "spm_model_type": "bpe",  # "bpe" | "unigram"
        "spm_train_bytes": 4_000_000,  # train the sentencepiece model on at most this much text
        # span corruption (T5)
        "inputs_length": 128,
        "targets_length": config_dict.placeholder(int),  # None: T5's random_spans_helper
        "noise_density": 0.15,
        "mean_noise_span_length": 3.0,
        # eval
        "eval_examples": 512,  # windows of the held-out modules (fewer if the eval split is smaller)
        "eval_seed": 0,  # seeds the eval noise masks (eval data never depends on the run's seed)
        "random_inputs": False,  # every window's tokens replaced by uniform random tokens (per window)
        "random_seed": 0,  # seeds random_inputs
        "one_pass": False,  # never repeat a window: an error before the run if it would
    },
    "digits": {
        "data_dir": config_dict.placeholder(str),  # TFDS data dir; None: <cache>/tfds
        "image_size": 8,  # resize (bilinear) to image_size x image_size
        "channels": 1,  # 1 (grayscale) or 3 (replicated)
        **_LABELS,
    },
    "tfds": {
        "dataset": "cifar10",  # any TFDS name[:version] prepared as ArrayRecord
        "data_dir": config_dict.placeholder(str),  # None: TFDS's default (~/tensorflow_datasets)
        "train_split": "train",
        "eval_split": "test",  # e.g. "validation" for imagenet2012, or "train[98%:]"
        "image_key": "image",
        "label_key": "label",
        "num_classes": config_dict.placeholder(int),  # None: from the ClassLabel feature
        "image_size": 224,
        "channels": config_dict.placeholder(int),  # None: the dataset's
        "augment": "inception_crop",  # "inception_crop" | "flip" | "none" (train only)
        "crop_min_area": 0.05,
        "eval_crop_fraction": 0.875,  # eval: resize shorter side to image_size / this, central crop
        "eval_examples": config_dict.placeholder(int),  # None: the whole eval split
        # "uint8": batches hold the resized pixels and the model normalises to [-1, 1] on the device
        # (4x fewer bytes through shared memory and host-to-device); "float32": normalised on the host.
        "image_dtype": "float32",
        **_LABELS,
    },
    "tfds_text": dict(_TEXT_TFDS),
    "c4": dict(_TEXT_TFDS),
    "gaussian": {
        "dim": 64,
        "num_classes": 10,
        "eval_examples": 1024,
    },
}
SOURCES = tuple(DEFAULTS)


def _names() -> str:
  return ", ".join(SOURCES)


def get_data_config(name: str, **overrides):
  """The default data config of source `name`, with `overrides` applied (unknown keys: UserError)."""
  if name not in DEFAULTS:
    raise UserError(f"data.name={name!r} is not a known dataset; choose one of {_names()}")
  import ml_collections
  from ml_collections import config_dict as mlc_config_dict

  values = {"name": name, **copy.deepcopy(_COMMON), **copy.deepcopy(DEFAULTS[name])}
  values = {k: mlc_config_dict.placeholder(v.field_type) if isinstance(v, _Placeholder) else v
            for k, v in values.items()}
  cfg = ml_collections.ConfigDict(values)
  for key, value in overrides.items():
    if key not in values:
      raise UserError(f"data.{key} is not a key of data source {name!r}; valid: {', '.join(sorted(values))}")
    try:
      cfg[key] = value
    except (TypeError, ValueError) as e:
      raise UserError(f"data.{key}={value!r} has the wrong type ({e})") from e
  return cfg


def resolve(data_config) -> dict[str, Any]:
  """A plain dict with every key of the source (defaults filled in); checks name and keys."""
  if data_config is None:
    raise UserError(f"the data config is missing; set config.data = data.get_data_config(name), name one of {_names()}")
  if hasattr(data_config, "to_dict"):
    given = data_config.to_dict()
  else:
    given = dict(data_config)
  name = given.get("name")
  if name not in DEFAULTS:
    raise UserError(f"data.name={name!r} is not a known dataset; choose one of {_names()}")
  defaults = {"name": name, **_COMMON, **DEFAULTS[name]}
  unknown = sorted(set(given) - set(defaults))
  if unknown:
    raise UserError(f"data.{unknown[0]} is not a key of data source {name!r}; valid: {', '.join(sorted(defaults))}")
  out = {}
  for key, default in defaults.items():
    value = given.get(key, default)
    if isinstance(value, _Placeholder):
      value = None
    elif type(value).__name__ == "FieldReference":  # an ml_collections placeholder
      value = value.get()
    out[key] = value
  return out


def _int(cfg, key, lo=None, hi=None, none_ok=False):
  v = cfg[key]
  if v is None and none_ok:
    return
  if isinstance(v, bool) or not isinstance(v, numbers.Integral) or (lo is not None and v < lo) or (hi is not None and v > hi):
    rng = f"an integer >= {lo}" if hi is None else f"an integer in [{lo}, {hi}]"
    raise UserError(f"data.{key}={v!r} is not valid; use {rng}" + (" or None" if none_ok else ""))


def _float(cfg, key, lo, hi, lo_open=True, hi_open=True):
  v = cfg[key]
  ok = isinstance(v, numbers.Real) and not isinstance(v, bool)
  if ok:
    ok = (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)
  if not ok:
    lb, rb = "(" if lo_open else "[", ")" if hi_open else "]"
    raise UserError(f"data.{key}={v!r} is not valid; use a number in {lb}{lo}, {hi}{rb}")


def _choice(cfg, key, choices):
  if cfg[key] not in choices:
    raise UserError(f"data.{key}={cfg[key]!r} is not valid; choose one of {', '.join(map(str, choices))}")


def _str(cfg, key):
  v = cfg[key]
  if v is not None and (not isinstance(v, str) or not v.strip()):
    raise UserError(f"data.{key}={v!r} is not valid; use a non-empty string or None")


def validate(data_config) -> dict[str, Any]:
  """Raises UserError for any bad key or value; returns the resolved dict. Cheap: no data is read."""
  cfg = resolve(data_config)
  _str(cfg, "cache_dir")
  _int(cfg, "num_threads", 0, 64)
  _int(cfg, "prefetch", 0)
  _int(cfg, "num_workers", -1, 1024)
  name = cfg["name"]
  if name == "docstrings":
    from lazy_neuron.data import docstrings, tokenizer

    _str(cfg, "corpus_files")
    _str(cfg, "stdlib_path")
    if cfg["corpus_files"]:
      docstrings.corpus_files(cfg["corpus_files"])  # every pattern must match a file
    elif cfg["stdlib_path"] is not None and not os.path.isdir(os.path.expanduser(cfg["stdlib_path"])):
      raise UserError(f"data.stdlib_path={cfg['stdlib_path']!r} is not a directory; use None (the "
                      "installed standard library) or a folder of .py files")
    _int(cfg, "max_corpus_bytes", 1, none_ok=True)
    _float(cfg, "eval_fraction", 0.0, 1.0)
    _int(cfg, "num_sentinels", 1, 10_000)
    _int(cfg, "vocab_size", 8, 2**31 - 1, none_ok=True)
    _choice(cfg, "spm_model_type", ("bpe", "unigram"))
    _int(cfg, "spm_train_bytes", 1024)
    tok = cfg["tokenizer"]
    if not isinstance(tok, str) or not tok:
      raise UserError(f"data.tokenizer={tok!r} is not valid; use 'spm', 'bytes' or a .model path")
    if tok == "bytes":
      tokenizer.total_vocab_size(cfg, tokenizer.BYTE_VOCAB)
    elif tok == "spm":
      if tokenizer.spm_pieces(cfg) < 16:
        raise UserError(f"data.vocab_size={cfg['vocab_size']} leaves {tokenizer.spm_pieces(cfg)} "
                        f"sentencepiece pieces after {cfg['num_sentinels']} sentinels; use at least "
                        f"{cfg['num_sentinels'] + 16}")
    elif not tokenizer.model_exists(tok):
      raise UserError(f"data.tokenizer={tok!r}: no such sentencepiece model file; use 'bytes', 'spm' "
                      "or the path of an existing .model file")
    _bool(cfg, "random_inputs")
    _bool(cfg, "one_pass")
    _int(cfg, "random_seed", 0, 2**63 - 1)
    _span_corruption(cfg)
  elif name in ("tfds_text", "c4"):
    _str(cfg, "dataset")
    if not cfg["dataset"]:
      raise UserError("data.dataset is not set; give a TFDS text dataset name, e.g. c4/en:3.1.0")
    for key in ("data_dir", "train_split", "eval_split", "text_key"):
      _str(cfg, key)
    _int(cfg, "num_sentinels", 1, 10_000)
    _int(cfg, "vocab_size", 8, 2**31 - 1, none_ok=True)
    tok = cfg["tokenizer"]
    if tok is None:
      raise UserError("data.tokenizer is not set; give the path of a sentencepiece .model (T5's "
                      "standard vocabulary: gs://t5-data/vocabs/cc_all.32000/sentencepiece.model, or "
                      "one made by `lazy-neuron tokenizer --corpus FILES --vocab-size N --out M`) or 'bytes'")
    if not isinstance(tok, str) or not tok.strip():
      raise UserError(f"data.tokenizer={tok!r} is not valid; use 'bytes' or a sentencepiece .model path")
    if tok != "bytes":
      from lazy_neuron.data import tokenizer
      if not tokenizer.model_exists(tok):
        raise UserError(f"data.tokenizer={tok!r}: no such sentencepiece model file; give an existing "
                        ".model path (local or gs://), train one with `lazy-neuron tokenizer --corpus "
                        "FILES --vocab-size N --out PATH`, or use 'bytes'")
    _int(cfg, "max_document_tokens", 1)
    _int(cfg, "estimate_documents", 1)
    _bool(cfg, "one_pass")
    _bool(cfg, "random_inputs")
    _int(cfg, "random_seed", 0, 2**63 - 1)
    _span_corruption(cfg)
  elif name == "digits":
    _str(cfg, "data_dir")
    _int(cfg, "image_size", 1, 4096)
    _choice(cfg, "channels", (1, 3))
    _labels(cfg)
  elif name == "tfds":
    _str(cfg, "dataset")
    if not cfg["dataset"]:
      raise UserError("data.dataset is not set; give a TFDS dataset name, e.g. cifar10 or imagenet2012")
    for key in ("data_dir", "train_split", "eval_split", "image_key", "label_key"):
      _str(cfg, key)
    _int(cfg, "num_classes", 2, 1 << 24, none_ok=True)
    _int(cfg, "image_size", 1, 4096)
    if cfg["channels"] is not None:
      _choice(cfg, "channels", (1, 3))
    _choice(cfg, "augment", ("inception_crop", "flip", "none"))
    _float(cfg, "crop_min_area", 0.0, 1.0, hi_open=False)
    _float(cfg, "eval_crop_fraction", 0.0, 1.0, hi_open=False)
    _int(cfg, "eval_examples", 1, none_ok=True)
    _choice(cfg, "image_dtype", ("float32", "uint8"))
    _labels(cfg)
  elif name == "gaussian":
    _int(cfg, "dim", 1, 1 << 24)
    _int(cfg, "num_classes", 2, 1 << 24)
    _int(cfg, "eval_examples", 1)
  return cfg


def _bool(cfg, key):
  if not isinstance(cfg[key], bool):
    raise UserError(f"data.{key}={cfg[key]!r} is not valid; use true or false")


def _span_corruption(cfg):
  from lazy_neuron.data import span_corruption

  _int(cfg, "inputs_length", 8, 1 << 20)
  _float(cfg, "noise_density", 0.0, 1.0)
  _float(cfg, "mean_noise_span_length", 1.0, float("inf"), lo_open=False)
  _int(cfg, "targets_length", 2, 1 << 20, none_ok=True)
  raw, _ = span_corruption.random_spans_helper(
      cfg["inputs_length"], cfg["noise_density"], cfg["mean_noise_span_length"])
  needed = span_corruption.corrupted_lengths(raw, cfg["noise_density"], cfg["mean_noise_span_length"])[1]
  if cfg["targets_length"] is not None and cfg["targets_length"] < needed:
    raise UserError(f"data.targets_length={cfg['targets_length']} is too short for inputs_length="
                    f"{cfg['inputs_length']} at noise density {cfg['noise_density']}; use >= {needed} or None")
  _int(cfg, "eval_examples", 1)
  _int(cfg, "eval_seed", 0, 2**63 - 1)


def _labels(cfg):
  _float(cfg, "label_noise", 0.0, 1.0, lo_open=False, hi_open=False)
  if not isinstance(cfg["random_labels"], bool):
    raise UserError(f"data.random_labels={cfg['random_labels']!r} is not valid; use true or false")
  _int(cfg, "label_noise_seed", 0, 2**63 - 1)
  _bool(cfg, "random_inputs")
  _bool(cfg, "one_pass")
