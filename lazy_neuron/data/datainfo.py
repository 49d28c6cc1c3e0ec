"""`DataInfo`: what a model needs to know about a data source."""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class DataInfo:
  task: str  # "span_corruption" | "classification"
  vocab_size: int | None = None  # text: total, sentinels included (the last ids)
  num_classes: int | None = None
  image_shape: tuple[int, ...] | None = None  # HWC for images, (D,) for gaussian
  inputs_length: int | None = None
  targets_length: int | None = None
  pad_id: int = 0
  eos_id: int = 1
  num_sentinels: int | None = None
  num_train_examples: int | None = None  # None: generated, never repeats
  num_eval_examples: int | None = None
