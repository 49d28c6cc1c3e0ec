"""`lazy-neuron bench peers`: lazy_neuron vs its PyTorch peer, back to back on the same machine.

  lazy-neuron bench peers --model=vit_b16 --out=peers_vit_b16.json   # vs timm vit_base_patch16_224
  lazy-neuron bench peers --model=t5_base --out=peers_t5_base.json   # vs transformers T5 (v1.0)
  lazy-neuron bench peers --model=vit_b16 --peer=none                # lazy_neuron only
  lazy-neuron bench peers --model=all --out=peers.json   # both, one after the other:
                                                         # peers_vit_b16.json, peers_t5_base.json

Both sides train the same architecture at the same batch and sequence lengths on random data of
fixed shapes (input pipeline excluded), bf16 compute with float32 parameters, AdamW (lr 1e-4,
weight decay 0.01, no gradient clipping), the first step (compilation) and `--warmup` more steps
untimed, then `--steps` timed steps:

- ours: `lazy-neuron bench train` of configs/vit_digits.py:variant=B/16 (224 px, 1000 classes,
  batch 256) or configs/t5_c4.py (T5-Base, 512 / 114 tokens, vocabulary 32,128, batch 128), the
  `--variants` given (dense = sparsity probe on, as trained);
- the peer (`lazy_neuron.bench.torch_peer`): timm `vit_base_patch16_224` or transformers
  `T5ForConditionalGeneration`, with `torch.compile`, bf16 autocast and fused AdamW.

Each side runs in its own process, one after the other, so that neither's allocator holds memory
the other needs, on one GPU (the first of CUDA_VISIBLE_DEVICES). The table gives each side's step time, throughput (T5: tokens/s counting every
input and target position), model FLOPs per step (the same count for both, from the architecture:
`lazy_neuron.flops`), achieved TFLOP/s and MFU, time to the first step (compilation included; ours
also compiles and runs the parameter initialisation, which torch does eagerly before its clock
starts) and peak memory per device, and the speed-up of ours = peer step time / our step time. The JSON holds
both sides' full results with hardware and versions, and the command and git commit.

`--model` takes one name, a comma-separated list or `all`; with several, each model's JSON goes to
the `--out` path with `_<model>` before its extension, each model's traces to `--profile`/<model>,
and a summary of the speed-ups ends the output. Every model's input is checked before anything
runs.

torch and timm / transformers are optional: without them the command says so before running
anything (`--peer=none` times our side only). `--size=tiny` runs small models of the same shapes on
both sides (for CPU tests; `--peer-device=cpu --peer-compile=false`).
"""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import shlex
import subprocess
import sys
import tempfile
from typing import Optional, Sequence

from lazy_neuron import checks, errors, flags
from lazy_neuron.errors import UserError

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@dataclasses.dataclass(frozen=True)
class Peer:
  title: str
  config: str          # our config, relative to the repository
  synthetic: str       # `bench train --synthetic` shapes
  batch_size: int
  torch_model: str     # torch_peer --model
  library: str         # the PyTorch library of the peer
  peer_name: str
  tiny: tuple[str, str, int]  # (config, synthetic, batch) of --size=tiny


MODELS = {
    "vit_b16": Peer("ViT-B/16, 224 px, 1000 classes", "configs/vit_digits.py:variant=B/16",
                    "image,224,1000", 256, "vit", "timm", "timm vit_base_patch16_224",
                    ("configs/vit_digits.py:variant=tiny", "image,16,10", 8)),
    "t5_base": Peer("T5-Base (v1.0), 512 inputs / 114 targets", "configs/t5_c4.py",
                    "text,512,114,32128", 128, "t5", "transformers",
                    "transformers T5ForConditionalGeneration",
                    ("configs/t5_c4.py:variant=tiny", "text,16,8,256", 8)),
}

# The peer recipe's optimizer and precision, applied to our config: AdamW with torch's defaults
# (b1 0.9, b2 0.999, eps 1e-8, weight decay 0.01), lr 1e-4 constant, no gradient clipping (0 = off),
# bf16 compute with float32 parameters (what autocast does).
RECIPE = ("config.model.dtype=bfloat16", "config.optimizer.name=adamw",
          "config.optimizer.learning_rate=0.0001", "config.optimizer.schedule=constant",
          "config.optimizer.warmup_steps=0", "config.optimizer.weight_decay=0.01",
          "config.optimizer.b1=0.9", "config.optimizer.b2=0.999", "config.optimizer.eps=1e-08",
          "config.optimizer.grad_clip_norm=0.0")


