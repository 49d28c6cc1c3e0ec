"""Model zoo: `build_model(config.model, data_info, measure=...)` -> Model.

Every architecture is built on the one MLP block in `models/mlp.py`.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from lazy_neuron.errors import UserError
from lazy_neuron.models import mixer, t5, two_layer, vit
from lazy_neuron.models.activations import ACTIVATIONS, EXACTLY_SPARSE
from lazy_neuron.models.common import MlpSettings, get_dtype, resolve_variant
from lazy_neuron.models.mlp import SPARSITY, MlpBlock

__all__ = ["MODELS", "Model", "build_model", "mlp_dims", "SPARSITY", "MlpBlock"]

# name -> (variant table, task, extra non-size options with defaults)
MODELS: dict[str, tuple[dict, str, dict]] = {
    "t5": (t5.VARIANTS, "seq2seq", dict(dropout_rate=0.0, remat=False)),
    "vit": (vit.VARIANTS, "classification",
            dict(dropout_rate=0.0, remat=False, pool="token", head_bias_init=0.0)),
    "mixer": (mixer.VARIANTS, "classification", dict(dropout_rate=0.0, remat=False)),
    "mlp": (two_layer.VARIANTS, "classification", dict(dropout_rate=0.0, remat=False)),
}

VOCAB_MULTIPLE = 128

# Model config keys that are not architecture sizes.
GENERIC_KEYS = ("name", "variant", "activation", "activation_threshold", "topk", "topk_backend",
                "dtype")


@dataclasses.dataclass(frozen=True)
class Model:
  name: str
  task: str              # "seq2seq" | "classification"
  module: nn.Module
  sizes: dict[str, Any]  # resolved architecture sizes
  input_keys: tuple[str, ...]

  def inputs(self, batch: dict) -> dict:
    """The model's keyword inputs taken from a batch (plus the example mask when present)."""
    kwargs = {k: batch[k] for k in self.input_keys}
    if "mask" in batch:
      kwargs["example_mask"] = batch["mask"]
    return kwargs


def _settings(model_cfg, measure: bool) -> MlpSettings:
  act = model_cfg.activation
  if act not in ACTIVATIONS:
    raise UserError(f"model.activation={act!r} is not valid; choose one of {', '.join(ACTIVATIONS)}")
  thr = float(model_cfg.get("activation_threshold", 0.0) or 0.0)
  if thr < 0:
    raise UserError(f"model.activation_threshold={thr} is not valid; use a value >= 0")
  topk = model_cfg.get("topk", None)
  return MlpSettings(activation=act, threshold=thr, topk=None if topk in (None, 0) else int(topk),
                     topk_backend=model_cfg.get("topk_backend", "auto"), measure=measure)


def mlp_dims(model: Model) -> list[int]:
  """d_ff of every MLP block (for validating top-k)."""
  s = model.sizes
  if model.name == "mixer":
    return [s["tokens_mlp_dim"], s["channels_mlp_dim"]]
  return [s["mlp_dim"]]


def build_model(model_cfg, data_info, measure: bool = True) -> Model:
  name = model_cfg.name
  if name not in MODELS:
    raise UserError(f"model.name={name!r} is not valid; choose one of {', '.join(MODELS)}")
  table, task, extras = MODELS[name]
  if task != data_info.task.replace("span_corruption", "seq2seq"):
    raise UserError(f"model.name={name!r} needs {task} data, but data.name gives {data_info.task}")
  cfg = dict(model_cfg)
  sizes = resolve_variant(table, model_cfg.variant, cfg, name)
  for key, default in extras.items():
    sizes[key] = cfg.get(key, default) if cfg.get(key, None) is not None else default
  settings = _settings(model_cfg, measure)
  dtype = get_dtype(model_cfg.get("dtype", "float32"))
  if settings.topk is not None:
    for d_ff in mlp_dims(Model(name, task, None, sizes, ())):
      if not 1 <= settings.topk <= d_ff:
        raise UserError(f"model.topk={settings.topk} is not valid for an MLP of width {d_ff}; "
                        f"use 1 <= topk <= {d_ff}, or None for dense")
  if name == "t5":
    # T5 pads its vocabulary to a multiple of 128 (32100 -> 32128): shardable over any mesh axis
    # that divides 128, and MXU/tensor-core friendly. The extra ids are never targets.
    vocab = -(-int(data_info.vocab_size) // VOCAB_MULTIPLE) * VOCAB_MULTIPLE
    module = t5.T5(vocab_size=vocab, cfg=sizes, mlp=settings, dtype=dtype)
    keys = ("encoder_input_tokens", "decoder_input_tokens", "decoder_target_tokens")
  else:
    if name in ("vit", "mixer"):
      shape = data_info.image_shape
      if len(shape) != 3 or shape[0] % sizes["patch_size"] or shape[1] % sizes["patch_size"]:
        raise UserError(f"image shape {tuple(shape)} does not fit model.patch_size="
                        f"{sizes['patch_size']}; use an image size divisible by the patch size")
    if name == "vit" and sizes["pool"] not in ("token", "gap"):
      raise UserError(f"model.pool={sizes['pool']!r} is not valid; choose token or gap")
    cls = {"vit": vit.ViT, "mixer": mixer.Mixer, "mlp": two_layer.TwoLayerMLP}[name]
    module = cls(num_classes=data_info.num_classes, cfg=sizes, mlp=settings, dtype=dtype)
    keys = ("image",)
  if settings.activation not in EXACTLY_SPARSE and settings.threshold == 0.0:
    pass  # allowed: counts exact nonzeros; the config docstrings say to set a threshold
  return Model(name=name, task=task, module=module, sizes=sizes, input_keys=keys)


def dummy_batch(model: Model, data_info, batch_size: int) -> dict[str, np.ndarray]:
  """A batch of the right shapes and dtypes (for init and eval_shape)."""
  if model.task == "seq2seq":
    li, lt = data_info.inputs_length, data_info.targets_length
    return {"encoder_input_tokens": np.ones((batch_size, li), np.int32),
            "decoder_input_tokens": np.ones((batch_size, lt), np.int32),
            "decoder_target_tokens": np.ones((batch_size, lt), np.int32),
            "decoder_loss_weights": np.ones((batch_size, lt), np.float32)}
  image_dtype = np.dtype(getattr(data_info, "image_dtype", "float32"))
  return {"image": np.zeros((batch_size, *data_info.image_shape), image_dtype),
          "label": np.zeros((batch_size,), np.int32)}
