"""What a config compiles to: the mesh, shardings, model and optimizer (`build_setup`), and the
jitted init / train / eval steps (`Steps`) with the train step's metric window.

The window is a small tree of sums (task metric sums, sparsity statistics, step counts) that the
train step adds to in the graph and the host fetches only at log steps, so logging adds no
per-step sync. It also carries the non-finite bookkeeping: how many steps were non-finite and which
was the first (step, quantity, value), so the host can stop the run naming them (`check_finite`).
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from lazy_neuron import checks, data, flops, optim, partitioning, sparsity, tasks
from lazy_neuron.errors import UserError
from lazy_neuron.models import SPARSITY, Model, build_model, dummy_batch
from lazy_neuron.models.stacking import init_params


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
  # Forward FLOPs per example (flops.ForwardFlops) for the skippable-FLOPs sparsity metrics; None
  # when the sparsity probe is off.
  flops_info: Any = None


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
  _check_batch_fits(config, model, info, mesh, dp)
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
               partitioning.batch_sharding(mesh, rules),
               flops.forward_flops(model, info) if config.sparsity.enabled else None)


def _check_batch_fits(config, model: Model, info, mesh, dp: int) -> None:
  """A batch that cannot fit in this host's memory (each batch is built there), or in one device's
  memory where the platform reports it, is a config error: one line now, instead of a pipeline or
  an allocation that runs the machine out of memory after the run has started."""
  per_example = sum(v.nbytes for v in dummy_batch(model, info, 1).values())
  try:
    host = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
  except (ValueError, OSError, AttributeError):  # not POSIX: nothing to compare with
    host = None
  # A device of this process: memory_stats() refuses devices owned by another process.
  local = next(d for d in mesh.devices.flat if d.process_index == jax.process_index())
  stats = getattr(local, "memory_stats", lambda: None)() or {}
  device = stats.get("bytes_limit")
  gib = lambda n: f"{n / 2**30:.3g} GiB"
  for key in ("batch_size", "eval_batch_size"):
    size = config.get(key) or config.batch_size
    need = size // jax.process_count() * per_example
    if host and need > host:
      raise checks.fail(key, size, f"one batch needs {gib(need)} of host memory and this machine "
                                   f"has {gib(host)}; use a smaller {key}")
    if device and size // dp * per_example > device:
      raise checks.fail(key, size, f"its inputs alone need {gib(size // dp * per_example)} per "
                                   f"device and a device has {gib(device)}; use a smaller {key} "
                                   f"or more devices")


def _init_params(model: Model, rng, dummy):
  variables = model.module.init({"params": rng, "dropout": rng}, **model.inputs(dummy))
  return variables["params"]


def _add(a, b):
  return jax.tree.map(jnp.add, a, b)


# Hand-written, not clu.metrics: the window must add exactly across steps and shards inside the
# jitted step, be checkpointed as a plain array tree, and keep the first non-finite step.
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
    # On CPU, several sharded steps in flight can deadlock XLA's collectives: block on each step.
    self.sync_each_step = s.mesh.devices.flat[0].platform == "cpu" and s.mesh.size > 1
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
      params = init_params(model, {"params": rng, "dropout": rng},
                           model.inputs(dummy_batch(model, s.info, 2)))
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
      grad_norm = optax.tree.norm(grads)
      # Finite checks in the graph: scalars, fetched by the host only at log/eval/checkpoint steps,
      # so they add no per-step sync. The updated parameters are checked too: a finite gradient
      # times a huge learning rate can overflow them.
      loss_ok, grad_ok, params_ok = jnp.isfinite(loss), jnp.isfinite(grad_norm), \
          _all_finite(params)
      ok = loss_ok & grad_ok & params_ok
      # Not optax.apply_if_finite: it checks only the gradient (not the loss or the updated
      # parameters) and adds a counter to the optimizer state, so switching skipping on would change
      # the checkpointed state tree and a diverged run could not resume with it.
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
    self.compiled_ahead = None  # compile_train_step_ahead(): whether its executable ran
    self.train_step = self._jitted_train_step = jax.jit(
        train_step, in_shardings=(s.state_shardings, replicated, s.batch_sharding),
        out_shardings=(s.state_shardings, replicated), donate_argnums=(0, 1))
    self.eval_step = jax.jit(eval_step, in_shardings=(s.state_shardings["params"],
                                                      s.batch_sharding),
                             out_shardings=replicated)

  @contextlib.contextmanager
  def context(self):
    """The mesh and logical-axis rules the steps were built for (jit traces under them)."""
    with jax.set_mesh(self.s.mesh), nn.logical_axis_rules(self.s.rules):
      yield self

  def _batch_abstract(self, batch_size: int) -> dict:
    # Shapes only: a batch of one, not of `batch_size` (which need not fit in host memory).
    b = dummy_batch(self.s.model, self.s.info, 1)
    return {k: jax.ShapeDtypeStruct((batch_size, *v.shape[1:]), v.dtype) for k, v in b.items()}

  def compile_train_step_ahead(self) -> None:
    """Starts compiling the train step in a background thread, for this setup's state, window and
    batch shapes and shardings; `train_step` then waits for it on its first call and runs the
    compiled executable. `train` calls it just before initialising the state, whose own
    compilation then overlaps the step's (XLA's compiler releases the GIL), and after restoring
    one: the first step comes sooner. A compilation error (out of memory included) is raised by that
    first call, where a jitted step would raise it.

    Not done when `train_step` was replaced after construction (tests wrap it to inject faults):
    the wrapper is left as it is."""
    if self.train_step is not self._jitted_train_step:
      return
    import concurrent.futures

    from lazy_neuron import checkpointing

    jitted = self._jitted_train_step
    args = (checkpointing.abstract_with_shardings(self.s.abstract_state, self.s.state_shardings),
            self.abstract_window(),
            jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype,
                                                        sharding=self.s.batch_sharding),
                         self._batch_abstract(self.s.config.batch_size)))

    def compile_step():
      with self.context():
        return jitted.lower(*args).compile()

    pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="lazy_neuron-compile")
    future = pool.submit(compile_step)
    pool.shutdown(wait=False)
    run = None

    def train_step(state, window, batch):
      nonlocal run
      if run is not None:
        return run(state, window, batch)
      compiled = future.result()
      try:
        out = compiled(state, window, batch)
      except TypeError:
        # Arguments unlike the abstract ones (a pipeline's dtype differing from the dummy batch's):
        # checked before anything runs, so nothing was donated; jit traces for what was given.
        run, self.compiled_ahead = jitted, False
        return jitted(state, window, batch)
      run, self.compiled_ahead = compiled, True
      return out

    self.train_step = train_step

  def abstract_window(self) -> Any:
    """The window's shapes, dtypes and (replicated) shardings: what a checkpoint restores into."""
    replicated = NamedSharding(self.s.mesh, P())
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=replicated),
                        self.window_abstract)

  def zero_window(self) -> Any:
    """Zeros shaped like the train step's window (metric sums, sparsity stats, counts)."""
    replicated = NamedSharding(self.s.mesh, P())
    return jax.tree.map(lambda a: jax.device_put(np.zeros(a.shape, a.dtype), replicated),
                        self.window_abstract)



