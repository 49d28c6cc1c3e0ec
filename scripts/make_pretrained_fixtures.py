"""Writes the tiny pretrained-checkpoint fixtures of tests/test_pretrained.py (needs torch,
transformers, timm, safetensors; not lazy_neuron's own dependencies):

    python scripts/make_pretrained_fixtures.py [--out tests/fixtures/pretrained]

Each checkpoint is a tiny random model written by its library's own save function, with its
parameters perturbed away from their init (so biases and norms are not trivially 0 / 1):
  t5_v1_0/        transformers T5ForConditionalGeneration, ReLU, tied, vocab 370 (not a multiple of
                  128: lazy_neuron pads it to 384)
  t5_v1_1/        the same with feed_forward_proj="gated-gelu", tie_word_embeddings=False
  timm_vit/       timm vit_tiny_patch16_224 shrunk (model_args in config.json), safetensors
  hf_vit/         transformers ViTForImageClassification
  big_vision_vit.npz  a timm ViT with big_vision's layout (position embeddings for the patches
                  only, tanh-approximated GELU) written under big_vision's vit.py parameter names
and next to each `<name>_ref.npz`: the inputs (lazy_neuron's batch keys), the library's own logits
(float32, eval mode) and, per MLP layer, what a forward pre-hook on the MLP's output projection sees
(its input is the activation map): nonzero entries over real tokens, entries within 1e-5 of zero
(`borderline`: the only ones whose side of zero may depend on summation order), and counts of
|a| <= t for the magnitude thresholds. versions.json records the library versions.
"""
from __future__ import annotations

import argparse
import json
import os
import platform

import numpy as np
import timm
import torch
import transformers
from safetensors.torch import save_file  # noqa: F401  (the libraries' save functions use it)

THRESHOLDS = (1e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0)
BORDER = 1e-5


def perturb(model: torch.nn.Module, seed: int) -> None:
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.05 * torch.randn(p.shape, generator=g))


class Hooks:
  """Forward pre-hooks on the MLP output projections: per layer, counts over real tokens."""

  def __init__(self, modules: dict[str, torch.nn.Module]):
    self.mask = None
    self.counts: dict[str, dict[str, int]] = {}
    self.handles = [m.register_forward_pre_hook(self._hook(name)) for name, m in modules.items()]

  def _hook(self, name):
    def hook(module, args):
      a = args[0].detach().float()
      real = torch.ones(a.shape[:-1], dtype=torch.bool) if self.mask is None else self.mask[name]
      a = a[real]  # [real tokens, d_ff]
      c = {"nonzero": int((a != 0).sum()), "tokens": int(a.shape[0]),
           "borderline": int(((a.abs() <= BORDER) & (a != 0)).sum())}
      for t in THRESHOLDS:
        c[f"below_{t:g}"] = int((a.abs() <= t).sum())
        c[f"border_{t:g}"] = int(((a.abs() - t).abs() <= BORDER * max(t, 1.0)).sum())
      self.counts[name] = c
    return hook

  def arrays(self) -> dict[str, np.ndarray]:
    return {f"hook/{layer}/{k}": np.asarray(v) for layer, c in self.counts.items()
            for k, v in c.items()}


def t5(out: str, name: str, gated: bool, seed: int) -> None:
  torch.manual_seed(seed)
  cfg = transformers.T5Config(
      vocab_size=370, d_model=16, d_kv=4, d_ff=32, num_layers=2, num_decoder_layers=2,
      num_heads=4, feed_forward_proj="gated-gelu" if gated else "relu",
      tie_word_embeddings=not gated, dropout_rate=0.0)
  model = transformers.T5ForConditionalGeneration(cfg).eval()
  perturb(model, seed)
  model.save_pretrained(os.path.join(out, name), safe_serialization=True)
  rng = np.random.default_rng(seed)
  enc = rng.integers(2, 370, (2, 12)).astype(np.int32)
  tgt = rng.integers(2, 370, (2, 6)).astype(np.int32)
  enc[1, 9:] = 0   # padding in the second example
  tgt[1, 4:] = 0
  dec = np.concatenate([np.zeros((2, 1), np.int32), tgt[:, :-1]], axis=1)
  dec[tgt == 0] = 0
  mlps = {}
  for stack, layer_idx in (("encoder", 1), ("decoder", 2)):
    for i, block in enumerate(getattr(model, stack).block):
      mlps[f"{stack}/layer_{i:02d}"] = block.layer[layer_idx].DenseReluDense.wo
  hooks = Hooks(mlps)
  hooks.mask = {k: torch.from_numpy((enc if k.startswith("encoder") else tgt) > 0) for k in mlps}
  with torch.no_grad():
    logits = model(input_ids=torch.from_numpy(enc).long(),
                   attention_mask=torch.from_numpy(enc > 0).long(),
                   decoder_input_ids=torch.from_numpy(dec).long(),
                   decoder_attention_mask=torch.from_numpy(tgt > 0).long()).logits
  np.savez(os.path.join(out, f"{name}_ref.npz"), encoder_input_tokens=enc,
           decoder_input_tokens=dec, decoder_target_tokens=tgt, logits=logits.numpy(),
           **hooks.arrays())


def _images(seed: int) -> np.ndarray:
  return np.random.default_rng(seed).standard_normal((2, 16, 16, 3)).astype(np.float32)


