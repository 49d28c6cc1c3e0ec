"""The 2-layer MLP classifier of the paper: flatten -> Dense(d_ff) -> ReLU -> Dense(classes).

Its single hidden layer is the activation map, measured as mlp/layer_00.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from lazy_neuron.models.common import Configured, ModelConfig, image_input, variant_table
from lazy_neuron.models.mlp import MlpBlock


@dataclasses.dataclass(frozen=True)
class TwoLayerConfig(ModelConfig):
  mlp_dim: int


VARIANTS = variant_table(TwoLayerConfig, ("mlp_dim",), {
    "tiny": (512,),
    "base": (2048,),
    "wide": (8192,),
})


class TwoLayerMLP(Configured):
  num_classes: int

  @nn.compact
  def __call__(self, image, example_mask: Optional[jax.Array] = None, deterministic: bool = True):
    x = image_input(image.reshape(image.shape[0], -1), self.dtype)
    # The block lives at mlp/layer_00, so its metric name is mlp/layer_00.
    y = _Layers(self.cfg, self.mlp, self.dtype, num_classes=self.num_classes, name="mlp")(
        x, example_mask, deterministic)
    return y.astype(jnp.float32)


class _Layers(Configured):
  num_classes: int

  @nn.compact
  def __call__(self, x, example_mask, deterministic):
    block = MlpBlock
    if self.cfg.remat:  # one layer: harmless, and `model.remat` means the same for every model
      block = nn.remat(MlpBlock, static_argnums=(3,))
    layer = block(self.mlp, d_ff=self.cfg.mlp_dim, d_out=self.num_classes, use_bias=True,
                  dropout_rate=self.cfg.dropout_rate, dtype=self.dtype,
                  hidden_axes=("batch", "mlp"),
                  kernel_init=nn.initializers.variance_scaling(1.0, "fan_in", "normal"),
                  name="layer_00")
    return layer(x, example_mask, deterministic)
