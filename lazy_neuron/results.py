"""Reading finished (or running) workdirs, for notebooks and `lazy-neuron report`.

    from lazy_neuron import results
    run = results.load_run("gs://bucket/runs/t5_base")      # or a local path
    steps, frac = run.series("sparsity/eval/mean/nonzero_frac")
    run.layers("eval")          # ['encoder/layer_00', ..., 'decoder/layer_11']
    run.firing()                # {layer: per-neuron firing frequency [d_ff]} at the last npz step
    run.final("eval/loss")

Reads what `lazy-neuron train` writes into a workdir: config.json, metrics.jsonl and
sparsity/step_<N>.npz (the workdir layout is in README.md, "Workdir").
Only numpy and etils are imported, so notebooks and the report start fast (no jax).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from typing import Any, Iterable, Sequence

import numpy as np

from lazy_neuron.errors import UserError
from lazy_neuron.sparsity.summary import LAZY_FIRING_RATE, layer_sort_key, load_npz

__all__ = ["Run", "load_run", "load_runs", "find_runs", "LAZY_FIRING_RATE", "SUMMARY_METRICS"]

_NPZ = re.compile(r"^step_(\d+)\.npz$")
_LAYER_METRIC = re.compile(r"^sparsity/(train|eval)/(.+)/nonzero_frac$")

# The final numbers a run is summarised by (report table, summary.json, notebook).
SUMMARY_METRICS = (
    "train/loss", "train/accuracy", "eval/loss", "eval/accuracy", "eval/ece",
    "sparsity/train/mean/nonzero_frac", "sparsity/eval/mean/nonzero_frac",
    "sparsity/train/mean/dead_frac", "sparsity/eval/mean/dead_frac",
    "sparsity/train/mean/lazy_frac", "sparsity/eval/mean/lazy_frac",
)


def _path(p: Any):
  from etils import epath  # imported lazily: gs:// support pulls in gcsfs only when used
  return epath.Path(p)


def exists(path) -> bool:
  """path.exists(), with a missing filesystem package (gcsfs for gs://) as a UserError."""
  try:
    return path.exists()
  except ImportError as e:
    raise UserError(f"reading {os.fspath(path)} needs a package that is not installed ({e}); "
                    "for gs:// run `pip install gcsfs`") from None
  except Exception as e:  # noqa: BLE001 - a remote filesystem's own errors (tf.io.gfile, gcsfs)
    if "://" not in os.fspath(path):
      raise
    detail = (str(e).strip().splitlines() or [""])[0][:300]
    raise UserError(f"cannot reach {os.fspath(path)} ({type(e).__name__}: {detail}); check the "
                    "bucket name, network access and credentials (`gcloud auth application-default "
                    "login`)") from None


@dataclasses.dataclass
class Run:
  """One workdir. `metrics` is columnar: {name: (steps int64 [n], values float64 [n])}, sorted by
  step, one value per step (the last line written for a step wins), null -> NaN."""
  workdir: str
  name: str
  config: dict
  metrics: dict[str, tuple[np.ndarray, np.ndarray]]

  # ---- scalar metrics ------------------------------------------------------------------------
  def names(self, prefix: str = "") -> list[str]:
    """Metric names starting with `prefix`, sorted."""
    return sorted(k for k in self.metrics if k.startswith(prefix))

  def series(self, name: str, dropna: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of one metric; empty arrays when the run never logged it. NaN (a null in
    the file) is kept by default so plots show gaps where a loss diverged."""
    steps, values = self.metrics.get(name, (np.zeros(0, np.int64), np.zeros(0)))
    if dropna:
      keep = np.isfinite(values)
      steps, values = steps[keep], values[keep]
    return steps.copy(), values.copy()

  def final(self, name: str, default: float = math.nan) -> float:
    """The value at the last step the metric was logged (NaN if that value was null)."""
    steps, values = self.metrics.get(name, (None, None))
    return float(values[-1]) if steps is not None and len(steps) else default

  def final_step(self, name: str) -> int | None:
    steps, _ = self.metrics.get(name, (None, None))
    return int(steps[-1]) if steps is not None and len(steps) else None

  @property
  def last_step(self) -> int:
    return max((int(s[-1]) for s, _ in self.metrics.values() if len(s)), default=0)

  # ---- sparsity ------------------------------------------------------------------------------
  def layers(self, split: str | None = None) -> list[str]:
    """MLP layer names with a nonzero_frac metric (split 'train'/'eval', or either when None),
    in display order: encoder before decoder, then by depth."""
    found = set()
    for key in self.metrics:
      m = _LAYER_METRIC.match(key)
      if m and m.group(2) != "mean" and (split is None or m.group(1) == split):
        found.add(m.group(2))
    return sorted(found, key=layer_sort_key)

  def npz_steps(self) -> list[int]:
    """Steps with a DIR/sparsity/step_<N>.npz (per-neuron firing frequencies), ascending."""
    d = _path(self.workdir) / "sparsity"
    if not d.exists():
      return []
    return sorted(int(m.group(1)) for p in d.iterdir() if (m := _NPZ.match(p.name)))

  def firing(self, step: int | None = None) -> dict[str, np.ndarray]:
    """{layer: per-neuron firing frequency in [0, 1]} at `step` (the latest npz when None)."""
    steps = self.npz_steps()
    if not steps:
      raise UserError(f"{self.workdir} has no sparsity/step_<N>.npz; run with sparsity.enabled=True "
                      "and an eval step")
    if step is None:
      step = steps[-1]
    if step not in steps:
      raise UserError(f"no firing frequencies for step {step} in {self.workdir}; "
                      f"available steps: {_short_list(steps)}")
    freqs = load_npz(os.fspath(_path(self.workdir) / "sparsity" / f"step_{step}.npz"))
    return {k: freqs[k] for k in sorted(freqs, key=layer_sort_key)}

  # ---- config --------------------------------------------------------------------------------
  def cfg(self, dotted: str, default: Any = None) -> Any:
    """A config value by dotted key, e.g. run.cfg('model.topk')."""
    node: Any = self.config
    for part in dotted.split("."):
      if not isinstance(node, dict) or part not in node:
        return default
      node = node[part]
    return node

  def config_summary(self) -> dict[str, Any]:
    """The handful of config keys that tell runs apart."""
    return {"model": self.cfg("model.name"), "variant": self.cfg("model.variant"),
            "activation": self.cfg("model.activation"), "topk": self.cfg("model.topk"),
            "data": self.cfg("data.name"), "steps": self.cfg("total_steps"),
            "batch_size": self.cfg("batch_size"), "last_logged_step": self.last_step}

  def summary(self) -> dict[str, float | None]:
    """Final value of each SUMMARY_METRICS entry the run logged (None where not logged / NaN)."""
    return {k: _none_if_nan(self.final(k)) for k in SUMMARY_METRICS}

  def __repr__(self) -> str:  # the default would print every array
    return (f"Run(name={self.name!r}, workdir={self.workdir!r}, metrics={len(self.metrics)}, "
            f"last_step={self.last_step}, layers={len(self.layers())})")


def _none_if_nan(x: float) -> float | None:
  return None if x is None or not math.isfinite(x) else float(x)


def _short_list(xs: Sequence[int], n: int = 8) -> str:
  items = [str(x) for x in xs]
  return ", ".join(items if len(items) <= n else items[:3] + ["..."] + items[-3:])


def _read_metrics(text: str | bytes) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """metrics.jsonl -> columnar {name: (steps, values)}. Last line wins for a (step, name); lines
  that don't parse (or, given bytes, are not UTF-8) are skipped, since a running trainer may be
  mid-write on the last one and a torn write can leave any bytes."""
  table: dict[str, dict[int, float]] = {}
  for line in text.splitlines():
    line = line.strip()
    if not line:
      continue
    try:
      # UnicodeDecodeError is a ValueError too; not json.loads(bytes), which guesses UTF-16/32.
      row = json.loads(line.decode("utf-8") if isinstance(line, bytes) else line)
      step = int(row["step"])
    except (ValueError, KeyError, TypeError):
      continue
    for key, value in row.items():
      if key == "step" or isinstance(value, (str, bool, list, dict)):
        continue
      table.setdefault(key, {})[step] = math.nan if value is None else float(value)
  out = {}
  for key, by_step in table.items():
    steps = np.array(sorted(by_step), np.int64)
    out[key] = (steps, np.array([by_step[s] for s in steps], np.float64))
  return out


def load_run(workdir: str | os.PathLike, name: str | None = None) -> Run:
  """Reads a workdir (local or gs://). Raises UserError when it has no usable metrics.jsonl."""
  wd = _path(workdir)
  if not exists(wd):
    raise UserError(f"workdir {os.fspath(workdir)} does not exist; pass the --workdir of a "
                    "`lazy-neuron train` run")
  mfile = wd / "metrics.jsonl"
  if not mfile.exists():
    raise UserError(f"{os.fspath(mfile)} not found; pass the --workdir of a `lazy-neuron train` "
                    "run that has logged at least one step")
  metrics = _read_metrics(mfile.read_bytes())
  if not metrics:
    raise UserError(f"{os.fspath(mfile)} has no metrics yet; wait for the first logged step or "
                    "pass another workdir")
  config: dict = {}
  cfile = wd / "config.json"
  if cfile.exists():
    try:
      config = json.loads(cfile.read_text())
    except ValueError as e:
      raise UserError(f"{os.fspath(cfile)} is not valid JSON ({e})") from None
  wd_str = os.fspath(workdir).rstrip("/")
  return Run(workdir=wd_str, name=name or wd_str.rsplit("/", 1)[-1] or wd_str, config=config,
             metrics=metrics)


def load_runs(workdirs: Iterable[str | os.PathLike]) -> list[Run]:
  """load_run for each, with names made unique (two `.../t5` dirs get their parent prepended)."""
  runs = [load_run(w) for w in workdirs]
  for run, name in zip(runs, unique_names([r.workdir for r in runs])):
    run.name = name
  return runs


def unique_names(workdirs: Sequence[str]) -> list[str]:
  """For each workdir the shortest path suffix no other workdir shares (a/x/t5, b/x/t5, vit)."""
  parts = [[p for p in w.rstrip("/").split("/") if p] or [w] for w in workdirs]
  names = []
  for i, p in enumerate(parts):
    others = [q for j, q in enumerate(parts) if j != i]
    for depth in range(1, len(p) + 1):
      if all(q[-depth:] != p[-depth:] for q in others):
        names.append("/".join(p[-depth:]))
        break
    else:  # the same workdir given twice
      names.append(f"{workdirs[i].rstrip('/')}#{i}")
  return names


def find_runs(root: str | os.PathLike, max_depth: int = 3) -> list[str]:
  """Workdirs (folders holding metrics.jsonl) at or below `root`, sorted; for comparing sweeps."""
  found: list[str] = []

  def visit(p, depth: int) -> None:
    if (p / "metrics.jsonl").exists():
      found.append(os.fspath(p))
      return
    if depth < max_depth:
      for child in p.iterdir():
        if child.is_dir() and child.name not in ("checkpoints", "sparsity"):
          visit(child, depth + 1)

  root_p = _path(root)
  if not exists(root_p):
    raise UserError(f"{os.fspath(root)} does not exist; pass a folder that holds workdirs")
  visit(root_p, 0)
  return sorted(found)
