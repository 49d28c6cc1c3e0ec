"""`DataInfo`: what a model needs to know about a data source."""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class DataInfo:
  task: str  # "span_corruption" | "classification"
  vocab_size: int | None = None  # text: total, sentinels included (the last ids)
  num_classes: int | None = None
  image_shape: tuple[int, ...] | None = None  # HWC for images, (D,) for gaussian
  image_dtype: str = "float32"  # "uint8": raw pixels, normalised to [-1, 1] by the model
  inputs_length: int | None = None
  targets_length: int | None = None
  pad_id: int = 0
  eos_id: int = 1
  num_sentinels: int | None = None
  num_train_examples: int | None = None  # None: generated, never repeats
  num_eval_examples: int | None = None
  num_train_records: int | None = None  # records (images, documents) of the train split; None: generated
  num_train_examples_estimated: bool = False  # packed text: num_train_examples is a sampled estimate
  one_pass: bool = False  # data.one_pass: a run may use at most num_train_examples // batch_size steps

  @property
  def model_vocab_size(self) -> int | None:
    """`vocab_size` padded to a multiple of 128 (T5: 32100 -> 32128), for embedding tables."""
    return None if self.vocab_size is None else -(-self.vocab_size // 128) * 128
