"""Per-row threshold search shared by the Pallas kernels and the jnp path.

Input: a row block split into chunks of integer keys ([R, B] each; padding holds PAD_KEY, never
selectable) and the same chunks as float32 values (padding 0). Output per row ([R, 1] int32):
`t`, the key of the k-th largest entry (or any key with exactly k entries >= it), and `cut`,
so that keep = key > t | (key == t & column < cut) selects exactly k entries, ties by lowest index.

Search: bracket [lo, hi) in key space with count(key >= lo) >= k > count(key >= hi), starting from
the row min and max + 1. Each step evaluates one threshold (one compare + add per element, ALU-bound)
and ends early when a threshold has exactly k entries at or above it or the bracket is one key wide.
The first `n_interp` thresholds are guesses in value space: a normal-model quantile
mean + std * z(1 - k/D), a Newton step with the model's density, then secants through the last two
points; any guess outside the open bracket falls back to bisection, and after `n_interp` steps
it is bisection only (so at most n_interp + bits + 1 steps). Ties at t are cut with a cumulative count
(`tie="cumsum"`), by repeated min-reductions over the tied columns (`tie="min"`: cheap when only a
few ties are taken), `tie="auto"` (min for up to 4 ties to take, else cumsum), or a bisection over
the column (`tie="bisect"`, for Mosaic TPU, which has no scan).
"""
from __future__ import annotations

import functools
import math
import statistics

import jax.numpy as jnp
from jax import lax

from lazy_neuron.kernels.topk import keys as keys_lib

PAD_KEY = -(2**31)
DEFAULT_N_INTERP = 8  # guessed thresholds before bisection only
_MIN_TIE_STEPS = 4  # tie="auto": up to this many tied entries to take, min-reductions; beyond, cumsum


def row_threshold(key_chunks, val_chunks, valid_chunks, *, k: int, d: int, dtype,
                  count_dtype=jnp.int32, tie: str = "cumsum", n_interp: int | None = None,
                  minmax_in_float: bool = False, bracket: str = "minmax"):
  """Returns (t, cut), int32 [R, 1]. `valid_chunks[i]` is None or a bool mask of chunk i.

  `count_dtype`: the dtype of the counts (float32 on Mosaic, exact below 2**24); `minmax_in_float`:
  the bracket's min/max reduced over float values (Mosaic); `bracket="full"`: no min/max reductions,
  the search starts from the whole key range.
  """
  dtype = jnp.dtype(dtype)
  n_interp = DEFAULT_N_INTERP if n_interp is None else n_interp
  mean, std, kmin, kmax = _row_stats(key_chunks, val_chunks, valid_chunks, d=d, dtype=dtype,
                                     bracket=bracket, minmax_in_float=minmax_in_float)
  t, count_t, count_above = _search(key_chunks, mean, std, kmin, kmax, k=k, d=d, dtype=dtype,
                                    count_dtype=count_dtype, n_interp=n_interp)
  kk = jnp.asarray(k, count_dtype)
  exact = count_t == kk                       # k entries >= t: no tie to cut
  need = (kk - count_above).astype(jnp.int32)  # entries equal to t to keep, lowest columns first
  full = jnp.full(t.shape, d, jnp.int32)
  cut = lax.cond(jnp.min(exact.astype(jnp.int32)) > 0, lambda: full,
                 functools.partial(_tie_cut, tie, key_chunks, t, exact, need, d, count_dtype))
  return t, cut


def keep_chunk(kc, t, cut, col0: int):
  col = lax.broadcasted_iota(jnp.int32, kc.shape, 1) + col0
  return (kc > t) | ((kc == t) & (col < cut))


