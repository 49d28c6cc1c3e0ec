"""T5 v1.0 encoder-decoder (the paper's T5): ReLU MLP without biases, RMS layer norm, relative
position buckets shared by the layers of a stack, embeddings shared by encoder, decoder and output.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lazy_neuron import checks
from lazy_neuron.models.common import (Configured, ModelConfig, MultiHeadAttention,
                                       attention_lengths, rms_norm, variant_table)
from lazy_neuron.models.mlp import MlpBlock
from lazy_neuron.models.stacking import apply_stack


@dataclasses.dataclass(frozen=True)
class T5Config(ModelConfig):
  emb_dim: int
  num_heads: int
  head_dim: int
  mlp_dim: int
  num_encoder_layers: int
  num_decoder_layers: int
  # T5 v1.1 / Flan-T5 / mT5 (checkpoints imported by lazy_neuron.pretrained): a gated MLP
  # (wi_0, wi_1; use activation gelu_tanh), and output logits from their own matrix
  # `logits_dense` without the 1/sqrt(emb_dim) scaling that v1.0's tied embedding has.
  mlp_gated: bool = False
  logits_via_embedding: bool = True
  # None: the data's vocabulary, padded to a multiple of 128; set to a checkpoint's own size.
  vocab_size: Optional[int] = None
  # Look tokens up as a one-hot matmul instead of a gather (SharedEmbedding); None = auto: for
  # vocabularies of at most ONE_HOT_MAX_VOCAB entries.
  one_hot_embedding: Optional[bool] = None

  def __post_init__(self):
    super().__post_init__()
    if self.one_hot_embedding is not None:
      checks.boolean("model.one_hot_embedding", self.one_hot_embedding)


# d_model / d_ff / layers from the T5 paper (v1.0 sizes); tiny is ours, for CPU runs and tests.
VARIANTS = variant_table(T5Config, (
    "emb_dim", "num_heads", "head_dim", "mlp_dim", "num_encoder_layers", "num_decoder_layers"), {
        "tiny": (128, 4, 32, 1024, 2, 2),
        "small": (512, 8, 64, 2048, 6, 6),
        "base": (768, 12, 64, 3072, 12, 12),
        "large": (1024, 16, 64, 4096, 24, 24),
        "3b": (1024, 32, 128, 16384, 24, 24),
        "11b": (1024, 128, 128, 65536, 24, 24),
    })


def _ceil_root(x: int, k: int) -> int:
  """The smallest integer r >= 1 with r**k >= x (exact, for Python ints of any size)."""
  r = max(1, round(math.exp(math.log(x) / k)))
  while r ** k < x:
    r += 1
  while r > 1 and (r - 1) ** k >= x:
    r -= 1
  return r


def _bucket_starts(num_buckets: int, max_distance: int) -> np.ndarray:
  """The smallest offset (distance >= 0) that falls in each of `num_buckets` buckets.

  Offsets below max_exact = num_buckets // 2 get a bucket each. The other buckets share the log
  scale from max_exact to max_distance evenly: offset n is in log bucket j or beyond exactly when
  log(n / max_exact) / log(max_distance / max_exact) >= j / num_log, i.e. when
  n**num_log >= max_exact**(num_log - j) * max_distance**j. Comparing integers keeps the edges
  exact (n = 64 with 32 buckets lies on one), whatever the float rounding of a log would do.
  """
  max_exact = num_buckets // 2
  num_log = num_buckets - max_exact
  log_starts = [_ceil_root(max_exact ** (num_log - j) * max_distance ** j, num_log)
                for j in range(num_log)]
  return np.array(list(range(max_exact)) + log_starts, np.int64)


def relative_position_bucket(relative_position: np.ndarray, bidirectional: bool, num_buckets: int,
                             max_distance: int) -> np.ndarray:
  """T5's bucket of each relative position (key position - query position).

  Bidirectional (encoder): half of the buckets for keys at or before the query, the upper half for
  keys after it; unidirectional (decoder): all buckets for keys at or before the query, and keys
  after it share bucket 0. Within those, the distance picks the bucket: small distances exactly,
  larger ones log-spaced up to max_distance; anything farther shares the last bucket.
  """
  rel = np.asarray(relative_position, np.int64)
  if bidirectional:
    half = num_buckets // 2
    offset = np.where(rel > 0, half, 0)
    distance = np.abs(rel)
  else:
    half, offset = num_buckets, 0
    distance = np.maximum(-rel, 0)
  starts = _bucket_starts(half, max_distance)
  return (offset + np.searchsorted(starts, distance, side="right") - 1).astype(np.int32)


class RelativePositionBias(nn.Module):
  num_heads: int
  bidirectional: bool
  num_buckets: int = 32
  max_distance: int = 128

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


def _dropout(x, rate: float, deterministic: bool):
  # One mask shared over the sequence (T5's convention).
  return nn.Dropout(rate, broadcast_dims=(-2,))(x, deterministic=deterministic)


def _attention(layer: Configured, name: str) -> MultiHeadAttention:
  c = layer.cfg
  return MultiHeadAttention(c.num_heads, c.head_dim, dropout_rate=c.dropout_rate,
                            query_scale_in_init=True, dtype=layer.dtype,
                            implementation=c.attention, name=name)


def _residual(layer: Configured, x, norm_name: str, branch, deterministic: bool):
  """A pre-norm residual sub-layer: x + dropout(branch(rms_norm(x)))."""
  y = branch(rms_norm(norm_name, layer.dtype)(x))
  return x + _dropout(y, layer.cfg.dropout_rate, deterministic)


def _mlp_residual(layer: Configured, x, token_mask, deterministic: bool):
  mlp = MlpBlock(layer.mlp, d_ff=layer.cfg.mlp_dim, use_bias=False, gated=layer.cfg.mlp_gated,
                 dropout_rate=layer.cfg.dropout_rate, dropout_broadcast_dims=(-2,),
                 dtype=layer.dtype, name="mlp")
  x = _residual(layer, x, "pre_mlp_norm",
                lambda y: mlp(y, token_mask, deterministic=deterministic), deterministic)
  return nn.with_logical_constraint(x, ("batch", "length", "embed"))


def _layer_input(x):
  # Scanned, x is the loop carry: constraining it where the layer starts (as where it ends) pins
  # the layout of its gradient in the backward loop too, which the partitioner otherwise lays out
  # like the fsdp-sharded weights and reshards in every iteration.
  return nn.with_logical_constraint(x, ("batch", "length", "embed"))


# A layer returns (x, None): the (carry, output) pair that nn.scan wants of a scanned layer.
class EncoderLayer(Configured):

  @nn.compact
  def __call__(self, x, mask, bias, token_mask, lengths, deterministic):
    x = _layer_input(x)
    attend = _attention(self, "attention")
    x = _residual(self, x, "pre_attention_norm",
                  lambda y: attend(y, y, mask=mask, bias=bias, deterministic=deterministic,
                                   lengths=(lengths[0], lengths[0])),
                  deterministic)
    return _mlp_residual(self, x, token_mask, deterministic), None


class DecoderLayer(Configured):

  @nn.compact
  def __call__(self, x, enc, self_mask, cross_mask, bias, token_mask, lengths, deterministic):
    # lengths: (decoder, encoder) real-token counts, for the fused attention.
    x = _layer_input(x)
    attend_self = _attention(self, "self_attention")
    attend_enc = _attention(self, "cross_attention")
    x = _residual(self, x, "pre_self_attention_norm",
                  lambda y: attend_self(y, y, mask=self_mask, bias=bias,
                                        deterministic=deterministic,
                                        lengths=(lengths[0], lengths[0]), causal=True),
                  deterministic)
    x = _residual(self, x, "pre_cross_attention_norm",
                  lambda y: attend_enc(y, enc, mask=cross_mask, deterministic=deterministic,
                                       lengths=lengths),
                  deterministic)
    return _mlp_residual(self, x, token_mask, deterministic), None


class Stack(Configured):
  """A stack of layers named layer_00, layer_01, ... (these names are the metric layer names), or,
  with cfg.scan_layers, one scanned module `layers` whose parameters have a leading layer axis.
  The relative position bias is the stack's, computed once and shared by its layers."""
  decoder: bool

  @nn.compact
  def __call__(self, x, token_mask, enc=None, enc_mask=None, deterministic=True):
    c = self.cfg
    n = c.num_decoder_layers if self.decoder else c.num_encoder_layers
    length = x.shape[1]
    bias = RelativePositionBias(c.num_heads, bidirectional=not self.decoder,
                                name="relpos_bias")(length, length)
    valid = token_mask.astype(bool)
    self_mask = valid[:, None, :, None] & valid[:, None, None, :]
    if self.decoder:
      causal = jnp.tril(jnp.ones((length, length), bool))
      self_mask = self_mask & causal[None, None]
      cross_mask = valid[:, None, :, None] & enc_mask.astype(bool)[:, None, None, :]
      lengths = (attention_lengths(token_mask), attention_lengths(enc_mask))
      layer_cls, args = DecoderLayer, (enc, self_mask, cross_mask, bias, token_mask, lengths,
                                       deterministic)
    else:
      lengths = (attention_lengths(token_mask),)
      layer_cls, args = EncoderLayer, (self_mask, bias, token_mask, lengths, deterministic)
    x = _dropout(x, c.dropout_rate, deterministic)
    x = apply_stack(layer_cls, c, self.mlp, self.dtype, n, x, *args)
    x = rms_norm("final_norm", self.dtype)(x)
    return _dropout(x, c.dropout_rate, deterministic)


