"""Data: deterministic, checkpointable, TF-free sources for lazy_neuron.

Sources (`data.name`):

- `docstrings`: T5 span corruption on the Python standard library's docstrings (offline), tokenised
  by a cached sentencepiece model trained on them (`tokenizer="spm"`), bytes, or a given `.model`.
- `digits`: scikit-learn's 8x8 digits as a TFDS ArrayRecord builder read via `tfds.data_source`.
- `fashion_mnist`: Fashion-MNIST (60k/10k 28x28), from TFDS's ArrayRecord `fashion_mnist` or the
  original IDX files (Debian's `dataset-fashion-mnist`), whichever is there.
- `gaussian`: i.i.d. Gaussian inputs with random labels, a fresh example every step (infinite data).
- `tfds`: any TFDS image-classification dataset prepared as ArrayRecord (`data.dataset`), read with
  `tfds.data_source`, ViT-style preprocessing; `label_noise` / `random_labels` switches (also digits).
- `tfds_text` / `c4`: T5 span corruption on a TFDS text dataset (C4), packed, with a sentencepiece
  model (`data.tokenizer`); ArrayRecord via `tfds.data_source`, TFRecord via tf.data (`tf` extra).

Ablations: `random_labels`, `label_noise`, `random_inputs` (Gaussian images / uniform random tokens),
`one_pass` (never repeat an example; `check_steps` errors before a run that would), and `gaussian`
(a fresh example every step).

API::

  cfg = get_data_config("docstrings", tokenizer="spm", vocab_size=2048, inputs_length=128)
  validate(cfg)                      # cheap; UserError on any bad key/value
  info(cfg)                          # DataInfo (may train/load the cached tokenizer)
  check_steps(cfg, total_steps, batch_size)   # UserError if a one_pass run would repeat data
  it = build(cfg, split="train", batch_size=32, seed=0)   # infinite; it.get_state()/set_state()
  ev = build(cfg, split="eval", batch_size=32, seed=0)    # finite; batches carry "mask"

See docs/data.md.
"""
from __future__ import annotations

import dataclasses

from lazy_neuron.data import pipeline
from lazy_neuron.data.config import SOURCES, get_data_config
from lazy_neuron.data.config import validate as _validate
from lazy_neuron.data.datainfo import DataInfo
from lazy_neuron.data.pipeline import DataIterator
from lazy_neuron import checks
from lazy_neuron.errors import UserError

__all__ = ["DataInfo", "DataIterator", "SOURCES", "build", "check_steps", "get_data_config", "info",
           "validate"]

SPLITS = ("train", "eval")


def validate(data_config) -> None:
  """Raises UserError (one line: the bad value and what is valid) for any bad key or value.

  Cheap: reads no data and writes nothing (a `corpus_files` pattern or tokenizer path must exist).
  """
  _validate(data_config)


def _source(cfg):
  name = cfg["name"]
  if name == "docstrings":
    from lazy_neuron.data.text import TextSource
    return TextSource(cfg)
  if name == "digits":
    from lazy_neuron.data.digits import DigitsSource
    return DigitsSource(cfg)
  if name == "fashion_mnist":
    from lazy_neuron.data.fashion_mnist import make_source
    return make_source(cfg)
  if name == "gaussian":
    from lazy_neuron.data.gaussian import GaussianSource
    return GaussianSource(cfg)
  if name == "tfds":
    from lazy_neuron.data.images import TfdsImageSource
    return TfdsImageSource(cfg)
  if name in ("tfds_text", "c4"):
    from lazy_neuron.data.text_tfds import TfdsTextSource
    return TfdsTextSource(cfg)
  raise checks.fail("data.name", name, f"choose one of {', '.join(SOURCES)}")


def info(data_config) -> DataInfo:
  """Shapes, vocabulary and sizes of a source. May extract/tokenise/train caches on first use."""
  cfg = _validate(data_config)
  out = _source(cfg).info()
  changes = {"one_pass": bool(cfg.get("one_pass", False))}
  if out.num_train_records is None and not out.num_train_examples_estimated:
    changes["num_train_records"] = out.num_train_examples
  return dataclasses.replace(out, **changes)


def check_steps(data_config, total_steps: int, batch_size: int, info: DataInfo | None = None) -> None:
  """UserError if a `one_pass` run of `total_steps` global batches would repeat a training example.

  Call before training starts (the trainer does, after `info()`). A no-op unless `data.one_pass`.
  Packed text (`tfds_text`/`c4`) counts windows from a sample of documents (an estimate; the
  iterator also raises a UserError if the data runs out during the run).
  """
  cfg = _validate(data_config)
  if not cfg.get("one_pass"):
    return
  info = info if info is not None else _source(cfg).info()
  n = info.num_train_examples
  if n is None:  # generated: never repeats
    return
  max_steps = int(n) // int(batch_size)
  if int(total_steps) > max_steps:
    about = "about " if info.num_train_examples_estimated else ""
    raise UserError(
        f"data.one_pass is set but total_steps={total_steps} x batch_size={batch_size} = "
        f"{int(total_steps) * int(batch_size)} examples exceeds the {about}{n} training examples of "
        f"data.name={cfg['name']!r}; use total_steps <= {max_steps}, a smaller batch_size, or unset "
        "data.one_pass")


