"""`lazy-neuron bench train`: training-step throughput of a config, dense vs Top-k and with the
sparsity probe on vs off (the probe should cost at most a few percent of a step).

  lazy-neuron bench train --config=configs/vit_digits.py --variants=dense,probe_off,topk=64 \
      --steps=20 --out=bench_train.json [--config.k=v ...]
  # ViT-B/16 at 224 on random batches of ImageNet's shapes (no dataset needed):
  lazy-neuron bench train --config=configs/vit_digits.py:variant=B/16 --synthetic=image,224,1000 \
      --config.batch_size=256 --config.model.dtype=bfloat16 --variants=dense,probe_off,topk=128

Each variant builds its own jitted step, runs `--warmup` steps, then times `--steps` steps on one
fixed batch (input pipeline excluded), blocking on the result. Prints a table; writes JSON with the
hardware, the library versions, the command line and the git commit.

Per variant: step time, throughput, `init_s` (compiling and running the state's initialisation:
JAX compiles it as a program of its own), `compile_s` (tracing, lowering and XLA compilation of the
train step, timed ahead of time with `lower(...).compile()`; `first_step_s` adds the first step's
run), `start_s` = `init_s` + `first_step_s` (what a run waits for its first step, data aside),
model FLOPs per step counted from the architecture (`lazy_neuron.flops`: matmuls and attention,
forward + backward), achieved TFLOP/s per device and MFU against the device's dense bf16 peak
(`flops.PEAKS`; omitted on CPUs and unknown devices), and memory per device: `peak_bytes_per_device`
(the allocator's high-water mark of the process, where the backend reports one: variants run in
the order given, so a later variant's value is the largest of it and the ones before) and
`step_bytes_per_device` (XLA's own size of the compiled step: arguments + outputs + temporaries -
donated buffers; exact per variant, on every backend).

With `--synthetic` the config's data section is not used (batches are random arrays of the given
shapes), so it is replaced by a source that reads nothing before the config is validated: a text
config without a tokenizer or data_dir benchmarks as written. The rest of the config is validated
as usual.

`--input=pipeline` also times the same compiled step fed by the config's real input pipeline
(`data.build` + `steps.DevicePrefetch`, exactly as `lazy-neuron train` feeds it) after
`--pipeline-warmup` steps that drain the batches prefetched while compiling; `pipeline vs fixed` near 0% means the
input pipeline keeps up with the step (docs/data.md):

  lazy-neuron bench train --config=configs/vit_imagenet.py:dataset=bench_jpeg,data_dir=DIR,workers=14 \
      --config.batch_size=256 --config.model.dtype=bfloat16 --variants=dense --input=pipeline
"""
from __future__ import annotations

import json
import os
import platform
import shlex
import subprocess
import sys
import time
from typing import Any, Callable, Optional, Sequence

import jax
import numpy as np

from lazy_neuron import checks, config_lib, errors, fileio, flags, outpaths
from lazy_neuron import flops as flops_lib
from lazy_neuron.bench import host
from lazy_neuron.errors import UserError


def variant_overrides(name: str) -> list[str]:
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


def check_out(flag: str, path: Optional[str]) -> Optional[str]:
  """Refuses an output file that could not be written, before any work (one line, exit 2)."""
  return None if path is None else outpaths.file(flag, path)


def write_json(path: str, payload: dict) -> None:
  fileio.write_atomic(path, json.dumps(payload, indent=1) + "\n")


def _peak_bytes() -> Optional[int]:
  """The allocator's high-water mark of the process, max over this process's devices (None where
  the backend does not report it, e.g. CPU)."""
  peaks = []
  for d in jax.local_devices():
    try:
      stats = d.memory_stats() or {}
    except Exception:  # noqa: BLE001 - CPU backends may not report memory
      stats = {}
    if stats.get("peak_bytes_in_use") is not None:
      peaks.append(int(stats["peak_bytes_in_use"]))
  return max(peaks) if peaks else None


