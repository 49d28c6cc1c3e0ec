"""T5 v1.0 encoder-decoder (the paper's T5): ReLU MLP without biases, RMS layer norm, relative
position buckets shared by the layers of a stack, embeddings shared by encoder, decoder and output.
"""
from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lazy_neuron.models.common import MlpSettings, MultiHeadAttention, RMSNorm
from lazy_neuron.models.mlp import MlpBlock

# d_model / d_ff / layers from the T5 paper (v1.0 sizes); tiny is ours, for CPU runs and tests.
VARIANTS = {
    "tiny": dict(emb_dim=128, num_heads=4, head_dim=32, mlp_dim=1024, num_encoder_layers=2,
                 num_decoder_layers=2),
    "small": dict(emb_dim=512, num_heads=8, head_dim=64, mlp_dim=2048, num_encoder_layers=6,
                  num_decoder_layers=6),
    "base": dict(emb_dim=768, num_heads=12, head_dim=64, mlp_dim=3072, num_encoder_layers=12,
                 num_decoder_layers=12),
    "large": dict(emb_dim=1024, num_heads=16, head_dim=64, mlp_dim=4096, num_encoder_layers=24,
                  num_decoder_layers=24),
    "3b": dict(emb_dim=1024, num_heads=32, head_dim=128, mlp_dim=16384, num_encoder_layers=24,
               num_decoder_layers=24),
    "11b": dict(emb_dim=1024, num_heads=128, head_dim=128, mlp_dim=65536, num_encoder_layers=24,
                num_decoder_layers=24),
}


def relative_position_bucket(relative_position: np.ndarray, bidirectional: bool, num_buckets: int,
                             max_distance: int) -> np.ndarray:
  """T5's bucketing of (key position - query position): exact for small, log-spaced for large."""
  ret = 0
  n = -relative_position
  if bidirectional:
    num_buckets //= 2
    ret += (n < 0).astype(np.int32) * num_buckets
    n = np.abs(n)
  else:
    n = np.maximum(n, 0)
  max_exact = num_buckets // 2
  is_small = n < max_exact
  val_if_large = max_exact + (
      np.log(n.astype(np.float32) / max_exact + np.finfo(np.float32).eps)
      / np.log(max_distance / max_exact) * (num_buckets - max_exact)).astype(np.int32)
  val_if_large = np.minimum(val_if_large, num_buckets - 1)
  return ret + np.where(is_small, n, val_if_large)


class RelativePositionBias(nn.Module):
  num_heads: int
  bidirectional: bool
  num_buckets: int = 32
  max_distance: int = 128
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, q_len: int, k_len: int) -> jax.Array:
    ctx = np.arange(q_len, dtype=np.int32)[:, None]
    mem = np.arange(k_len, dtype=np.int32)[None, :]
    buckets = relative_position_bucket(mem - ctx, self.bidirectional, self.num_buckets,
                                       self.max_distance)
    table = self.param(
        "rel_embedding",
        nn.with_logical_partitioning(nn.initializers.variance_scaling(1.0, "fan_avg", "uniform"),
                                     ("heads", "relpos_buckets")),
        (self.num_heads, self.num_buckets), jnp.float32)
    bias = jnp.take(table, jnp.asarray(buckets), axis=1)  # [heads, q, k]
    return bias[None].astype(jnp.float32)


class EncoderLayer(nn.Module):
  cfg: dict
  mlp: MlpSettings
  dtype: Any

  @nn.compact
  def __call__(self, x, mask, bias, token_mask, deterministic):
    c = self.cfg
    y = RMSNorm(dtype=self.dtype, name="pre_attention_norm")(x)
    y = MultiHeadAttention(c["num_heads"], c["head_dim"], dropout_rate=c["dropout_rate"],
                           query_scale_in_init=True, dtype=self.dtype, name="attention")(
                               y, y, mask=mask, bias=bias, deterministic=deterministic)
    x = x + nn.Dropout(c["dropout_rate"], broadcast_dims=(-2,))(y, deterministic=deterministic)
    y = RMSNorm(dtype=self.dtype, name="pre_mlp_norm")(x)
    y = _mlp(c, self.mlp, self.dtype)(y, token_mask, deterministic=deterministic)
    x = x + nn.Dropout(c["dropout_rate"], broadcast_dims=(-2,))(y, deterministic=deterministic)
    return nn.with_logical_constraint(x, ("batch", "length", "embed"))


