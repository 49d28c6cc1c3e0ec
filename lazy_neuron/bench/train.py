"""`lazy-neuron bench train`: training-step throughput of a config, dense vs Top-k and with the
sparsity probe on vs off (the probe should cost at most a few percent of a step).

  lazy-neuron bench train --config=configs/vit_digits.py --variants=dense,probe_off,topk=64 \
      --steps=20 --out=bench_train.json [--config.k=v ...]
  # ViT-B/16 at 224 on random batches of ImageNet's shapes (no dataset needed):
  lazy-neuron bench train --config=configs/vit_digits.py:variant=B/16 --synthetic=image,224,1000 \
      --config.batch_size=256 --config.model.dtype=bfloat16 --variants=dense,probe_off,topk=128

Each variant builds its own jitted step, runs `--warmup` steps, then times `--steps` steps on one
fixed batch (input pipeline excluded), blocking on the result. Prints a table; writes JSON with the
hardware named.

`--input=pipeline` also times the same compiled step fed by the config's real input pipeline
(`data.build` + `to_global`, exactly as `lazy-neuron train` feeds it) after `--pipeline-warmup`
steps that drain the batches prefetched while compiling; `pipeline vs fixed` near 0% means the
input pipeline keeps up with the step (docs/data.md):

  lazy-neuron bench train --config=configs/vit_imagenet.py:dataset=bench_jpeg,data_dir=DIR,workers=14 \
      --config.batch_size=256 --config.model.dtype=bfloat16 --variants=dense --input=pipeline
"""
from __future__ import annotations

import json
import platform
import sys
import time
from typing import Optional, Sequence

import jax
import numpy as np

from lazy_neuron import checks, config_lib, errors, flags
from lazy_neuron.errors import UserError


def _variant_overrides(name: str) -> list[str]:
  if name == "dense":
    return ["config.model.topk=None", "config.sparsity.enabled=true"]
  if name == "probe_off":
    return ["config.model.topk=None", "config.sparsity.enabled=false"]
  if name.startswith("topk="):
    return [f"config.model.topk={int(name.split('=', 1)[1])}", "config.sparsity.enabled=true"]
  raise UserError(f"--variants entry {name!r} is not valid; use dense, probe_off or topk=K")


def synthetic_info(spec: Optional[str]):
  """`image,SIZE,CLASSES[,CHANNELS]` or `text,INPUTS,TARGETS,VOCAB` -> a DataInfo (no data read)."""
  if not spec:
    return None
  from lazy_neuron.data import DataInfo
  kind, *nums = spec.split(",")
  try:
    vals = [int(v) for v in nums]
  except ValueError:
    vals = []
  if kind == "image" and len(vals) in (2, 3):
    ch = vals[2] if len(vals) == 3 else 3
    return DataInfo(task="classification", num_classes=vals[1], image_shape=(vals[0], vals[0], ch))
  if kind == "text" and len(vals) == 3:
    return DataInfo(task="span_corruption", vocab_size=vals[2], inputs_length=vals[0],
                    targets_length=vals[1])
  raise UserError(f"--synthetic={spec!r} is not valid; use image,SIZE,CLASSES[,CHANNELS] or "
                  f"text,INPUTS,TARGETS,VOCAB")


def _peak_bytes() -> Optional[int]:
  try:
    stats = jax.local_devices()[0].memory_stats() or {}
  except Exception:  # noqa: BLE001 - CPU backends may not report memory
    return None
  return stats.get("peak_bytes_in_use")


def _time_pipeline(s, setup, config, state, window, warmup: int, steps: int) -> dict:
  """The compiled step fed by the config's input pipeline, as `train` feeds it."""
  from lazy_neuron import data
  from lazy_neuron.steps import to_global
  t_start = time.perf_counter()
  it = data.build(config.data, split="train", batch_size=config.batch_size, seed=config.seed)
  first = next(it)
  startup_s = time.perf_counter() - t_start
  state, window = s.train_step(state, window, to_global(first, setup.batch_sharding))
  for _ in range(warmup):
    state, window = s.train_step(state, window, to_global(next(it), setup.batch_sharding))
  jax.block_until_ready(state)
  t0 = time.perf_counter()
  for _ in range(steps):
    state, window = s.train_step(state, window, to_global(next(it), setup.batch_sharding))
  jax.block_until_ready((state, window))
  dt = (time.perf_counter() - t0) / steps
  it.close()
  return {"pipeline_step_ms": dt * 1e3, "pipeline_examples_per_s": config.batch_size / dt,
          "pipeline_startup_s": startup_s, "pipeline_warmup_steps": warmup}


