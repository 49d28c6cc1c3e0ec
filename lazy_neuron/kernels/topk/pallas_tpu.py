"""Pallas Mosaic Top-k forward (TPU), also runnable in TPU interpret mode on CPU.

A block of `rows` (multiple of 8) full rows sits in VMEM; bf16 is upcast to f32 before keying (v5e has
no bf16 VPU), counts are f32 sums (exact below 2**24), min/max are float reductions, and the tie cut
is a bisection over the column (Mosaic has no scan). Untuned: no TPU was available to measure it.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from lazy_neuron.kernels.topk import keys as keys_lib
from lazy_neuron.kernels.topk import search

_CompilerParams = getattr(pltpu, "CompilerParams", None) or getattr(pltpu, "TPUCompilerParams")


def interpret_params():
  """TPU-semantics interpret mode for CPU tests (pltpu.InterpretParams where it exists)."""
  cls = getattr(pltpu, "InterpretParams", None) or getattr(pltpu, "TPUInterpretParams", None)
  return cls() if cls is not None else True


def _kernel(x_ref, y_ref, t_ref, cut_ref, *, k, d, n_interp):
  x = x_ref[...]
  dtype = x.dtype
  key = keys_lib.float_to_key(x)
  t, cut = search.row_threshold([key], [x.astype(jnp.float32)], [None], k=k, d=d, dtype=dtype,
                                count_dtype=jnp.float32, tie="bisect", n_interp=n_interp,
                                minmax_in_float=True)
  keep = search.keep_chunk(key, t, cut, 0)
  y_ref[...] = jnp.where(keep, x, jnp.zeros((), dtype))
  t_ref[...] = t
  cut_ref[...] = cut


@functools.partial(jax.jit, static_argnames=("k", "interpret", "rows", "n_interp"))
def forward(x2d, k: int, *, interpret=False, rows: int = 8, n_interp: int | None = None):
  """x2d [T, D] -> (y [T, D], t [T] int32, cut [T] int32)."""
  t_rows, d = x2d.shape
  pad = (-t_rows) % rows
  xp = jnp.pad(x2d, ((0, pad), (0, 0))) if pad else x2d
  tp = t_rows + pad
  kernel = functools.partial(_kernel, k=k, d=d, n_interp=n_interp)
  out_shape = (jax.ShapeDtypeStruct((tp, d), x2d.dtype),
               jax.ShapeDtypeStruct((tp, 1), jnp.int32),
               jax.ShapeDtypeStruct((tp, 1), jnp.int32))
  y, t, cut = pl.pallas_call(
      kernel, out_shape=out_shape, grid=(tp // rows,),
      in_specs=[pl.BlockSpec((rows, d), lambda i: (i, 0))],
      out_specs=(pl.BlockSpec((rows, d), lambda i: (i, 0)),
                 pl.BlockSpec((rows, 1), lambda i: (i, 0)),
                 pl.BlockSpec((rows, 1), lambda i: (i, 0))),
      compiler_params=_CompilerParams(dimension_semantics=("parallel",)),
      interpret=interpret, name="topk_mask_mosaic")(xp)
  return y[:t_rows], t[:t_rows, 0], cut[:t_rows, 0]