# The largest vocabulary embedded by a one-hot matmul by default (the byte-level one has 384
# entries after padding; sentencepiece's 32,128 are gathered).
ONE_HOT_MAX_VOCAB = 4096


class SharedEmbedding(nn.Embed):
  """nn.Embed (same parameter, same `attend`) whose lookup can be a one-hot matmul.

  A gather's gradient is a scatter-add into the [vocab, d] table, which the GPU does with atomic
  adds: when many tokens of a batch share an id they serialise. With the byte-level vocabulary on
  real text that took T5-Base 43 ms of a 184-ms step on one H200 (against 0 ms on uniformly random
  ids, where ids rarely repeat). one_hot(ids) @ table computes the same rows exactly (one nonzero
  term per sum) and its gradient one_hot^T @ g is a matmul: 2 * tokens * vocab * d FLOPs each
  way, negligible for small vocabularies, so `auto` uses it up to ONE_HOT_MAX_VOCAB entries.
  """
  one_hot: bool = False

  def __call__(self, inputs):
    if not self.one_hot:
      return super().__call__(inputs)
    (embedding,) = self.promote_dtype(self.embedding, dtype=self.dtype, inexact=False)
    return jnp.dot(jax.nn.one_hot(inputs, self.num_embeddings, dtype=embedding.dtype), embedding,
                   preferred_element_type=jnp.float32).astype(embedding.dtype)


