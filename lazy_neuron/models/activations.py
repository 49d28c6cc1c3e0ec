"""MLP activations, by config name.

ReLU is the paper's; the others are what follow-up work uses (GELU as in BERT/ViT, squared ReLU as in
Primer/ReLU-strikes-back, SiLU as in gated LLMs). For activations that are not exactly sparse, the
sparsity probe counts an entry as nonzero when |a| > model.activation_threshold.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from lazy_neuron import checks


def _relu2(x: jax.Array) -> jax.Array:
  r = jax.nn.relu(x)
  return r * r


ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": jax.nn.relu,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "relu2": _relu2,
    "silu": jax.nn.silu,
    "identity": lambda x: x,
}


def get_activation(name: str) -> Callable[[jax.Array], jax.Array]:
  return ACTIVATIONS[checks.choice("model.activation", name, ACTIVATIONS)]


def is_nonzero(a: jax.Array, threshold: float) -> jax.Array:
  """The nonzero pattern of an activation map: |a| > threshold (threshold 0 = exactly nonzero)."""
  return jnp.abs(a) > jnp.asarray(threshold, a.dtype)
