"""What every converter returns, and the one-line errors they share."""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Iterable, Optional

from lazy_neuron.errors import UserError
from lazy_neuron.pretrained.tensors import Leaf, TensorFile


@dataclasses.dataclass
class Converted:
  """A checkpoint read into lazy_neuron's terms (nothing loaded yet: leaves read on demand)."""
  kind: str                 # hf_t5 | t5x | timm_vit | hf_vit | big_vision_vit
  task: str                 # seq2seq | classification
  model: dict[str, Any]     # config.model keys (sizes from the weights)
  leaves: dict[str, Leaf]   # unrolled parameter path -> Leaf
  source_vocab_size: Optional[int] = None  # T5: the checkpoint's vocabulary before padding
  num_classes: Optional[int] = None        # ViT: classes of its head
  image_size: Optional[int] = None         # ViT: square input size the position embeddings fit
  channels: Optional[int] = None


def unsupported(where: str, found: str, supported: str) -> UserError:
  return UserError(f"checkpoint {where!r} has {found}, which lazy_neuron cannot load; supported: "
                   f"{supported}")


def shape_of(f: TensorFile, name: str, what: str) -> tuple[int, ...]:
  if not f.has(name):
    raise UserError(f"checkpoint {f.path!r} is incomplete: it has no tensor {name!r} ({what}); "
                    f"download the whole checkpoint")
  return f.shape(name)


def count_indices(names: Iterable[str], pattern: str) -> int:
  """Number of layers: 1 + the largest index captured by `pattern` (0 when none); the indices
  must be 0..n-1."""
  found = sorted({int(m.group(1)) for n in names for m in [re.match(pattern, n)] if m})
  if found and found != list(range(len(found))):
    raise UserError(f"layer indices {found} (pattern {pattern!r}) are not 0..{len(found) - 1}; "
                    f"the checkpoint is incomplete")
  return len(found)


def check_config_sizes(where: str, cfg: dict, from_weights: dict[str, Any]) -> None:
  """config.json's sizes must equal what the weights give (the weights win, and say why)."""
  for key, value in from_weights.items():
    if key in cfg and cfg[key] is not None and value is not None and cfg[key] != value:
      raise UserError(f"checkpoint {where!r}: config.json {key}={cfg[key]!r} contradicts the "
                      f"weights, which give {key}={value!r}; the files contradict each other")
