"""MLP-Mixer (Tolstikhin et al. 2021) with both its MLPs measured: token-mixing MLPs are named
mixer/token_NN, channel-mixing MLPs mixer/channel_NN (the metric layer names).
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from lazy_neuron.models.common import (Configured, ModelConfig, classifier_head, layer_norm,
                                       patch_embed, variant_table)
from lazy_neuron.models.mlp import MlpBlock
from lazy_neuron.models.stacking import apply_scanned


@dataclasses.dataclass(frozen=True)
class MixerConfig(ModelConfig):
  width: int
  depth: int
  tokens_mlp_dim: int
  channels_mlp_dim: int
  patch_size: int

  @property
  def mlp_dims(self) -> tuple[int, ...]:
    return (self.tokens_mlp_dim, self.channels_mlp_dim)


VARIANTS = variant_table(
    MixerConfig, ("width", "depth", "tokens_mlp_dim", "channels_mlp_dim", "patch_size"), {
        "tiny": (128, 4, 64, 512, 4),
        "S/16": (512, 8, 256, 2048, 16),
        "B/16": (768, 12, 384, 3072, 16),
        "L/16": (1024, 24, 512, 4096, 16),
    })


class Mixer(Configured):
  num_classes: int

  @nn.compact
  def __call__(self, image, example_mask: Optional[jax.Array] = None, deterministic: bool = True):
    x = patch_embed(image, self.cfg.width, self.cfg.patch_size, self.dtype, name="stem")
    x = MixerStack(self.cfg, self.mlp, self.dtype, name="mixer")(x, example_mask, deterministic)
    return classifier_head(jnp.mean(x, axis=1), self.num_classes, self.dtype)


def _mixer_block(parent: Configured, x, example_mask, deterministic, index: str):
  """Token mixing then channel mixing, each a pre-norm residual MLP, as modules of `parent` named
  token{index}, token{index}_norm, channel{index}, channel{index}_norm. A function of the stack
  (not a submodule) so that unrolled, its parameters stay at mixer/token_NN and mixer/channel_NN
  (index `_NN`), under remat too; scanned, `parent` is the scanned MixerBlock (index '')."""
  c = parent.cfg

  def mlp(d_ff, name, embed_axis, hidden_axes):
    return MlpBlock(parent.mlp, d_ff=d_ff, use_bias=True, dropout_rate=c.dropout_rate,
                    dtype=parent.dtype, embed_axis=embed_axis, hidden_axes=hidden_axes,
                    kernel_init=nn.initializers.xavier_uniform(), name=name)

  def residual(x, y):
    return x + nn.Dropout(c.dropout_rate)(y, deterministic=deterministic)

  # Token mixing: the MLP runs across patches, once per channel: rows are (example, channel).
  rows_mask = None if example_mask is None else example_mask[:, None]
  y = jnp.swapaxes(layer_norm(f"token{index}_norm", parent.dtype, jnp.float32)(x), 1, 2)
  y = mlp(c.tokens_mlp_dim, f"token{index}", "length", ("batch", "embed", "mlp"))(
      y, rows_mask, deterministic=deterministic)
  x = residual(x, jnp.swapaxes(y, 1, 2))
  y = layer_norm(f"channel{index}_norm", parent.dtype, jnp.float32)(x)
  y = mlp(c.channels_mlp_dim, f"channel{index}", "embed", ("batch", "length", "mlp"))(
      y, rows_mask, deterministic=deterministic)
  return nn.with_logical_constraint(residual(x, y), ("batch", "length", "embed"))


class MixerBlock(Configured):
  """One block as a module, for nn.scan: its children are token, token_norm, channel and
  channel_norm (stacked under mixer/layers); returns (x, None), the pair nn.scan wants."""

  @nn.compact
  def __call__(self, x, example_mask, deterministic):
    return _mixer_block(self, x, example_mask, deterministic, ""), None


class MixerStack(Configured):

  @nn.compact
  def __call__(self, x, example_mask, deterministic):
    c = self.cfg
    if c.scan_layers:
      x = apply_scanned(MixerBlock, c, self.mlp, self.dtype, c.depth, x, example_mask,
                        deterministic)
    else:
      block = _mixer_block
      if c.remat:  # the stack is argument 0; `deterministic` and the layer's index are static
        block = nn.remat(_mixer_block, static_argnums=(3, 4))
      for i in range(c.depth):
        x = block(self, x, example_mask, deterministic, f"_{i:02d}")
    return layer_norm("pre_head_norm", self.dtype, jnp.float32)(x)
