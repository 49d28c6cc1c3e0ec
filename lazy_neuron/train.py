"""The trainer: `lazy-neuron train --config=configs/<exp>.py[:args] --workdir=DIR [--config.k=v]`.

Read top to bottom: flags -> workdir -> the run (setup -> resume -> loop) -> entry point. Every
check on user input (flags, config, mesh, data, workdir) runs before anything is written into the
workdir.
The jitted steps and their metric window live in steps.py, evaluation in evaluate.py, stop requests
(SIGTERM/SIGINT) in preemption.py.
"""
from __future__ import annotations

import json
import os
import signal
import sys
import time
from typing import Any, Optional, Sequence

import jax
from clu import parameter_overview
from etils import epath

from lazy_neuron import checkpointing, checks, config_lib, data, distributed, errors, evaluate
from lazy_neuron import fileio, flags, metrics, partitioning, preemption, steps as steps_lib
from lazy_neuron.config_lib import load_config
from lazy_neuron.errors import UserError
from lazy_neuron.steps import Setup, TrainingDivergedError, build_setup

# Keys that may change between a run and its resumption (they do not change what is computed).
# skip_nonfinite_updates changes nothing while steps are finite, so a run stopped by a non-finite
# step can resume from its last good checkpoint with skipping switched on.
RESUMABLE_KEYS = ("total_steps", "log_every_steps", "eval_every_steps", "checkpoint_every_steps",
                  "keep_checkpoints", "keep_checkpoint_every_steps", "tensorboard",
                  "skip_nonfinite_updates")
EXIT_DIVERGED = 1  # not bad input (2): the config was valid, the run blew up


# ================================================================================================
# Flags
# ================================================================================================
def parse_flags(argv: Sequence[str]):
  """argv (with the program name) -> (namespace, config overrides)."""
  p = flags.parser(argv[0], "Train a config into a workdir; rerun the same command to resume.")
  p.add_argument("--config", required=True, help="configs/<exp>.py[:arg1=v1,arg2]")
  p.add_argument("--workdir", required=True, help="where checkpoints and metrics go (or gs://...)")
  p.add_argument("--coordinator_address", default=None, help="HOST:PORT (multi-process runs)")
  p.add_argument("--num_processes", type=int, default=None)
  p.add_argument("--process_id", type=int, default=None)
  p.epilog = "--config.KEY=VALUE overrides a config key (typed from its current value)."
  ns, overrides = flags.parse(p, argv[1:], config_overrides=True)
  checks.string("--config", ns.config)
  checks.string("--workdir", ns.workdir)
  return ns, overrides


# ================================================================================================
# Workdir
# ================================================================================================
def check_workdir(workdir: str, config) -> None:
  """A workdir may be new, or hold a run of the same config (then the run resumes)."""
  path = epath.Path(workdir)
  if not workdir.startswith("gs://"):
    probe = path
    while not probe.exists() and probe.parent != probe:
      probe = probe.parent
    if probe.exists() and (not probe.is_dir() or not os.access(os.fspath(probe), os.W_OK)):
      raise UserError(f"--workdir={workdir!r} is not writable ({os.fspath(probe)!r} is not a "
                      f"writable directory); choose another --workdir")
  previous = path / "config.json"
  if previous.exists():
    try:
      old = json.loads(previous.read_text())
    except ValueError:
      raise UserError(f"{os.fspath(previous)!r} is not valid JSON; move it away or use a new "
                      f"--workdir") from None
    new = json.loads(config_lib.to_json(config))
    diffs = [k for k in _diff_keys(old, new) if k.split(".")[0] not in RESUMABLE_KEYS]
    if diffs:
      shown = ", ".join(f"{k}: {_get(old, k)!r} -> {_get(new, k)!r}" for k in diffs[:4])
      raise UserError(f"--workdir={workdir!r} holds a run with a different config ({shown}); "
                      f"use a new --workdir, or the same config to resume")


def _diff_keys(a: Any, b: Any, prefix: str = "") -> list[str]:
  if isinstance(a, dict) and isinstance(b, dict):
    out = []
    for k in sorted(set(a) | set(b)):
      out += _diff_keys(a.get(k), b.get(k), f"{prefix}{k}.")
    return out
  return [] if a == b else [prefix[:-1]]