class T5(Configured):
  """T5 v1.0. Inputs: encoder_input_tokens [B, Li], decoder_input_tokens [B, Lt], and
  decoder_target_tokens [B, Lt] (only its padding pattern is used, T5X-style). Pad id 0."""
  vocab_size: int

  @nn.compact
  def __call__(self, encoder_input_tokens, decoder_input_tokens, decoder_target_tokens,
               example_mask: Optional[jax.Array] = None, deterministic: bool = True):
    c = self.cfg
    one_hot = (self.vocab_size <= ONE_HOT_MAX_VOCAB if c.one_hot_embedding is None
               else c.one_hot_embedding)
    embed = SharedEmbedding(
        self.vocab_size, c.emb_dim, dtype=self.dtype, name="shared_embedding", one_hot=one_hot,
        embedding_init=nn.with_logical_partitioning(nn.initializers.normal(1.0),
                                                    ("vocab", "embed")))
    enc_mask = (encoder_input_tokens > 0).astype(jnp.int32)
    dec_mask = (decoder_target_tokens > 0).astype(jnp.int32)
    if example_mask is not None:
      enc_mask = enc_mask * example_mask[:, None].astype(jnp.int32)
      dec_mask = dec_mask * example_mask[:, None].astype(jnp.int32)
    x = embed(encoder_input_tokens.astype(jnp.int32))
    enc = Stack(c, self.mlp, self.dtype, decoder=False, name="encoder")(
        x, enc_mask, deterministic=deterministic)
    y = embed(decoder_input_tokens.astype(jnp.int32))
    # decoder_input_tokens start with 0 (= pad id): the first position is real whenever its target
    # is, so the decoder mask comes from the targets.
    y = Stack(c, self.mlp, self.dtype, decoder=True, name="decoder")(
        y, dec_mask, enc=enc, enc_mask=enc_mask, deterministic=deterministic)
    if c.logits_via_embedding:
      logits = embed.attend(y) / jnp.sqrt(jnp.asarray(c.emb_dim, self.dtype))
    else:
      logits = nn.DenseGeneral(
          self.vocab_size, use_bias=False, dtype=self.dtype, name="logits_dense",
          kernel_init=nn.with_logical_partitioning(nn.initializers.variance_scaling(
              1.0, "fan_in", "truncated_normal"), ("embed", "vocab")))(y)
    return nn.with_logical_constraint(logits.astype(jnp.float32), ("batch", "length", "vocab"))