def time_variant(config, warmup: int, steps: int, info=None, pipeline_warmup: Optional[int] = None
                 ) -> dict:
  from clu import parameter_overview
  from lazy_neuron import steps as steps_lib
  from lazy_neuron.models import dummy_batch
  setup = steps_lib.build_setup(config, info=info)
  s = steps_lib.Steps(setup)
  batch = dummy_batch(setup.model, setup.info, config.batch_size)
  rng = np.random.default_rng(0)
  for k, v in batch.items():
    if v.dtype == np.int32 and k != "label":
      batch[k] = rng.integers(2, max(setup.info.vocab_size or 3, 3), v.shape).astype(np.int32)
    elif k == "label":
      batch[k] = rng.integers(0, setup.info.num_classes, v.shape).astype(np.int32)
    elif k == "image" and v.dtype == np.uint8:  # data.image_dtype="uint8": pixels
      batch[k] = rng.integers(0, 256, v.shape).astype(np.uint8)
    elif k == "image":
      batch[k] = rng.normal(size=v.shape).astype(np.float32)
  batch = steps_lib.to_global(batch, setup.batch_sharding)
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
    fed = {} if pipeline_warmup is None else _time_pipeline(s, setup, config, state, window,
                                                             pipeline_warmup, steps)
  n_params = int(parameter_overview.count_parameters(setup.abstract_state["params"]))
  return {"step_ms": dt * 1e3, "steps_per_s": 1.0 / dt,
          "examples_per_s": config.batch_size / dt, "first_step_s": compile_s,
          "params": n_params, "mesh": dict(setup.mesh.shape),
          "peak_bytes_per_device": _peak_bytes(), **fed}


def main(argv: Optional[Sequence[str]] = None) -> int:
  argv = list(sys.argv if argv is None else argv)
  parser = flags.parser(argv[0], __doc__.splitlines()[0])
  parser.add_argument("--config", required=True)
  parser.add_argument("--variants", default="dense,probe_off")
  parser.add_argument("--steps", type=int, default=20)
  parser.add_argument("--warmup", type=int, default=3)
  parser.add_argument("--out", default=None)
  parser.add_argument("--synthetic", default=None,
                      help="image,SIZE,CLASSES[,CH] or text,INPUTS,TARGETS,VOCAB: random batches of "
                      "these shapes instead of the config's data")
  parser.add_argument("--input", default="fixed", choices=("fixed", "pipeline"),
                      help="pipeline: also time the step fed by the config's input pipeline")
  parser.add_argument("--pipeline-warmup", "--pipeline_warmup", type=int, default=50,
                      help="pipeline-fed steps before timing (drains what was prefetched)")
  parser.epilog = "--config.KEY=VALUE overrides a config key of every variant."
  try:
    args, overrides = flags.parse(parser, argv[1:], config_overrides=True)
    checks.integer("--steps", args.steps, min=1)
    checks.integer("--warmup", args.warmup, min=0)
    checks.integer("--pipeline-warmup", args.pipeline_warmup, min=0)
    info = synthetic_info(args.synthetic)
    if args.input == "pipeline" and info is not None:
      raise UserError("--input=pipeline reads the config's data; it cannot be combined with "
                      f"--synthetic={args.synthetic!r}")
    pipeline_warmup = args.pipeline_warmup if args.input == "pipeline" else None
    rows = []
    for name in [v.strip() for v in args.variants.split(",") if v.strip()]:
      config = config_lib.load_config(args.config, overrides + _variant_overrides(name))
      rows.append({"variant": name, **time_variant(config, args.warmup, args.steps, info,
                                                   pipeline_warmup)})
  except UserError as e:
    return errors.report(e)
  base = rows[0]["step_ms"]
  device = jax.devices()[0]
  print(f"config {args.config} {' '.join(overrides)} on {len(jax.devices())} x "
        f"{device.device_kind} ({device.platform})")
  print(f"{'variant':<14} {'step ms':>10} {'steps/s':>9} {'examples/s':>11} {'vs first':>9} "
        f"{'peak GiB/dev':>12}")
  for r in rows:
    peak = r["peak_bytes_per_device"]
    peak_s = f"{peak / 2**30:.2f}" if peak else "-"
    print(f"{r['variant']:<14} {r['step_ms']:>10.2f} {r['steps_per_s']:>9.2f} "
          f"{r['examples_per_s']:>11.1f} {r['step_ms'] / base - 1:>+8.1%} {peak_s:>12}")
  if args.input == "pipeline":
    print(f"\nfed by the input pipeline ({args.pipeline_warmup} steps to drain the prefetch, then "
          f"{args.steps} timed)")
    print(f"{'variant':<14} {'step ms':>10} {'examples/s':>11} {'vs fixed':>9} {'startup s':>10}")
    for r in rows:
      print(f"{r['variant']:<14} {r['pipeline_step_ms']:>10.2f} {r['pipeline_examples_per_s']:>11.1f} "
            f"{r['pipeline_step_ms'] / r['step_ms'] - 1:>+8.1%} {r['pipeline_startup_s']:>10.1f}")
  if args.out:
    with open(args.out, "w") as f:
      json.dump({"config": args.config, "overrides": overrides, "rows": rows,
                 "hardware": {"device_kind": device.device_kind, "platform": device.platform,
                              "num_devices": len(jax.devices()), "host": platform.node(),
                              "jax": jax.__version__}}, f, indent=1)
  return 0


if __name__ == "__main__":
  sys.exit(main())