# ---- pass 1: bracket and statistics ------------------------------------------------------------
def _chunk_key_range(kc, vc, ok, dtype, *, bracket: str, minmax_in_float: bool):
  """(min, max) key of one chunk's valid entries, [R, 1] each."""
  shape = (kc.shape[0], 1)
  if bracket == "full":  # no min/max reductions: the whole key range (NaN canonicalised)
    return (jnp.full(shape, keys_lib.neg_inf_key(dtype), jnp.int32),
            jnp.full(shape, keys_lib.nan_key(dtype), jnp.int32))
  if minmax_in_float:
    # Mosaic-friendly: reduce float values, NaN handled through the keys afterwards.
    vmin_src = jnp.where(kc == PAD_KEY, jnp.float32(jnp.inf), vc)
    mn = jnp.min(jnp.where(jnp.isnan(vc), jnp.float32(jnp.inf), vmin_src), axis=1, keepdims=True)
    mx = jnp.max(jnp.where(jnp.isnan(vc), jnp.float32(-jnp.inf), vc if ok is None else
                           jnp.where(ok, vc, jnp.float32(-jnp.inf))), axis=1, keepdims=True)
    anynan = jnp.max(jnp.where(jnp.isnan(vc), 1.0, 0.0), axis=1, keepdims=True)
    mn_k = keys_lib.float_to_key(mn.astype(dtype))
    mx_k = jnp.where(anynan > 0, jnp.int32(keys_lib.nan_key(dtype)),
                     keys_lib.float_to_key(mx.astype(dtype)))
    allnan = mn == jnp.inf
    mn_k = jnp.where(allnan & (anynan > 0), jnp.int32(keys_lib.nan_key(dtype)), mn_k)
    return mn_k, mx_k
  mn_k = jnp.min(kc if ok is None else jnp.where(ok, kc, jnp.int32(2**31 - 1)),
                 axis=1, keepdims=True)
  return mn_k, jnp.max(kc, axis=1, keepdims=True)


def _combined(chunks, op):
  """Chunks of the same shape combined elementwise by `op` (one array per distinct shape).

  A row-wise reduction is a cross-lane (and, with several warps, cross-warp) exchange; adding,
  or taking the min of, equal-shaped chunks first in registers leaves one exchange per shape
  instead of one per chunk (D = 3072 is three chunks of 1024: a third of the exchanges)."""
  groups: dict = {}
  for c in chunks:
    groups.setdefault(tuple(c.shape), []).append(c)
  return [functools.reduce(op, g) for g in groups.values()]


def _reduce_row(chunks, op, reduce):
  """reduce(op-combined chunks) over the row: [R, 1]."""
  parts = [reduce(c, axis=1, keepdims=True) for c in _combined(chunks, op)]
  return functools.reduce(op, parts)


def _row_stats(key_chunks, val_chunks, valid_chunks, *, d, dtype, bracket, minmax_in_float):
  """One pass over the row: (mean, std) of its values and (min, max) of its keys, [R, 1] each."""
  s1 = _reduce_row(val_chunks, jnp.add, jnp.sum)
  s2 = _reduce_row([v * v for v in val_chunks], jnp.add, jnp.sum)
  if bracket != "full" and not minmax_in_float:
    kmin = _reduce_row([kc if ok is None else jnp.where(ok, kc, jnp.int32(2**31 - 1))
                        for kc, ok in zip(key_chunks, valid_chunks)], jnp.minimum, jnp.min)
    kmax = _reduce_row(key_chunks, jnp.maximum, jnp.max)
  else:
    kmin = kmax = None
    for kc, vc, ok in zip(key_chunks, val_chunks, valid_chunks):
      mn_k, mx_k = _chunk_key_range(kc, vc, ok, dtype, bracket=bracket,
                                    minmax_in_float=minmax_in_float)
      kmin = mn_k if kmin is None else jnp.minimum(kmin, mn_k)
      kmax = mx_k if kmax is None else jnp.maximum(kmax, mx_k)
  mean = s1 * (1.0 / d)
  std = jnp.sqrt(jnp.maximum(s2 * (1.0 / d) - mean * mean, 0.0))
  return mean, std, kmin, kmax


# ---- the search ---------------------------------------------------------------------------------
def _count_ge(key_chunks, th, count_dtype):
  return _reduce_row([(kc >= th).astype(count_dtype) for kc in key_chunks], jnp.add, jnp.sum)


def _sum(a, count_dtype):
  return jnp.sum(a.astype(count_dtype), axis=1, keepdims=True)


def _bisect_mid(lo, hi):
  # floor((lo + hi) / 2) without int32 overflow
  return (lo >> 1) + (hi >> 1) + (lo & hi & 1)


