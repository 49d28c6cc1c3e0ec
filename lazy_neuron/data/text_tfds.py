"""`tfds_text` / `c4`: T5 span corruption on a TFDS text dataset (C4 `c4/en`), packed to fixed lengths.

Documents are read from the user's TFDS data dir (local or gs://; never downloaded), tokenised with a
sentencepiece model (`data.tokenizer`: T5's standard 32000-piece vocabulary or one made by
`lazy-neuron tokenizer`) or bytes, concatenated with no separators and cut into windows of
`tokens_length` raw tokens (T5's `random_spans_helper`: 568 for 512-token inputs), which are then
span-corrupted exactly as the `docstrings` source does (`span_corruption.py`). A document longer than
`max_document_tokens` contributes one random chunk of that length (T5's `select_random_chunk`).

Reading:
- ArrayRecord (`tfds build c4/en --file_format=array_record`): `tfds.data_source`, random access,
  TF-free. Train order: the documents of the split shuffled with the seed, reshuffled every epoch,
  process `p` of `P` takes documents `p, p + P, ...` of that order and packs its own windows.
- TFRecord (what `tfds build` writes by default, and what TFDS's public `gs://tfds-data` bucket
  holds): read with tf.data (needs the `tf` extra; or `lazy-neuron convert` it to ArrayRecord).
  Train order: the split's files permuted with (seed, epoch), process `p` reading files
  `p, p + P, ...` in file order. Without TensorFlow it is a UserError saying what to do.

State: the grain iterator state of the document stream, plus the packer's leftover tokens and window
counter, so a resumed run continues with exactly the windows an uninterrupted run sees. A window's
corruption depends on (seed, global window index = k * P + p). Eval: the first `eval_examples` windows
of the eval split in file order (identical on every call and for every process count).
"""
from __future__ import annotations

import hashlib
import logging
from typing import Any

import numpy as np

from lazy_neuron.data import pipeline, span_corruption, tokenizer
from lazy_neuron.data.datainfo import DataInfo
from lazy_neuron.errors import UserError

_CHUNK, _RANDOM = 4000, 5000
_WARNED: set[str] = set()


def get_tokenizer(cfg):
  if cfg["tokenizer"] == "bytes":
    return tokenizer.ByteTokenizer()
  if not tokenizer.model_exists(cfg["tokenizer"]):
    raise UserError(f"data.tokenizer={cfg['tokenizer']!r}: no such sentencepiece model file; give an "
                    "existing .model path, train one with `lazy-neuron tokenizer --corpus FILES "
                    "--vocab-size N --out PATH`, or use 'bytes'")
  return tokenizer.SentencePieceTokenizer(cfg["tokenizer"])


def random_tokens(seed: int, records: np.ndarray, lengths, base_size: int) -> list[np.ndarray]:
  """Uniform random tokens in [3, base_size) (never pad/eos/unk/sentinels), fixed per record."""
  out = []
  for r, n in zip(np.asarray(records).reshape(-1), lengths):
    bits = pipeline.random_bits(seed, _RANDOM, np.asarray([r]), max(int(n), 1))[0, :int(n)]
    out.append((bits % np.uint64(base_size - 3)).astype(np.int32) + 3)
  return out


# --- the packer ---------------------------------------------------------------------------------------
def _pack_dataset(parent, *, tokens_length: int, per_process: int, process_index: int,
                  process_count: int):
  """An IterDataset of {"tokens": int32 [per_process, L], "index": int64 [per_process]} from a stream
  of 1-D token arrays (concatenated, split into windows; leftovers carried into the next batch)."""
  import grain

  class _PackIterator(grain.DatasetIterator):

    def __init__(self, parent_iter):
      super().__init__(parent_iter)
      self._buffer = np.zeros([0], np.int32)
      self._windows = 0

    def __next__(self):
      need = tokens_length * per_process
      pieces, have = [self._buffer], len(self._buffer)
      while have < need:
        doc = np.asarray(next(self._parent), np.int32).reshape(-1)  # StopIteration: one pass done
        pieces.append(doc)
        have += len(doc)
      flat = np.concatenate(pieces)
      self._buffer = flat[need:]
      k = self._windows + np.arange(per_process, dtype=np.int64)
      self._windows += per_process
      return {"tokens": flat[:need].reshape(per_process, tokens_length),
              "index": k * process_count + process_index}

    def get_state(self):
      return {"parent": self._parent.get_state(), "buffer": self._buffer.tolist(),
              "windows": int(self._windows)}

    def set_state(self, state):
      self._parent.set_state(state["parent"])
      self._buffer = np.asarray(state["buffer"], np.int32).reshape(-1)
      self._windows = int(state["windows"])

  class _PackIterDataset(grain.IterDataset):

    def __init__(self, p):
      super().__init__(p)

    def __iter__(self):
      return _PackIterator(self._parent.__iter__())

    def __str__(self):
      return f"PackIterDataset(tokens_length={tokens_length}, per_process={per_process})"

  return _PackIterDataset(parent)


