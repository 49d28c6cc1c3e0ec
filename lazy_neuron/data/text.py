"""The `docstrings` source: T5 span corruption on packed windows of the tokenised corpus.

The training token stream (all training documents tokenised and concatenated, no separators, as T5
does with C4) is cut into windows of `tokens_length` raw tokens, where `tokens_length` comes from T5's
`random_spans_helper` so that corrupted inputs plus EOS fill `inputs_length` (no truncation, at most a
token of padding). Token streams are cached as .npz next to the corpus.
"""
from __future__ import annotations

import logging
import os

import numpy as np

from lazy_neuron.data import cache, docstrings, span_corruption, tokenizer
from lazy_neuron.data.datainfo import DataInfo
from lazy_neuron.errors import UserError


_WARNED: set[str] = set()


class TextSource:

  def __init__(self, cfg):
    self.cfg = cfg
    self.tokenizer = tokenizer.get(cfg)
    self.vocab_size = tokenizer.total_vocab_size(cfg, self.tokenizer.base_size)
    self.num_sentinels = int(cfg["num_sentinels"])
    self.tokens_length, self.inputs_length, self.targets_length = (
        span_corruption.lengths_from_config(cfg))
    self._streams = None

  # --- token streams --------------------------------------------------------------------------------
  def streams(self) -> dict[str, np.ndarray]:
    if self._streams is None:
      key = {"corpus": docstrings.corpus_fingerprint(self.cfg), "tokenizer": self.tokenizer.fingerprint(), "v": 1}
      path = os.path.join(cache.cache_dir(self.cfg["cache_dir"]), "tokens", f"tokens-{cache.fingerprint(key)}.npz")

      def build(tmp):
        corpus = docstrings.load(self.cfg)
        dtype = np.uint16 if self.vocab_size <= 2**16 else np.int32
        arrays = {}
        for split in ("train", "eval"):
          pieces = self.tokenizer.encode_many(corpus[split])
          arrays[split] = (np.concatenate(pieces) if pieces else np.zeros([0], np.int32)).astype(dtype)
        with open(tmp, "wb") as f:
          np.savez(f, **arrays)

      cache.cached(path, build)
      with np.load(path) as z:
        self._streams = {"train": z["train"], "eval": z["eval"]}
      if self.num_windows("train") == 0:
        raise UserError(f"the training corpus has {len(self._streams['train'])} tokens, fewer than one "
                        f"window of {self.tokens_length}; use a larger corpus or a smaller data.inputs_length")
      if self.num_windows("eval") == 0:
        raise UserError(f"the eval split of the corpus has {len(self._streams['eval'])} tokens, fewer than "
                        f"one window of {self.tokens_length}; raise data.eval_fraction or use a larger corpus")
      if self.num_windows("eval") < self.cfg["eval_examples"] and path not in _WARNED:
        _WARNED.add(path)
        logging.getLogger(__name__).warning(f"data.eval_examples={self.cfg['eval_examples']} but the eval split has only "
                      f"{self.num_windows('eval')} windows; evaluating on those")
    return self._streams

  def num_windows(self, split: str) -> int:
    return len(self.streams()[split]) // self.tokens_length

  @property
  def num_train(self) -> int:
    return self.num_windows("train")

  @property
  def num_eval(self) -> int:
    return min(self.num_windows("eval"), int(self.cfg["eval_examples"]))

  def info(self) -> DataInfo:
    return DataInfo(task="span_corruption", vocab_size=self.vocab_size, inputs_length=self.inputs_length,
                    targets_length=self.targets_length, pad_id=0, eos_id=1,
                    num_sentinels=self.num_sentinels, num_train_examples=self.num_train,
                    num_eval_examples=self.num_eval)

  # --- batches --------------------------------------------------------------------------------------
  def windows(self, split: str, records: np.ndarray) -> np.ndarray:
    stream = self.streams()[split]
    offsets = np.asarray(records, np.int64)[:, None] * self.tokens_length + np.arange(self.tokens_length)
    return stream[offsets].astype(np.int32)

  def _corrupt(self, tokens, index, seed):
    return span_corruption.span_corruption(
        tokens, index, seed=seed, vocab_size=self.vocab_size, noise_density=self.cfg["noise_density"],
        mean_noise_span_length=self.cfg["mean_noise_span_length"], inputs_length=self.inputs_length,
        targets_length=self.targets_length)

  def train_batch_fn(self, seed: int):
    if self.cfg["random_inputs"]:  # uniform random tokens in place of text, fixed per window
      from lazy_neuron.data.text_tfds import random_tokens

      rs, base = int(self.cfg["random_seed"]), self.tokenizer.base_size
      return lambda index, records: self._corrupt(
          np.stack(random_tokens(rs, records, [self.tokens_length] * len(records), base)), index, seed)
    return lambda index, records: self._corrupt(self.windows("train", records), index, seed)

  def eval_batch_fn(self, seed: int):
    del seed  # eval data never depends on the run's seed
    eval_seed = int(self.cfg["eval_seed"])
    return lambda index, records: self._corrupt(self.windows("eval", records), index, eval_seed)