def missing_packages(packages: Sequence[str]) -> list[str]:
  return [p for p in packages if importlib.util.find_spec(p) is None]


def peer_sizes(name: str, model, info) -> list[str]:
  """torch_peer flags that build the peer with our model's sizes (same FLOPs on both sides)."""
  s = model.sizes
  if name == "vit_b16":
    if s.get("pool", "token") != "token":
      raise checks.fail("model.pool", s["pool"], "the timm peer uses a class token; use token")
    h, w, c = info.image_shape
    if h != w or c != 3:
      raise UserError(f"the timm peer takes square RGB images; --synthetic gives {h}x{w}x{c}")
    return [f"--image-size={h}", f"--patch-size={s['patch_size']}", f"--width={s['width']}",
            f"--depth={s['depth']}", f"--mlp-dim={s['mlp_dim']}", f"--num-heads={s['num_heads']}",
            f"--num-classes={model.module.num_classes}"]
  return [f"--d-model={s['emb_dim']}", f"--d-kv={s['head_dim']}", f"--d-ff={s['mlp_dim']}",
          f"--t5-heads={s['num_heads']}", f"--encoder-layers={s['num_encoder_layers']}",
          f"--decoder-layers={s['num_decoder_layers']}", f"--vocab={model.module.vocab_size}",
          f"--inputs-length={info.inputs_length}", f"--targets-length={info.targets_length}"]


def _run_side(what: str, out_json: str, cmd: list[str]) -> Optional[dict]:
  """Runs one side in its own process; its JSON, or None after printing why (its output above)."""
  rc = _run(cmd)
  if rc != 0:
    print(f"lazy-neuron: error: {what} failed with exit code {rc}; its output is above",
          file=sys.stderr)
    return None
  with open(out_json) as f:
    return json.load(f)


def _run(cmd: list[str]) -> int:
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join([REPO] + [p for p in [env.get("PYTHONPATH")] if p])
  # The peer trains on one GPU: ours gets the same one (not a data-parallel mesh over all of them).
  env["CUDA_VISIBLE_DEVICES"] = env.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0]
  print("+ " + shlex.join(cmd), flush=True)
  return subprocess.run(cmd, env=env, check=False).returncode


def _side(r: dict, flops: int, kind: str, tokens: bool) -> dict:
  from lazy_neuron import flops as flops_lib
  step_s = r["step_ms"] / 1e3
  mfu, tflops, note = flops_lib.mfu(flops, step_s, r.get("num_devices", 1), kind)
  return {"step_ms": r["step_ms"],
          "throughput": r["tokens_per_s"] if tokens else r["examples_per_s"],
          "tflops_per_s": tflops, "mfu": mfu, "mfu_peak": note,
          # Ours: the initialisation's compilation and run too (JAX compiles it; torch builds the
          # peer's parameters eagerly, before its clock starts).
          "first_step_s": r.get("start_s", r["first_step_s"]), "compile_s": r.get("compile_s"),
          "init_s": r.get("init_s"),
          "peak_bytes_per_device": r.get("peak_bytes_per_device")}


def compare(ours: dict, peer: Optional[dict], flops: int, tokens: bool) -> list[dict]:
  """One row per side: ours (each variant), then the peer; `speedup` = peer / our step time."""
  kind = ours["hardware"]["device_kind"]
  n = ours["hardware"]["num_devices"]
  rows = [{"side": f"lazy_neuron {r['variant']}",
           **_side({**r, "num_devices": n}, flops, kind, tokens)} for r in ours["rows"]]
  if peer is not None:
    rows.append({"side": "pytorch peer",
                 **_side(peer, flops, peer["hardware"]["device_kind"], tokens)})
    for r in rows:
      r["speedup"] = peer["step_ms"] / r["step_ms"]
  return rows


def _gib(n) -> str:
  return f"{n / 2**30:.2f}" if n else "-"