# --- TFRecord (tf.data) document stream ---------------------------------------------------------------
def _tfrecord_documents(files, decode, *, seed: int, process_index: int, process_count: int,
                        one_pass: bool, shuffle_files: bool = True):
  """An IterDataset of documents (str) from TFRecord `files` [(path, skip, take)], read with tf.data."""
  import grain

  class _Iterator(grain.DatasetIterator):

    def __init__(self):
      super().__init__()
      self._epoch, self._file, self._offset = 0, 0, 0
      self._reader = None

    def _files(self):
      order = (np.random.default_rng([seed % 2**32, self._epoch]).permutation(len(files))
               if shuffle_files else np.arange(len(files)))
      return [files[i] for i in order[process_index::process_count]]

    def _open(self):
      import tensorflow as tf  # the `tf` extra; checked before the run

      path, skip, take = self._files()[self._file]
      ds = tf.data.TFRecordDataset(path).skip(skip + self._offset)
      if take >= 0:
        ds = ds.take(max(take - self._offset, 0))
      self._reader = ds.as_numpy_iterator()

    def __next__(self):
      while True:
        if self._reader is None:
          if self._file >= len(self._files()):
            if one_pass:
              raise StopIteration
            self._epoch, self._file, self._offset = self._epoch + 1, 0, 0
          self._open()
        try:
          record = next(self._reader)
        except StopIteration:
          self._reader, self._file, self._offset = None, self._file + 1, 0
          continue
        self._offset += 1
        return decode(record)

    def get_state(self):
      return {"epoch": self._epoch, "file": self._file, "offset": self._offset}

    def set_state(self, state):
      self._epoch, self._file, self._offset = int(state["epoch"]), int(state["file"]), int(state["offset"])
      self._reader = None

  class _Dataset(grain.IterDataset):

    def __iter__(self):
      return _Iterator()

  return _Dataset()


