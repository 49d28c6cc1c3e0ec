"""Pieces shared by the architectures: typed model settings, norms, attention, image stems."""
from __future__ import annotations

import dataclasses
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from lazy_neuron import checks

ATTENTION_IMPLEMENTATIONS = ("auto", "xla", "cudnn")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def get_dtype(name: str):
  return DTYPES[checks.choice("model.dtype", name, DTYPES)]


@dataclasses.dataclass(frozen=True)
class MlpSettings:
  """What every MLP block of a model shares (from config.model and config.sparsity)."""
  activation: str = "relu"
  threshold: float = 0.0
  topk: Optional[int] = None
  topk_backend: str = "auto"
  measure: bool = True
  # Also count |a| <= t per threshold t (non-ReLU activations; models/mlp.py, `below_<t>`).
  magnitude_thresholds: tuple[float, ...] = ()


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelConfig:
  """A model's typed settings: its architecture sizes (the columns of its variant table, each
  overridable by the config key of the same name) and the options every model takes.

  Every field is checked on construction, so a bad value is a one-line error naming its key.
  """
  dropout_rate: float = 0.0
  remat: bool = False  # rematerialise each layer in the backward pass (memory for compute)
  # Compile one layer and scan it (models/stacking.py); None = False (unrolled: faster steps).
  scan_layers: Optional[bool] = None
  # How attention is computed (models without attention ignore it): "auto" = cuDNN's fused
  # (flash) attention where it applies (an NVIDIA GPU, bf16/fp16, head size <= 128, no attention
  # dropout), else "xla"; "xla" = XLA's own ops; "cudnn" = cuDNN, an error where it cannot run.
  attention: str = "auto"

  def __post_init__(self):
    for f in dataclasses.fields(self):
      value, name = getattr(self, f.name), f"model.{f.name}"
      kind = f.type if isinstance(f.type, str) else f.type.__name__  # postponed annotations or not
      if kind == "int":
        checks.integer(name, value, min=1)
      elif kind == "bool":
        checks.boolean(name, value)
      elif kind == "float":
        checks.number(name, value)
    check_scan_layers(self.scan_layers)
    checks.choice("model.attention", self.attention, ATTENTION_IMPLEMENTATIONS)
    if not 0.0 <= self.dropout_rate < 1.0:  # rate 1 drops everything: nothing could be learned
      raise checks.fail("model.dropout_rate", self.dropout_rate, "use a number >= 0 and < 1")

  @property
  def mlp_dims(self) -> tuple[int, ...]:
    """d_ff of every kind of MLP block in the model."""
    return (self.mlp_dim,)


def check_scan_layers(value: Any) -> Optional[bool]:
  if value is not None and not isinstance(value, bool):
    raise checks.fail("model.scan_layers", value,
                      "use true, false or None (= false)")
  return value


def variant_table(config_cls: type, columns: tuple[str, ...],
                  rows: dict[str, tuple]) -> dict[str, ModelConfig]:
  """{variant: config} from one row of sizes per variant, in `columns` order."""
  return {name: config_cls(**dict(zip(columns, row, strict=True))) for name, row in rows.items()}


def model_config(table: dict[str, ModelConfig], model_cfg: dict, model_name: str,
                 generic_keys: tuple[str, ...]) -> ModelConfig:
  """The variant's settings with the config's non-None values applied; unknown keys are errors."""
  variant = model_cfg.get("variant")
  if variant not in table:
    raise checks.fail("model.variant", variant,
                      f"choose one of {', '.join(table)} for model.name={model_name!r}")
  base = table[variant]
  fields = [f.name for f in dataclasses.fields(base)]
  valid = sorted(set(fields) | set(generic_keys))
  for key, value in model_cfg.items():
    if key not in valid:
      raise checks.fail(f"model.{key}", value,
                        f"model.name={model_name!r} takes the keys {', '.join(valid)}")
  return dataclasses.replace(base, **{k: v for k, v in model_cfg.items()
                                      if k in fields and v is not None})


class Configured(nn.Module):
  """A module built from its model's typed settings, the shared MLP settings and the compute
  dtype (the fields every model and every one of its parts takes)."""
  cfg: Any
  mlp: MlpSettings
  dtype: Any


def rms_norm(name: str, dtype) -> nn.RMSNorm:
  """T5 layer norm: scale only (param `scale`, axis `embed`), no mean subtraction, no bias; the
  statistics are computed in float32 whatever the dtype."""
  return nn.RMSNorm(epsilon=1e-6, dtype=dtype, param_dtype=jnp.float32,
                    scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
                    force_float32_reductions=True, name=name)


