"""Plain-jnp Top-k forward: the same threshold search as the kernels, one HBM pass per step."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from lazy_neuron.kernels.topk import keys as keys_lib
from lazy_neuron.kernels.topk import search


def forward(x2d: jax.Array, k: int, *, n_interp: int | None = None):
  """x2d [T, D] -> (y [T, D], t [T], cut [T])."""
  d = x2d.shape[-1]
  key = keys_lib.float_to_key(x2d)
  t, cut = search.row_threshold([key], [x2d.astype(jnp.float32)], [None], k=k, d=d,
                                dtype=x2d.dtype, n_interp=n_interp)
  keep = search.keep_chunk(key, t, cut, 0)
  y = jnp.where(keep, x2d, jnp.zeros((), x2d.dtype))
  return y, t[:, 0], cut[:, 0]
