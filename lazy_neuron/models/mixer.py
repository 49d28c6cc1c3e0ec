"""MLP-Mixer (Tolstikhin et al. 2021) with both its MLPs measured: token-mixing MLPs are named
mixer/token_NN, channel-mixing MLPs mixer/channel_NN (the metric layer names).
"""
from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from lazy_neuron.models.common import MlpSettings, classifier_head, layer_norm, patch_embed
from lazy_neuron.models.mlp import MlpBlock

VARIANTS = {
    "tiny": dict(width=128, depth=4, tokens_mlp_dim=64, channels_mlp_dim=512, patch_size=4),
    "S/16": dict(width=512, depth=8, tokens_mlp_dim=256, channels_mlp_dim=2048, patch_size=16),
    "B/16": dict(width=768, depth=12, tokens_mlp_dim=384, channels_mlp_dim=3072, patch_size=16),
    "L/16": dict(width=1024, depth=24, tokens_mlp_dim=512, channels_mlp_dim=4096, patch_size=16),
}


class Mixer(nn.Module):
  num_classes: int
  cfg: dict
  mlp: MlpSettings = MlpSettings()
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, image, example_mask: Optional[jax.Array] = None, deterministic: bool = True):
    c = self.cfg
    x = patch_embed(image, c["width"], c["patch_size"], self.dtype, name="stem")
    x = MixerStack(c, self.mlp, self.dtype, name="mixer")(x, example_mask, deterministic)
    return classifier_head(jnp.mean(x, axis=1), self.num_classes, self.dtype)


class MixerStack(nn.Module):
  cfg: dict
  mlp: MlpSettings
  dtype: Any

  def _block(self, d_ff: int, name: str, embed_axis: str, hidden_axes) -> MlpBlock:
    s = self.mlp
    return MlpBlock(d_ff=d_ff, activation=s.activation, threshold=s.threshold, topk=s.topk,
                    topk_backend=s.topk_backend, measure=s.measure, use_bias=True,
                    dtype=self.dtype, embed_axis=embed_axis, hidden_axes=hidden_axes,
                    kernel_init=nn.initializers.xavier_uniform(), name=name)

  @nn.compact
  def __call__(self, x, example_mask, deterministic):
    c = self.cfg
    # Token mixing: the MLP runs across patches, once per channel: rows are (example, channel).
    token_rows_mask = None if example_mask is None else example_mask[:, None]
    for i in range(c["depth"]):
      y = layer_norm(f"token_{i:02d}_norm", self.dtype, jnp.float32)(x)
      y = jnp.swapaxes(y, 1, 2)
      y = self._block(c["tokens_mlp_dim"], f"token_{i:02d}", "length",
                      ("batch", "embed", "mlp"))(y, token_rows_mask, deterministic=deterministic)
      x = x + jnp.swapaxes(y, 1, 2)
      y = layer_norm(f"channel_{i:02d}_norm", self.dtype, jnp.float32)(x)
      x = x + self._block(c["channels_mlp_dim"], f"channel_{i:02d}", "embed",
                          ("batch", "length", "mlp"))(y, token_rows_mask,
                                                      deterministic=deterministic)
      x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
    return layer_norm("pre_head_norm", self.dtype, jnp.float32)(x)