def build(data_config, *, split: str, batch_size: int, seed: int, process_index: int = 0,
          process_count: int = 1, eval_transform=None, eval_transforms=None) -> DataIterator:
  """A batch iterator of this process's share (batch_size // process_count) of each global batch.

  split="train": infinite, order depends only on `seed`; `get_state()`/`set_state()` resume exactly.
  split="eval": finite, the same batches on every call; the last batch is padded and every batch has
  "mask" (float32 [B], 1 real / 0 padding). Processes get disjoint shards that together cover the data.
  `eval_transform(global_indices, batch) -> batch` (eval only) changes each batch before padding, in
  the pipeline's threads: e.g. `corruptions.batch_transform` (its `fingerprint` joins the state's).
  `eval_transforms=[t0, t1, ...]` (eval only; None entries leave batches as they are) instead: the
  eval split once per transform, transform-major, through one pipeline (one pool of threads or worker
  processes for all); `len(it)` is len(eval_transforms) x the batches of one pass.
  """
  cfg = _validate(data_config)
  checks.choice("split", split, SPLITS)
  seed = checks.integer("seed", seed)
  per_process = pipeline.check_batch(batch_size, process_index, process_count)
  source = _source(cfg)
  fingerprint = {"name": cfg["name"], "split": split, "seed": int(seed), "batch_size": int(batch_size),
                 "process_index": int(process_index), "process_count": int(process_count)}
  if cfg.get("one_pass"):
    fingerprint["one_pass"] = True
  fingerprint.update(getattr(source, "fingerprint", {}))  # e.g. which copy of a dataset was read
  if eval_transform is not None and eval_transforms is not None:
    raise ValueError("pass eval_transform or eval_transforms, not both")
  if eval_transform is not None:
    checks.choice("split", split, ("eval",))  # train batches are never transformed here
    fingerprint["eval_transform"] = _fingerprint_of(eval_transform)
  if eval_transforms is not None:
    checks.choice("split", split, ("eval",))
    eval_transforms = list(eval_transforms)
    if not eval_transforms:
      raise ValueError("eval_transforms is empty; pass at least one transform (None: no change)")
    fingerprint["eval_transforms"] = [_fingerprint_of(t) for t in eval_transforms]
  if split == "train" and hasattr(source, "train_iter_dataset"):  # packed text: an iterator pipeline
    fingerprint["num_records"] = source.num_train
    ds = source.train_iter_dataset(seed=seed, per_process=per_process, process_index=process_index,
                                   process_count=process_count, num_threads=cfg["num_threads"],
                                   prefetch=cfg["prefetch"])
    return DataIterator(ds, fingerprint=fingerprint, element_spec=source.element_spec(per_process),
                        num_batches=None, num_threads=cfg["num_threads"], prefetch=cfg["prefetch"],
                        num_workers=cfg["num_workers"])
  if split == "train":
    fn = source.train_batch_fn(seed)
    num = source.num_train
    fingerprint["num_examples"] = num
    ds = pipeline.train_dataset(num, fn, seed=seed, per_process=per_process,
                                process_index=process_index, process_count=process_count,
                                one_pass=bool(cfg.get("one_pass")))
    num_batches = None
  else:
    fn = _transformed(source.eval_batch_fn(seed), eval_transform)
    if eval_transforms is not None:
      fn = [_transformed(fn, t) for t in eval_transforms]
    num = source.num_eval
    fingerprint["num_examples"] = num
    ds, num_batches = pipeline.eval_dataset(num, fn, per_process=per_process,
                                            process_index=process_index, process_count=process_count)
    num_batches *= len(eval_transforms or [None])
  spec = pipeline.spec_of(ds[0])
  return DataIterator(ds, fingerprint=fingerprint, element_spec=spec, num_batches=num_batches,
                      num_threads=cfg["num_threads"], prefetch=cfg["prefetch"],
                        num_workers=cfg["num_workers"])


def _fingerprint_of(transform) -> str:
  return "none" if transform is None else getattr(transform, "fingerprint", repr(transform))


def _transformed(make_batch, transform):
  """`make_batch` followed by `transform(global_indices, batch)` (`make_batch` itself for None)."""
  if transform is None:
    return make_batch
  return lambda index, records: transform(index, make_batch(index, records))
