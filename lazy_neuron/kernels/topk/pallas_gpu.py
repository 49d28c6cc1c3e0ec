"""Pallas Triton Top-k forward (GPU), also runnable in Pallas interpret mode on CPU.

One program handles `rows` rows; each row is held in registers as power-of-two chunks (e.g.
3072 = 3 x 1024, no padding lanes), the threshold search (search.py) runs on the keys, and the
masked row is written once: one HBM read + one write, plus 8 bytes a row for (t, cut).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from lazy_neuron.kernels.topk import keys as keys_lib
from lazy_neuron.kernels.topk import search

_CompilerParams = getattr(plgpu, "CompilerParams", None) or getattr(plgpu, "TritonCompilerParams")


def _chunks(d: int, chunk: int):
  """[(col0, block, n_valid)] covering [0, d) with power-of-two blocks of at most `chunk`."""
  out, c0 = [], 0
  while c0 < d:
    rem = d - c0
    b = min(chunk, pl.next_power_of_2(rem))
    out.append((c0, b, min(b, rem)))
    c0 += b
  return out


def _kernel(x_ref, y_ref, t_ref, cut_ref, *, k, t_rows, d, rows, chunk, n_interp, reload_x,
            bracket, tie, relu):
  i = pl.program_id(0)
  row = i * rows + jnp.arange(rows, dtype=jnp.int32)
  row_ok = row < t_rows
  dtype = x_ref.dtype
  keys_, vals, valids, masks, cols = [], [], [], [], []
  for c0, b, nv in _chunks(d, chunk):
    col = c0 + jnp.arange(b, dtype=jnp.int32)
    col_ok = col < d
    m = row_ok[:, None] & col_ok[None, :]
    x = plgpu.load(x_ref.at[row[:, None], col[None, :]], mask=m, other=0)
    kc = keys_lib.float_to_key(x)
    valid = None if nv == b else jnp.broadcast_to(col_ok[None, :], (rows, b))
    if valid is not None:
      kc = jnp.where(valid, kc, jnp.int32(search.PAD_KEY))
    keys_.append(kc)
    vals.append(x.astype(jnp.float32))
    valids.append(valid)
    masks.append(m)
    cols.append((c0, col, x))
  t, cut = search.row_threshold(keys_, vals, valids, k=k, d=d, dtype=dtype, n_interp=n_interp,
                                bracket=bracket, tie=tie)
  for kc, m, (c0, col, x) in zip(keys_, masks, cols):
    keep = search.keep_chunk(kc, t, cut, c0)
    if reload_x:
      x = plgpu.load(x_ref.at[row[:, None], col[None, :]], mask=m, other=0)
    if relu:  # topk_mask(relu(x)) == relu(topk_mask(x)): drop x <= 0 (NaN stays, as in relu)
      keep = keep & jnp.logical_not(x <= jnp.zeros((), dtype))
    y = jnp.where(keep, x, jnp.zeros((), dtype))
    plgpu.store(y_ref.at[row[:, None], col[None, :]], y, mask=m)
  plgpu.store(t_ref.at[row], t[:, 0], mask=row_ok)
  plgpu.store(cut_ref.at[row], cut[:, 0], mask=row_ok)


# Launch configs picked on one NVIDIA H200 by `lazy-neuron bench topk --tune` (T = 65536, k = 128,
# N(0, 1) rows; docs/bench/topk_h200.json), keyed by (D, dtype name). Other shapes use the rule below,
# which interpolates these. Tie cut (search.py): "auto" (min-reductions for a few ties) measured
# 0.527 vs 0.544 ms for "cumsum" at D = 3072 bf16 and 0.783 vs 0.824 at 4096, but 0.197 vs 0.173 at
# D = 1024, where the smaller program keeps "cumsum" (docs/bench/topk_tie_h200.json). A second
# launch sweep with tie="auto" (docs/bench/topk_launch_sweep_h200_v2.json) kept D = 3072 at 2 warps
# and moved D = 4096 bf16 to 4 warps.
TUNED: dict = {
    (1024, "bfloat16"): dict(num_warps=1, chunk=1024, tie="cumsum"),
    (1024, "float32"): dict(num_warps=1, chunk=1024, tie="cumsum"),
    # 4 warps since the chunks are combined before each row reduction (search.py): 0.449 vs
    # 0.492 ms at 2 warps (T = 50688, ViT-B/16's rows; docs/bench/topk_vit_rows_relu_fused_combined.json)
    (3072, "bfloat16"): dict(num_warps=4, chunk=1024),
    (3072, "float32"): dict(num_warps=1, chunk=1024),
    # 4 warps, chunks of 1024 after the chunk combining: 0.681 vs 0.776 ms with chunks of 2048
    # (docs/bench/topk_tune_1024_4096_h200.json)
    (4096, "bfloat16"): dict(num_warps=4, chunk=1024),
    (4096, "float32"): dict(num_warps=2, chunk=2048),
    (16384, "bfloat16"): dict(num_warps=4, chunk=4096, reload_x=True),
    (16384, "float32"): dict(num_warps=4, chunk=4096, reload_x=True),
}


def default_config(d: int, dtype) -> dict:
  base = dict(rows=1, chunk=1024, num_warps=2, n_interp=None, reload_x=False, bracket="minmax",
              tie="auto")
  tuned = TUNED.get((d, jnp.dtype(dtype).name))
  if tuned is not None:
    return dict(base, **tuned)
  if d <= 1024:
    return dict(base, num_warps=1, chunk=pl.next_power_of_2(d), tie="cumsum")
  if d <= 6144:
    return dict(base, num_warps=2, chunk=1024 if d % 2048 else 2048)
  return dict(base, num_warps=4, chunk=4096, reload_x=True)


@functools.partial(jax.jit, static_argnames=("k", "interpret", "rows", "chunk", "num_warps",
                                              "n_interp", "reload_x", "bracket", "tie",
                                              "relu"))
def forward(x2d, k: int, *, interpret: bool = False, rows: int | None = None,
            chunk: int | None = None, num_warps: int | None = None,
            n_interp: int | None = None, reload_x: bool | None = None,
            bracket: str | None = None, tie: str | None = None, relu: bool = False):
  """x2d [T, D] -> (y [T, D], t [T] int32, cut [T] int32); relu=True: y = relu(top-k of x)."""
  t_rows, d = x2d.shape
  cfg = default_config(d, x2d.dtype)
  rows = cfg["rows"] if rows is None else rows
  chunk = cfg["chunk"] if chunk is None else chunk
  num_warps = cfg["num_warps"] if num_warps is None else num_warps
  reload_x = cfg["reload_x"] if reload_x is None else reload_x
  bracket = cfg["bracket"] if bracket is None else bracket
  n_interp = cfg["n_interp"] if n_interp is None else n_interp
  tie = cfg["tie"] if tie is None else tie
  kernel = functools.partial(_kernel, k=k, t_rows=t_rows, d=d, rows=rows, chunk=chunk,
                             n_interp=n_interp, reload_x=reload_x, bracket=bracket, tie=tie,
                             relu=relu)
  out_shape = (jax.ShapeDtypeStruct((t_rows, d), x2d.dtype),
               jax.ShapeDtypeStruct((t_rows,), jnp.int32),
               jax.ShapeDtypeStruct((t_rows,), jnp.int32))
  return pl.pallas_call(
      kernel, out_shape=out_shape, grid=(pl.cdiv(t_rows, rows),),
      compiler_params=_CompilerParams(num_warps=num_warps, num_stages=1),
      interpret=interpret, name="topk_mask_triton")(x2d)
