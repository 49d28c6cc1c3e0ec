"""Model zoo: `build_model(config.model, data_info, measure=...)` -> Model.

Every architecture is built on the one MLP block in `models/mlp.py`.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import numpy as np

from lazy_neuron import checks
from lazy_neuron.errors import UserError
from lazy_neuron.models import mixer, t5, two_layer, vit
from lazy_neuron.models.activations import ACTIVATIONS
from lazy_neuron.models.common import (MlpSettings, cudnn_attention_applies, get_dtype,
                                       model_config)
from lazy_neuron.models.mlp import SPARSITY, MlpBlock
from lazy_neuron.models.stacking import (LAYERS, resolve_scan_layers, stack_layers, to_layout,
                                         unstack_layers)

__all__ = ["MODELS", "Model", "build_model", "dummy_batch", "mlp_dims", "SPARSITY", "MlpBlock",
           "LAYERS", "stack_layers", "unstack_layers", "to_layout"]

# name -> (variant table of typed settings, task, module class)
MODELS: dict[str, tuple[dict, str, type]] = {
    "t5": (t5.VARIANTS, "seq2seq", t5.T5),
    "vit": (vit.VARIANTS, "classification", vit.ViT),
    "mixer": (mixer.VARIANTS, "classification", mixer.Mixer),
    "mlp": (two_layer.VARIANTS, "classification", two_layer.TwoLayerMLP),
}

# Model config keys that every model takes besides its typed settings' fields.
COMMON_KEYS = ("name", "variant", "activation", "activation_threshold", "topk", "topk_backend",
               "dtype", "magnitude_thresholds")

VOCAB_MULTIPLE = 128


@dataclasses.dataclass(frozen=True)
class Model:
  name: str
  task: str              # "seq2seq" | "classification"
  module: nn.Module
  # The resolved typed settings, as a dict (sizes, dropout_rate, remat, scan_layers: a bool here).
  sizes: dict[str, Any]
  input_keys: tuple[str, ...]

  def inputs(self, batch: dict) -> dict:
    """The model's keyword inputs taken from a batch (plus the example mask when present)."""
    kwargs = {k: batch[k] for k in self.input_keys}
    if "mask" in batch:
      kwargs["example_mask"] = batch["mask"]
    return kwargs


def _settings(model_cfg, measure: bool) -> MlpSettings:
  act = checks.choice("model.activation", model_cfg.activation, ACTIVATIONS)
  thr = checks.number("model.activation_threshold",
                      model_cfg.get("activation_threshold", None) or 0.0, min=0)
  topk = model_cfg.get("topk", None)
  topk = None if topk == 0 else checks.integer("model.topk", topk, min=1, none_ok=True)
  mags = model_cfg.get("magnitude_thresholds", None) or ()
  if not isinstance(mags, (list, tuple)):
    raise checks.fail("model.magnitude_thresholds", mags, "use a list of numbers >= 0, or None")
  mags = tuple(checks.number("model.magnitude_thresholds", t, min=0) for t in mags)
  return MlpSettings(activation=act, threshold=thr, topk=topk,
                     topk_backend=model_cfg.get("topk_backend", "auto"), measure=measure,
                     magnitude_thresholds=mags)


def mlp_dims(model: Model) -> list[int]:
  """d_ff of every MLP block (for validating top-k)."""
  return list(model.module.cfg.mlp_dims)


def build_model(model_cfg, data_info, measure: bool = True) -> Model:
  name = checks.choice("model.name", model_cfg.get("name", None), MODELS)
  table, task, module_cls = MODELS[name]
  if task != data_info.task.replace("span_corruption", "seq2seq"):
    raise UserError(f"model.name={name!r} needs {task} data, but data.name gives {data_info.task}")
  cfg = model_config(table, dict(model_cfg), name, COMMON_KEYS)
  cfg = dataclasses.replace(cfg, scan_layers=resolve_scan_layers(cfg.scan_layers, name,
                                                                 model_cfg.get("variant")))
  settings = _settings(model_cfg, measure)
  dtype = get_dtype(model_cfg.get("dtype", "float32"))
  if settings.topk is not None:
    for d_ff in cfg.mlp_dims:
      if settings.topk > d_ff:
        raise checks.fail("model.topk", settings.topk,
                          f"use 1 <= topk <= {d_ff} for an MLP of width {d_ff}, or None for dense")
  if cfg.attention == "cudnn" and hasattr(cfg, "num_heads"):  # checked here, before any work
    head_dim = getattr(cfg, "head_dim", None) or cfg.width // cfg.num_heads
    why_not = cudnn_attention_applies(dtype, head_dim, cfg.dropout_rate > 0)
    if why_not is not None:
      raise checks.fail("model.attention", "cudnn", f"{why_not}; use auto or xla")
  if name == "t5":
    # T5 pads its vocabulary to a multiple of 128 (32100 -> 32128): shardable over any mesh axis
    # that divides 128, and MXU/tensor-core friendly. The extra ids are never targets.
    vocab = -(-int(data_info.vocab_size) // VOCAB_MULTIPLE) * VOCAB_MULTIPLE
    if cfg.vocab_size is not None:  # a pretrained checkpoint's own (padded) vocabulary
      checks.integer("model.vocab_size", cfg.vocab_size, min=int(data_info.vocab_size))
      vocab = cfg.vocab_size
    module = module_cls(cfg, settings, dtype, vocab_size=vocab)
    keys = ("encoder_input_tokens", "decoder_input_tokens", "decoder_target_tokens")
  else:
    if hasattr(cfg, "patch_size"):
      shape, p = data_info.image_shape, cfg.patch_size
      if len(shape) != 3 or shape[0] % p or shape[1] % p:
        raise UserError(f"image shape {tuple(shape)} does not fit model.patch_size={p}; "
                        f"use an image size divisible by the patch size")
    module = module_cls(cfg, settings, dtype, num_classes=data_info.num_classes)
    keys = ("image",)
  return Model(name=name, task=task, module=module, sizes=dataclasses.asdict(cfg), input_keys=keys)


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
