"""Pretrained checkpoints in: `load(path)` detects the format and returns a model lazy_neuron can
measure, evaluate and fine-tune; `lazy-neuron import` writes it into a workdir (import_cmd.py).

Formats (docs/pretrained.md):
  hf_t5           a Hugging Face T5ForConditionalGeneration / MT5ForConditionalGeneration folder:
                  config.json + model.safetensors (or sharded, model.safetensors.index.json);
                  T5 v1.0 (ReLU, tied, scaled output) and v1.1 / Flan-T5 / mT5 (gated GELU)
  timm_vit        a timm vit_* folder as timm saves it (config.json with "architecture",
                  model.safetensors)
  hf_vit          a Hugging Face ViTForImageClassification folder
  big_vision_vit  a big_vision / vision_transformer ViT .npz
  t5x             a T5X checkpoint folder (msgpack `checkpoint` + TensorStore zarr arrays), a
                  t5x model folder (its latest checkpoint_<step>), or its `checkpoint` file

    model = lazy_neuron.pretrained.load("flan-t5-small/")
    logits, metrics = model.apply(batch)      # lazy_neuron batch keys; sparsity/eval/... metrics
"""
from __future__ import annotations

import dataclasses
import functools
import os
import re
import types
from typing import Any, Iterable, Optional

import jax
import ml_collections
import numpy as np

from lazy_neuron.errors import UserError
from lazy_neuron.pretrained import t5 as t5_conv
from lazy_neuron.pretrained import t5x as t5x_conv
from lazy_neuron.pretrained import tensors
from lazy_neuron.pretrained import vit as vit_conv
from lazy_neuron.pretrained.common import Converted

SUPPORTED = ("a Hugging Face T5ForConditionalGeneration / MT5ForConditionalGeneration or "
             "ViTForImageClassification folder (config.json + model.safetensors), a timm vit_* "
             "folder (config.json + model.safetensors), a big_vision ViT .npz, or a T5X checkpoint "
             "folder (msgpack `checkpoint` + zarr arrays)")
# Default magnitude thresholds of the measure mode for non-ReLU activations (`frac_abs_le_<t>`).
MAGNITUDE_THRESHOLDS = (1e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0)


def _weights(path: str) -> tensors.TensorFile:
  index = os.path.join(path, "model.safetensors.index.json")
  if os.path.isfile(index):
    weight_map = tensors.read_json(index).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
      raise UserError(f"{index!r} has no weight_map; the checkpoint is incomplete")
    return tensors.SafetensorsFiles(path, sorted(set(weight_map.values())))
  if os.path.isfile(os.path.join(path, "model.safetensors")):
    return tensors.SafetensorsFiles(path, ["model.safetensors"])
  if any(os.path.isfile(os.path.join(path, n)) for n in ("pytorch_model.bin",
                                                         "pytorch_model.bin.index.json")):
    raise UserError(f"checkpoint {path!r} has only pytorch_model.bin, which lazy_neuron does not "
                    f"read (pickle); convert it to safetensors with transformers: "
                    f"AutoModel.from_pretrained(path).save_pretrained(out, safe_serialization=True)"
                    f" (or download the repo's model.safetensors)")
  raise UserError(f"checkpoint {path!r} is incomplete: config.json but no model.safetensors or "
                  f"model.safetensors.index.json; download the weights too")


