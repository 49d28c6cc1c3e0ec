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
  warning naming it. It never deletes one: the trainer moves an unusable step folder that is newer
  than the step it resumes from to DIR/checkpoints.unusable/<step>[.N], where Orbax neither counts it
  for retention (which would delete it) nor collides with it when the run saves that step again.
- Retention: the newest `max_to_keep` checkpoints, plus every step that is a multiple of
  `keep_period`, are kept; Orbax deletes the others after each save.
"""
from __future__ import annotations

import json
import os
from typing import Any, Callable, Optional

import jax
import orbax.checkpoint as ocp
from etils import epath

from lazy_neuron import distributed

# The Orbax step-level metadata file. Orbax writes it when a step is finalized (it carries
# `commit_timestamp_nsecs`), so we treat it as the commit marker: a step folder without it (or with
# it unreadable) was not completely written, whatever the filesystem's rename semantics.
COMMIT_MARKER = "_CHECKPOINT_METADATA"
UNUSABLE_DIR = "checkpoints.unusable"

class Checkpointer:

  def __init__(self, workdir: str, every_steps: int, max_to_keep: Optional[int] = 3,
               keep_period: Optional[int] = None, async_save: bool = True):
    self.directory = epath.Path(workdir) / "checkpoints"
    self.max_to_keep, self.keep_period = max_to_keep, keep_period
    self._options = ocp.CheckpointManagerOptions(
        save_interval_steps=max(int(every_steps), 1), max_to_keep=max_to_keep,
        keep_period=keep_period, create=True, cleanup_tmp_directories=True,
        enable_async_checkpointing=async_save)
    self.manager = self._make_manager()

  def _make_manager(self):
    return ocp.CheckpointManager(self.directory, options=self._options,
                                 item_names=("state", "data", "window"))

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
    items = dict(state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore())
    has_window = abstract_window is not None and (self.step_dir(step) / "window").exists()
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
                     warn: Callable[[str], None] = print, move_unusable: bool = False):
    """Restores the newest usable checkpoint: (step, state, data_state, window) or None.

    Steps are tried newest -> oldest; an unusable one is reported through `warn` (naming its
    folder and the reason) and skipped, never deleted. With `move_unusable` (the trainer, which is
    about to write new checkpoints) the skipped ones are moved to DIR/checkpoints.unusable/ by
    process 0; `lazy-neuron eval` only reads. In a multi-process run every process must succeed
    for a step to count, so all of them resume from the same step.
    """
    skipped = []
    result = None
    for step in reversed(self.all_steps()):
      error = None
      try:
        restored = self.restore(step, abstract_state, abstract_window)
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
    if skipped and move_unusable:
      self._move_aside(skipped, warn)
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
          from lazy_neuron.errors import UserError
          raise UserError(f"cannot move the unusable checkpoint {os.fspath(self.step_dir(step))} "
                          f"aside ({e}); move it out of {os.fspath(self.directory)} by hand") from e
        warn(f"warning: moved unusable checkpoint {os.fspath(self.step_dir(step))} to "
             f"{os.fspath(target)}")
    _sync_processes("lazy_neuron_move_unusable")
    # Orbax caches the step list it found when it was created: rebuild it without those steps.
    self.manager.close()
    self.manager = self._make_manager()

  def close(self) -> None:
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


def _all_processes_ok(ok: bool) -> bool:
  return all(distributed.allgather_json(bool(ok)))


def _sync_processes(name: str) -> None:
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)


def abstract_with_shardings(tree: Any, shardings: Any) -> Any:
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree,
                      shardings)
