"""The trainer: `lazy-neuron train --config=configs/<exp>.py[:args] --workdir=DIR [--config.k=v]`.

One file, read top to bottom, in banner sections: flags and config -> mesh -> data -> model and
optimizer -> shardings -> steps -> resume -> eval -> loop. Every check on user input runs before
anything is written into the workdir.
"""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import sys
import threading
import time
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from etils import epath
from jax.sharding import NamedSharding, PartitionSpec as P

from lazy_neuron import checkpointing, config_lib, data, distributed, metrics, optim, partitioning
from lazy_neuron import errors, sparsity, tasks
from lazy_neuron.errors import UserError
from lazy_neuron.models import SPARSITY, Model, build_model, dummy_batch

# Keys that may change between a run and its resumption (they do not change what is computed).
# skip_nonfinite_updates changes nothing while steps are finite, so a run stopped by a non-finite
# step can resume from its last good checkpoint with skipping switched on.
RESUMABLE_KEYS = ("total_steps", "log_every_steps", "eval_every_steps", "checkpoint_every_steps",
                  "keep_checkpoints", "keep_checkpoint_every_steps", "tensorboard",
                  "skip_nonfinite_updates")
EXIT_DIVERGED = 1  # not bad input (2): the config was valid, the run blew up


class TrainingDivergedError(RuntimeError):
  """A step produced a non-finite loss, gradient norm or parameters (and skipping is off)."""

  def __init__(self, step: int, what: str, metric: str, value: float):
    self.step, self.what, self.metric, self.value = step, what, metric, value
    self.last_checkpoint: Optional[str] = None
    super().__init__(self.message())

  def message(self) -> str:
    where = self.last_checkpoint or "none (the run must start again from step 0)"
    return (f"non-finite {self.what} at step {self.step} ({self.metric}={self.value}); "
            f"last good checkpoint: {where}; nothing after it was saved (lower "
            f"optimizer.learning_rate, or set skip_nonfinite_updates=True to skip such steps)")


# ================================================================================================
# Flags and config
# ================================================================================================
@dataclasses.dataclass
class Flags:
  config: str
  workdir: str
  overrides: list[str]
  coordinator_address: Optional[str] = None
  num_processes: Optional[int] = None
  process_id: Optional[int] = None


FLAG_HELP = """usage: lazy-neuron train --config=configs/<exp>.py[:arg1=v1,arg2] --workdir=DIR
                         [--config.key=value ...] [--coordinator_address=HOST:PORT
                         --num_processes=N --process_id=I]"""


def parse_flags(argv: Sequence[str]) -> Flags:
  values: dict[str, str] = {}
  overrides: list[str] = []
  known = ("config", "workdir", "coordinator_address", "num_processes", "process_id")
  args = list(argv[1:])
  i = 0
  while i < len(args):
    arg = args[i]
    if not arg.startswith("--"):
      raise UserError(f"unexpected argument {arg!r}; flags look like --name=value")
    name, sep, value = arg[2:].partition("=")
    if not sep:  # `--name value`
      if i + 1 >= len(args):
        raise UserError(f"flag --{name} needs a value")
      value, i = args[i + 1], i + 1
    if name.startswith("config."):
      overrides.append(f"{name}={value}")
    elif name in known:
      values[name] = value
    else:
      raise UserError(f"unknown flag --{name}; valid: --{', --'.join(known)}, --config.KEY=VALUE")
    i += 1
  for required in ("config", "workdir"):
    if not values.get(required):
      raise UserError(f"--{required} is required\n{FLAG_HELP}".splitlines()[0])

  def as_int(name):
    if values.get(name) in (None, ""):
      return None
    try:
      return int(values[name])
    except ValueError:
      raise UserError(f"--{name}={values[name]!r} is not an integer") from None

  return Flags(config=values["config"], workdir=values["workdir"], overrides=overrides,
               coordinator_address=values.get("coordinator_address"),
               num_processes=as_int("num_processes"), process_id=as_int("process_id"))


