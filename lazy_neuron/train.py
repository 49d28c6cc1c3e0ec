"""The trainer: `lazy-neuron train --config=configs/<exp>.py[:args] --workdir=DIR [--config.k=v]`.

Read top to bottom: flags -> workdir -> the run (setup -> resume -> loop) -> entry point. Every
check on user input (flags, config, mesh, data, workdir paths, the checkpoint's fit) runs before
anything is written into the workdir, and nothing is written until the first train step has
completed: a run that fails before it leaves the workdir as it found it (docs/fault_tolerance.md).
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
from lazy_neuron import fileio, flags, metrics, partitioning, preemption, sparsity
from lazy_neuron import steps as steps_lib
from lazy_neuron import workdir as workdir_lib
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
  """A workdir may be new, or hold a run of the same config (then the run resumes). Every path the
  run writes must be writable and of the right kind (a file where a file belongs, a folder where a
  folder belongs). Reads only.

  A workdir whose config.json is missing but which holds checkpoints resumes only from a checkpoint
  that fits the config (checked on restore): config keys that change no array shape cannot be
  compared then.
  """
  workdir_lib.check_paths(workdir, files=workdir_lib.TRAIN_FILES, dirs=workdir_lib.TRAIN_DIRS,
                          create=True)
  previous = epath.Path(workdir) / "config.json"
  if previous.exists():
    old = workdir_lib.read_config_json(previous)
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


def _print_sharding_plan(setup: Setup, wd: epath.Path, stream, top: int = 20) -> str:
  """Prints a summary line; on a mesh of more than one device also the plan's `top` largest arrays
  per device and the totals. Returns the whole plan, for DIR/sharding_plan.txt."""
  params = setup.abstract_state["params"]
  rows, total = partitioning.sharding_plan(params, setup.state_shardings["params"])
  print(f"{setup.model.name}/{setup.config.model.variant}: "
        f"{parameter_overview.count_parameters(params):,} parameters; mesh "
        f"{dict(setup.mesh.shape)}; {total / 2**20:.1f} MiB of parameters per device (plan: "
        f"{os.fspath(wd / 'sharding_plan.txt')})", file=stream, flush=True)
  if setup.mesh.size > 1:
    print(partitioning.format_plan(rows, total, setup.mesh, setup.rules, top=top), file=stream,
          flush=True)
  return partitioning.format_plan(rows, total, setup.mesh, setup.rules) + "\n"


def _is_out_of_memory(e: BaseException) -> bool:
  """A host allocation (MemoryError) or an accelerator allocation (XLA's RESOURCE_EXHAUSTED) that
  failed: a config that does not fit, not a bug."""
  if isinstance(e, MemoryError):
    return True
  text = str(e)
  return isinstance(e, jax.errors.JaxRuntimeError) and (
      "RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower())


def _out_of_memory(e: BaseException, what: str, key: str, value: int, devices: int) -> UserError:
  detail = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
  return UserError(f"out of memory {what} with {key}={value} on {devices} device(s) "
                   f"({type(e).__name__}: {detail}); use a smaller {key} or more devices "
                   f"(nothing was written)")


# ================================================================================================
# The run
# ================================================================================================
def train_and_evaluate(config, workdir: str, devices: Optional[Sequence[Any]] = None,
                       stream=None, stop_after: Optional[int] = None) -> dict[str, float]:
  """Trains `config` into `workdir` (resuming from its latest checkpoint). Returns the last metrics.

  `stop_after=N` checkpoints and returns after step N, as a preempted run would (tests use it).
  SIGTERM (a TPU/cluster preemption notice) or SIGINT does the same at the step in progress: the run
  checkpoints it, writes its metrics and returns normally. Raises TrainingDivergedError on a
  non-finite step (unless skip_nonfinite_updates) without saving anything after the last good
  checkpoint. What survives which failure: docs/fault_tolerance.md.
  """
  stream = sys.stdout if stream is None else stream  # looked up now: tests capture sys.stdout
  setup = build_setup(config, devices)        # every check on user input happens in here
  check_workdir(workdir, config)
  with preemption.StopRequests() as stop_requests:
    return _train(config, workdir, setup, stream, stop_after, stop_requests)


def _train(config, workdir, setup, stream, stop_after, stop_requests) -> dict[str, float]:
  # ------------------------------------------------------------------------------------- setup
  # Nothing is written into the workdir until the first train step has completed (`commit` below):
  # a run that fails before it (out of memory, a data error, a checkpoint of another config, a bug)
  # leaves the workdir as it found it, so the corrected command is not refused afterwards.
  is_main = jax.process_index() == 0
  skip_nonfinite = bool(config.get("skip_nonfinite_updates", False))
  wd = epath.Path(workdir)
  warn = lambda msg: print(msg, file=stream, flush=True) if is_main else None
  plan = _print_sharding_plan(setup, wd, stream) if is_main else ""
  steps = steps_lib.Steps(setup)
  ckpt = checkpointing.Checkpointer(
      workdir, every_steps=config.checkpoint_every_steps or config.total_steps,
      max_to_keep=config.get("keep_checkpoints", 3),
      keep_period=config.get("keep_checkpoint_every_steps", None), read_only=True)
  train_iter = None
  try:
    train_iter = data.build(config.data, split="train", batch_size=config.batch_size,
                            seed=config.seed, process_index=jax.process_index(),
                            process_count=jax.process_count())
    # ---------------------------------------------------------------------------------- resume
    with steps.context():
      abstract = checkpointing.abstract_with_shardings(setup.abstract_state,
                                                       setup.state_shardings)
      # Newest usable checkpoint; unusable ones are reported (moved aside at the commit), never
      # deleted; one of another config is refused (CheckpointMismatch, a UserError).
      restored = ckpt.restore_latest(abstract, steps.abstract_window(), warn=warn)
      window = None
      if restored is not None:
        start, state, data_state, window = restored
        where = os.fspath(wd / "checkpoints" / str(start))
        if start > config.total_steps:
          raise checks.fail("total_steps", config.total_steps,
                            f"the workdir's checkpoint {where} is at step {start}; use "
                            f"total_steps >= {start}, or a new --workdir")
        train_iter.set_state(data_state)
        print(f"resumed from {where}", file=stream, flush=True)
      else:
        start = 0
        # The step compiles in a thread while the initialisation compiles and runs here.
        steps.compile_train_step_ahead()
        state = steps.init(jax.random.PRNGKey(config.seed))
    if restored is not None and start == config.total_steps:
      if is_main:
        print(f"nothing to do: checkpoint {where} is the last step (total_steps="
              f"{config.total_steps}); raise total_steps to train on", file=stream, flush=True)
      return {}
    if restored is not None:
      steps.compile_train_step_ahead()
    if window is None:  # a fresh run, or a checkpoint written before windows were saved
      window = steps.zero_window()
    return _loop(config, workdir, setup, stream, stop_after, stop_requests, steps, ckpt,
                 train_iter, state, window, start, restored is not None, plan, warn,
                 skip_nonfinite)
  finally:
    if train_iter is not None:
      train_iter.close()  # grain's workers and their shared memory, on every way out
    ckpt.close()  # also on an error: Orbax's threads would print shutdown noise at exit


def _loop(config, workdir, setup, stream, stop_after, stop_requests, steps, ckpt, train_iter,
          state, window, start, resumed, plan, warn, skip_nonfinite) -> dict[str, float]:
  is_main = jax.process_index() == 0
  wd = epath.Path(workdir)
  progress = metrics.Progress(config.total_steps, start, stream)
  last: dict[str, float] = {}
  committed = False
  writers: list = []
  held_rows: list[tuple[int, dict]] = []  # rows computed before the commit (the step-0 eval)
  held_stats = None                       # and its sparsity statistics (sparsity/step_0.npz)

  def commit() -> None:
    """The first step has run: from here on the run owns the workdir."""
    nonlocal committed, writers
    if is_main:
      wd.mkdir(parents=True, exist_ok=True)
      # Atomic: a kill mid-write must not leave a torn config.json that refuses every restart.
      fileio.write_atomic(wd / "config.json", config_lib.to_json(config))
      fileio.write_atomic(wd / "sharding_plan.txt", plan)
      writers = metrics.make_writers(workdir, config.get("tensorboard", True))
      # Rows after the restored step are replaced as the run replays them (all rows: none kept).
      writers[0].resume(start if resumed else -1, warn=warn)
      if held_stats is not None:
        sparsity.save_npz(workdir, 0, held_stats)
    ckpt.open_for_writing(warn=warn)
    committed = True
    for st, values in held_rows:
      for w in writers:
        w.write(st, values)

  def write(step: int, values: dict, t: Optional[float] = None) -> None:
    nonlocal last
    last = dict(values, step=step)
    if committed:
      for w in writers:
        w.write(step, values)
    else:
      held_rows.append((step, values))
    if is_main:
      progress.report(step, values, t)

  def run_eval(step: int) -> dict[str, float]:
    return evaluate.evaluate(steps, state["params"], config, step, workdir if is_main else None)

  devices = setup.mesh.size
  # -------------------------------------------------------------------------------------- loop
  pending = metrics.PendingMetrics()
  # The next batches are made and copied to the devices while a step runs; `data_state` is the
  # iterator's state after the last batch a step consumed (what a checkpoint must save).
  feed = steps_lib.DevicePrefetch(train_iter, setup.batch_sharding,
                                  size=0 if steps.sync_each_step else 2)
  t0 = time.time()
  t_first, first_step, t_end = t0, start, t0
  signum = None
  try:
    if start == 0 and config.eval_every_steps:
      try:
        values, held_stats = evaluate.evaluate_with_stats(steps, state["params"], config)
      except Exception as e:  # noqa: BLE001 - only an allocation failure is turned into a line
        if _is_out_of_memory(e):
          raise _out_of_memory(e, "evaluating step 0", "eval_batch_size",
                               config.get("eval_batch_size") or config.batch_size, devices) from e
        raise
      write(0, values)
    for step in range(start + 1, config.total_steps + 1):
      try:
        batch, data_state = next(feed)
        with steps.context():
          state, window = steps.train_step(state, window, batch)
        if steps.sync_each_step or not committed:
          jax.block_until_ready(state)
      except Exception as e:  # noqa: BLE001 - only an allocation failure is turned into a line
        if not committed and _is_out_of_memory(e):
          raise _out_of_memory(e, "in the first train step", "batch_size", config.batch_size,
                               devices) from e
        raise
      if not committed:
        commit()
        t_first, first_step = time.time(), step  # the first step has run (blocked on above)
      final = step == config.total_steps
      if step % config.log_every_steps == 0 or final:
        pending.add(step, window, lambda w, st=step: steps_lib.window_metrics(
            w, setup.schedule, st, skip_nonfinite, flops_info=setup.flops_info))
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
        ckpt.save(step, state, data_state, window, force=final or stop)
      if stop:
        break
      for st, values, t in pending.flush(block=False):
        write(st, values, t)
    for st, values, t in pending.flush(block=True):
      write(st, values, t)
    jax.block_until_ready(state)
    t_end = time.time()
  except TrainingDivergedError as e:
    ckpt.close()  # in-flight saves finish: each was checked finite before it started
    good = ckpt.latest_step()
    e.last_checkpoint = os.fspath(wd / "checkpoints" / str(good)) if good is not None else None
    e.args = (e.message(),)
    raise
  finally:
    feed.close()  # before the caller closes the iterator the thread reads
  ckpt.close()

  # ------------------------------------------------------------------------------------ report
  if signum is not None:
    print(f"stopped by {signal.Signals(signum).name} after step {step}: checkpoint "
          f"{os.fspath(wd / 'checkpoints' / str(step))} written; run the same command to resume",
          file=stream, flush=True)
  elif is_main and config.total_steps > start:
    # The loop's own pace: wall time from the end of the first step (compilation) to the end of
    # the last, evaluations, checkpoints and metric writes included; compare it with `bench
    # train`'s step_ms for the same config (docs/performance.md, "The training loop").
    pace = ""
    if step > first_step:
      pace = f" ({1e3 * (t_end - t_first) / (step - first_step):.2f} ms/step after the first)"
    print(f"done: {config.total_steps - start} steps in {time.time() - t0:.1f}s{pace}; workdir "
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
