"""The 2-layer MLP classifier of the paper: flatten -> Dense(d_ff) -> ReLU -> Dense(classes).

Its single hidden layer is the activation map, measured as mlp/layer_00.
"""
from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from lazy_neuron.models.common import MlpSettings, image_input
from lazy_neuron.models.mlp import MlpBlock

VARIANTS = {
    "tiny": dict(mlp_dim=512),
    "base": dict(mlp_dim=2048),
    "wide": dict(mlp_dim=8192),
}


class TwoLayerMLP(nn.Module):
  num_classes: int
  cfg: dict
  mlp: MlpSettings = MlpSettings()
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, image, example_mask: Optional[jax.Array] = None, deterministic: bool = True):
    x = image_input(image.reshape(image.shape[0], -1), self.dtype)
    # The block lives at mlp/layer_00, so its metric name is mlp/layer_00.
    y = _Layers(self.num_classes, self.cfg, self.mlp, self.dtype, name="mlp")(
        x, example_mask, deterministic)
    return y.astype(jnp.float32)


class _Layers(nn.Module):
  num_classes: int
  cfg: dict
  mlp: MlpSettings
  dtype: Any

  @nn.compact
  def __call__(self, x, example_mask, deterministic):
    s = self.mlp
    return MlpBlock(d_ff=self.cfg["mlp_dim"], d_out=self.num_classes, activation=s.activation,
                    threshold=s.threshold, topk=s.topk, topk_backend=s.topk_backend,
                    measure=s.measure, use_bias=True, dtype=self.dtype, embed_axis="embed",
                    hidden_axes=("batch", "mlp"),
                    kernel_init=nn.initializers.variance_scaling(1.0, "fan_in", "normal"),
                    name="layer_00")(x, example_mask, deterministic=deterministic)