def load_config(spec: str, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
  config = config_lib.load_config_file(spec)
  config_lib.apply_overrides(config, overrides)
  validate_config(config)
  return config


def _positive(config, key: str, allow_zero: bool = False) -> None:
  value = config[key]
  if isinstance(value, bool) or not isinstance(value, int) or value < (0 if allow_zero else 1):
    raise UserError(f"{key}={value!r} is not valid; use an integer >= {0 if allow_zero else 1}")


def validate_config(config) -> None:
  """Checks that need no devices and write nothing (model, data, optimizer, step counts)."""
  for key in ("total_steps", "batch_size", "log_every_steps"):
    _positive(config, key)
  for key in ("eval_every_steps", "checkpoint_every_steps"):
    _positive(config, key, allow_zero=True)
  if isinstance(config.seed, bool) or not isinstance(config.seed, int):
    raise UserError(f"seed={config.seed!r} is not valid; use an integer")
  optim.validate(config.optimizer, config.total_steps)
  data.validate(config.data)
  if not isinstance(config.sparsity.enabled, bool):
    raise UserError(f"sparsity.enabled={config.sparsity.enabled!r} is not valid; use true/false")
  skip = config.get("skip_nonfinite_updates", False)
  if not isinstance(skip, bool):
    raise UserError(f"skip_nonfinite_updates={skip!r} is not valid; use true/false")
  for key in ("keep_checkpoints", "keep_checkpoint_every_steps"):
    value = config.get(key)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
      raise UserError(f"{key}={value!r} is not valid; use an integer >= 1 or None")


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


# ================================================================================================
# The run
# ================================================================================================
@dataclasses.dataclass
class Setup:
  """Everything built from a config before training: validated, nothing written yet."""
  config: Any
  mesh: Any
  rules: Any
  info: Any
  model: Model
  tx: Any
  schedule: Any
  state_shardings: Any
  abstract_state: Any
  batch_sharding: NamedSharding


def build_setup(config, devices: Optional[Sequence[Any]] = None, info: Any = None) -> Setup:
  """`info` overrides the data's DataInfo (benchmarks on synthetic batches of a dataset's shapes)."""
  # ---------------------------------------------------------------------------------------- mesh
  mesh = partitioning.make_mesh(config.mesh, devices)
  rules = partitioning.resolve_rules(config.sharding_rules, mesh)
  dp = partitioning.data_parallel_size(mesh, rules)
  for key in ("batch_size", "eval_batch_size"):
    size = config.get(key) or config.batch_size
    if size % dp or size % jax.process_count():
      raise UserError(f"{key}={size} is not divisible by the data-parallel size {dp} (mesh "
                      f"{dict(mesh.shape)}) and the {jax.process_count()} processes; use a multiple "
                      f"of {int(np.lcm(dp, jax.process_count()))}")
  # ---------------------------------------------------------------------------------------- data
  info = data.info(config.data) if info is None else info
  data.check_steps(config.data, config.total_steps, config.batch_size, info)  # one_pass: never repeat
  # ------------------------------------------------------------------------- model and optimizer
  model = build_model(config.model, info, measure=config.sparsity.enabled)
  tx, schedule = optim.make_optimizer(config.optimizer, config.total_steps)
  # ----------------------------------------------------------------------------------- shardings
  dummy = dummy_batch(model, info, 2)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    boxed = jax.eval_shape(lambda rng: _init_params(model, rng, dummy), jax.random.PRNGKey(0))
    param_sh = partitioning.logical_shardings(
        boxed, mesh, rules, small_bytes=partitioning.replicated_limit_bytes(config))
  partitioning.check_plan(boxed, param_sh, mesh, config)
  params = nn.meta.unbox(boxed)
  opt_abstract = jax.eval_shape(tx.init, params)
  opt_sh = partitioning.match_shardings_by_path(opt_abstract, params, param_sh, mesh)
  replicated = NamedSharding(mesh, P())
  state_sh = {"step": replicated, "params": param_sh, "opt_state": opt_sh}
  abstract = {"step": jax.ShapeDtypeStruct((), jnp.int32), "params": params,
              "opt_state": opt_abstract}
  return Setup(config, mesh, rules, info, model, tx, schedule, state_sh, abstract,
               partitioning.batch_sharding(mesh, rules))


def _init_params(model: Model, rng, dummy):
  variables = model.module.init({"params": rng, "dropout": rng}, **model.inputs(dummy))
  return variables["params"]


def _add(a, b):
  return jax.tree.map(jnp.add, a, b)


# Window fields about the first non-finite step of a window (0 = none; steps count from 1): the
# first one wins when windows are combined, the others add up.
_FIRST_BAD = ("bad_step", "bad_what", "bad_loss", "bad_grad_norm")
# bad_what bits -> (quantity, metric) for the error message.
_BAD_WHAT = ((1, "loss", "train/loss"), (2, "gradient", "train/grad_norm"),
             (4, "parameters after the update", "params"))


def _combine(window, step_window):
  if window is None:
    return step_window
  out = _add({k: v for k, v in window.items() if k not in _FIRST_BAD},
             {k: v for k, v in step_window.items() if k not in _FIRST_BAD})
  first = window["bad_step"] == 0
  for k in _FIRST_BAD:
    out[k] = jnp.where(first, step_window[k], window[k])
  return out


def _all_finite(tree) -> jax.Array:
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
            if jnp.issubdtype(x.dtype, jnp.inexact)]
  return jnp.stack(leaves).all() if leaves else jnp.asarray(True)


