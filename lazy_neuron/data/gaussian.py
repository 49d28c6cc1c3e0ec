"""The `gaussian` source: i.i.d. standard-normal inputs of dim D with a random label per example.

"Infinite data": training example i is generated from (seed, i) and never repeats; its label is a
uniform random class, fixed for that example (random labels, as in the paper's ablation). Eval is a
fixed set of `eval_examples` drawn from a separate stream of the same seed (accuracy ~ chance).
"""
from __future__ import annotations

import numpy as np

from lazy_neuron.data import pipeline
from lazy_neuron.data.datainfo import DataInfo

_TRAIN, _EVAL = 1000, 2000


class GaussianSource:

  def __init__(self, cfg):
    self.cfg = cfg
    self.dim = int(cfg["dim"])
    self.num_classes = int(cfg["num_classes"])
    self.num_train = None
    self.num_eval = int(cfg["eval_examples"])

  def info(self) -> DataInfo:
    return DataInfo(task="classification", num_classes=self.num_classes, image_shape=(self.dim,),
                    num_train_examples=None, num_eval_examples=self.num_eval)

  def _batch(self, seed, stream, index):
    x = pipeline.random_normal(seed, stream, index, self.dim).astype(np.float32)
    label = (pipeline.random_bits(seed, stream + 1, index, 1)[:, 0] % np.uint64(self.num_classes))
    return {"image": x, "label": label.astype(np.int32)}

  def train_batch_fn(self, seed: int):
    return lambda index, records: self._batch(seed, _TRAIN, index)

  def eval_batch_fn(self, seed: int):
    return lambda index, records: self._batch(seed, _EVAL, index)
