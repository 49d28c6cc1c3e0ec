"""Top-k mask: keep the k largest entries of each row, zero the rest (see docs/kernels.md)."""
from __future__ import annotations

from lazy_neuron.kernels.topk.reference import topk_mask_reference

BACKENDS = ("auto", "pallas_gpu", "pallas_tpu", "interpret_gpu", "interpret_tpu", "jnp",
            "reference")


def topk_mask(x, k: int, *, backend: str = "auto"):
  """Temporary: reference-backed until the kernels land."""
  from lazy_neuron.errors import UserError
  if backend not in BACKENDS:
    raise UserError(f"topk backend={backend!r} is not valid; choose one of {', '.join(BACKENDS)}")
  d = x.shape[-1]
  if not isinstance(k, int) or not 1 <= k <= d:
    raise UserError(f"topk k={k!r} is not valid for rows of D={d}; choose 1 <= k <= {d}")
  if k == d:
    return x
  return topk_mask_reference(x, k)


__all__ = ["BACKENDS", "topk_mask", "topk_mask_reference"]