def to_global(batch: dict, sharding: NamedSharding) -> dict:
  """This process's share of a batch -> global arrays laid out by `sharding`."""
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in batch.items()}


class DevicePrefetch:
  """The train iterator's next `size` batches made and put on the devices by a background thread
  while the current step runs, so that neither the input pipeline's hand-over nor the host-to-device
  copy sits between two steps (the idea of big_vision's and flax's prefetch to device).

  Ours because the loop needs what those do not give: global arrays laid out by a NamedSharding
  (`to_global`, multi-process included) and, with each batch, the iterator state right after it, so
  that a checkpoint saves the state of the last batch the loop *consumed*, not of the ones waiting
  here (exact resumption). An error in the thread (bad data, an exhausted one-pass source) is raised
  by `next()` in the loop, as a direct `next(iterator)` would. `size=0`: no thread, each batch made
  when asked for (CPU meshes of several devices, whose steps the loop runs one at a time).
  """

  def __init__(self, iterator, sharding: NamedSharding, size: int = 2):
    import queue
    import threading

    self._iterator, self._sharding = iterator, sharding
    self._thread = None
    if not size:
      return
    self._queue: Any = queue.Queue(maxsize=int(size))
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._fill, name="lazy_neuron-prefetch", daemon=True)
    self._thread.start()

  def _fill(self) -> None:
    import queue

    while not self._stop.is_set():
      try:
        batch = to_global(next(self._iterator), self._sharding)
        item = (batch, self._iterator.get_state(), None)
      except BaseException as e:  # noqa: BLE001 - handed to the loop, which raises it
        item = (None, None, e)
      while not self._stop.is_set():
        try:
          self._queue.put(item, timeout=0.1)
          break
        except queue.Full:
          continue
      if item[2] is not None:
        return

  def __next__(self) -> tuple[dict, Any]:
    """(the next global batch, the iterator's state after it)."""
    if self._thread is None:
      batch = to_global(next(self._iterator), self._sharding)
      return batch, self._iterator.get_state()
    batch, state, error = self._queue.get()
    if error is not None:
      raise error
    return batch, state

  def close(self) -> None:
    """Stops the thread (idempotent); the iterator itself is the caller's to close."""
    if self._thread is not None:
      self._stop.set()
      self._thread.join()


def window_metrics(window: dict, schedule, step: int, skip_nonfinite: bool = False,
                   flops_info: Any = None) -> dict[str, float]:
  """A fetched train window -> train/* and sparsity/train/* metrics (with `flops_info`, the
  Setup's, also the skippable-FLOPs fractions).

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
    out.update(sparsity.metrics_from_stats(sparsity.flatten_stats(window["sparsity"]), "train",
                                           flops_info))
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


def check_window_finite(window: dict, skip_nonfinite: bool) -> None:
  """`check_finite` on a device window, fetching only its non-finite fields (a sync: call it only
  where the loop syncs anyway, before an eval or a checkpoint)."""
  if not skip_nonfinite:
    check_finite(jax.device_get({k: window[k] for k in ("nonfinite", *_FIRST_BAD)}), False)
