"""Orbax checkpoints of the train state, the data-iterator state and the metric window; resume.

DIR/checkpoints/<step>/ holds `state` (params, optimizer state, step; sharded arrays written
collectively by every process), `data` (the iterator state as JSON), so a resumed run sees exactly
the batches an uninterrupted one would, and `window` (the metric sums of the steps since the last
logged step, so a run resumed between two log steps logs the same values).

Failure model (docs/fault_tolerance.md):
- Saves are asynchronous and atomic: Orbax writes `<step>.orbax-checkpoint-tmp-*` and renames it
  when complete, so a kill during a save leaves the previous checkpoints intact; the tmp folder is
  ignored and removed at the next start (`cleanup_tmp_directories`; it is incomplete by definition).
- A finalized step folder can still be unusable (truncated or overwritten files, a missing commit
  marker, garbage). `restore_latest` tries steps newest -> oldest and skips each unusable one with a
  warning naming it. It never deletes one: once the resumed run has completed a step, the trainer
  moves an unusable step folder that is newer than the step it resumed from to
  DIR/checkpoints.unusable/<step>[.N] (`open_for_writing`), where Orbax neither counts it for
  retention (which would delete it) nor collides with it when the run saves that step again.
- A checkpoint whose array shapes (read from its metadata) do not fit the config is not unusable: it
  belongs to another config. `restore_latest` raises a UserError naming the first parameter that
  differs and both shapes, and nothing is skipped, moved or written.
- Opening is read-only (no `checkpoints/` folder created, no tmp folder removed) until
  `open_for_writing`, so a run that fails before its first step, and `lazy-neuron eval`, write
  nothing.
- Retention: the newest `max_to_keep` checkpoints, plus every step that is a multiple of
  `keep_period`, are kept; Orbax deletes the others after each save.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable, Optional

import jax
import orbax.checkpoint as ocp
from etils import epath

from lazy_neuron import distributed
from lazy_neuron.errors import UserError

# The Orbax step-level metadata file. Orbax writes it when a step is finalized (it carries
# `commit_timestamp_nsecs`), so we treat it as the commit marker: a step folder without it (or with
# it unreadable) was not completely written, whatever the filesystem's rename semantics.
COMMIT_MARKER = "_CHECKPOINT_METADATA"
UNUSABLE_DIR = "checkpoints.unusable"

class Checkpointer:

  def __init__(self, workdir: str, every_steps: int, max_to_keep: Optional[int] = 3,
               keep_period: Optional[int] = None, async_save: bool = True,
               read_only: bool = False):
    """`read_only`: create nothing and remove nothing (no `checkpoints/`, tmp folders left) until
    `open_for_writing()`; `lazy-neuron eval` never calls it."""
    self.directory = epath.Path(workdir) / "checkpoints"
    self.max_to_keep, self.keep_period = max_to_keep, keep_period
    self.unusable: list[int] = []  # steps `restore_latest` skipped
    self._options = ocp.CheckpointManagerOptions(
        save_interval_steps=max(int(every_steps), 1), max_to_keep=max_to_keep,
        keep_period=keep_period, create=True, cleanup_tmp_directories=True,
        enable_async_checkpointing=async_save)
    self.read_only = read_only
    self.manager = self._make_manager()

  def _make_manager(self):
    self._closed = False
    # Not Orbax's own `read_only` option: it logs warnings to stderr on every open, which would
    # break the one-line error of a command that fails after opening.
    options = (dataclasses.replace(self._options, create=False, cleanup_tmp_directories=False)
               if self.read_only else self._options)
    return ocp.CheckpointManager(self.directory, options=options,
                                 item_names=("state", "data", "window"))

  def open_for_writing(self, warn: Callable[[str], None] = print) -> None:
    """From here on the run writes: moves the steps `restore_latest` skipped aside (process 0),
    then reopens Orbax with `checkpoints/` created and stale tmp folders removed."""
    if self.unusable:
      self._move_aside(self.unusable, warn)
      self.unusable = []
    self.close()
    self.read_only = False
    self.manager = self._make_manager()

  def latest_step(self) -> Optional[int]:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def step_dir(self, step: int) -> epath.Path:
    return self.directory / str(step)

  def save(self, step: int, state: Any, data_state: Any, window: Any = None,
           force: bool = False) -> bool:
    # Every process's iterator state (each reads its own shard; Orbax's JsonSave writes process
    # 0's item only): a collective, like the save itself. Not grain's PyGrainCheckpointHandler (one
    # file per process): it saves grain iterators only, and ours is our DataIterator (a grain
    # pipeline or a seeded batch function) whose state carries a fingerprint checked on restore.
    data_state = distributed.gather_process_states(data_state)
    items = dict(state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state))
    if window is not None:
      items["window"] = ocp.args.StandardSave(window)
    return self.manager.save(step, args=ocp.args.Composite(**items), force=force)

  def restore(self, step: int, abstract_state: Any,
              abstract_window: Any = None) -> tuple[Any, ...]:
    """(state, data_state) or, with `abstract_window`, (state, data_state, window-or-None).

    The window is None for a checkpoint written without one (before it was saved).
    """
    check_committed(self.step_dir(step))
    check_fits(self.step_dir(step), "state", abstract_state)
    has_window = abstract_window is not None and (self.step_dir(step) / "window").exists()
    if has_window:
      check_fits(self.step_dir(step), "window", abstract_window)
    items = dict(state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore())
    if has_window:
      items["window"] = ocp.args.StandardRestore(abstract_window)
    restored = self.manager.restore(step, args=ocp.args.Composite(**items))
    data_state = restored["data"]
    if not isinstance(data_state, dict):
      raise ValueError(f"the data item is {type(data_state).__name__}, not a JSON object")
    data_state = distributed.this_process_state(data_state)
    if abstract_window is None:
      return restored["state"], data_state
    return restored["state"], data_state, restored["window"] if has_window else None

  def restore_latest(self, abstract_state: Any, abstract_window: Any = None,
                     warn: Callable[[str], None] = print):
    """Restores the newest usable checkpoint: (step, state, data_state, window) or None.

    Steps are tried newest -> oldest; an unusable one is reported through `warn` (naming its
    folder and the reason) and skipped, never deleted; `self.unusable` lists them for
    `open_for_writing` to move aside (`lazy-neuron eval` only reads). A checkpoint that does not
    fit `abstract_state` raises CheckpointMismatch (a UserError). In a multi-process run every
    process must succeed for a step to count, so all of them resume from the same step.
    """
    skipped = []
    result = None
    for step in reversed(self.all_steps()):
      error = None
      try:
        restored = self.restore(step, abstract_state, abstract_window)
      except UserError:
        raise  # a checkpoint of another config: not unusable, and not to be moved aside
      except Exception as e:  # noqa: BLE001 - Orbax/TensorStore raise many types for bad files
        error = f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:200]}"
      if not _all_processes_ok(error is None):
        error = error or "another process could not read it"
      if error is None:
        result = (step, *restored) if abstract_window is not None else (step, *restored, None)
        break
      skipped.append(step)
      warn(f"warning: checkpoint {os.fspath(self.step_dir(step))} is unusable ({error}); "
           f"skipping it (it is not deleted)")
    self.unusable = skipped
    if result is None and skipped:
      warn("warning: no usable checkpoint; starting from step 0")
    return result

  def _move_aside(self, steps: list[int], warn) -> None:
    if jax.process_index() == 0:
      target_root = self.directory.parent / UNUSABLE_DIR
      target_root.mkdir(parents=True, exist_ok=True)
      for step in steps:
        target = target_root / str(step)
        n = 1
        while target.exists():
          target, n = target_root / f"{step}.{n}", n + 1
        try:
          self.step_dir(step).rename(target)
        except OSError as e:
          raise UserError(f"cannot move the unusable checkpoint {os.fspath(self.step_dir(step))} "
                          f"aside ({e}); move it out of {os.fspath(self.directory)} by hand") from e
        warn(f"warning: moved unusable checkpoint {os.fspath(self.step_dir(step))} to "
             f"{os.fspath(target)}")
    _sync_processes("lazy_neuron_move_unusable")

  def close(self) -> None:
    """Waits for in-flight saves and closes Orbax; a second call does nothing."""
    if self._closed:
      return
    self._closed = True
    self.manager.wait_until_finished()
    self.manager.close()


def check_committed(step_dir: epath.Path) -> None:
  """Raises ValueError unless `step_dir` carries a readable Orbax commit marker."""
  marker = step_dir / COMMIT_MARKER
  if not marker.exists():
    raise ValueError(f"missing commit marker {COMMIT_MARKER}")
  try:
    meta = json.loads(marker.read_text())
  except (ValueError, UnicodeDecodeError) as e:
    raise ValueError(f"unreadable commit marker {COMMIT_MARKER}") from e
  if not isinstance(meta, dict) or meta.get("commit_timestamp_nsecs", 1) is None:
    raise ValueError(f"commit marker {COMMIT_MARKER} has no commit time")


class CheckpointMismatch(UserError):
  """A readable checkpoint whose arrays do not fit the config (another model or optimizer)."""


def _path_key(path) -> str:
  # Orbax's metadata names tuple/namedtuple fields by index or name as dict keys: compare by names.
  parts = []
  for k in path:
    parts.append(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))))
  return "/".join(parts)


def check_fits(step_dir: epath.Path, item: str, abstract: Any) -> None:
  """Raises CheckpointMismatch when the array shapes stored in `step_dir/item` (its metadata) are
  not those of `abstract`. Metadata that cannot be read says nothing: the restore that follows
  decides whether the checkpoint is usable."""
  try:
    # The handler, not a Checkpointer: that one also reads the item's step metadata, which Orbax
    # does not write per item, and logs a warning to stderr about it.
    handler = ocp.PyTreeCheckpointHandler()
    try:
      meta = handler.metadata(step_dir / item)
    finally:
      handler.close()
    meta = getattr(meta, "tree", meta)
    stored = {_path_key(p): tuple(m.shape) for p, m in
              jax.tree_util.tree_flatten_with_path(meta)[0] if hasattr(m, "shape")}
  except Exception:  # noqa: BLE001 - unreadable metadata: leave the verdict to the restore
    return
  if not stored:
    return
  wanted = {_path_key(p): tuple(a.shape)
            for p, a in jax.tree_util.tree_flatten_with_path(abstract)[0]}
  where = f"checkpoint {os.fspath(step_dir)}"
  hint = ("it was written by another config (model sizes, optimizer or sparsity settings); use "
          "the config it was trained with, or a new --workdir")
  for key in sorted(set(wanted) | set(stored), key=lambda k: (not k.startswith("params"), k)):
    if key not in stored:
      raise CheckpointMismatch(f"{where} does not fit the config: it has no {item} array {key!r} "
                               f"(the config needs shape {wanted[key]}); {hint}")
    if key not in wanted:
      raise CheckpointMismatch(f"{where} does not fit the config: its {item} array {key!r} "
                               f"(shape {stored[key]}) is not in the config's model; {hint}")
    if stored[key] != wanted[key]:
      raise CheckpointMismatch(f"{where} does not fit the config: {item} array {key!r} has shape "
                               f"{stored[key]} in the checkpoint and {wanted[key]} in the config; "
                               f"{hint}")


def _all_processes_ok(ok: bool) -> bool:
  return all(distributed.allgather_json(bool(ok)))


def _sync_processes(name: str) -> None:
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)


def abstract_with_shardings(tree: Any, shardings: Any) -> Any:
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree,
                      shardings)