def _get(tree: Any, dotted: str) -> Any:
  for part in dotted.split("."):
    tree = tree.get(part) if isinstance(tree, dict) else None
  return tree


def _write_sharding_plan(setup: Setup, wd: epath.Path, stream, top: int = 20) -> None:
  """Writes the whole plan to DIR/sharding_plan.txt and prints a summary line; on a mesh of more
  than one device also the plan's `top` largest arrays per device and the totals."""
  params = setup.abstract_state["params"]
  rows, total = partitioning.sharding_plan(params, setup.state_shardings["params"])
  fileio.write_atomic(wd / "sharding_plan.txt",
                      partitioning.format_plan(rows, total, setup.mesh, setup.rules) + "\n")
  print(f"{setup.model.name}/{setup.config.model.variant}: "
        f"{parameter_overview.count_parameters(params):,} parameters; mesh "
        f"{dict(setup.mesh.shape)}; {total / 2**20:.1f} MiB of parameters per device (plan: "
        f"{os.fspath(wd / 'sharding_plan.txt')})", file=stream, flush=True)
  if setup.mesh.size > 1:
    print(partitioning.format_plan(rows, total, setup.mesh, setup.rules, top=top), file=stream,
          flush=True)


# ================================================================================================
# The run
# ================================================================================================
def train_and_evaluate(config, workdir: str, devices: Optional[Sequence[Any]] = None,
                       stream=sys.stdout, stop_after: Optional[int] = None) -> dict[str, float]:
  """Trains `config` into `workdir` (resuming from its latest checkpoint). Returns the last metrics.

  `stop_after=N` checkpoints and returns after step N, as a preempted run would (tests use it).
  SIGTERM (a TPU/cluster preemption notice) or SIGINT does the same at the step in progress: the run
  checkpoints it, writes its metrics and returns normally. Raises TrainingDivergedError on a
  non-finite step (unless skip_nonfinite_updates) without saving anything after the last good
  checkpoint. What survives which failure: docs/fault_tolerance.md.
  """
  setup = build_setup(config, devices)        # every check on user input happens in here
  check_workdir(workdir, config)
  with preemption.StopRequests() as stop_requests:
    return _train(config, workdir, setup, stream, stop_after, stop_requests)


