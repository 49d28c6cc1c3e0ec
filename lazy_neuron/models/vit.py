"""Vision Transformer with a ReLU MLP (the paper's ViT): patch embedding, class token or global
average pool, learned position embeddings, pre-norm blocks.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from lazy_neuron import checks
from lazy_neuron.models.common import (Configured, ModelConfig, MultiHeadAttention,
                                       classifier_head, fused_attention, layer_norm, patch_embed,
                                       variant_table)
from lazy_neuron.models.mlp import MlpBlock
from lazy_neuron.models.stacking import apply_stack


@dataclasses.dataclass(frozen=True)
class ViTConfig(ModelConfig):
  width: int
  depth: int
  mlp_dim: int
  num_heads: int
  patch_size: int
  pool: str = "token"          # class token, or "gap": global average pool
  head_bias_init: float = 0.0
  layer_norm_eps: float = 1e-6  # Hugging Face ViT checkpoints use 1e-12

  def __post_init__(self):
    super().__post_init__()
    checks.choice("model.pool", self.pool, ("token", "gap"))


# tiny is ours, for CPU runs and tests (patch 4 on 8..32 pixel inputs).
VARIANTS = variant_table(ViTConfig, ("width", "depth", "mlp_dim", "num_heads", "patch_size"), {
    "tiny": (128, 4, 1024, 4, 4),
    "S/16": (384, 12, 1536, 6, 16),
    "B/16": (768, 12, 3072, 12, 16),
    "L/16": (1024, 24, 4096, 16, 16),
    "H/14": (1280, 32, 5120, 16, 14),
})


class EncoderBlock(Configured):
  """One pre-norm block; returns (x, None), the (carry, output) pair nn.scan wants."""

  @nn.compact
  def __call__(self, x, token_mask, lengths, deterministic):
    # lengths: None, or the real tokens per image ([B] int32) when the sequence carries padding.
    c = self.cfg
    y = layer_norm("norm_attention", self.dtype, jnp.float32, c.layer_norm_eps)(x)
    y = MultiHeadAttention(c.num_heads, c.width // c.num_heads, use_bias=True, dtype=self.dtype,
                           distribution="uniform", implementation=c.attention,
                           name="attention")(
                               y, y, deterministic=deterministic,
                               lengths=None if lengths is None else (lengths, lengths))
    x = x + nn.Dropout(c.dropout_rate)(y, deterministic=deterministic)
    y = layer_norm("norm_mlp", self.dtype, jnp.float32, c.layer_norm_eps)(x)
    y = MlpBlock(self.mlp, d_ff=c.mlp_dim, use_bias=True, dropout_rate=c.dropout_rate,
                 dtype=self.dtype, kernel_init=nn.initializers.xavier_uniform(),
                 bias_init=nn.initializers.normal(1e-6), name="mlp")(
                     y, token_mask, deterministic=deterministic)
    x = x + nn.Dropout(c.dropout_rate)(y, deterministic=deterministic)
    return nn.with_logical_constraint(x, ("batch", "length", "embed")), None


class ViT(Configured):
  """Input: image [B, H, W, C]. Output: logits [B, num_classes]."""
  num_classes: int

  @nn.compact
  def __call__(self, image, example_mask: Optional[jax.Array] = None, deterministic: bool = True):
    c = self.cfg
    x = patch_embed(image, c.width, c.patch_size, self.dtype, name="embedding")
    b, n, d = x.shape
    pos = self.param("pos_embedding",
                     nn.with_logical_partitioning(nn.initializers.normal(0.02),
                                                  (None, "length", "embed")),
                     (1, n, d), jnp.float32)
    x = x + pos.astype(self.dtype)
    if c.pool == "token":
      cls = self.param("cls", nn.with_logical_partitioning(nn.initializers.zeros,
                                                           (None, None, "embed")),
                       (1, 1, d), jnp.float32)
      x = jnp.concatenate([jnp.broadcast_to(cls.astype(self.dtype), (b, 1, d)), x], axis=1)
    token_mask = None if example_mask is None else example_mask[:, None]
    x, token_mask, lengths = self._pad_for_fused_attention(x, token_mask)
    x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
    x = nn.Dropout(c.dropout_rate)(x, deterministic=deterministic)
    x = Transformer(c, self.mlp, self.dtype, name="vit")(x, token_mask, lengths, deterministic)
    # The class token, or the mean over the patches (never the padding token).
    x = x[:, 0] if c.pool == "token" else jnp.mean(x[:, :n], axis=1)
    return classifier_head(x, self.num_classes, self.dtype, c.head_bias_init)

  def _pad_for_fused_attention(self, x, token_mask):
    """cuDNN's fused attention wants an even sequence length, and ViT's is often odd (B/16 at 224
    px: 196 patches + the class token). Rather than pad q, k and v in every layer and slice the
    output back, the sequence gets one zero token here, carried through all layers: the key
    lengths keep every real token from attending to it, the probe's token mask keeps it out of
    the sparsity statistics, and the head never reads it. (On one H200, ViT-B/16 at batch 256:
    71.51 -> 67.64 ms per training step; the extra token adds 0.5% to the matmuls.)
    Returns (x, token_mask, lengths); lengths is None when nothing was padded."""
    c = self.cfg
    b, n, _ = x.shape
    if n % 2 == 0 or fused_attention(c.attention, self.dtype, c.width // c.num_heads,
                                     dropout=False) is None:
      return x, token_mask, None
    x = jnp.pad(x, ((0, 0), (0, 1), (0, 0)))
    real = (jnp.arange(n + 1) < n).astype(jnp.int32)[None, :]
    token_mask = real if token_mask is None else token_mask.astype(jnp.int32) * real
    return x, token_mask, jnp.full((b,), n, jnp.int32)


class Transformer(Configured):
  """The block stack: layers named layer_00, ... (the metric names are vit/layer_NN), or, with
  cfg.scan_layers, one scanned module `layers` whose parameters have a leading layer axis."""

  @nn.compact
  def __call__(self, x, token_mask, lengths, deterministic):
    c = self.cfg
    x = apply_stack(EncoderBlock, c, self.mlp, self.dtype, c.depth, x, token_mask, lengths,
                    deterministic)
    return layer_norm("encoder_norm", self.dtype, jnp.float32, c.layer_norm_eps)(x)
