"""THE MLP block shared by every model: wi -> activation -> (top-k) -> probe -> wo.

The probe measures the activation map (the MLP hidden layer after the activation, `a` in
`f(x) = V a`, a = act(K^T x)) inside the compiled step and sows only *reduced* statistics into the
`sparsity` collection, whose size never depends on batch or sequence length:

  fire    int32   [d_ff]  per-neuron count of real tokens on which the neuron is nonzero
  tokens  int32   []      number of real tokens measured (padding masked out)
  nonzero float32 []      number of nonzero entries over real tokens (= sum(fire); kept for readers
                          that want one number; host code uses sum(fire) for exactness)

and of the pre-activations `h = wi(x)` (the activation's input), over the same real tokens, for
the question of how the sparsity arises during training (how far and how many pre-activations
are pushed below zero):

  pre_sum       float32 []  sum of h
  pre_pos_sum   float32 []  sum of max(h, 0)
  pre_pos_count float32 []  number of entries with h > 0 (`fire` is not this count with top-k, a
                            threshold or a non-ReLU activation, so it is kept separately)

Values are summed when a block is applied more than once in one step.

With `settings.magnitude_thresholds` (used for non-ReLU activations, whose maps are rarely exactly
zero) the probe also counts, per threshold t, the real-token entries with |a| <= t (`below_<t>`,
int32 []): the curve from which magnitude-threshold methods (CATS, TEAL) pick a threshold.

Gated MLPs (`gated=True`: T5 v1.1, Flan-T5, mT5) compute wo(act(wi_0 x) * wi_1 x). The activation
map they measure is the input to `wo`, the product act(wi_0 x) * wi_1 x: a zero there is what lets
`wo` skip a row. The pre-activation sums are those of wi_0 x (the activation's input).
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from lazy_neuron.models.activations import get_activation, is_nonzero
from lazy_neuron.models.common import MlpSettings

SPARSITY = "sparsity"  # the Flax collection name

Dtype = Any


def _sum_reduce(a, b):
  return a + b


def sow_activation_stats(module: nn.Module, a: jax.Array, token_mask: Optional[jax.Array],
                         threshold: float) -> None:
  """Sows reduced statistics of the activation map `a[..., d_ff]` into the sparsity collection.

  token_mask broadcasts against a.shape[:-1]; 1 marks a real token, 0 padding (never counted).
  """
  nz = is_nonzero(a, threshold)
  lead = a.shape[:-1]
  if token_mask is None:
    mask = jnp.ones(lead, jnp.int32)
  else:
    mask = jnp.broadcast_to(token_mask, lead).astype(jnp.int32)
  nz = nz.astype(jnp.int32) * mask[..., None]
  reduce_axes = tuple(range(a.ndim - 1))
  fire = jnp.sum(nz, axis=reduce_axes, dtype=jnp.int32)
  tokens = jnp.sum(mask, dtype=jnp.int32)
  nonzero = jnp.sum(fire.astype(jnp.float32))
  _sow_sums(module, {"fire": fire, "tokens": tokens, "nonzero": nonzero})


def sow_magnitude_counts(module: nn.Module, a: jax.Array, token_mask: Optional[jax.Array],
                         thresholds: tuple[float, ...]) -> None:
  """Sows `below_<t>` (int32 []): the real-token entries of `a` with |a| <= t, per threshold t."""
  lead = a.shape[:-1]
  mask = (jnp.ones(lead, jnp.bool_) if token_mask is None
          else jnp.broadcast_to(token_mask, lead).astype(jnp.bool_))[..., None]
  mag = jnp.abs(a)
  axes = tuple(range(a.ndim - 1))
  _sow_sums(module, {f"below_{float(t):g}": jnp.sum(jnp.sum(
      mask & (mag <= jnp.asarray(t, a.dtype)), axis=axes, dtype=jnp.int32)) for t in thresholds})


def _sow_sums(module: nn.Module, values: dict) -> None:
  for name, value in values.items():
    module.sow(SPARSITY, name, value, init_fn=lambda v=value: jnp.zeros_like(v),
               reduce_fn=_sum_reduce)


def sow_preactivation_stats(module: nn.Module, h: jax.Array,
                            token_mask: Optional[jax.Array]) -> None:
  """Sows three scalar sums of the pre-activations `h[..., d_ff]` over real tokens.

  float32 is enough: the sums feed means and fractions, not exact counts. Each is reduced in two
  stages, over the tokens per neuron (<= tokens-per-step terms) and then over the d_ff neurons, so
  that the count stays exact per neuron (int32) and no single float32 accumulator has to add up
  tokens * d_ff terms (a running float32 sum of ones stops growing at 2**24). The error is then
  at most (tokens per step + d_ff + steps in the window) * 2**-24 times the sum of |h| for a
  sequential sum, and about the square root of that factor in practice (rounding errors cancel,
  and XLA adds in blocks): at 10^5 tokens per step at most 6e-3, typically ~1e-5 relative,
  below what the figure's means and fractions are read at.
  """
  lead = h.shape[:-1]
  real = (jnp.ones(lead, jnp.bool_) if token_mask is None
          else jnp.broadcast_to(token_mask, lead).astype(jnp.bool_))[..., None]
  h = h.astype(jnp.float32)  # bf16 models: measure the rounded h, but sum it in float32
  pos = real & (h > 0)
  axes = tuple(range(h.ndim - 1))
  per_neuron = lambda x: jnp.sum(jnp.sum(x, axis=axes))
  _sow_sums(module, {
      "pre_sum": per_neuron(jnp.where(real, h, 0.0)),
      "pre_pos_sum": per_neuron(jnp.where(pos, h, 0.0)),
      "pre_pos_count": jnp.sum(jnp.sum(pos, axis=axes, dtype=jnp.int32).astype(jnp.float32))})


def dense_init(scale: float = 1.0):
  return nn.initializers.variance_scaling(scale, "fan_in", "truncated_normal")


class MlpBlock(nn.Module):
  """Position-wise MLP: Dense(d_ff) -> activation -> [top-k] -> [probe] -> dropout -> Dense(d_out).

  Attributes:
    settings: what every MLP block of the model shares (activation, probe threshold, top-k, and
      whether to measure); the rest is the architecture's.
    d_ff: hidden width (the activation map has d_ff entries per token).
    d_out: output width; defaults to the input width.
    use_bias: T5 v1.0 has none; ViT/Mixer have biases.
    dropout_rate / dropout_broadcast_dims: dropout on the hidden activation (T5 shares one mask
      over the sequence, dims (-2,)).
    embed_axis / hidden_axes: logical axis names of the input features / the hidden activation.
    gated: wo(act(wi_0 x) * wi_1 x) (parameters wi_0, wi_1, wo) instead of wo(act(wi x)).
  """
  settings: MlpSettings
  d_ff: int
  d_out: Optional[int] = None
  use_bias: bool = False
  dropout_rate: float = 0.0
  dropout_broadcast_dims: tuple[int, ...] = ()
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  kernel_init: Callable = dense_init()
  bias_init: Callable = nn.initializers.zeros
  embed_axis: str = "embed"
  hidden_axes: tuple[str, ...] = ("batch", "length", "mlp")
  gated: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, token_mask: Optional[jax.Array] = None,
               deterministic: bool = True) -> jax.Array:
    s = self.settings
    d_out = self.d_out or x.shape[-1]
    wi_dense = lambda name: nn.Dense(
        self.d_ff, use_bias=self.use_bias, dtype=self.dtype, param_dtype=self.param_dtype,
        kernel_init=nn.with_logical_partitioning(self.kernel_init, (self.embed_axis, "mlp")),
        bias_init=nn.with_logical_partitioning(self.bias_init, ("mlp",)), name=name)
    wi = wi_dense("wi_0" if self.gated else "wi")
    wo = nn.Dense(
        d_out, use_bias=self.use_bias, dtype=self.dtype, param_dtype=self.param_dtype,
        kernel_init=nn.with_logical_partitioning(self.kernel_init, ("mlp", self.embed_axis)),
        bias_init=nn.with_logical_partitioning(self.bias_init, (self.embed_axis,)), name="wo")
    h = wi(x)
    if s.measure:
      sow_preactivation_stats(self, h, token_mask)
    if s.topk is not None:
      from lazy_neuron.kernels.topk import topk_mask  # deferred: kernels are optional at import
    if s.topk is not None and s.activation == "relu" and not self.gated:
      # ReLU + Top-k in one kernel pass over h: topk_mask(relu(h)) exactly (values and gradient),
      # without writing relu(h) to memory or keeping it for the backward pass.
      a = topk_mask(h, int(s.topk), backend=s.topk_backend, relu=True)
    else:
      a = get_activation(s.activation)(h)
      if self.gated:
        a = a * wi_dense("wi_1")(x)
      if s.topk is not None:
        a = topk_mask(a, int(s.topk), backend=s.topk_backend)
    if len(self.hidden_axes) == a.ndim:
      a = nn.with_logical_constraint(a, self.hidden_axes)
    if s.measure:
      sow_activation_stats(self, a, token_mask, s.threshold)
      if s.magnitude_thresholds:
        sow_magnitude_counts(self, a, token_mask, s.magnitude_thresholds)
    a = nn.Dropout(self.dropout_rate, broadcast_dims=self.dropout_broadcast_dims)(
        a, deterministic=deterministic)
    return wo(a)