def _train(config, workdir, setup, stream, stop_after, stop_requests) -> dict[str, float]:
  # ------------------------------------------------------------------------------------- setup
  is_main = jax.process_index() == 0
  skip_nonfinite = bool(config.get("skip_nonfinite_updates", False))
  wd = epath.Path(workdir)
  if is_main:  # nothing was written into the workdir before this line
    wd.mkdir(parents=True, exist_ok=True)
    # Atomic: a kill mid-write must not leave a torn config.json that refuses every restart.
    fileio.write_atomic(wd / "config.json", config_lib.to_json(config))
    _write_sharding_plan(setup, wd, stream)
  steps = steps_lib.Steps(setup)
  ckpt = checkpointing.Checkpointer(
      workdir, every_steps=config.checkpoint_every_steps or config.total_steps,
      max_to_keep=config.get("keep_checkpoints", 3),
      keep_period=config.get("keep_checkpoint_every_steps", None))
  writers = metrics.make_writers(workdir, config.get("tensorboard", True)) if is_main else []
  train_iter = data.build(config.data, split="train", batch_size=config.batch_size,
                          seed=config.seed, process_index=jax.process_index(),
                          process_count=jax.process_count())
  warn = lambda msg: print(msg, file=stream, flush=True) if is_main else None

  # ------------------------------------------------------------------------------------ resume
  with steps.context():
    abstract = checkpointing.abstract_with_shardings(setup.abstract_state, setup.state_shardings)
    # Newest usable checkpoint; unusable ones are reported, moved aside, never deleted.
    restored = ckpt.restore_latest(abstract, steps.abstract_window(), warn=warn,
                                   move_unusable=True)
    window = None
    if restored is not None:
      start, state, data_state, window = restored
      train_iter.set_state(data_state)
      print(f"resumed from {os.fspath(wd / 'checkpoints' / str(start))}", file=stream, flush=True)
    else:
      start = 0
      state = steps.init(jax.random.PRNGKey(config.seed))
  if window is None:  # a fresh run, or a checkpoint written before windows were saved
    window = steps.zero_window()
  if is_main:
    # Rows after the restored step are replayed; without a checkpoint everything is (step 0 too).
    writers[0].truncate_after(start if restored is not None else -1, warn=warn)
  progress = metrics.Progress(config.total_steps, start, stream)
  last: dict[str, float] = {}

  def write(step: int, values: dict, t: Optional[float] = None) -> None:
    nonlocal last
    last = dict(values, step=step)
    for w in writers:
      w.write(step, values)
    if is_main:
      progress.report(step, values, t)

  def run_eval(step: int) -> dict[str, float]:
    return evaluate.evaluate(steps, state["params"], config, step, workdir if is_main else None)

  # -------------------------------------------------------------------------------------- loop
  pending = metrics.PendingMetrics()
  t0 = time.time()
  signum = None
  try:
    if start == 0 and config.eval_every_steps:
      write(0, run_eval(0))
    for step in range(start + 1, config.total_steps + 1):
      batch = steps_lib.to_global(next(train_iter), setup.batch_sharding)
      with steps.context():
        state, window = steps.train_step(state, window, batch)
      if steps.sync_each_step:
        jax.block_until_ready(state)
      final = step == config.total_steps
      if step % config.log_every_steps == 0 or final:
        pending.add(step, window, lambda w, st=step: steps_lib.window_metrics(
            w, setup.schedule, st, skip_nonfinite))
        window = steps.zero_window()
      # All processes must stop at the same step. With several processes that takes an all-gather,
      # which waits for the step in flight: ask only at log steps, not every step.
      if jax.process_count() == 1 or step % config.log_every_steps == 0 or final:
        signum = stop_requests.requested()
      stop = signum is not None or (stop_after is not None and step >= stop_after)
      do_eval = bool(config.eval_every_steps) and (step % config.eval_every_steps == 0 or final)
      do_save = bool(config.checkpoint_every_steps and step % config.checkpoint_every_steps == 0) \
          or final or stop
      if do_eval or do_save:
        # A sync point, only here: every metric row up to `step` is written before its checkpoint
        # (a resumed run never replays them), and nothing non-finite is evaluated or saved.
        for st, values, t in pending.flush(block=True):
          write(st, values, t)
        steps_lib.check_window_finite(window, skip_nonfinite)
      if do_eval:
        write(step, run_eval(step))
      if do_save:
        ckpt.save(step, state, train_iter.get_state(), window, force=final or stop)
      if stop:
        break
      for st, values, t in pending.flush(block=False):
        write(st, values, t)
    for st, values, t in pending.flush(block=True):
      write(st, values, t)
  except TrainingDivergedError as e:
    ckpt.close()  # in-flight saves finish: each was checked finite before it started
    good = ckpt.latest_step()
    e.last_checkpoint = os.fspath(wd / "checkpoints" / str(good)) if good is not None else None
    e.args = (e.message(),)
    raise
  finally:
    train_iter.close()  # grain's workers and their shared memory, on every way out
  ckpt.close()

  # ------------------------------------------------------------------------------------ report
  if signum is not None:
    print(f"stopped by {signal.Signals(signum).name} after step {step}: checkpoint "
          f"{os.fspath(wd / 'checkpoints' / str(step))} written; run the same command to resume",
          file=stream, flush=True)
  elif is_main and config.total_steps > start:
    print(f"done: {config.total_steps - start} steps in {time.time() - t0:.1f}s; workdir "
          f"{workdir}", file=stream, flush=True)
  return last


# ================================================================================================
# Entry point
# ================================================================================================
def main(argv: Optional[Sequence[str]] = None) -> int:
  argv = list(sys.argv if argv is None else argv)
  try:
    ns, overrides = parse_flags(argv)
    distributed.initialize(coordinator_address=ns.coordinator_address,
                           num_processes=ns.num_processes, process_id=ns.process_id)
    config = load_config(ns.config, overrides)
    train_and_evaluate(config, ns.workdir)
  except UserError as e:
    return errors.report(e)
  except TrainingDivergedError as e:
    print(f"lazy-neuron: error: {e.message()}", file=sys.stderr)
    return EXIT_DIVERGED
  return 0


if __name__ == "__main__":
  sys.exit(main())
