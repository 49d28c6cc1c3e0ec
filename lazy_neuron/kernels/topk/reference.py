"""Reference Top-k mask built on `jax.lax.top_k` (the oracle every kernel is tested against).

Ordering (the same in every backend): IEEE-754 total order on the sign-magnitude bits, except that
every NaN (any sign, any payload) counts as larger than +inf and all NaNs tie. So
-inf < ... < -0.0 < +0.0 < ... < +inf < NaN. Ties are broken by lowest index.
The reference runs `lax.top_k` on the integer keys (integer top_k is exact and stable on every
backend), then rebuilds the mask from the k-th key and the index of the last kept tie.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from lazy_neuron.kernels.topk import keys as keys_lib


def topk_threshold_reference(x: jax.Array, k: int):
  """Returns (t, cut): keep = key > t | (key == t & idx < cut), per row (shape x.shape[:-1])."""
  key = keys_lib.float_to_key(x)
  top, idx = lax.top_k(key, k)
  t = top[..., k - 1]
  # top_k is stable: among keys equal to t the lowest indices come first; the last kept one is
  # the largest index among the selected entries whose key equals t.
  cut = jnp.max(jnp.where(top == t[..., None], idx, -1), axis=-1) + 1
  return t, cut.astype(jnp.int32)


def topk_mask_reference(x: jax.Array, k: int) -> jax.Array:
  """Keeps the k largest entries of each row of x[..., D] (ties: lowest index), zeroes the rest.

  Differentiable by ordinary autodiff (the mask is built from integer keys, so the gradient is
  `where(mask, g, 0)`). No argument checking beyond `1 <= k <= D`.
  """
  d = x.shape[-1]
  if not 1 <= k <= d:
    raise ValueError(f"k={k} must be in [1, {d}]")
  t, cut = topk_threshold_reference(lax.stop_gradient(x), k)
  keep = keys_lib.keep_mask(lax.stop_gradient(x), t, cut)
  return jnp.where(keep, x, jnp.zeros((), x.dtype))