def _step_bytes(compiled) -> Optional[int]:
  """XLA's memory of one compiled step per device: arguments + outputs + temporaries - aliased."""
  try:
    m = compiled.memory_analysis()
  except Exception:  # noqa: BLE001 - not every backend implements it
    return None
  if m is None:
    return None
  return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
             - m.alias_size_in_bytes)


def git_commit() -> dict:
  """The git commit of the lazy_neuron checkout that ran (None outside a git checkout)."""
  here = os.path.dirname(os.path.abspath(__file__))

  def git(*args):
    try:
      out = subprocess.run(["git", *args], cwd=here, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
      return None
    return out.stdout.strip() if out.returncode == 0 else None

  commit = git("rev-parse", "HEAD")
  status = git("status", "--porcelain", "--untracked-files=no") if commit else None
  return {"commit": commit, "dirty": None if status is None else bool(status)}


def environment() -> dict:
  """Hardware and versions of this process (JAX side)."""
  import flax
  import jaxlib
  import optax
  devices = jax.devices()
  return {"hardware": {"device_kind": devices[0].device_kind, "platform": devices[0].platform,
                       "num_devices": len(devices), "num_processes": jax.process_count(),
                       **host.host_info()},
          "versions": {"python": platform.python_version(), "jax": jax.__version__,
                       "jaxlib": jaxlib.__version__, "flax": flax.__version__,
                       "optax": optax.__version__, "numpy": np.__version__},
          "xla_flags": os.environ.get("XLA_FLAGS", ""),
          "git": git_commit()}


def load_variant_config(spec: str, overrides: Sequence[str], synthetic: bool):
  """The validated config of one variant. With synthetic batches the data section is never read,
  so it is replaced by a source that reads nothing (data checks that need a tokenizer, data_dir
  or files must not run); every other key is validated as usual."""
  if not synthetic:
    return config_lib.load_config(spec, overrides)
  from lazy_neuron import data
  config = config_lib.load_config_file(spec)
  config_lib.apply_overrides(config, overrides)  # data.* overrides are still type-checked
  config.data = data.get_data_config("gaussian")
  config_lib.validate_config(config)
  return config


def _run_steps(step, state, window, next_batch: Callable[[], Any], n: int):
  """n steps on next_batch()'s batches, waited for: (state, window, seconds per step)."""
  t0 = time.perf_counter()
  for _ in range(n):
    state, window = step(state, window, next_batch())
  jax.block_until_ready((state, window))
  return state, window, (time.perf_counter() - t0) / max(n, 1)


def _time_steps(step, state, window, next_batch: Callable[[], Any], warmup: int, steps: int,
                trace_dir: Optional[str], key: str):
  """`warmup` untimed steps, `steps` timed ones, then (with `trace_dir`) min(steps, 5) more traced
  there: (state, window, seconds per step, {key: the profile's summary (bench/profile.py)} or {}).
  The step donates its inputs: use the returned state and window."""
  state, window, _ = _run_steps(step, state, window, next_batch, warmup)
  state, window, dt = _run_steps(step, state, window, next_batch, steps)
  if trace_dir is None:
    return state, window, dt, {}
  from lazy_neuron.bench import profile
  carry = [state, window]

  def run(n):
    carry[0], carry[1], _ = _run_steps(step, carry[0], carry[1], next_batch, n)
  summary = profile.profile_steps(run, min(steps, 5), trace_dir)
  return carry[0], carry[1], dt, {key: summary}


def _time_pipeline(step, setup, config, state, window, warmup: int, steps: int,
                   prefetch: int = 2, profile_dir: Optional[str] = None) -> dict:
  """The compiled step fed by the config's input pipeline, as `train` feeds it: through
  `steps.DevicePrefetch` (`prefetch` batches made and put on the devices by a thread). With
  `profile_dir`, 5 more pipeline-fed steps are traced there: device time per step against the
  wall-clock step says whether the device waits for the host."""
  from lazy_neuron import data
  from lazy_neuron.steps import DevicePrefetch
  t_start = time.perf_counter()
  it = data.build(config.data, split="train", batch_size=config.batch_size, seed=config.seed)
  feed = DevicePrefetch(it, setup.batch_sharding, size=prefetch)
  try:
    first, _ = next(feed)
    startup_s = time.perf_counter() - t_start
    state, window = step(state, window, first)
    state, window, dt, prof = _time_steps(step, state, window, lambda: next(feed)[0], warmup,
                                          steps, profile_dir, "pipeline_profile")
  finally:
    feed.close()
    it.close()
  return {"pipeline_step_ms": dt * 1e3, "pipeline_examples_per_s": config.batch_size / dt,
          "pipeline_startup_s": startup_s, "pipeline_warmup_steps": warmup, **prof}


def time_variant(config, warmup: int, steps: int, info=None, pipeline_warmup: Optional[int] = None,
                 profile_dir: Optional[str] = None) -> dict:
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
    t_init = time.perf_counter()
    state = s.init(jax.random.PRNGKey(0))  # compiles the initialisation, then runs it
    window = s.zero_window()
    jax.block_until_ready((state, window))
    t_compile = time.perf_counter()
    init_s = t_compile - t_init
    # Ahead of time, so that compilation is timed on its own; the compiled step is what runs.
    step = s.train_step.lower(state, window, batch).compile()
    compile_s = time.perf_counter() - t_compile
    state, window = step(state, window, batch)
    jax.block_until_ready(state)
    first_step_s = time.perf_counter() - t_compile
    state, window, dt, prof = _time_steps(step, state, window, lambda: batch, warmup, steps,
                                          profile_dir, "profile")
    fed = {} if pipeline_warmup is None else _time_pipeline(
        step, setup, config, state, window, pipeline_warmup, steps,
        prefetch=0 if s.sync_each_step else 2,
        profile_dir=None if profile_dir is None else profile_dir.rstrip("/") + "_pipeline")
  n_params = int(parameter_overview.count_parameters(setup.abstract_state["params"]))
  count = flops_lib.train_step(setup.model, setup.info, config.batch_size)
  device_kind = setup.mesh.devices.flat[0].device_kind
  mfu, tflops, peak_note = flops_lib.mfu(count.model, dt, setup.mesh.size, device_kind)
  tokens = {}
  if setup.model.task == "seq2seq":  # every input and target position, padding included
    per_example = setup.info.inputs_length + setup.info.targets_length
    tokens = {"tokens_per_example": per_example,
              "tokens_per_s": config.batch_size * per_example / dt}
  return {"step_ms": dt * 1e3, "steps_per_s": 1.0 / dt,
          "examples_per_s": config.batch_size / dt, **tokens, "batch_size": config.batch_size,
          "init_s": init_s, "compile_s": compile_s, "first_step_s": first_step_s,
          "start_s": init_s + first_step_s,
          "params": n_params, "mesh": dict(setup.mesh.shape),
          **count.to_json(),
          "tflops_per_s": tflops, "mfu": mfu, "mfu_peak": peak_note,
          "peak_bytes_per_device": _peak_bytes(), "step_bytes_per_device": _step_bytes(step),
          **prof, **fed}


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
  parser.add_argument("--profile", default=None, metavar="DIR",
                      help="also trace 5 steps of each variant into DIR/<variant> (jax.profiler) "
                      "and print the device time by op class")
  parser.epilog = "--config.KEY=VALUE overrides a config key of every variant."
  try:
    args, overrides = flags.parse(parser, argv[1:], config_overrides=True)
    checks.integer("--steps", args.steps, min=1)
    checks.integer("--warmup", args.warmup, min=0)
    checks.integer("--pipeline-warmup", args.pipeline_warmup, min=0)
    check_out("--out", args.out)
    if args.profile is not None and os.path.exists(args.profile) and not os.path.isdir(args.profile):
      raise checks.fail("--profile", args.profile, "give a folder for the traces")
    info = synthetic_info(args.synthetic)
    if args.input == "pipeline" and info is not None:
      raise UserError("--input=pipeline reads the config's data; it cannot be combined with "
                      f"--synthetic={args.synthetic!r}")
    pipeline_warmup = args.pipeline_warmup if args.input == "pipeline" else None
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    if not names:
      raise checks.fail("--variants", args.variants, "give dense, probe_off or topk=K, "
                                                     "comma-separated")
    # Every variant's config is validated before the first one runs.
    configs = [(name, load_variant_config(args.config, overrides + variant_overrides(name),
                                          info is not None)) for name in names]
    rows = []
    for name, config in configs:
      trace_dir = None if args.profile is None else os.path.join(args.profile, name)
      rows.append({"variant": name, **time_variant(config, args.warmup, args.steps, info,
                                                   pipeline_warmup, trace_dir)})
  except UserError as e:
    return errors.report(e)
  env = environment()
  hw = env["hardware"]
  print(f"config {args.config} {' '.join(overrides)} on {hw['num_devices']} x "
        f"{hw['device_kind']} ({hw['platform']})")
  print_table(rows)
  for r in rows:
    if "profile" in r:
      from lazy_neuron.bench import profile
      profile.print_profile(r["variant"], r["profile"])
  if args.input == "pipeline":
    print(f"\nfed by the input pipeline ({args.pipeline_warmup} steps to drain the prefetch, then "
          f"{args.steps} timed)")
    print(f"{'variant':<14} {'step ms':>10} {'examples/s':>11} {'vs fixed':>9} {'startup s':>10}")
    for r in rows:
      print(f"{r['variant']:<14} {r['pipeline_step_ms']:>10.2f} {r['pipeline_examples_per_s']:>11.1f} "
            f"{r['pipeline_step_ms'] / r['step_ms'] - 1:>+8.1%} {r['pipeline_startup_s']:>10.1f}")
    for r in rows:
      if "pipeline_profile" in r:
        from lazy_neuron.bench import profile
        profile.print_profile(f"{r['variant']} (fed by the pipeline)", r["pipeline_profile"])
  if args.out:
    write_json(args.out, {"config": args.config, "overrides": overrides,
                          "synthetic": args.synthetic, "steps": args.steps,
                          "warmup": args.warmup, "rows": rows,
                          "command": shlex.join(["lazy-neuron", "bench", "train", *argv[1:]]),
                          **env})
  return 0


def _gib(n: Optional[int]) -> str:
  return f"{n / 2**30:.2f}" if n else "-"


def print_table(rows: list[dict]) -> None:
  base = rows[0]["step_ms"]
  print(f"model FLOPs/step {rows[0]['flops_per_step']:.4g} (matmuls, forward + backward, counted "
        f"from the architecture); MFU vs {rows[0]['mfu_peak']}")
  print(f"{'variant':<14} {'step ms':>10} {'examples/s':>11} {'vs first':>9} {'TFLOP/s':>8} "
        f"{'MFU':>6} {'init s':>6} {'compile s':>9} {'peak GiB/dev':>12} {'step GiB/dev':>12}")
  for r in rows:
    mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "-"
    print(f"{r['variant']:<14} {r['step_ms']:>10.2f} {r['examples_per_s']:>11.1f} "
          f"{r['step_ms'] / base - 1:>+8.1%} {r['tflops_per_s']:>8.1f} {mfu:>6} "
          f"{r['init_s']:>6.1f} {r['compile_s']:>9.1f} {_gib(r['peak_bytes_per_device']):>12} "
          f"{_gib(r['step_bytes_per_device']):>12}")


if __name__ == "__main__":
  sys.exit(main())