class Steps:
  """The jitted functions of a run: init, train step, eval step. Built once, shared by tests."""

  def __init__(self, s: Setup):
    self.s = s
    model, tx, cfg = s.model, s.tx, s.config
    measure = bool(cfg.sparsity.enabled)
    use_dropout = float(s.model.sizes.get("dropout_rate", 0.0) or 0.0) > 0
    dropout_key = jax.random.fold_in(jax.random.PRNGKey(cfg.seed), 1)
    mutable = [SPARSITY] if measure else False
    skip_nonfinite = bool(cfg.get("skip_nonfinite_updates", False))

    def apply(params, batch, train, rng):
      out = model.module.apply({"params": params}, **model.inputs(batch),
                               deterministic=not (train and use_dropout),
                               rngs={"dropout": rng}, mutable=mutable)
      logits, variables = out if measure else (out, {})
      return logits, variables.get(SPARSITY, {})

    def init(rng):
      params = nn.meta.unbox(_init_params(model, rng, dummy_batch(model, s.info, 2)))
      return {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params)}

    def train_step(state, window, batch):
      rng = jax.random.fold_in(dropout_key, state["step"])

      def loss_fn(params):
        logits, stats = apply(params, batch, True, rng)
        sums = tasks.sums(model.task, logits, batch)
        return tasks.loss(sums), (sums, stats)

      (loss, (sums, stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
      updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
      params = optax.apply_updates(state["params"], updates)
      grad_norm = optax.global_norm(grads)
      # Finite checks in the graph: scalars, fetched by the host only at log/eval/checkpoint steps,
      # so they add no per-step sync. The updated parameters are checked too: a finite gradient
      # times a huge learning rate can overflow them.
      loss_ok, grad_ok, params_ok = jnp.isfinite(loss), jnp.isfinite(grad_norm), \
          _all_finite(params)
      ok = loss_ok & grad_ok & params_ok
      if skip_nonfinite:  # keep the old params and optimizer state; the step still counts
        params, opt_state = jax.tree.map(lambda new, old: jnp.where(ok, new, old),
                                         (params, opt_state), (state["params"], state["opt_state"]))
      new_state = {"step": state["step"] + 1, "params": params, "opt_state": opt_state}
      # A non-finite step contributes nothing to the window's metric sums, only to its counts.
      masked = lambda t: jax.tree.map(lambda x: jnp.where(ok, x, jnp.zeros_like(x)), t)
      bad = ~ok
      what = ((~loss_ok).astype(jnp.int32) + 2 * (~grad_ok).astype(jnp.int32)
              + 4 * (~params_ok).astype(jnp.int32))
      step_window = {"sums": masked(sums), "sparsity": masked(stats),
                     "steps": ok.astype(jnp.int32), "grad_norm_sum": masked(grad_norm),
                     "nonfinite": bad.astype(jnp.int32),
                     "bad_step": jnp.where(bad, state["step"] + 1, 0).astype(jnp.int32),
                     "bad_what": jnp.where(bad, what, 0).astype(jnp.int32),
                     "bad_loss": jnp.where(bad, loss, 0.0).astype(jnp.float32),
                     "bad_grad_norm": jnp.where(bad, grad_norm, 0.0).astype(jnp.float32)}
      return new_state, _combine(window, step_window)

    def eval_step(params, batch):
      logits, stats = apply(params, batch, False, jax.random.PRNGKey(0))
      return {"sums": tasks.sums(model.task, logits, batch, calibration=True), "sparsity": stats}

    replicated = NamedSharding(s.mesh, P())
    with self.context():
      self.window_abstract = jax.eval_shape(train_step, s.abstract_state, None,
                                            self._batch_abstract(cfg.batch_size))[1]
    self.init = jax.jit(init, out_shardings=s.state_shardings)
    self.train_step = jax.jit(train_step, in_shardings=(s.state_shardings, replicated,
                                                        s.batch_sharding),
                              out_shardings=(s.state_shardings, replicated),
                              donate_argnums=(0, 1))
    self.eval_step = jax.jit(eval_step, in_shardings=(s.state_shardings["params"],
                                                      s.batch_sharding),
                             out_shardings=replicated)

  def context(self):
    return _Context(self.s.mesh, self.s.rules)

  def _batch_abstract(self, batch_size: int) -> dict:
    b = dummy_batch(self.s.model, self.s.info, batch_size)
    return {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in b.items()}

  def zero_window(self) -> Any:
    """Zeros shaped like the train step's window (metric sums, sparsity stats, counts)."""
    replicated = NamedSharding(self.s.mesh, P())
    return jax.tree.map(lambda a: jax.device_put(np.zeros(a.shape, a.dtype), replicated),
                        self.window_abstract)


class _Context:
  def __init__(self, mesh, rules):
    self.mesh, self.rules = mesh, rules

  def __enter__(self):
    self._m = jax.set_mesh(self.mesh)
    self._m.__enter__()
    self._r = nn.logical_axis_rules(self.rules)
    self._r.__enter__()
    return self

  def __exit__(self, *exc):
    self._r.__exit__(*exc)
    self._m.__exit__(*exc)
    return False


# ================================================================================================
# Host <-> device
# ================================================================================================
def to_global(batch: dict, sharding: NamedSharding) -> dict:
  """This process's share of a batch -> global arrays laid out by `sharding`."""
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in batch.items()}


def window_metrics(window: dict, schedule, step: int,
                   skip_nonfinite: bool = False) -> dict[str, float]:
  """A fetched train window -> train/* and sparsity/train/* metrics.

  Raises TrainingDivergedError if a step in the window was non-finite and skipping is off; with
  skipping on, `train/skipped_updates` counts them and the other metrics cover the finite steps.
  """
  check_finite(window, skip_nonfinite)
  out: dict[str, float] = {}
  steps = int(window["steps"])
  if steps:  # a window of skipped steps only has no loss to report
    out.update(tasks.finalize(window["sums"], "train"))
    out["train/grad_norm"] = float(window["grad_norm_sum"]) / steps
  out["train/learning_rate"] = float(schedule(step - 1))
  if skip_nonfinite:
    out["train/skipped_updates"] = float(int(window["nonfinite"]))
  if steps and window.get("sparsity"):
    out.update(sparsity.metrics_from_stats(sparsity.flatten_stats(window["sparsity"]), "train"))
  return out


def check_finite(window: dict, skip_nonfinite: bool) -> None:
  """Raises TrainingDivergedError for a (host) window holding a non-finite step."""
  if skip_nonfinite or not int(window["nonfinite"]):
    return
  what = int(window["bad_what"])
  _, name, metric = next(w for w in _BAD_WHAT if what & w[0])
  value = {"train/loss": window["bad_loss"], "train/grad_norm": window["bad_grad_norm"]}.get(metric)
  raise TrainingDivergedError(int(window["bad_step"]), name, metric,
                              float(value) if value is not None else "non-finite")


# ================================================================================================
# Eval
# ================================================================================================
def evaluate(steps: Steps, params, config, step: int, workdir: Optional[str],
             sync_each_step: bool) -> dict[str, float]:
  s = steps.s
  eval_batch = config.get("eval_batch_size") or config.batch_size
  it = data.build(config.data, split="eval", batch_size=eval_batch, seed=config.seed,
                  process_index=jax.process_index(), process_count=jax.process_count())
  outs = []
  with it, steps.context():
    for batch in it:
      out = steps.eval_step(params, to_global(batch, s.batch_sharding))
      if sync_each_step:
        jax.block_until_ready(out)
      outs.append(out)
  if not outs:
    return {}
  host = jax.device_get(outs)
  total = jax.tree.map(lambda *xs: np.sum(np.stack([np.asarray(x, np.float64) for x in xs]), 0),
                       *host)
  result = tasks.finalize(total["sums"], "eval")
  if total.get("sparsity"):
    stats = sparsity.flatten_stats(
        jax.tree.map(lambda *xs: np.sum(np.stack([np.asarray(x) for x in xs]), 0),
                     *[h["sparsity"] for h in host]))
    result.update(sparsity.metrics_from_stats(stats, "eval"))
    if workdir is not None and jax.process_index() == 0:
      sparsity.save_npz(workdir, step, stats)
  return result


# ================================================================================================
# Train loop
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
  with StopRequests() as stop_requests:
    return _train(config, workdir, setup, stream, stop_after, stop_requests)


def _train(config, workdir, setup, stream, stop_after, stop_requests) -> dict[str, float]:
  is_main = jax.process_index() == 0
  skip_nonfinite = bool(config.get("skip_nonfinite_updates", False))
  # Nothing was written before this line.
  wd = epath.Path(workdir)
  if is_main:
    wd.mkdir(parents=True, exist_ok=True)
    # Atomic: a kill mid-write must not leave a torn config.json that refuses every restart.
    _write_atomic(wd / "config.json", config_lib.to_json(config))
    _write_sharding_plan(setup, wd, stream)
  steps = Steps(setup)
  # On CPU, several sharded steps in flight can deadlock XLA's collectives: block on each step.
  sync_each_step = setup.mesh.devices.flat[0].platform == "cpu" and setup.mesh.size > 1
  ckpt = checkpointing.Checkpointer(
      workdir, every_steps=config.checkpoint_every_steps or config.total_steps,
      max_to_keep=config.get("keep_checkpoints", 3),
      keep_period=config.get("keep_checkpoint_every_steps", None))
  writers = metrics.make_writers(workdir, config.get("tensorboard", True)) if is_main else []
  train_iter = data.build(config.data, split="train", batch_size=config.batch_size,
                          seed=config.seed, process_index=jax.process_index(),
                          process_count=jax.process_count())
  warn = lambda msg: print(msg, file=stream, flush=True) if is_main else None

  # ------------------------------------------------------------------------------------- resume
  replicated = NamedSharding(setup.mesh, P())
  with steps.context():
    abstract = checkpointing.abstract_with_shardings(setup.abstract_state, setup.state_shardings)
    abstract_window = jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=replicated),
        steps.window_abstract)
    # Newest usable checkpoint; unusable ones are reported, moved aside, never deleted.
    restored = ckpt.restore_latest(abstract, abstract_window, warn=warn, move_unusable=True)
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

  pending = metrics.PendingMetrics()
  hooks = _TestHooks()
  t0 = time.time()
  try:
    if start == 0 and config.eval_every_steps:
      write(0, evaluate(steps, state["params"], config, 0, workdir if is_main else None,
                        sync_each_step))
    # ------------------------------------------------------------------------------------- loop
    signum = None
    for step in range(start + 1, config.total_steps + 1):
      batch = to_global(next(train_iter), setup.batch_sharding)
      with steps.context():
        state, window = steps.train_step(state, window, batch)
      if sync_each_step:
        jax.block_until_ready(state)
      hooks.after_step(step)
      final = step == config.total_steps
      if step % config.log_every_steps == 0 or final:
        pending.add(step, window, lambda w, st=step: window_metrics(w, setup.schedule, st,
                                                                    skip_nonfinite))
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
        check_finite(jax.device_get({k: window[k] for k in ("nonfinite", *_FIRST_BAD)}),
                     skip_nonfinite)
      if do_eval:
        write(step, evaluate(steps, state["params"], config, step, workdir if is_main else None,
                             sync_each_step))
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
  if signum is not None:
    print(f"stopped by {signal.Signals(signum).name} after step {step}: checkpoint "
          f"{os.fspath(wd / 'checkpoints' / str(step))} written; run the same command to resume",
          file=stream, flush=True)
  elif is_main and config.total_steps > start:
    print(f"done: {config.total_steps - start} steps in {time.time() - t0:.1f}s; workdir "
          f"{workdir}", file=stream, flush=True)
  return last


