"""ViT checkpoints -> lazy_neuron's ViT: timm (`vit_*`), Hugging Face `ViTForImageClassification`,
big_vision / vision_transformer `.npz`.

Depth, width, MLP width, patch size, channels, image size (from the number of position
embeddings) and classes come from the weights; heads from the weights where they show them
(big_vision's [D, heads, head_dim] kernels), else from config.json or the timm architecture name.
A class token whose position embedding is stored with the patches' (timm, Hugging Face) becomes
lazy_neuron's `cls` + that position (the sum the source model computes), and `pos_embedding` the
patches' rows, so the forward pass is the same.
"""
from __future__ import annotations

import math
import re
from typing import Callable, Optional

import numpy as np

from lazy_neuron.pretrained import tensors as T
from lazy_neuron.pretrained.common import (Converted, check_config_sizes, count_indices, shape_of,
                                           unsupported)

# timm architecture name -> heads (timm's vision_transformer.py model definitions).
TIMM_HEADS = {"tiny": 3, "small": 6, "medium": 8, "base": 12, "large": 16, "huge": 16,
              "giant": 16, "gigantic": 16}
TIMM_ACTIVATIONS = {None: "gelu", "gelu": "gelu", "gelu_tanh": "gelu_tanh", "relu": "relu"}
HF_ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh",
                  "relu": "relu"}


def _image_size(where: str, n_patches: int, patch: int) -> int:
  side = math.isqrt(n_patches)
  if side * side != n_patches:
    raise unsupported(where, f"{n_patches} position embeddings (not a square grid)",
                      "square images")
  return side * patch


def _embeddings(f: T.TensorFile, leaves: dict, where: str, *, cls: Optional[str], pos: str,
                conv_w: str, conv_b: str, torch_conv: bool) -> tuple[int, int, int, int]:
  """Stem, class token and position embeddings. Returns (width, patch, channels, image size)."""
  ws = shape_of(f, conv_w, "patch embedding")
  if torch_conv:
    d, c, p, _ = ws
    kernel = lambda: f.read(conv_w, [(0, n) for n in ws]).transpose(2, 3, 1, 0)
  else:
    p, _, c, d = ws
    kernel = lambda: f.read(conv_w, [(0, n) for n in ws])
  leaves["embedding/kernel"] = T.computed((p, p, c, d), kernel, conv_w)
  leaves["embedding/bias"] = T.copy(f, conv_b, (d,), "patch embedding bias")
  ps = shape_of(f, pos, "position embeddings")
  n_pos = int(np.prod(ps)) // d
  with_cls = cls is not None and f.has(cls)
  # Position embeddings for the class token too (timm / HF), or for the patches only (big_vision).
  n_patches = n_pos - 1 if with_cls and int(math.isqrt(n_pos - 1)) ** 2 == n_pos - 1 else n_pos
  first = n_pos - n_patches
  whole = lambda name, shape: f.read(name, [(0, n) for n in shape]).reshape(-1, d)
  leaves["pos_embedding"] = T.computed((1, n_patches, d),
                                       lambda: whole(pos, ps)[first:][None], pos)
  if with_cls:
    cs = shape_of(f, cls, "class token")
    leaves["cls"] = T.computed(
        (1, 1, d), lambda: (whole(cls, cs) + (whole(pos, ps)[:1] if first else 0.0))[None], cls)
  return d, p, c, _image_size(where, n_patches, p)