def _search(key_chunks, mean, std, kmin, kmax, *, k, d, dtype, count_dtype, n_interp):
  """Narrows [lo, hi) until count(key >= lo) == k or the bracket is one key wide.

  Returns (t = lo, count(key >= t), count(key >= hi)), [R, 1] each.
  """
  bits = keys_lib.key_bits(dtype)
  max_steps = n_interp + bits + 2
  # Normal model of the row: the k-th largest value sits at quantile z(1 - k/D); its density turns a
  # count error into a value step (Newton).
  z = statistics.NormalDist().inv_cdf(1.0 - (k - 0.5) / d)
  inv_dens = 1.0 / (d * math.exp(-0.5 * z * z) / math.sqrt(2 * math.pi))  # std / (D phi(z)) / std
  guess0 = mean + std * z
  step_scale = std * inv_dens
  target = k - 0.5
  r = key_chunks[0].shape[0]
  kk = jnp.asarray(k, count_dtype)
  lo, hi = kmin, kmax + 1
  clo = jnp.full((r, 1), d, count_dtype)
  chi = jnp.zeros((r, 1), count_dtype)
  nanf = jnp.full((r, 1), jnp.nan, jnp.float32)
  zero_c = jnp.zeros((r, 1), count_dtype)

  def is_done(lo, hi, clo):
    return (clo == kk) | (hi <= lo + 1)

  def cond(state):
    step, lo, hi, clo, *_ = state
    not_done = jnp.logical_not(is_done(lo, hi, clo))
    return (step < max_steps) & (jnp.max(not_done.astype(jnp.int32)) > 0)

  def body(state):
    step, lo, hi, clo, chi, pv, pc, cv, cc = state
    mid = _next_threshold(step, lo, hi, clo, chi, pv, pc, cv, cc, guess0=guess0,
                          step_scale=step_scale, target=target, n_interp=n_interp, dtype=dtype)
    c = _count_ge(key_chunks, mid, count_dtype)
    active = jnp.logical_not(is_done(lo, hi, clo))
    up = active & (c >= kk)
    down = active & (c < kk)
    lo = jnp.where(up, mid, lo)
    clo = jnp.where(up, c, clo)
    hi = jnp.where(down, mid, hi)
    chi = jnp.where(down, c, chi)
    return step + 1, lo, hi, clo, chi, cv, cc, keys_lib.key_to_f32(mid, dtype), c

  state = (jnp.int32(0), lo, hi, clo, chi, nanf, zero_c, nanf, zero_c)
  _, lo, _, clo, chi, *_ = lax.while_loop(cond, body, state)
  return lo, clo, chi


def _next_threshold(step, lo, hi, clo, chi, pv, pc, cv, cc, *, guess0, step_scale, target,
                    n_interp, dtype):
  """The key to count next: for the first `n_interp` steps a guess in value space (normal-model
  quantile, then a Newton step, then secants through the last two points (pv, pc), (cv, cc)), else
  regula falsi between the bracket ends; bisection when a guess falls outside the open bracket."""
  ccf, pcf = cc.astype(jnp.float32), pc.astype(jnp.float32)
  newton = cv + (ccf - target) * step_scale
  secant = cv + (ccf - target) * (cv - pv) / (pcf - ccf)
  g = jnp.where(step == 0, guess0, jnp.where(step == 1, newton, secant))
  gk = keys_lib.float_to_key(g.astype(dtype))
  use = (step < n_interp) & jnp.logical_not(jnp.isnan(g)) & (gk > lo) & (gk < hi)
  # Fallback 1: regula falsi between the bracket ends (always inside when finite).
  vlo, vhi = keys_lib.key_to_f32(lo, dtype), keys_lib.key_to_f32(hi, dtype)
  clof, chif = clo.astype(jnp.float32), chi.astype(jnp.float32)
  rf = vlo + (vhi - vlo) * ((clof - target) / (clof - chif))
  rk = keys_lib.float_to_key(rf.astype(dtype))
  use_rf = (step < n_interp) & jnp.logical_not(jnp.isnan(rf)) & (rk > lo) & (rk < hi)
  return jnp.where(use, gk, jnp.where(use_rf & (step > 0), rk, _bisect_mid(lo, hi)))


