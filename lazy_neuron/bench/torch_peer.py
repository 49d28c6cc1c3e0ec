"""The PyTorch peer of `lazy-neuron bench peers`: one model's training step timed in this process.

  python -m lazy_neuron.bench.torch_peer --model=vit --out=peer.json          # timm ViT-B/16
  python -m lazy_neuron.bench.torch_peer --model=t5 --out=peer.json           # transformers T5-Base

The recipe a PyTorch user would run: `torch.compile(model)`, `torch.autocast(bfloat16)` (float32
parameters, bf16 matmuls), `torch.optim.AdamW(lr=1e-4, fused=True)`, TF32 matmuls allowed, random
data of fixed shapes created on the device once (input pipeline excluded). The first step
(compilation included) and `--warmup` more steps are not timed; then `--steps` steps are timed
between two `torch.cuda.synchronize()`.

- vit: timm `vit_base_patch16_224` (class token, GELU MLP), random images [B, 3, S, S] and labels,
  cross-entropy.
- t5: transformers `T5ForConditionalGeneration` with a T5 v1.0 config (ReLU MLP without biases,
  relative position buckets 32 / max distance 128, tied embeddings, dropout 0), random input_ids
  [B, Li] and labels [B, Lt] in [2, vocab); `model(input_ids=..., labels=...).loss`.

The sizes default to ViT-B/16 at 224 px and T5-Base with 512 / 114 tokens; `bench peers` passes the
sizes of its own config so that both sides run the same architecture.

Its own process, started by `bench peers` (so that JAX's and PyTorch's allocators never share a
GPU): it imports only the standard library, torch and timm or transformers, never lazy_neuron's
other modules (whose dependencies the GPU image may lack).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

from lazy_neuron.bench import host


def _error(message: str) -> int:
  print(f"lazy-neuron: error: {message}", file=sys.stderr)
  return 2


class _Parser(argparse.ArgumentParser):
  def error(self, message):  # one line (raised to main), not argparse's usage block
    raise ValueError(message)


def _parser() -> argparse.ArgumentParser:
  p = _Parser(prog="python -m lazy_neuron.bench.torch_peer",
                              description=__doc__.splitlines()[0], allow_abbrev=False)
  p.add_argument("--model", required=True, choices=("vit", "t5"))
  p.add_argument("--batch-size", type=int, default=None, help="default 256 (vit) / 128 (t5)")
  p.add_argument("--steps", type=int, default=20)
  p.add_argument("--warmup", type=int, default=5, help="untimed steps after the first one")
  p.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
  p.add_argument("--compile", default="true", choices=("true", "false"),
                 help="torch.compile the model (false: eager; quick CPU tests)")
  p.add_argument("--out", required=True)
  # ViT sizes (ViT-B/16 at 224 px, 1000 classes)
  p.add_argument("--image-size", type=int, default=224)
  p.add_argument("--patch-size", type=int, default=16)
  p.add_argument("--width", type=int, default=768)
  p.add_argument("--depth", type=int, default=12)
  p.add_argument("--mlp-dim", type=int, default=3072)
  p.add_argument("--num-heads", type=int, default=12)
  p.add_argument("--num-classes", type=int, default=1000)
  # T5 sizes (T5-Base v1.0, 512 inputs / 114 targets, 32,128 ids)
  p.add_argument("--d-model", type=int, default=768)
  p.add_argument("--d-kv", type=int, default=64)
  p.add_argument("--d-ff", type=int, default=3072)
  p.add_argument("--t5-heads", type=int, default=12)
  p.add_argument("--encoder-layers", type=int, default=12)
  p.add_argument("--decoder-layers", type=int, default=12)
  p.add_argument("--vocab", type=int, default=32128)
  p.add_argument("--inputs-length", type=int, default=512)
  p.add_argument("--targets-length", type=int, default=114)
  return p


def _vit(a, torch, device):
  import timm
  import torch.nn.functional as F
  model = timm.create_model(
      "vit_base_patch16_224", pretrained=False, num_classes=a.num_classes, img_size=a.image_size,
      patch_size=a.patch_size, embed_dim=a.width, depth=a.depth, num_heads=a.num_heads,
      mlp_ratio=a.mlp_dim / a.width)
  x = torch.randn(a.batch_size, 3, a.image_size, a.image_size, device=device)
  y = torch.randint(0, a.num_classes, (a.batch_size,), device=device)
  return model, (lambda m: F.cross_entropy(m(x), y)), {"examples": a.batch_size}


def _t5(a, torch, device):
  from transformers import T5Config, T5ForConditionalGeneration
  config = T5Config(vocab_size=a.vocab, d_model=a.d_model, d_kv=a.d_kv, d_ff=a.d_ff,
                    num_layers=a.encoder_layers, num_decoder_layers=a.decoder_layers,
                    num_heads=a.t5_heads, relative_attention_num_buckets=32,
                    relative_attention_max_distance=128, dropout_rate=0.0,
                    feed_forward_proj="relu", tie_word_embeddings=True, pad_token_id=0,
                    eos_token_id=1, decoder_start_token_id=0, use_cache=False)
  model = T5ForConditionalGeneration(config)
  ids = torch.randint(2, a.vocab, (a.batch_size, a.inputs_length), device=device)
  labels = torch.randint(2, a.vocab, (a.batch_size, a.targets_length), device=device)
  tokens = a.inputs_length + a.targets_length
  return (model, (lambda m: m(input_ids=ids, labels=labels).loss),
          {"examples": a.batch_size, "tokens_per_example": tokens})


def run(a) -> dict:
  import torch
  cuda = a.device == "cuda"
  if cuda and not torch.cuda.is_available():
    raise RuntimeError("--device=cuda but torch sees no CUDA device")
  torch.backends.cuda.matmul.allow_tf32 = True
  torch.backends.cudnn.allow_tf32 = True
  torch.manual_seed(0)
  device = torch.device(a.device)
  model, loss_fn, counts = (_vit if a.model == "vit" else _t5)(a, torch, device)
  model = model.to(device).train()
  params = sum(p.numel() for p in model.parameters())
  opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=cuda)  # fused kernels are CUDA's
  run_model = torch.compile(model) if a.compile == "true" else model

  def step():
    with torch.autocast(a.device, dtype=torch.bfloat16):
      loss = loss_fn(run_model)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)

  sync = torch.cuda.synchronize if cuda else (lambda: None)
  if cuda:
    torch.cuda.reset_peak_memory_stats()
  sync()
  t0 = time.perf_counter()
  step()  # compiles
  sync()
  first_step_s = time.perf_counter() - t0
  for _ in range(a.warmup):
    step()
  sync()
  warmup_s = time.perf_counter() - t0
  t1 = time.perf_counter()
  for _ in range(a.steps):
    step()
  sync()
  dt = (time.perf_counter() - t1) / a.steps
  out = {"framework": "pytorch", "model": a.model, "step_ms": dt * 1e3,
         "steps_per_s": 1.0 / dt, "examples_per_s": counts["examples"] / dt,
         "batch_size": a.batch_size, "first_step_s": first_step_s, "warmup_s": warmup_s,
         "steps": a.steps, "warmup": a.warmup, "params": params,
         "peak_bytes_per_device": int(torch.cuda.max_memory_allocated()) if cuda else None,
         "peak_reserved_bytes_per_device": int(torch.cuda.max_memory_reserved()) if cuda else None,
         "recipe": {"compile": a.compile == "true", "autocast": "bfloat16",
                    "optimizer": f"torch.optim.AdamW(lr=1e-4, fused={cuda})",
                    "allow_tf32": True, "sizes": _sizes(a)}}
  if "tokens_per_example" in counts:
    out["tokens_per_example"] = counts["tokens_per_example"]
    out["tokens_per_s"] = a.batch_size * counts["tokens_per_example"] / dt
  versions = {"python": platform.python_version(), "torch": torch.__version__,
              "cuda": torch.version.cuda,
              "cudnn": torch.backends.cudnn.version() if cuda else None}
  lib = "timm" if a.model == "vit" else "transformers"
  versions[lib] = __import__(lib).__version__
  out["versions"] = versions
  out["hardware"] = {"device_kind": torch.cuda.get_device_name() if cuda else "cpu",
                     "num_devices": 1, **host.host_info()}
  return out


def _sizes(a) -> dict:
  keys = (("image_size", "patch_size", "width", "depth", "mlp_dim", "num_heads", "num_classes")
          if a.model == "vit" else ("d_model", "d_kv", "d_ff", "t5_heads", "encoder_layers",
                                    "decoder_layers", "vocab", "inputs_length", "targets_length"))
  return {k: getattr(a, k) for k in keys}


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else list(argv)
  p = _parser()
  try:
    a = p.parse_args(argv)
  except ValueError as e:
    return _error(f"{e}; see {p.prog} --help")
  if a.batch_size is None:
    a.batch_size = 256 if a.model == "vit" else 128
  for name in ("batch_size", "steps"):
    if getattr(a, name) < 1:
      return _error(f"--{name.replace('_', '-')}={getattr(a, name)} is not valid; use an "
                    "integer >= 1")
  if a.warmup < 0:
    return _error(f"--warmup={a.warmup} is not valid; use an integer >= 0")
  lib = "timm" if a.model == "vit" else "transformers"
  for package in ("torch", lib):
    try:
      __import__(package)
    except ImportError:
      return _error(f"the PyTorch peer needs torch and {lib} (pip install torch {lib}): "
                    f"{package} is not installed")
  result = run(a)
  tmp = f"{a.out}.tmp-{os.getpid()}"
  with open(tmp, "w") as f:
    json.dump(result, f, indent=1)
  os.replace(tmp, a.out)  # atomic: the parent never reads a torn file
  print(f"pytorch {a.model}: {result['step_ms']:.2f} ms/step, first step (compile) "
        f"{result['first_step_s']:.1f} s")
  return 0


if __name__ == "__main__":
  sys.exit(main())