def _block(f: T.TensorFile, leaves: dict, i: int, d: int, heads: int, f_dim: int,
           names: Callable[[str], str], fused_qkv: bool) -> None:
  """One encoder block from torch Linear weights (timm / HF). `names(part)` gives the tensor name
  of a part (norm1, norm2, q, k, v, qkv, o, fc1, fc2)."""
  ours = f"vit/layer_{i:02d}"
  for norm, part in (("norm_attention", "norm1"), ("norm_mlp", "norm2")):
    leaves[f"{ours}/{norm}/scale"] = T.copy(f, names(part) + ".weight", (d,), "layer norm")
    leaves[f"{ours}/{norm}/bias"] = T.copy(f, names(part) + ".bias", (d,), "layer norm")
  for j, kind in enumerate(("query", "key", "value")):
    part = "qkv" if fused_qkv else kind[0]
    rows = (j * d, d) if fused_qkv else None
    if fused_qkv:
      T.expect(f, names(part) + ".weight", (3 * d, d), "fused qkv")
    leaves[f"{ours}/attention/{kind}_kernel"] = T.linear(f, names(part) + ".weight", d, d,
                                                         rows=rows, split_out=heads)
    bias = names(part) + ".bias"
    leaves[f"{ours}/attention/{kind}_bias"] = (
        T.vector(f, bias, d, rows=rows, split=heads) if f.has(bias)
        else T.zeros((heads, d // heads), f"no {bias} (qkv_bias=False)"))
  leaves[f"{ours}/attention/out_kernel"] = T.linear(f, names("o") + ".weight", d, d,
                                                    split_in=heads)
  leaves[f"{ours}/attention/out_bias"] = T.vector(f, names("o") + ".bias", d)
  leaves[f"{ours}/mlp/wi/kernel"] = T.linear(f, names("fc1") + ".weight", d, f_dim)
  leaves[f"{ours}/mlp/wi/bias"] = T.vector(f, names("fc1") + ".bias", f_dim)
  leaves[f"{ours}/mlp/wo/kernel"] = T.linear(f, names("fc2") + ".weight", f_dim, d)
  leaves[f"{ours}/mlp/wo/bias"] = T.vector(f, names("fc2") + ".bias", d)


def _head_and_norm(f: T.TensorFile, leaves: dict, d: int, norm: str, head: str,
                   torch_linear: bool) -> int:
  leaves["vit/encoder_norm/scale"] = T.copy(f, norm + (".weight" if torch_linear else "/scale"),
                                            (d,), "final norm")
  leaves["vit/encoder_norm/bias"] = T.copy(f, norm + (".bias" if torch_linear else "/bias"), (d,),
                                           "final norm")
  kernel = head + (".weight" if torch_linear else "/kernel")
  k = shape_of(f, kernel, "classifier head")[0 if torch_linear else 1]
  leaves["head/kernel"] = (T.linear(f, kernel, d, k) if torch_linear
                           else T.copy(f, kernel, (d, k), "classifier head"))
  leaves["head/bias"] = T.vector(f, head + ".bias" if torch_linear else head + "/bias", k)
  return k


def _check_all_used(f: T.TensorFile, leaves: dict, where: str, supported: str) -> None:
  used = {leaf.source for leaf in leaves.values()}
  extra = [n for n in f.names if n not in used]
  if extra:
    raise unsupported(where, f"tensors {extra[:3]} that plain ViT does not have", supported)


def _model(d, depth, f_dim, heads, p, act, pool="token", eps=1e-6) -> dict:
  return dict(name="vit", variant="tiny", width=d, depth=depth, mlp_dim=f_dim, num_heads=heads,
              patch_size=p, pool=pool, activation=act, layer_norm_eps=eps)


def convert_timm(f: T.TensorFile, cfg: dict, where: str) -> Converted:
  arch = cfg.get("architecture", "")
  args = dict(cfg.get("model_args") or {})
  m = re.match(r"^vit_(\w+?)_patch", arch)
  if not arch.startswith("vit_"):
    raise unsupported(where, f"timm architecture {arch!r}", "timm vit_* (plain ViT)")
  if cfg.get("global_pool", args.get("global_pool", "token")) != "token":
    raise unsupported(where, f"global_pool={cfg.get('global_pool')!r}", "timm ViT with "
                      "global_pool='token'")
  act = args.get("act_layer")
  if act not in TIMM_ACTIVATIONS:
    raise unsupported(where, f"act_layer={act!r}", f"{', '.join(map(str, TIMM_ACTIVATIONS))}")
  heads = args.get("num_heads") or (TIMM_HEADS.get(m.group(1)) if m else None)
  if heads is None:
    raise unsupported(where, f"architecture {arch!r} without model_args.num_heads",
                      f"timm ViT names vit_{{{','.join(TIMM_HEADS)}}}_patch*, or model_args with "
                      f"num_heads")
  leaves: dict = {}
  d, p, c, size = _embeddings(f, leaves, where, cls="cls_token", pos="pos_embed",
                              conv_w="patch_embed.proj.weight", conv_b="patch_embed.proj.bias",
                              torch_conv=True)
  depth = count_indices(f.names, r"blocks\.(\d+)\.")
  f_dim = shape_of(f, "blocks.0.mlp.fc1.weight", "MLP")[0]
  img = args.get("img_size")
  if isinstance(img, (list, tuple)) and len(set(img)) == 1:  # timm writes [H, W]
    args["img_size"] = img[0]
  check_config_sizes(where, args, {"embed_dim": d, "depth": depth, "patch_size": p,
                                   "img_size": size, "in_chans": c})
  parts = {"norm1": "norm1", "norm2": "norm2", "qkv": "attn.qkv", "o": "attn.proj",
           "fc1": "mlp.fc1", "fc2": "mlp.fc2"}
  for i in range(depth):
    _block(f, leaves, i, d, heads, f_dim, lambda part, i=i: f"blocks.{i}.{parts[part]}", True)
  k = _head_and_norm(f, leaves, d, "norm", "head", torch_linear=True)
  check_config_sizes(where, cfg, {"num_classes": k})
  _check_all_used(f, leaves, where, "timm vit_* with class token, no LayerScale / register "
                  "tokens / qk-norm / fc_norm")
  return Converted("timm_vit", "classification", _model(d, depth, f_dim, heads, p,
                                                         TIMM_ACTIVATIONS[act]),
                   leaves, num_classes=k, image_size=size, channels=c)


# Hugging Face ViT tensor names: transformers 5 (`vit.layers.N...`) and 4 (`vit.encoder.layer.N`).
HF_NAMES = {
    "new": {"norm1": "layernorm_before", "norm2": "layernorm_after", "q": "attention.q_proj",
            "k": "attention.k_proj", "v": "attention.v_proj", "o": "attention.o_proj",
            "fc1": "mlp.fc1", "fc2": "mlp.fc2", "layer": "vit.layers.{}"},
    "old": {"norm1": "layernorm_before", "norm2": "layernorm_after",
            "q": "attention.attention.query", "k": "attention.attention.key",
            "v": "attention.attention.value", "o": "attention.output.dense",
            "fc1": "intermediate.dense", "fc2": "output.dense", "layer": "vit.encoder.layer.{}"},
}


def convert_hf_vit(f: T.TensorFile, cfg: dict, where: str) -> Converted:
  act = cfg.get("hidden_act", "gelu")
  if act not in HF_ACTIVATIONS:
    raise unsupported(where, f"hidden_act={act!r}", f"ViT with {', '.join(HF_ACTIVATIONS)}")
  heads = cfg.get("num_attention_heads")
  if not isinstance(heads, int) or heads < 1:
    raise unsupported(where, f"num_attention_heads={heads!r}", "a config.json with "
                      "num_attention_heads")
  names = HF_NAMES["new" if f.has("vit.layers.0.attention.q_proj.weight") else "old"]
  leaves: dict = {}
  e = "vit.embeddings"
  d, p, c, size = _embeddings(f, leaves, where, cls=f"{e}.cls_token",
                              pos=f"{e}.position_embeddings",
                              conv_w=f"{e}.patch_embeddings.projection.weight",
                              conv_b=f"{e}.patch_embeddings.projection.bias", torch_conv=True)
  layer = names["layer"]
  depth = count_indices(f.names, "^" + re.escape(layer.split("{}")[0]) + r"(\d+)\.")
  f_dim = shape_of(f, layer.format(0) + "." + names["fc1"] + ".weight", "MLP")[0]
  check_config_sizes(where, cfg, {"hidden_size": d, "num_hidden_layers": depth,
                                  "intermediate_size": f_dim, "patch_size": p, "image_size": size,
                                  "num_channels": c})
  for i in range(depth):
    _block(f, leaves, i, d, heads, f_dim, lambda part, i=i: f"{layer.format(i)}.{names[part]}",
           False)
  k = _head_and_norm(f, leaves, d, "vit.layernorm", "classifier", torch_linear=True)
  _check_all_used(f, leaves, where, "ViTForImageClassification")
  return Converted("hf_vit", "classification",
                   _model(d, depth, f_dim, heads, p, HF_ACTIVATIONS[act],
                          eps=float(cfg.get("layer_norm_eps", 1e-12))),
                   leaves, num_classes=k, image_size=size, channels=c)


def convert_big_vision(f: T.TensorFile, where: str) -> Converted:
  """big_vision's `vit.py` parameter names (unrolled `encoderblock_N` or scanned `encoderblock`
  with a leading layer axis), or vision_transformer's (`Transformer/posembed_input`). The MLP
  activation is flax's `nn.gelu` (tanh approximation): gelu_tanh."""
  leaves: dict = {}
  pos = "pos_embedding" if f.has("pos_embedding") else "Transformer/posembed_input/pos_embedding"
  d, p, c, size = _embeddings(f, leaves, where, cls="cls", pos=pos, conv_w="embedding/kernel",
                              conv_b="embedding/bias", torch_conv=False)
  scanned = f.has("Transformer/encoderblock/LayerNorm_0/scale")
  if scanned:
    depth = shape_of(f, "Transformer/encoderblock/LayerNorm_0/scale", "layer norm")[0]
  else:
    depth = count_indices(f.names, r"Transformer/encoderblock_(\d+)/")
  if any(n.startswith("MAPHead") or n.startswith("pre_logits") for n in f.names):
    raise unsupported(where, "a MAP head or pre_logits layer", "big_vision ViT with pool_type "
                      "'tok' or 'gap' and no representation layer")
  heads = shape_of(f, ("Transformer/encoderblock" if scanned else "Transformer/encoderblock_0")
                   + "/MultiHeadDotProductAttention_0/query/kernel", "attention")[-2]

  def param(i: int, name: str, shape) -> T.Leaf:
    if not scanned:
      return T.copy(f, f"Transformer/encoderblock_{i}/{name}", shape)
    full = f"Transformer/encoderblock/{name}"
    T.expect(f, full, (depth, *shape), "scanned layer stack")
    return T.Leaf(tuple(shape), lambda b: f.read(full, [(i, i + 1)] + b)[0], full)

  f_dim = None
  for i in range(depth):
    ours = f"vit/layer_{i:02d}"
    f_dim = f_dim or (f.shape(f"Transformer/encoderblock/MlpBlock_0/Dense_0/kernel")[-1]
                      if scanned else
                      shape_of(f, f"Transformer/encoderblock_0/MlpBlock_0/Dense_0/kernel",
                               "MLP")[-1])
    for norm, theirs in (("norm_attention", "LayerNorm_0"), ("norm_mlp", "LayerNorm_1")):
      for kind in ("scale", "bias"):
        leaves[f"{ours}/{norm}/{kind}"] = param(i, f"{theirs}/{kind}", (d,))
    att = "MultiHeadDotProductAttention_0"
    for kind in ("query", "key", "value"):
      leaves[f"{ours}/attention/{kind}_kernel"] = param(i, f"{att}/{kind}/kernel",
                                                        (d, heads, d // heads))
      leaves[f"{ours}/attention/{kind}_bias"] = param(i, f"{att}/{kind}/bias", (heads, d // heads))
    leaves[f"{ours}/attention/out_kernel"] = param(i, f"{att}/out/kernel", (heads, d // heads, d))
    leaves[f"{ours}/attention/out_bias"] = param(i, f"{att}/out/bias", (d,))
    for ours_name, theirs, shape in (("wi", "Dense_0", (d, f_dim)), ("wo", "Dense_1", (f_dim, d))):
      leaves[f"{ours}/mlp/{ours_name}/kernel"] = param(i, f"MlpBlock_0/{theirs}/kernel", shape)
      leaves[f"{ours}/mlp/{ours_name}/bias"] = param(i, f"MlpBlock_0/{theirs}/bias", shape[1:])
  k = _head_and_norm(f, leaves, d, "Transformer/encoder_norm", "head", torch_linear=False)
  _check_all_used(f, leaves, where, "big_vision ViT (vit.py) parameters")
  return Converted("big_vision_vit", "classification",
                   _model(d, depth, f_dim, heads, p, "gelu_tanh",
                          pool="token" if "cls" in leaves else "gap"),
                   leaves, num_classes=k, image_size=size, channels=c)