# ---- the tie cut --------------------------------------------------------------------------------
def _tie_cut(tie, key_chunks, t, exact, need, d, count_dtype):
  """The column `cut` such that the entries equal to t in columns < cut are exactly `need`
  (D where the row is exact)."""
  if tie == "auto":  # min-reductions for a few ties, the cumulative count for many (ReLU zeros)
    few = jnp.max(jnp.where(exact, 0, need)) <= _MIN_TIE_STEPS
    return lax.cond(few, functools.partial(_tie_cut_min, key_chunks, t, exact, need, d),
                    functools.partial(_tie_cut_cumsum, key_chunks, t, exact, need, d))
  if tie == "min":
    return _tie_cut_min(key_chunks, t, exact, need, d)
  if tie == "cumsum":
    return _tie_cut_cumsum(key_chunks, t, exact, need, d)
  return _tie_cut_bisect(key_chunks, t, exact, need, d, count_dtype)


def _offsets(key_chunks):
  offs, o = [], 0
  for kc in key_chunks:
    offs.append(o)
    o += kc.shape[1]
  return offs


def _tie_cut_min(key_chunks, t, exact, need, d):
  # The need-th tied column, found by `need` min-reductions over the row (no scan): bf16 rows
  # usually tie 2-3 entries at the k-th value, so need is 1 or 2 and this beats a cumulative count.
  r = t.shape[0]
  full = jnp.full((r, 1), d, jnp.int32)
  need_eff = jnp.where(exact, 0, need)
  offs = _offsets(key_chunks)

  def next_tie(prev):
    cands = []
    for kc, off in zip(key_chunks, offs):
      col = lax.broadcasted_iota(jnp.int32, kc.shape, 1) + off
      cands.append(jnp.where((kc == t) & (col > prev), col, jnp.int32(d)))
    return jnp.minimum(full, _reduce_row(cands, jnp.minimum, jnp.min))

  def cond(state):
    j, _ = state
    return jnp.max((j < need_eff).astype(jnp.int32)) > 0

  def body(state):
    j, prev = state
    return j + 1, jnp.where(j < need_eff, next_tie(prev), prev)

  _, pos = lax.while_loop(cond, body, (jnp.zeros((r, 1), jnp.int32), jnp.full((r, 1), -1, jnp.int32)))
  return jnp.where(exact, full, pos + 1)


def _tie_cut_cumsum(key_chunks, t, exact, need, d):
  r = t.shape[0]
  running = jnp.zeros((r, 1), jnp.int32)
  before = jnp.zeros((r, 1), jnp.int32)
  for kc in key_chunks:
    eq = (kc == t).astype(jnp.int32)
    cs = jnp.cumsum(eq, axis=1) + running
    before = before + jnp.sum((cs < need).astype(jnp.int32), axis=1, keepdims=True)
    running = running + jnp.sum(eq, axis=1, keepdims=True)
  return jnp.where(exact, jnp.full((r, 1), d, jnp.int32), before + 1)


def _tie_cut_bisect(key_chunks, t, exact, need, d, count_dtype):
  # Smallest c in [1, D] with count(key == t & col < c) >= need: no scan (Mosaic has none).
  r = t.shape[0]
  full = jnp.full((r, 1), d, jnp.int32)
  offs = _offsets(key_chunks)

  def count_before(c):
    tot = None
    for kc, off in zip(key_chunks, offs):
      col = lax.broadcasted_iota(jnp.int32, kc.shape, 1) + off
      s = _sum((kc == t) & (col < c), count_dtype)
      tot = s if tot is None else tot + s
    return tot.astype(jnp.int32)

  def step_fn(_, lh):
    lo_c, hi_c = lh
    m = (lo_c + hi_c) >> 1
    ok = count_before(m) >= need
    return jnp.where(ok, lo_c, m), jnp.where(ok, m, hi_c)

  n = max(1, math.ceil(math.log2(max(d, 2))))
  _, hi_c = lax.fori_loop(0, n, step_fn, (jnp.zeros((r, 1), jnp.int32), full))
  return jnp.where(exact, full, hi_c)