def print_table(title: str, rows: list[dict], flops: int, tokens: bool, hardware: dict) -> None:
  print(f"\n{title} on {hardware['num_devices']} x {hardware['device_kind']}; model FLOPs/step "
        f"{flops:.4g} (both sides); MFU vs {rows[0]['mfu_peak']}")
  unit = "tokens/s" if tokens else "img/s"
  print(f"{'side':<22} {'step ms':>9} {unit:>10} {'TFLOP/s':>8} {'MFU':>6} {'first step s':>12} "
        f"{'peak GiB/dev':>12} {'speed-up':>9}")
  for r in rows:
    mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "-"
    speed = f"{r['speedup']:.2f}x" if "speedup" in r else "-"
    print(f"{r['side']:<22} {r['step_ms']:>9.2f} {r['throughput']:>10.0f} {r['tflops_per_s']:>8.1f} "
          f"{mfu:>6} {r['first_step_s']:>12.1f} {_gib(r['peak_bytes_per_device']):>12} "
          f"{speed:>9}")
  print("speed-up = peer step time / our step time (> 1: lazy_neuron is faster)")


def parse_models(value: str) -> list[str]:
  """--model: one name, a comma-separated list or `all` -> the names, in order, without repeats."""
  names = list(MODELS) if value.strip() == "all" else [
      m.strip() for m in value.split(",") if m.strip()]
  bad = [m for m in names if m not in MODELS]
  if bad or not names:
    raise checks.fail("--model", value, f"give {', '.join(MODELS)}, a comma-separated list of "
                      "them, or all")
  return list(dict.fromkeys(names))


def out_path(out: Optional[str], model: str, several: bool) -> Optional[str]:
  """The JSON path of one model: --out itself, or with `_<model>` before its extension."""
  if out is None or not several:
    return out
  stem, ext = os.path.splitext(out)
  return f"{stem}_{model}{ext or '.json'}"


@dataclasses.dataclass
class _Plan:
  """One model's comparison, checked and counted before anything runs."""
  name: str
  spec: Peer
  config: str
  synthetic: str
  batch: int
  overrides: list
  variants: list
  count: object
  sizes: list
  tokens: bool
  out: Optional[str]
  profile: Optional[str]


def _plan(args, overrides, name: str, several: bool) -> _Plan:
  from lazy_neuron.bench import train as bench_train
  spec = MODELS[name]
  if args.peer == "torch":
    missing = missing_packages(("torch", spec.library))
    if missing:
      raise UserError(f"bench peers --model={name} needs torch and {spec.library} (pip "
                      f"install torch {spec.library}): {', '.join(missing)} not installed; "
                      "--peer=none times lazy_neuron only")
  out = out_path(args.out, name, several)
  bench_train.check_out("--out", out)
  config, synthetic, batch = ((spec.config, spec.synthetic, spec.batch_size)
                              if args.size == "full" else spec.tiny)
  batch = args.batch_size or batch
  path, _, config_args = config.partition(":")
  config = os.path.join(REPO, path) + (":" + config_args if config_args else "")
  ours_overrides = [*RECIPE, f"config.batch_size={batch}", f"config.eval_batch_size={batch}",
                    *overrides]
  names = [v.strip() for v in args.variants.split(",") if v.strip()]
  if not names:
    raise checks.fail("--variants", args.variants, "give dense, probe_off or topk=K")
  # Validate every variant's config and count FLOPs here, before either side runs.
  info = bench_train.synthetic_info(synthetic)
  configs = [bench_train.load_variant_config(config, ours_overrides +
                                             bench_train.variant_overrides(n), True)
             for n in names]
  from lazy_neuron import flops as flops_lib
  from lazy_neuron.models import build_model
  model = build_model(configs[0].model, info, measure=False)
  profile = (os.path.join(args.profile, name) if args.profile and several else args.profile)
  return _Plan(name, spec, config, synthetic, batch, ours_overrides, names,
               flops_lib.train_step(model, info, batch), peer_sizes(name, model, info),
               model.task == "seq2seq", out, profile)


