"""`lazy-neuron bench train`: training-step throughput of a config, dense vs Top-k and with the
sparsity probe on vs off (DESIGN.md: the probe costs at most a few percent of a step).

  lazy-neuron bench train --config=configs/vit_digits.py --variants=dense,probe_off,topk=64 \
      --steps=20 --out=bench_train.json [--config.k=v ...]

Each variant builds its own jitted step, runs `--warmup` steps, then times `--steps` steps on one
fixed batch (input pipeline excluded), blocking on the result. Prints a table; writes JSON with the
hardware named.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from typing import Optional, Sequence

import jax
import numpy as np

from lazy_neuron.errors import EXIT_USAGE, UserError


def _variant_overrides(name: str) -> list[str]:
  if name == "dense":
    return ["config.model.topk=None", "config.sparsity.enabled=true"]
  if name == "probe_off":
    return ["config.model.topk=None", "config.sparsity.enabled=false"]
  if name.startswith("topk="):
    return [f"config.model.topk={int(name.split('=', 1)[1])}", "config.sparsity.enabled=true"]
  raise UserError(f"--variants entry {name!r} is not valid; use dense, probe_off or topk=K")


def time_variant(config, warmup: int, steps: int) -> dict:
  from lazy_neuron import train
  from lazy_neuron.models import dummy_batch
  setup = train.build_setup(config)
  s = train.Steps(setup)
  batch = dummy_batch(setup.model, setup.info, config.batch_size)
  rng = np.random.default_rng(0)
  for k, v in batch.items():
    if v.dtype == np.int32 and k != "label":
      batch[k] = rng.integers(2, max(setup.info.vocab_size or 3, 3), v.shape).astype(np.int32)
    elif k == "image":
      batch[k] = rng.normal(size=v.shape).astype(np.float32)
  batch = train.to_global(batch, setup.batch_sharding)
  with s.context():
    state = s.init(jax.random.PRNGKey(0))
    window = s.zero_window()
    t_compile = time.perf_counter()
    state, window = s.train_step(state, window, batch)
    jax.block_until_ready(state)
    compile_s = time.perf_counter() - t_compile
    for _ in range(warmup):
      state, window = s.train_step(state, window, batch)
    jax.block_until_ready(state)
    t0 = time.perf_counter()
    for _ in range(steps):
      state, window = s.train_step(state, window, batch)
    jax.block_until_ready((state, window))
    dt = (time.perf_counter() - t0) / steps
  return {"step_ms": dt * 1e3, "steps_per_s": 1.0 / dt,
          "examples_per_s": config.batch_size / dt, "first_step_s": compile_s}


def main(argv: Optional[Sequence[str]] = None) -> int:
  argv = list(sys.argv if argv is None else argv)
  parser = argparse.ArgumentParser(prog=argv[0], description=__doc__.splitlines()[0])
  parser.add_argument("--config", required=True)
  parser.add_argument("--variants", default="dense,probe_off")
  parser.add_argument("--steps", type=int, default=20)
  parser.add_argument("--warmup", type=int, default=3)
  parser.add_argument("--out", default=None)
  args, rest = parser.parse_known_args(argv[1:])
  try:
    from lazy_neuron import train
    overrides = [a[2:] for a in rest if a.startswith("--config.")]
    unknown = [a for a in rest if not a.startswith("--config.")]
    if unknown:
      raise UserError(f"unknown flag {unknown[0]!r}; valid: --config, --variants, --steps, "
                      f"--warmup, --out, --config.KEY=VALUE")
    rows = []
    for name in [v.strip() for v in args.variants.split(",") if v.strip()]:
      config = train.load_config(args.config, overrides + _variant_overrides(name))
      rows.append({"variant": name, **time_variant(config, args.warmup, args.steps)})
  except UserError as e:
    print(f"lazy-neuron: error: {e}", file=sys.stderr)
    return EXIT_USAGE
  base = rows[0]["step_ms"]
  device = jax.devices()[0]
  print(f"config {args.config} {' '.join(overrides)} on {len(jax.devices())} x "
        f"{device.device_kind} ({device.platform})")
  print(f"{'variant':<14} {'step ms':>10} {'steps/s':>9} {'examples/s':>11} {'vs first':>9}")
  for r in rows:
    print(f"{r['variant']:<14} {r['step_ms']:>10.2f} {r['steps_per_s']:>9.2f} "
          f"{r['examples_per_s']:>11.1f} {r['step_ms'] / base - 1:>+8.1%}")
  if args.out:
    with open(args.out, "w") as f:
      json.dump({"config": args.config, "overrides": overrides, "rows": rows,
                 "hardware": {"device_kind": device.device_kind, "platform": device.platform,
                              "num_devices": len(jax.devices()), "host": platform.node(),
                              "jax": jax.__version__}}, f, indent=1)
  return 0


if __name__ == "__main__":
  sys.exit(main())