def _vision_ref(out: str, name: str, model, mlps: dict, seed: int, call) -> None:
  hooks = Hooks(mlps)
  image = _images(seed)
  with torch.no_grad():
    logits = call(torch.from_numpy(image.transpose(0, 3, 1, 2)))
  np.savez(os.path.join(out, f"{name}_ref.npz"), image=image, logits=logits.numpy(),
           **hooks.arrays())


TIMM_ARGS = dict(img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=4, mlp_ratio=2.0,
                 num_classes=5)


def timm_vit(out: str, seed: int) -> None:
  torch.manual_seed(seed)
  model = timm.create_model("vit_tiny_patch16_224", pretrained=False, **TIMM_ARGS).eval()
  perturb(model, seed)
  from timm.models._hub import save_for_hf
  path = os.path.join(out, "timm_vit")
  os.makedirs(path, exist_ok=True)
  save_for_hf(model, path, model_args=TIMM_ARGS, safe_serialization=True)
  mlps = {f"vit/layer_{i:02d}": b.mlp.fc2 for i, b in enumerate(model.blocks)}
  _vision_ref(out, "timm_vit", model, mlps, seed, model)


def hf_vit(out: str, seed: int) -> None:
  torch.manual_seed(seed)
  cfg = transformers.ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                               intermediate_size=64, image_size=16, patch_size=4, num_labels=5)
  model = transformers.ViTForImageClassification(cfg).eval()
  perturb(model, seed)
  model.save_pretrained(os.path.join(out, "hf_vit"), safe_serialization=True)
  layers = model.vit.layers if hasattr(model.vit, "layers") else model.vit.encoder.layer
  fc2 = lambda layer: layer.mlp.fc2 if hasattr(layer, "mlp") else layer.output.dense
  mlps = {f"vit/layer_{i:02d}": fc2(layer) for i, layer in enumerate(layers)}
  _vision_ref(out, "hf_vit", model, mlps, seed, lambda x: model(pixel_values=x).logits)


def big_vision_vit(out: str, seed: int) -> None:
  """big_vision's ViT ('tok' pool): position embeddings for the patches only (timm's
  no_embed_class) and flax's nn.gelu, i.e. the tanh approximation; big_vision's names."""
  torch.manual_seed(seed)
  model = timm.create_model("vit_tiny_patch16_224", pretrained=False, no_embed_class=True,
                            act_layer="gelu_tanh", **TIMM_ARGS).eval()
  perturb(model, seed)
  sd = {k: v.numpy() for k, v in model.state_dict().items()}
  d, h = TIMM_ARGS["embed_dim"], TIMM_ARGS["num_heads"]
  p = {"cls": sd["cls_token"], "pos_embedding": sd["pos_embed"],
       "embedding/kernel": sd["patch_embed.proj.weight"].transpose(2, 3, 1, 0),
       "embedding/bias": sd["patch_embed.proj.bias"],
       "Transformer/encoder_norm/scale": sd["norm.weight"],
       "Transformer/encoder_norm/bias": sd["norm.bias"],
       "head/kernel": sd["head.weight"].T, "head/bias": sd["head.bias"]}
  for i in range(TIMM_ARGS["depth"]):
    b, t = f"Transformer/encoderblock_{i}/", f"blocks.{i}."
    for ln, n in (("LayerNorm_0", "norm1"), ("LayerNorm_1", "norm2")):
      p[b + ln + "/scale"], p[b + ln + "/bias"] = sd[t + n + ".weight"], sd[t + n + ".bias"]
    qkv_w, qkv_b = sd[t + "attn.qkv.weight"], sd[t + "attn.qkv.bias"]
    for j, kind in enumerate(("query", "key", "value")):
      a = b + "MultiHeadDotProductAttention_0/" + kind
      p[a + "/kernel"] = qkv_w[j * d:(j + 1) * d].T.reshape(d, h, d // h)
      p[a + "/bias"] = qkv_b[j * d:(j + 1) * d].reshape(h, d // h)
    o = b + "MultiHeadDotProductAttention_0/out"
    p[o + "/kernel"] = sd[t + "attn.proj.weight"].T.reshape(h, d // h, d)
    p[o + "/bias"] = sd[t + "attn.proj.bias"]
    for dense, n in (("Dense_0", "fc1"), ("Dense_1", "fc2")):
      p[b + "MlpBlock_0/" + dense + "/kernel"] = sd[t + "mlp." + n + ".weight"].T
      p[b + "MlpBlock_0/" + dense + "/bias"] = sd[t + "mlp." + n + ".bias"]
  np.savez(os.path.join(out, "big_vision_vit.npz"), **{k: np.ascontiguousarray(v, np.float32)
                                                      for k, v in p.items()})
  mlps = {f"vit/layer_{i:02d}": blk.mlp.fc2 for i, blk in enumerate(model.blocks)}
  _vision_ref(out, "big_vision_vit", model, mlps, seed, model)


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "tests",
                                                "fixtures", "pretrained"))
  out = ap.parse_args().out
  os.makedirs(out, exist_ok=True)
  torch.set_num_threads(1)
  t5(out, "t5_v1_0", gated=False, seed=0)
  t5(out, "t5_v1_1", gated=True, seed=1)
  timm_vit(out, seed=2)
  hf_vit(out, seed=3)
  big_vision_vit(out, seed=4)
  versions = {"torch": torch.__version__, "transformers": transformers.__version__,
              "timm": timm.__version__, "numpy": np.__version__,
              "python": platform.python_version(), "machine": platform.machine()}
  with open(os.path.join(out, "versions.json"), "w") as f:
    json.dump(versions, f, indent=1, sort_keys=True)
  print(json.dumps(versions))


if __name__ == "__main__":
  main()
