"""Metric writers (JSONL always; TensorBoard when TensorFlow is installed) and the progress line.

Nothing here forces a device sync: the trainer hands over device arrays and the writer converts
them only when they are ready (or at the next log step), so the step loop never blocks on logging.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Any, Mapping

import jax
from etils import epath

from lazy_neuron import fileio
from lazy_neuron.sparsity.summary import short_layer


class JsonlWriter:
  """Writes {"step": N, ...} lines to DIR/metrics.jsonl, flushing each write.

  A resumed run replays the steps after its checkpoint. Their old rows are not cut at start (the
  run may still fail before it replays anything): `resume(step)` only reads the file, and an old
  row for a step after `step` stays until the run writes a row for that same step, which replaces
  it (in place, so the file stays in step order). Old rows at steps the run does not log again
  (a changed log_every_steps) are kept. Lines that do not parse (a write torn by a kill, bytes that
  are not UTF-8) are dropped, with a warning, at the first rewrite.
  """

  def __init__(self, workdir: str):
    self.path = epath.Path(workdir) / "metrics.jsonl"
    self._kept: list[str] = []                   # lines at or before the resumed step, as read
    self._stale: list[tuple[int, str]] = []      # (step, line) after it, not yet replayed
    self._new: list[tuple[int, str]] = []        # rows this run wrote while stale ones remain
    self._rewrite = False

  def resume(self, step: int, warn=None) -> None:
    """Reads the rows a run resuming after `step` (-1: from scratch) keeps or replays. Writes
    nothing: the file changes at the first `write`."""
    self._kept, self._stale, self._new = [], [], []
    self._rewrite = False
    if not self.path.exists():
      return
    data = self.path.read_bytes()
    # A last line without its newline would be glued to the next row appended: rewrite instead.
    self._rewrite = bool(data) and not data.endswith(b"\n")
    for number, raw in enumerate(data.split(b"\n"), 1):
      if not raw.strip():
        continue
      try:
        line = raw.decode("utf-8")
        row = json.loads(line)
        row_step = int(row["step"])
      except (ValueError, TypeError, KeyError):  # UnicodeDecodeError is a ValueError
        if warn is not None:
          warn(f"warning: dropping unreadable line {number} of {os.fspath(self.path)}: "
               f"{raw[:60]!r}")
        self._rewrite = True
        continue
      if row_step <= step:
        self._kept.append(line)
      else:
        self._stale.append((row_step, line))
    self._rewrite = self._rewrite or bool(self._stale)

  def write(self, step: int, values: Mapping[str, Any]) -> None:
    row = {"step": int(step)}
    for k, v in values.items():
      v = float(v) if not isinstance(v, (str, bool)) else v
      row[k] = None if isinstance(v, float) and not math.isfinite(v) else v
    line = json.dumps(row)
    if not self._rewrite:
      with self.path.open("a") as f:
        f.write(line + "\n")
      return
    # The old rows of this step are replaced by this one; the file is rewritten atomically until
    # no old row after this step is left, then appended to again.
    self._stale = [(s, l) for s, l in self._stale if s != step]
    self._new.append((step, line))
    rows = sorted(self._stale + self._new, key=lambda r: r[0])  # stable: new rows keep their order
    fileio.write_atomic(self.path, "".join(l + "\n" for l in self._kept + [l for _, l in rows]))
    if all(s < step for s, _ in self._stale):
      self._kept, self._stale, self._new, self._rewrite = [], [], [], False


class TensorBoardWriter:
  """TensorBoard event files through tf.summary; only built when TensorFlow imports."""

  def __init__(self, workdir: str):
    import tensorflow as tf  # optional extra `tf`
    self._tf = tf
    self._writer = tf.summary.create_file_writer(os.fspath(workdir))

  def write(self, step: int, values: Mapping[str, Any]) -> None:
    with self._writer.as_default():
      for k, v in values.items():
        if isinstance(v, (int, float)) and math.isfinite(float(v)):
          self._tf.summary.scalar(k, float(v), step=int(step))
    self._writer.flush()


def make_writers(workdir: str, tensorboard: bool = True) -> list:
  writers: list = [JsonlWriter(workdir)]
  if tensorboard:
    try:
      writers.append(TensorBoardWriter(workdir))
    except ImportError:
      pass
  return writers


def _fmt_time(seconds: float) -> str:
  if not math.isfinite(seconds):
    return "?"
  seconds = int(seconds)
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


class Progress:
  """step, loss, steps/s, ETA, mean % nonzero, and per-layer % nonzero.

  Ours, not clu.periodic_actions.ReportProgress: that module imports TensorFlow, which this
  project does not require.
  """

  def __init__(self, total_steps: int, start_step: int, stream=sys.stdout):
    self.total = total_steps
    self.stream = stream
    self.last_step, self.last_time = start_step, time.time()
    self._first = start_step

  def report(self, step: int, values: Mapping[str, float], now: float | None = None) -> None:
    now = time.time() if now is None else now
    rate = 0.0
    if step > self.last_step and "train/loss" in values:
      rate = (step - self.last_step) / max(now - self.last_time, 1e-9)
      self.last_step, self.last_time = step, now
    eta = (self.total - step) / rate if rate > 0 else float("inf")
    parts = [f"step {step}/{self.total}"]
    if "train/loss" in values:
      parts.append(f"loss {values['train/loss']:.4f}")
    if "eval/loss" in values:
      parts.append(f"eval loss {values['eval/loss']:.4f}")
    if "eval/accuracy" in values:
      parts.append(f"eval acc {values['eval/accuracy']:.3f}")
    if step > self._first and "train/loss" in values and rate > 0:
      parts.append(f"{rate:.2f} steps/s")
      parts.append(f"ETA {_fmt_time(eta)}")
    for split in ("train", "eval"):
      mean = values.get(f"sparsity/{split}/mean/nonzero_frac")
      if mean is not None:
        layers = [(k.split("/", 2)[2].rsplit("/", 1)[0], v) for k, v in values.items()
                  if k.startswith(f"sparsity/{split}/") and k.endswith("/nonzero_frac")
                  and "/mean/" not in k]
        per_layer = " ".join(f"{short_layer(n)} {100 * v:.0f}" for n, v in layers)
        parts.append(f"{split} nonzero {100 * mean:.1f}% [{per_layer}]")
    print(" | ".join(parts), file=self.stream, flush=True)


class PendingMetrics:
  """Device-side metric trees kept until their values are ready; then converted and written."""

  def __init__(self):
    self._items: list[tuple[int, Any, Any]] = []

  def add(self, step: int, tree: Any, finish) -> None:
    self._items.append((step, tree, finish, time.time()))

  def flush(self, block: bool = False):
    """Yields (step, metrics, time the step was dispatched) of the trees that are ready (or all).

    In step order, stopping at the first tree that is not ready; a tree leaves the queue as it is
    yielded, so when `finish` raises (a non-finite window) the rows before it have been yielded.
    """
    while self._items:
      step, tree, finish, t = self._items[0]
      leaves = jax.tree.leaves(tree)
      if not block and not all(getattr(x, "is_ready", lambda: True)() for x in leaves):
        return
      self._items.pop(0)
      yield step, finish(jax.device_get(tree)), t

  def __len__(self) -> int:
    return len(self._items)