def convert(path: str) -> Converted:
  """Detects the format of `path` and reads its structure (the tensors stay on disk)."""
  where = os.fspath(path)
  if not os.path.exists(where):
    raise UserError(f"--src={where!r} does not exist; give a checkpoint folder or .npz file")
  if not os.path.isfile(os.path.join(where, "config.json")) and t5x_conv.find(where):
    return t5x_conv.convert(where)
  if os.path.isfile(where):
    if where.endswith(".npz"):
      return vit_conv.convert_big_vision(tensors.NpzFile(where), where)
    raise UserError(f"--src={where!r} is a file lazy_neuron does not know; supported: {SUPPORTED}")
  config_path = os.path.join(where, "config.json")
  if not os.path.isfile(config_path):
    found = ", ".join(sorted(os.listdir(where))[:5]) or "nothing"
    raise UserError(f"--src={where!r} is not a checkpoint lazy_neuron can read: no config.json "
                    f"(found {found}); supported: {SUPPORTED}")
  cfg = tensors.read_json(config_path)
  archs = cfg.get("architectures") or []
  model_type = cfg.get("model_type")
  if "architecture" in cfg and "model_type" not in cfg:  # timm's config.json
    return vit_conv.convert_timm(_weights(where), cfg, where)
  if model_type in ("t5", "mt5") or any(a in ("T5ForConditionalGeneration",
                                              "MT5ForConditionalGeneration") for a in archs):
    return t5_conv.convert(_weights(where), cfg, where)
  if model_type == "vit" and "ViTForImageClassification" in archs:
    return vit_conv.convert_hf_vit(_weights(where), cfg, where)
  found = f"model_type={model_type!r}, architectures={archs}" if (model_type or archs) else \
      "a config.json without model_type or architecture"
  raise UserError(f"--src={where!r} has {found}, which lazy_neuron cannot load; "
                  f"supported: {SUPPORTED}")


# ------------------------------------------------------------------------------------- configs
def default_config(conv: Converted) -> ml_collections.ConfigDict:
  """A config that measures and fine-tunes the checkpoint offline: T5 on the standard library's
  docstrings (byte tokenizer: for measuring sparsity on *any* text; use a config with the
  checkpoint's sentencepiece model for real language-model losses), ViT on scikit-learn digits
  resized to the checkpoint's image size."""
  from lazy_neuron import data, experiment
  if conv.task == "seq2seq":
    data_cfg = data.get_data_config("docstrings", tokenizer="bytes", inputs_length=64)
    data_cfg.eval_examples = 64
  else:
    data_cfg = data.get_data_config("digits", image_size=conv.image_size)
    data_cfg.channels = conv.channels
  c = experiment.base_config(
      model={}, data=data_cfg,
      optimizer=dict(name="adamw", learning_rate=1e-4, warmup_steps=0, schedule="constant",
                     weight_decay=0.0, grad_clip_norm=1.0),
      total_steps=100, batch_size=8, log_every_steps=10, eval_every_steps=50,
      checkpoint_every_steps=50)
  return c


# Keys of config.model that the checkpoint decides (the others, e.g. topk, dtype, remat,
# scan_layers, activation_threshold, stay as the config has them).
def apply_model(config: ml_collections.ConfigDict, conv: Converted) -> None:
  """Replaces config.model's architecture with the checkpoint's (unlocked: new keys)."""
  keep = {k: config.model.get(k) for k in ("topk", "topk_backend", "dtype", "dropout_rate",
                                           "remat", "scan_layers", "activation_threshold",
                                           "magnitude_thresholds") if k in config.model}
  model = dict(conv.model, topk=None, scan_layers=None, dropout_rate=0.0)
  model.update({k: v for k, v in keep.items() if v is not None})
  if model["activation"] != "relu" and not model.get("magnitude_thresholds"):
    model["magnitude_thresholds"] = list(MAGNITUDE_THRESHOLDS)
  with config.unlocked():
    config.model = ml_collections.ConfigDict(model)