def image_input(image: jax.Array, dtype) -> jax.Array:
  """Model input: uint8 pixels are normalised to [-1, 1] here, on the device (as the host pipeline
  does for float32 batches: x * 2/255 - 1 in float32); float inputs are used as they are."""
  if image.dtype == jnp.uint8:
    image = image.astype(jnp.float32) * jnp.float32(2.0 / 255.0) - jnp.float32(1.0)
  return image.astype(dtype)


def patch_embed(image: jax.Array, width: int, patch_size: int, dtype, name: str) -> jax.Array:
  """[B, H, W, C] -> [B, H/p * W/p, width] by a stride-p convolution (ViT / Mixer stem).

  Call from inside a compact method: the Conv becomes a submodule `name` of the caller."""
  p = patch_size
  x = nn.Conv(width, (p, p), strides=(p, p), padding="VALID", dtype=dtype,
              kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(),
                                                       (None, None, None, "embed")),
              bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)),
              name=name)(image_input(image, dtype))
  b, h, w, d = x.shape
  return x.reshape(b, h * w, d)


def classifier_head(x: jax.Array, num_classes: int, dtype, bias_init: float = 0.0) -> jax.Array:
  """Zero-initialised linear head named `head` (big_vision's convention); logits in float32."""
  return nn.Dense(num_classes, dtype=dtype, name="head",
                  kernel_init=nn.with_logical_partitioning(nn.initializers.zeros,
                                                           ("embed", "classes")),
                  bias_init=nn.with_logical_partitioning(nn.initializers.constant(bias_init),
                                                         ("classes",)))(x).astype(jnp.float32)


def layer_norm(name: str, dtype, param_dtype, epsilon: float = 1e-6) -> nn.LayerNorm:
  return nn.LayerNorm(
      epsilon=epsilon, dtype=dtype, param_dtype=param_dtype, name=name,
      scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)))


def cudnn_attention_applies(dtype, head_dim: int, dropout: bool) -> Optional[str]:
  """None when cuDNN's fused attention can run here, else why not (in words)."""
  if jax.default_backend() != "gpu" or "NVIDIA" not in jax.devices()[0].device_kind.upper():
    return f"it needs an NVIDIA GPU (this backend is {jax.default_backend()})"
  if jnp.dtype(dtype) not in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)):
    return f"it needs model.dtype bfloat16 or float16 (not {jnp.dtype(dtype).name})"
  if head_dim > 128 or head_dim % 8:
    return f"it needs a head size <= 128 and a multiple of 8 (not {head_dim})"
  if dropout:
    return "it has no attention dropout here (model.dropout_rate > 0 in training)"
  return None


def fused_attention(implementation: str, dtype, head_dim: int, dropout: bool) -> Optional[str]:
  """The implementation name for jax.nn.dot_product_attention that `model.attention` resolves to
  here ("cudnn", or "xla" for the internal "fused_xla" of the tests), or None for our XLA ops."""
  if implementation == "fused_xla":
    return "xla"
  if implementation == "xla":
    return None
  why_not = cudnn_attention_applies(dtype, head_dim, dropout)
  if why_not is None:
    return "cudnn"
  if implementation == "cudnn":
    raise checks.fail("model.attention", "cudnn", f"{why_not}; use auto or xla")
  return None


def attention_lengths(token_mask: jax.Array) -> jax.Array:
  """[B] int32 number of real tokens per row of a [B, L] mask whose padding is at the end (our
  pipelines pad at the end), at least 1: a row with no real token (a padded eval example, its loss
  weight 0) attends to its first position instead of to nothing, which would give NaNs."""
  return jnp.maximum(jnp.sum(token_mask.astype(jnp.int32), axis=-1), 1).astype(jnp.int32)


def _fused_attention(q, k, v, bias, scale: float, causal: bool, lengths, implementation: str):
  """jax.nn.dot_product_attention on [B, L, H, D] inputs. cuDNN's kernels want even sequence
  lengths (ViT's 197 = 196 patches + the class token is not): odd lengths are padded by one
  position, which the key lengths mask out, and the padded query row is dropped again."""
  q_len, kv_len = (None, None) if lengths is None else lengths
  lq, lk = q.shape[1], k.shape[1]
  pq, pk = lq % 2, lk % 2
  if pq or pk:  # (also on the XLA fused path, where tests exercise it on CPU)
    b = q.shape[0]
    q_len = jnp.full((b,), lq, jnp.int32) if q_len is None else q_len
    kv_len = jnp.full((b,), lk, jnp.int32) if kv_len is None else kv_len
    pad = lambda x, n: jnp.pad(x, [(0, 0), (0, n)] + [(0, 0)] * (x.ndim - 2))
    q, k, v = pad(q, pq), pad(k, pk), pad(v, pk)
    if bias is not None:
      bias = jnp.pad(bias, [(0, 0), (0, 0), (0, pq), (0, pk)])
  out = jax.nn.dot_product_attention(q, k, v, bias=bias, scale=scale, is_causal=causal,
                                     query_seq_lengths=q_len, key_value_seq_lengths=kv_len,
                                     implementation=implementation)
  return out[:, :lq]