class _TestHooks:
  """Test hooks (tests/test_fault_tolerance.py), inert unless their environment variable is set.

  LAZY_NEURON_TEST_KILL_AFTER_STEP=N: SIGKILL this process right after step N is dispatched, a real
  kill at an exact point (a timer would race steps of a millisecond).
  LAZY_NEURON_TEST_STEP_SLEEP=S: sleep S seconds after each step, so that a test's signal or timed
  kill lands while the loop runs. (LAZY_NEURON_TEST_KILL_IN_SAVE: see checkpointing.py.)
  """

  def __init__(self):
    kill = os.environ.get("LAZY_NEURON_TEST_KILL_AFTER_STEP")
    self.kill_after = int(kill) if kill else None
    self.sleep = float(os.environ.get("LAZY_NEURON_TEST_STEP_SLEEP") or 0)

  def after_step(self, step: int) -> None:
    if self.sleep:
      time.sleep(self.sleep)
    if self.kill_after == step:
      os.kill(os.getpid(), signal.SIGKILL)


def _write_atomic(path: epath.Path, text: str) -> None:
  tmp = path.parent / (path.name + ".tmp")
  tmp.write_text(text)
  tmp.replace(path)


class StopRequests:
  """SIGTERM / SIGINT -> a flag the loop reads after each step; previous handlers restored on exit.

  Handlers can only be installed from the main thread; elsewhere (a trainer run in a thread) the
  signals keep their previous behaviour. A second signal raises KeyboardInterrupt: whoever sends it
  does not want to wait for the checkpoint (a save it interrupts leaves only an ignored tmp folder).
  """

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.signum: Optional[int] = None
    self._previous: dict = {}

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for s in self.SIGNALS:
        self._previous[s] = signal.signal(s, self._handle)
    return self

  def __exit__(self, *exc):
    for s, handler in self._previous.items():
      signal.signal(s, handler)
    self._previous = {}
    return False

  def _handle(self, signum, frame):
    if self.signum is not None:
      raise KeyboardInterrupt(f"second {signal.Signals(signum).name}")
    self.signum = signum   # no printing here: the main thread may be inside a write to stdout

  def requested(self) -> Optional[int]:
    """The signal number if any process got one, else None. One process: no device sync."""
    if jax.process_count() == 1:
      return self.signum
    from jax.experimental import multihost_utils
    got = multihost_utils.process_allgather(np.asarray(self.signum or 0, np.int32))
    got = [int(x) for x in np.asarray(got).ravel() if int(x)]
    return got[0] if got else None