class DecoderLayer(nn.Module):
  cfg: dict
  mlp: MlpSettings
  dtype: Any

  @nn.compact
  def __call__(self, x, enc, self_mask, cross_mask, bias, token_mask, deterministic):
    c = self.cfg
    drop = lambda v: nn.Dropout(c["dropout_rate"], broadcast_dims=(-2,))(
        v, deterministic=deterministic)
    y = RMSNorm(dtype=self.dtype, name="pre_self_attention_norm")(x)
    y = MultiHeadAttention(c["num_heads"], c["head_dim"], dropout_rate=c["dropout_rate"],
                           query_scale_in_init=True, dtype=self.dtype, name="self_attention")(
                               y, y, mask=self_mask, bias=bias, deterministic=deterministic)
    x = x + drop(y)
    y = RMSNorm(dtype=self.dtype, name="pre_cross_attention_norm")(x)
    y = MultiHeadAttention(c["num_heads"], c["head_dim"], dropout_rate=c["dropout_rate"],
                           query_scale_in_init=True, dtype=self.dtype, name="cross_attention")(
                               y, enc, mask=cross_mask, deterministic=deterministic)
    x = x + drop(y)
    y = RMSNorm(dtype=self.dtype, name="pre_mlp_norm")(x)
    y = _mlp(c, self.mlp, self.dtype)(y, token_mask, deterministic=deterministic)
    x = x + drop(y)
    return nn.with_logical_constraint(x, ("batch", "length", "embed"))


def _mlp(c: dict, s: MlpSettings, dtype) -> MlpBlock:
  return MlpBlock(d_ff=c["mlp_dim"], activation=s.activation, threshold=s.threshold, topk=s.topk,
                  topk_backend=s.topk_backend, measure=s.measure, use_bias=False,
                  dropout_rate=c["dropout_rate"], dtype=dtype, name="mlp")


class Stack(nn.Module):
  """A stack of layers named layer_00, layer_01, ... (these names are the metric layer names)."""
  cfg: dict
  mlp: MlpSettings
  decoder: bool
  dtype: Any

  @nn.compact
  def __call__(self, x, token_mask, enc=None, enc_mask=None, deterministic=True):
    c = self.cfg
    n = c["num_decoder_layers" if self.decoder else "num_encoder_layers"]
    length = x.shape[1]
    bias = RelativePositionBias(c["num_heads"], bidirectional=not self.decoder,
                                name="relpos_bias")(length, length)
    valid = token_mask.astype(bool)
    self_mask = valid[:, None, :, None] & valid[:, None, None, :]
    if self.decoder:
      causal = jnp.tril(jnp.ones((length, length), bool))
      self_mask = self_mask & causal[None, None]
      cross_mask = valid[:, None, :, None] & enc_mask.astype(bool)[:, None, None, :]
    x = nn.Dropout(c["dropout_rate"], broadcast_dims=(-2,))(x, deterministic=deterministic)
    layer_cls = DecoderLayer if self.decoder else EncoderLayer
    if c.get("remat", False):  # `self` counts as argument 0; `deterministic` is the last one
      layer_cls = nn.remat(layer_cls, static_argnums=(7,) if self.decoder else (5,))
    for i in range(n):
      layer = layer_cls(c, self.mlp, self.dtype, name=f"layer_{i:02d}")
      if self.decoder:
        x = layer(x, enc, self_mask, cross_mask, bias, token_mask, deterministic)
      else:
        x = layer(x, self_mask, bias, token_mask, deterministic)
    x = RMSNorm(dtype=self.dtype, name="final_norm")(x)
    return nn.Dropout(c["dropout_rate"], broadcast_dims=(-2,))(x, deterministic=deterministic)


class T5(nn.Module):
  """T5 v1.0. Inputs: encoder_input_tokens [B, Li], decoder_input_tokens [B, Lt], and
  decoder_target_tokens [B, Lt] (only its padding pattern is used, T5X-style). Pad id 0."""
  vocab_size: int
  cfg: dict
  mlp: MlpSettings = MlpSettings()
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, encoder_input_tokens, decoder_input_tokens, decoder_target_tokens,
               example_mask: Optional[jax.Array] = None, deterministic: bool = True):
    c = self.cfg
    embed = nn.Embed(
        self.vocab_size, c["emb_dim"], dtype=self.dtype, name="shared_embedding",
        embedding_init=nn.with_logical_partitioning(nn.initializers.normal(1.0),
                                                    ("vocab", "embed")))
    enc_mask = (encoder_input_tokens > 0).astype(jnp.int32)
    dec_mask = (decoder_target_tokens > 0).astype(jnp.int32)
    if example_mask is not None:
      enc_mask = enc_mask * example_mask[:, None].astype(jnp.int32)
      dec_mask = dec_mask * example_mask[:, None].astype(jnp.int32)
    x = embed(encoder_input_tokens.astype(jnp.int32))
    enc = Stack(c, self.mlp, decoder=False, dtype=self.dtype, name="encoder")(
        x, enc_mask, deterministic=deterministic)
    y = embed(decoder_input_tokens.astype(jnp.int32))
    # decoder_input_tokens start with 0 (= pad id): the first position is real whenever its target
    # is, so the decoder mask comes from the targets.
    y = Stack(c, self.mlp, decoder=True, dtype=self.dtype, name="decoder")(
        y, dec_mask, enc=enc, enc_mask=enc_mask, deterministic=deterministic)
    logits = embed.attend(y) / jnp.sqrt(jnp.asarray(c["emb_dim"], self.dtype))
    return nn.with_logical_constraint(logits.astype(jnp.float32), ("batch", "length", "vocab"))