# --- the source ---------------------------------------------------------------------------------------
class TfdsTextSource:

  def __init__(self, cfg):
    self.cfg = cfg
    self.name = cfg["dataset"]
    self.tokenizer = get_tokenizer(cfg)
    self.vocab_size = tokenizer.total_vocab_size(cfg, self.tokenizer.base_size)
    self.num_sentinels = int(cfg["num_sentinels"])
    self.tokens_length, self.inputs_length, self.targets_length = (
        span_corruption.lengths_from_config(cfg))
    self._builder = None
    self._sources: dict[str, Any] = {}
    self._eval_windows = None
    self._estimate = None

  # --- TFDS -----------------------------------------------------------------------------------------
  def _tfds_error(self, e):
    where = self.cfg["data_dir"] or "the default TFDS data dir (~/tensorflow_datasets or $TFDS_DATA_DIR)"
    msg = str(e).splitlines()[0] if str(e) else ""
    return UserError(
        f"data.dataset={self.name!r} is not prepared in {where} ({type(e).__name__}: {msg}); prepare "
        f"it with `tfds build {self.name.split(':')[0]} --file_format=array_record --data_dir=DIR` "
        "(or copy the prepared files there) and set data.data_dir=DIR")

  def builder(self):
    if self._builder is None:
      import tensorflow_datasets as tfds

      try:
        self._builder = tfds.builder(self.name, data_dir=self.cfg["data_dir"])
        info = self._builder.info
        if not self._builder.is_prepared():
          raise FileNotFoundError(f"no dataset_info.json under {self._builder.data_dir}")
      except UserError:
        raise
      except Exception as e:
        raise self._tfds_error(e) from e
      if self.cfg["text_key"] not in info.features:
        raise UserError(f"data.text_key={self.cfg['text_key']!r} is not a feature of {self.name!r}; "
                        f"features: {', '.join(info.features)}")
    return self._builder

  @property
  def file_format(self) -> str:
    fmt = self.builder().info.file_format
    return getattr(fmt, "value", str(fmt or "tfrecord"))

  def _split_name(self, split):
    return self.cfg["train_split" if split == "train" else "eval_split"]

  def _split_error(self, split, e):
    return UserError(f"data.{'train_split' if split == 'train' else 'eval_split'}={self._split_name(split)!r}"
                     f" is not a split of {self.name!r} (splits: {', '.join(self.builder().info.splits)}): "
                     f"{str(e).splitlines()[0] if str(e) else type(e).__name__}")

  def _decode_text(self, value) -> str:
    if isinstance(value, bytes):
      return value.decode("utf-8", errors="replace")
    if isinstance(value, np.ndarray):
      value = value.item()
      return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)
    return str(value)

  def source(self, split):
    """ArrayRecord: a random-access source of examples. TFRecord: a list of (file, skip, take)."""
    if split in self._sources:
      return self._sources[split]
    b = self.builder()
    name = self._split_name(split)
    if self.file_format == "array_record":
      import tensorflow_datasets as tfds

      try:
        src = tfds.data_source(self.name, split=name, data_dir=self.cfg["data_dir"], download=False)
      except UserError:
        raise
      except Exception as e:
        if "split" in str(e).lower():
          raise self._split_error(split, e) from e
        raise self._tfds_error(e) from e
    elif self.file_format == "tfrecord":
      try:
        import tensorflow  # noqa: F401  (the `tf` extra)
      except ImportError:
        raise UserError(
            f"data.dataset={self.name!r} is prepared as TFRecord in {b.data_dir}, which needs "
            "TensorFlow to read: `pip install -e '.[tf]'`, or convert it to ArrayRecord once with "
            f"`lazy-neuron convert --dataset={self.name} "
            f"--data_dir={self.cfg['data_dir'] or '~/tensorflow_datasets'} --out_dir=NEW_DIR` and set "
            "data.data_dir=NEW_DIR") from None
      try:
        instructions = b.info.splits[name].file_instructions
      except Exception as e:
        raise self._split_error(split, e) from e
      src = [(str(fi.filename) if "/" in str(fi.filename) else str(b.data_path / fi.filename),
              int(fi.skip), int(fi.take)) for fi in instructions]
      src = [(f, s, t) for f, s, t in src if t != 0]
    else:
      raise UserError(f"data.dataset={self.name!r} is stored as {self.file_format}; use ArrayRecord "
                      f"(`tfds build {self.name.split(':')[0]} --file_format=array_record`) or TFRecord")
    self._sources[split] = src
    return src

  def num_records(self, split) -> int:
    b = self.builder()
    try:
      return int(b.info.splits[self._split_name(split)].num_examples)
    except Exception as e:
      raise self._split_error(split, e) from e

  def _decode_record(self, serialized: bytes) -> str:
    example = self.builder().info.features.deserialize_example_np(serialized)
    return self._decode_text(example[self.cfg["text_key"]])

  def _read(self, split, record: int) -> str:
    return self._decode_text(self.source(split)[int(record)][self.cfg["text_key"]])

  # --- tokens ---------------------------------------------------------------------------------------
  def doc_tokens(self, text: str, record: int, seed: int) -> np.ndarray:
    tokens = self.tokenizer.encode_many([text])[0].astype(np.int32)
    limit = int(self.cfg["max_document_tokens"])
    if len(tokens) > limit:  # T5's select_random_chunk
      start = int(pipeline.random_bits(seed, _CHUNK, np.asarray([record]), 1)[0, 0] % np.uint64(
          len(tokens) - limit + 1))
      tokens = tokens[start:start + limit]
    if self.cfg["random_inputs"]:
      tokens = random_tokens(int(self.cfg["random_seed"]), np.asarray([record]), [len(tokens)],
                             self.tokenizer.base_size)[0]
    return tokens

  def _documents_in_order(self, split):
    """(record, text) in file order (eval; estimates)."""
    src = self.source(split)
    if self.file_format == "array_record":
      for r in range(len(src)):
        yield r, self._read(split, r)
    else:
      ds = _tfrecord_documents(src, self._decode_record, seed=0, process_index=0, process_count=1,
                               one_pass=True, shuffle_files=False)
      for r, text in enumerate(ds):
        yield r, text

  def eval_windows(self) -> np.ndarray:
    if self._eval_windows is None:
      want = int(self.cfg["eval_examples"]) * self.tokens_length
      pieces, have = [], 0
      for r, text in self._documents_in_order("eval"):
        tokens = self.doc_tokens(text, r, int(self.cfg["eval_seed"]))
        pieces.append(tokens)
        have += len(tokens)
        if have >= want:
          break
      flat = np.concatenate(pieces) if pieces else np.zeros([0], np.int32)
      n = min(len(flat) // self.tokens_length, int(self.cfg["eval_examples"]))
      if n == 0:
        raise UserError(f"the eval split {self.cfg['eval_split']!r} of {self.name!r} has {len(flat)} "
                        f"tokens, fewer than one window of {self.tokens_length}; use another "
                        "data.eval_split or a smaller data.inputs_length")
      if n < int(self.cfg["eval_examples"]) and self.name not in _WARNED:
        _WARNED.add(self.name)
        logging.getLogger(__name__).warning(
            f"data.eval_examples={self.cfg['eval_examples']} but the eval split of {self.name!r} has "
            f"only {n} windows; evaluating on those")
      self._eval_windows = flat[:n * self.tokens_length].reshape(n, self.tokens_length)
    return self._eval_windows

  def estimate_train_windows(self) -> int:
    """Windows of one pass over the train split, estimated from evenly spaced documents."""
    if self._estimate is None:
      n = self.num_records("train")
      k = min(n, int(self.cfg["estimate_documents"]))
      if self.file_format == "array_record":
        records = np.unique(np.linspace(0, n - 1, k).astype(np.int64))
        tokens = sum(len(self.doc_tokens(self._read("train", r), int(r), 0)) for r in records)
        k = len(records)
      else:  # sequential: the first k documents
        tokens, i = 0, 0
        for r, text in self._documents_in_order("train"):
          tokens += len(self.doc_tokens(text, r, 0))
          i += 1
          if i >= k:
            break
        k = max(i, 1)
      self._estimate = int(tokens / k * n / self.tokens_length)
    return self._estimate

  @property
  def num_train(self) -> int:
    return self.num_records("train")

  @property
  def num_eval(self) -> int:
    return len(self.eval_windows())

  def info(self) -> DataInfo:
    one_pass = bool(self.cfg["one_pass"])
    self.source("train")  # fail early: not prepared, bad split, TFRecord without TF
    return DataInfo(task="span_corruption", vocab_size=self.vocab_size, inputs_length=self.inputs_length,
                    targets_length=self.targets_length, pad_id=0, eos_id=1,
                    num_sentinels=self.num_sentinels,
                    num_train_examples=self.estimate_train_windows() if one_pass else None,
                    num_eval_examples=self.num_eval, num_train_records=self.num_train,
                    num_train_examples_estimated=one_pass, one_pass=one_pass)

  # --- pipelines ------------------------------------------------------------------------------------
  def _corrupt(self, tokens, index, seed):
    return span_corruption.span_corruption(
        tokens, index, seed=seed, vocab_size=self.vocab_size, noise_density=self.cfg["noise_density"],
        mean_noise_span_length=self.cfg["mean_noise_span_length"], inputs_length=self.inputs_length,
        targets_length=self.targets_length)

  def train_iter_dataset(self, *, seed: int, per_process: int, process_index: int, process_count: int,
                         num_threads: int, prefetch: int):
    import grain

    one_pass = bool(self.cfg["one_pass"])
    src = self.source("train")
    if self.file_format == "array_record":
      ds = grain.MapDataset.range(len(src)).shuffle(seed=seed % 2**32)
      if not one_pass:
        ds = ds.repeat()
      ds = ds[process_index::process_count]
      ds = ds.map(lambda r: self.doc_tokens(self._read("train", r), int(r), seed))
      if num_threads > 0 and prefetch > 0:
        options = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=max(prefetch, 16))
      else:
        options = grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)
      docs = ds.to_iter_dataset(options)
    else:
      if len(src) < process_count:
        raise UserError(f"data.dataset={self.name!r}: the train split has {len(src)} TFRecord files, "
                        f"fewer than the {process_count} processes; prepare it as ArrayRecord")
      # Records are numbered by position in the process's stream for the random choices.
      docs = _tfrecord_documents(src, self._decode_record, seed=seed, process_index=process_index,
                                 process_count=process_count, one_pass=one_pass)
      docs = docs.map(lambda text: self.doc_tokens(text, _stable_hash(text), seed))
    packed = _pack_dataset(docs, tokens_length=self.tokens_length, per_process=per_process,
                           process_index=process_index, process_count=process_count)
    return packed.map(lambda b: self._corrupt(b["tokens"], b["index"], seed))

  def element_spec(self, per_process: int):
    dummy = np.full((per_process, self.tokens_length), 3, np.int32)
    return pipeline.spec_of(self._corrupt(dummy, np.arange(per_process), 0))

  def eval_batch_fn(self, seed: int):
    del seed
    windows, eval_seed = self.eval_windows(), int(self.cfg["eval_seed"])
    return lambda index, records: self._corrupt(windows[np.asarray(records)], index, eval_seed)


def _stable_hash(text: str) -> int:
  return int.from_bytes(hashlib.blake2b(text.encode("utf-8", errors="replace"), digest_size=8).digest(),
                        "little") % 2**62