def _execute(args, plan: _Plan, argv: Sequence[str]) -> Optional[list]:
  """Runs both sides of one plan; the comparison rows, or None when a side failed."""
  from lazy_neuron.bench import train as bench_train
  py = sys.executable
  with tempfile.TemporaryDirectory(prefix="lazy_neuron_peers_") as tmp:
    ours_json, peer_json = os.path.join(tmp, "ours.json"), os.path.join(tmp, "peer.json")
    ours = _run_side("our side (bench train)", ours_json, [
        py, "-m", "lazy_neuron.cli", "bench", "train", f"--config={plan.config}",
        f"--synthetic={plan.synthetic}", f"--variants={','.join(plan.variants)}",
        f"--steps={args.steps}", f"--warmup={args.warmup}", f"--out={ours_json}",
        *([f"--profile={plan.profile}"] if plan.profile else []),
        *[f"--{o}" for o in plan.overrides]])
    if ours is None:
      return None
    peer = None
    if args.peer == "torch":
      peer = _run_side("the PyTorch peer", peer_json, [
          py, "-m", "lazy_neuron.bench.torch_peer", f"--model={plan.spec.torch_model}",
          f"--batch-size={plan.batch}", f"--steps={args.steps}", f"--warmup={args.warmup}",
          f"--device={args.peer_device}", f"--compile={args.peer_compile}", f"--out={peer_json}",
          *plan.sizes])
      if peer is None:
        return None
  rows = compare(ours, peer, plan.count.model, plan.tokens)
  title = (f"{plan.spec.title}, batch {plan.batch}" if args.size == "full" else
           f"{plan.name} --size=tiny (synthetic {plan.synthetic}), batch {plan.batch}")
  print_table(title, rows, plan.count.model, plan.tokens, ours["hardware"])
  if plan.out:
    bench_train.write_json(plan.out, {
        "model": plan.name, "title": title, "peer_name": plan.spec.peer_name,
        "command": shlex.join(["lazy-neuron", "bench", "peers", *argv[1:]]),
        "git": ours.get("git"), "flops": plan.count.to_json(), "throughput_unit":
        "tokens/s (batch x (inputs + targets))" if plan.tokens else "images/s",
        "comparison": rows, "ours": ours, "peer": peer})
  return rows


def main(argv: Optional[Sequence[str]] = None) -> int:
  argv = list(sys.argv if argv is None else argv)
  parser = flags.parser(argv[0], __doc__.splitlines()[0])
  parser.add_argument("--model", required=True,
                      help=f"{', '.join(MODELS)}, a comma-separated list of them, or all")
  parser.add_argument("--batch-size", "--batch_size", type=int, default=None,
                      help="global batch (default: 256 for vit_b16, 128 for t5_base)")
  parser.add_argument("--steps", type=int, default=20)
  parser.add_argument("--warmup", type=int, default=5, help="untimed steps after the first")
  parser.add_argument("--variants", default="dense", help="our variants (bench train --variants)")
  parser.add_argument("--peer", default="torch", choices=("torch", "none"))
  parser.add_argument("--size", default="full", choices=("full", "tiny"),
                      help="tiny: small models of the same shapes (CPU tests)")
  parser.add_argument("--peer-device", "--peer_device", default="cuda", choices=("cuda", "cpu"))
  parser.add_argument("--peer-compile", "--peer_compile", default="true", choices=("true", "false"))
  parser.add_argument("--out", default=None,
                      help="JSON path (several models: _<model> goes before the extension)")
  parser.add_argument("--profile", default=None, metavar="DIR",
                      help="our side: trace 5 steps per variant into DIR (bench train --profile)")
  parser.epilog = "--config.KEY=VALUE overrides a key of our config (after the peer recipe's)."
  try:
    args, overrides = flags.parse(parser, argv[1:], config_overrides=True)
    models = parse_models(args.model)
    checks.integer("--steps", args.steps, min=1)
    checks.integer("--warmup", args.warmup, min=0)
    checks.integer("--batch-size", args.batch_size, min=1, none_ok=True)
    plans = [_plan(args, overrides, m, len(models) > 1) for m in models]
  except UserError as e:
    return errors.report(e)

  summary = []
  for plan in plans:
    rows = _execute(args, plan, argv)
    if rows is None:
      return 1
    if "speedup" in rows[0]:
      summary.append(f"{plan.name} {rows[0]['speedup']:.2f}x")
  if len(plans) > 1 and summary:
    print(f"summary ({rows[0]['side']} vs its peer): {', '.join(summary)}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