def _write_sharding_plan(setup: Setup, wd: epath.Path, stream, top: int = 20) -> None:
  """Writes the whole plan to DIR/sharding_plan.txt and prints a summary line; on a mesh of more
  than one device also the plan's `top` largest arrays per device and the totals."""
  rows, total = partitioning.sharding_plan(setup.abstract_state["params"],
                                           setup.state_shardings["params"])
  (wd / "sharding_plan.txt").write_text(
      partitioning.format_plan(rows, total, setup.mesh, setup.rules) + "\n")
  n_params = sum(int(np.prod(s)) for _, s, _, _ in rows)
  print(f"{setup.model.name}/{setup.config.model.variant}: {n_params:,} parameters; "
        f"mesh {dict(setup.mesh.shape)}; {total / 2**20:.1f} MiB of parameters per device "
        f"(plan: {os.fspath(wd / 'sharding_plan.txt')})", file=stream, flush=True)
  if setup.mesh.size > 1:
    print(partitioning.format_plan(rows, total, setup.mesh, setup.rules, top=top), file=stream,
          flush=True)


# ================================================================================================
# Entry point
# ================================================================================================
def main(argv: Optional[Sequence[str]] = None) -> int:
  argv = list(sys.argv if argv is None else argv)
  if any(a in ("-h", "--help", "--helpfull") for a in argv[1:]):
    print(FLAG_HELP)
    return 0
  try:
    flags = parse_flags(argv)
    distributed.initialize(coordinator_address=flags.coordinator_address,
                           num_processes=flags.num_processes, process_id=flags.process_id)
    config = load_config(flags.config, flags.overrides)
    train_and_evaluate(config, flags.workdir)
  except UserError as e:
    return errors.report(e)
  except TrainingDivergedError as e:
    print(f"lazy-neuron: error: {e.message()}", file=sys.stderr)
    return EXIT_DIVERGED
  return 0


if __name__ == "__main__":
  sys.exit(main())