class MultiHeadAttention(nn.Module):
  """Multi-head dot-product attention with logical axes on every kernel.

  Kernels are stored 3-D ([embed, heads, kv] and [heads, kv, embed]) so that heads can be sharded.
  `query_scale_in_init=True` is T5's convention (no 1/sqrt(d) at runtime; folded into q's init).
  `init_scale` multiplies the fan-in variance-scaling init (T5: normal; ViT: xavier-like uniform).

  Masking is given twice, for the two ways of computing the same thing: `mask` ([B, 1|H, Lq, Lk]
  booleans) for XLA's ops, and `lengths` (query and key lengths, [B] int32 each, padding at the
  end) plus `causal` for the fused kernel, which never materialises the [B, H, Lq, Lk] scores.
  Outputs at padded query positions differ between the two (they are never used: every loss and
  statistic masks them); real positions agree to float tolerance (tests/test_attention.py).
  """
  num_heads: int
  head_dim: int
  use_bias: bool = False
  dropout_rate: float = 0.0
  query_scale_in_init: bool = False
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  distribution: str = "normal"
  implementation: str = "auto"  # model.attention; "fused_xla": the fused API on XLA (tests)

  def _kernel(self, name, shape, in_axis, out_axis, axes, scale=1.0):
    mode = "fan_avg" if self.distribution == "uniform" else "fan_in"
    init = nn.initializers.variance_scaling(scale, mode, self.distribution, in_axis=in_axis,
                                            out_axis=out_axis)
    return self.param(name, nn.with_logical_partitioning(init, axes), shape, self.param_dtype)

  def _bias(self, name, shape, axes):
    return self.param(name, nn.with_logical_partitioning(nn.initializers.zeros, axes), shape,
                      self.param_dtype)

  def _fused(self, deterministic: bool) -> Optional[str]:
    return fused_attention(self.implementation, self.dtype, self.head_dim,
                           self.dropout_rate > 0 and not deterministic)

  @nn.compact
  def __call__(self, q_in, kv_in, mask=None, bias=None, deterministic=True, lengths=None,
               causal=False):
    features = q_in.shape[-1]
    h, d = self.num_heads, self.head_dim

    def proj(name, x, scale=1.0):
      k = self._kernel(f"{name}_kernel", (features, h, d), 0, (1, 2), ("embed", "heads", "kv"),
                       scale)
      y = jnp.einsum("ble,ehd->blhd", x.astype(self.dtype), k.astype(self.dtype))
      if self.use_bias:
        y = y + self._bias(f"{name}_bias", (h, d), ("heads", "kv")).astype(self.dtype)
      return y

    q = proj("query", q_in, scale=1.0 / d if self.query_scale_in_init else 1.0)
    k = proj("key", kv_in)
    v = proj("value", kv_in)
    q = nn.with_logical_constraint(q, ("batch", "length", "heads", "kv"))
    scale = 1.0 if self.query_scale_in_init else d ** -0.5
    fused = self._fused(deterministic)
    if fused is not None:
      if mask is not None and lengths is None:
        raise ValueError("the fused attention needs `lengths` where a mask is given")
      out = _fused_attention(q, k, v, None if bias is None else bias.astype(self.dtype), scale,
                             causal, lengths, fused)
    else:
      logits = jnp.einsum("bqhd,bkhd->bhqk", q * jnp.asarray(scale, q.dtype), k,
                          preferred_element_type=jnp.float32)
      if bias is not None:
        logits = logits + bias
      if mask is not None:
        logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
      weights = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
      weights = nn.Dropout(self.dropout_rate)(weights, deterministic=deterministic)
      out = jnp.einsum("bhqk,bkhd->bqhd", weights, v)
    wo = self._kernel("out_kernel", (h, d, features), (0, 1), 2, ("heads", "kv", "embed"))
    y = jnp.einsum("bqhd,hde->bqe", out, wo.astype(self.dtype))
    if self.use_bias:
      y = y + self._bias("out_bias", (features,), ("embed",)).astype(self.dtype)
    return y