# --------------------------------------------------------------------------------------- load
@dataclasses.dataclass
class Pretrained:
  """A loaded checkpoint: `.config` (a full config `lazy-neuron train/eval` accept), `.params`,
  `.apply(batch) -> (logits, metrics)`, `.model` (lazy_neuron's `models.Model`)."""
  config: ml_collections.ConfigDict
  params: Any
  model: Any
  kind: str
  source: str

  @functools.cached_property
  def _forward(self):
    from lazy_neuron.models import SPARSITY
    mutable = [SPARSITY] if self.config.sparsity.enabled else False

    def fn(params, inputs):
      out = self.model.module.apply({"params": params}, **inputs, deterministic=True,
                                    mutable=mutable)
      return out if mutable else (out, {})
    return jax.jit(fn)

  def _run(self, batch: dict):
    logits, variables = self._forward(self.params, self.model.inputs(batch))
    return logits, jax.device_get(variables.get("sparsity", {}))

  def apply(self, batch: dict) -> tuple[jax.Array, dict[str, float]]:
    """Logits and the standard sparsity metrics (`sparsity/eval/<layer>/nonzero_frac`, ...) of
    one batch (lazy_neuron's keys: encoder_input_tokens / decoder_input_tokens /
    decoder_target_tokens for T5, `image` float32 NHWC already normalised for ViT)."""
    from lazy_neuron import sparsity
    logits, counts = self._run(batch)
    return logits, sparsity.metrics_from_stats(sparsity.flatten_stats(counts), "eval")

  def measure(self, batches: Iterable[dict]) -> tuple[dict[str, float], dict[str, Any]]:
    """The sparsity of several batches together: (metrics, {layer: sparsity.LayerStats}), from
    the exact counts summed over all batches (not an average of per-batch fractions)."""
    from lazy_neuron import sparsity
    total = None
    for batch in batches:
      counts = self._run(batch)[1]
      total = counts if total is None else jax.tree.map(np.add, total, counts)
    if total is None:
      raise UserError("measure() was given no batches")
    stats = sparsity.flatten_stats(total)
    return sparsity.metrics_from_stats(stats, "eval"), stats


def data_info(conv: Converted):
  """The data shapes the checkpoint itself implies (for `load`, which has no dataset)."""
  if conv.task == "seq2seq":
    return types.SimpleNamespace(task="seq2seq", vocab_size=conv.source_vocab_size)
  return types.SimpleNamespace(task="classification", num_classes=conv.num_classes,
                               image_shape=(conv.image_size, conv.image_size, conv.channels))


# A Hugging Face hub repository id ("google/flan-t5-small"), as opposed to a local path.
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")
HUB_PATTERNS = ("*.json", "*.safetensors", "*.model")  # config, weights, sentencepiece model


def download(repo_id: str) -> str:
  """The local folder of a Hugging Face hub checkpoint (downloaded with huggingface_hub's
  `snapshot_download`, into its cache: config, safetensors weights and tokenizer files only)."""
  try:
    from huggingface_hub import snapshot_download
  except ImportError:
    raise UserError(f"{repo_id!r} is not a local path; to download it from the Hugging Face hub "
                    f"pip install huggingface_hub (or download it yourself and give the folder)"
                    ) from None
  return snapshot_download(repo_id, allow_patterns=list(HUB_PATTERNS))


def load(path: str, config: Optional[ml_collections.ConfigDict] = None) -> Pretrained:
  """Reads a checkpoint (format detected from its files) onto the default device. `path` is a
  local file or folder, or a Hugging Face hub id ("google/flan-t5-small", downloaded with
  `huggingface_hub` when that is installed).

  For models larger than one device use `lazy-neuron import`, which reads every tensor directly
  into its sharding on the config's mesh."""
  from lazy_neuron.models import build_model
  import flax.linen as nn
  path = os.fspath(path)
  if not os.path.exists(path) and _HUB_ID.fullmatch(path):
    path = download(path)
  conv = convert(path)
  config = default_config(conv) if config is None else config
  apply_model(config, conv)
  model = build_model(config.model, data_info(conv), measure=config.sparsity.enabled)
  dummy = {k: np.ones((1, 4), np.int32) for k in model.input_keys} if conv.task == "seq2seq" else \
      {"image": np.zeros((1, conv.image_size, conv.image_size, conv.channels), np.float32)}
  abstract = nn.meta.unbox(jax.eval_shape(
      lambda: model.module.init(jax.random.PRNGKey(0), **dummy)["params"]))
  params = tensors.materialize(conv.leaves, abstract, None, model, os.fspath(path))
  return Pretrained(config, params, model, conv.kind, os.fspath(path))
