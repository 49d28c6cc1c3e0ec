"""Data configs: defaults per source, overrides, validation (cheap, before any work)."""
from __future__ import annotations

import copy
import os
from typing import Any

import ml_collections
from ml_collections import config_dict

from lazy_neuron import checks
from lazy_neuron.errors import UserError


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
    "fashion_mnist": {
        "source": "auto",  # "auto" | "tfds" | "idx" (data/fashion_mnist.py)
        "data_dir": config_dict.placeholder(str),  # TFDS data dir; None: TFDS's default
        # the IDX files: $LAZY_NEURON_FASHION_MNIST_DIR, else where Debian's dataset-fashion-mnist puts them
        "idx_dir": os.environ.get("LAZY_NEURON_FASHION_MNIST_DIR") or "/usr/share/datasets/fashion-mnist",
        "image_size": 28,  # resize (bilinear) to image_size x image_size
        "channels": 1,  # 1 (grayscale) or 3 (replicated)
        "eval_examples": config_dict.placeholder(int),  # None: all 10k test images; N: the first N
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
  checks.choice("data.name", name, SOURCES)
  values = {"name": name, **copy.deepcopy(_COMMON), **copy.deepcopy(DEFAULTS[name])}
  cfg = ml_collections.ConfigDict(values)
  for key, value in overrides.items():
    if key not in values:
      raise _unknown_key(name, key, value, values)
    try:
      cfg[key] = value
    except (TypeError, ValueError) as e:
      raise checks.fail(f"data.{key}", value, f"it has the wrong type ({e})") from e
  return cfg


def _unknown_key(name, key, value, keys) -> UserError:
  return checks.fail(f"data.{key}", value, f"it is not a key of data source {name!r}; use one of "
                                           f"{', '.join(sorted(keys))}")


def resolve(data_config) -> dict[str, Any]:
  """A plain dict with every key of the source (defaults filled in); checks name and keys."""
  if data_config is None:
    raise UserError(f"the data config is missing; set config.data = data.get_data_config(name), name one of {_names()}")
  if hasattr(data_config, "to_dict"):
    given = data_config.to_dict()
  else:
    given = dict(data_config)
  name = checks.choice("data.name", given.get("name"), SOURCES)
  defaults = {"name": name, **_COMMON, **DEFAULTS[name]}
  unknown = sorted(set(given) - set(defaults))
  if unknown:
    raise _unknown_key(name, unknown[0], given[unknown[0]], defaults)
  out = {}
  for key, default in defaults.items():
    value = given.get(key, default)
    if isinstance(value, config_dict.FieldReference):  # a placeholder default, or one in a dict
      value = value.get()
    out[key] = value
  return out


def _check(cfg, check, key, **bounds):
  """`check` (one of lazy_neuron.checks) applied to data config key `key`, named `data.<key>`."""
  return check(f"data.{key}", cfg[key], **bounds)


def _optional_str(cfg, *keys):
  for key in keys:
    if _check(cfg, checks.string, key, none_ok=True) is not None and not cfg[key].strip():
      raise checks.fail(f"data.{key}", cfg[key], "use a non-empty string or None")


def validate(data_config) -> dict[str, Any]:
  """Raises UserError for any bad key or value; returns the resolved dict. Cheap: no data is read."""
  cfg = resolve(data_config)
  _optional_str(cfg, "cache_dir")
  _check(cfg, checks.integer, "num_threads", min=0, max=64)
  _check(cfg, checks.integer, "prefetch", min=0)
  _check(cfg, checks.integer, "num_workers", min=-1, max=1024)
  name = cfg["name"]
  if name == "docstrings":
    from lazy_neuron.data import docstrings, tokenizer

    _optional_str(cfg, "corpus_files", "stdlib_path")
    if cfg["corpus_files"]:
      docstrings.corpus_files(cfg["corpus_files"])  # every pattern must match a file
    elif cfg["stdlib_path"] is not None and not os.path.isdir(os.path.expanduser(cfg["stdlib_path"])):
      raise checks.fail("data.stdlib_path", cfg["stdlib_path"], "it is not a directory; use None "
                        "(the installed standard library) or a folder of .py files")
    _check(cfg, checks.integer, "max_corpus_bytes", min=1, none_ok=True)
    _check(cfg, checks.fraction, "eval_fraction", min_exclusive=True)
    _check(cfg, checks.integer, "num_sentinels", min=1, max=10_000)
    _check(cfg, checks.integer, "vocab_size", min=8, max=2**31 - 1, none_ok=True)
    _check(cfg, checks.choice, "spm_model_type", choices=("bpe", "unigram"))
    _check(cfg, checks.integer, "spm_train_bytes", min=1024)
    tok = cfg["tokenizer"]
    if not isinstance(tok, str) or not tok:
      raise checks.fail("data.tokenizer", tok, "use 'spm', 'bytes' or a .model path")
    if tok == "bytes":
      tokenizer.total_vocab_size(cfg, tokenizer.BYTE_VOCAB)
    elif tok == "spm":
      if tokenizer.spm_pieces(cfg) < 16:
        raise checks.fail("data.vocab_size", cfg["vocab_size"],
                          f"it leaves {tokenizer.spm_pieces(cfg)} sentencepiece pieces after "
                          f"{cfg['num_sentinels']} sentinels; use at least {cfg['num_sentinels'] + 16}")
    elif not tokenizer.model_exists(tok):
      raise checks.fail("data.tokenizer", tok, "no such sentencepiece model file; use 'bytes', "
                        "'spm' or the path of an existing .model file")
    _random_inputs(cfg)
    _span_corruption(cfg)
  elif name in ("tfds_text", "c4"):
    _optional_str(cfg, "dataset")
    if not cfg["dataset"]:
      raise checks.fail("data.dataset", cfg["dataset"], "give a TFDS text dataset name, e.g. c4/en:3.1.0")
    _optional_str(cfg, "data_dir", "train_split", "eval_split", "text_key")
    _check(cfg, checks.integer, "num_sentinels", min=1, max=10_000)
    _check(cfg, checks.integer, "vocab_size", min=8, max=2**31 - 1, none_ok=True)
    tok = cfg["tokenizer"]
    if tok is None:
      raise UserError("data.tokenizer is not set; give the path of a sentencepiece .model (T5's "
                      "standard vocabulary: gs://t5-data/vocabs/cc_all.32000/sentencepiece.model, or "
                      "one made by `lazy-neuron tokenizer --corpus FILES --vocab-size N --out M`) or 'bytes'")
    if not isinstance(tok, str) or not tok.strip():
      raise checks.fail("data.tokenizer", tok, "use 'bytes' or a sentencepiece .model path")
    if tok != "bytes":
      from lazy_neuron.data import tokenizer
      if not tokenizer.model_exists(tok):
        raise checks.fail("data.tokenizer", tok, "no such sentencepiece model file; give an "
                          "existing .model path (local or gs://), train one with `lazy-neuron "
                          "tokenizer --corpus FILES --vocab-size N --out PATH`, or use 'bytes'")
    _check(cfg, checks.integer, "max_document_tokens", min=1)
    _check(cfg, checks.integer, "estimate_documents", min=1)
    _random_inputs(cfg)
    _span_corruption(cfg)
  elif name == "digits":
    _optional_str(cfg, "data_dir")
    _check(cfg, checks.integer, "image_size", min=1, max=4096)
    _check(cfg, checks.choice, "channels", choices=(1, 3))
    _labels(cfg)
  elif name == "fashion_mnist":
    _check(cfg, checks.choice, "source", choices=("auto", "tfds", "idx"))
    _optional_str(cfg, "data_dir", "idx_dir")
    _check(cfg, checks.integer, "image_size", min=1, max=4096)
    _check(cfg, checks.choice, "channels", choices=(1, 3))
    _check(cfg, checks.integer, "eval_examples", min=1, none_ok=True)
    _labels(cfg)
  elif name == "tfds":
    _optional_str(cfg, "dataset")
    if not cfg["dataset"]:
      raise checks.fail("data.dataset", cfg["dataset"],
                        "give a TFDS dataset name, e.g. cifar10 or imagenet2012")
    _optional_str(cfg, "data_dir", "train_split", "eval_split", "image_key", "label_key")
    _check(cfg, checks.integer, "num_classes", min=2, max=1 << 24, none_ok=True)
    _check(cfg, checks.integer, "image_size", min=1, max=4096)
    if cfg["channels"] is not None:
      _check(cfg, checks.choice, "channels", choices=(1, 3))
    _check(cfg, checks.choice, "augment", choices=("inception_crop", "flip", "none"))
    _check(cfg, checks.number, "crop_min_area", min=0.0, max=1.0, min_exclusive=True)
    _check(cfg, checks.number, "eval_crop_fraction", min=0.0, max=1.0, min_exclusive=True)
    _check(cfg, checks.integer, "eval_examples", min=1, none_ok=True)
    _check(cfg, checks.choice, "image_dtype", choices=("float32", "uint8"))
    _labels(cfg)
  elif name == "gaussian":
    _check(cfg, checks.integer, "dim", min=1, max=1 << 24)
    _check(cfg, checks.integer, "num_classes", min=2, max=1 << 24)
    _check(cfg, checks.integer, "eval_examples", min=1)
  return cfg


def _random_inputs(cfg):
  """The text sources' ablation switches."""
  _check(cfg, checks.boolean, "random_inputs")
  _check(cfg, checks.boolean, "one_pass")
  _check(cfg, checks.integer, "random_seed", min=0, max=2**63 - 1)


def _span_corruption(cfg):
  from lazy_neuron.data import span_corruption

  _check(cfg, checks.integer, "inputs_length", min=8, max=1 << 20)
  _check(cfg, checks.fraction, "noise_density", min_exclusive=True)
  _check(cfg, checks.number, "mean_noise_span_length", min=1.0)
  _check(cfg, checks.integer, "targets_length", min=2, max=1 << 20, none_ok=True)
  raw, _ = span_corruption.random_spans_helper(
      cfg["inputs_length"], cfg["noise_density"], cfg["mean_noise_span_length"])
  needed = span_corruption.corrupted_lengths(raw, cfg["noise_density"], cfg["mean_noise_span_length"])[1]
  if cfg["targets_length"] is not None and cfg["targets_length"] < needed:
    raise checks.fail("data.targets_length", cfg["targets_length"],
                      f"it is too short for inputs_length={cfg['inputs_length']} at noise density "
                      f"{cfg['noise_density']}; use >= {needed} or None")
  _check(cfg, checks.integer, "eval_examples", min=1)
  _check(cfg, checks.integer, "eval_seed", min=0, max=2**63 - 1)


def _labels(cfg):
  _check(cfg, checks.number, "label_noise", min=0.0, max=1.0)
  _check(cfg, checks.boolean, "random_labels")
  _check(cfg, checks.integer, "label_noise_seed", min=0, max=2**63 - 1)
  _check(cfg, checks.boolean, "random_inputs")
  _check(cfg, checks.boolean, "one_pass")
