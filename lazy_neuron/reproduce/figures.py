"""The figures of `lazy-neuron reproduce`, in the paper's style, drawn from the runs of a DIR.

Each claim gets the figures that show the evidence its rule reads (`FIGURES`):

  C1   % nonzero vs step per layer (log y, one panel per run)
  C3   the same, and the final % nonzero per layer (bars)
  C4   train vs eval: mean % nonzero vs step on both, and the final value per layer on both
  C5   final % nonzero vs width (one line per depth) and vs depth (one line per width)
  C6   mean % nonzero vs step of each architecture (log y)
  C7   the random-data ablations vs the baseline run (`runs/t5`, when DIR has it), train and eval
       (its nonzero_vs_step figure)
  C8   dead / lazy / live neurons per layer (stacked bars), % nonzero among all vs among live
       neurons per layer, and the firing-frequency histogram
  C9   skippable share of the MLP's and of the model's FLOPs vs step, and per layer at the end
  C10  Top-k vs dense: loss and mean % nonzero vs step
  C2   the ViT's % nonzero vs step per layer
  C11  eval accuracy vs step (the memorisation dip under noisy labels) and train accuracy on the
       noisy labels (how far each run fits them)
  C12  accuracy, ECE and % nonzero vs corruption severity (mean over corruptions; 0 = clean)
  C13  reliability diagram on clean and corrupted data, and ECE vs severity
  C14  the pre-activation statistics (mean, fraction positive, mean of the positive part) per
       layer over the first steps
  any other id (a claim registered later): the mean % nonzero vs step of its runs.

Every claim also gets `<id>_nonzero_vs_step.png` (mean over layers, every run of the claim, log y),
the figure listed first in summary.json. Figures are `matplotlib.figure.Figure` objects on the Agg
canvas (no pyplot state); `write_claim_figures` saves them, `claim_figures` returns them (for a
notebook). Only numpy, matplotlib and `lazy_neuron.results`/`report` are imported (no jax).
"""
from __future__ import annotations

import math
import os
import sys
from typing import Callable, Mapping, Optional, Sequence

import numpy as np

from lazy_neuron import report
from lazy_neuron.results import LAZY_FIRING_RATE, Run
from lazy_neuron.sparsity.summary import short_layer

INIT_PCT = report.INIT_NONZERO_PCT
SPLITS = report.SPLITS
# The run the ablations of C7 are compared with: the plain T5 of C1/C3/C4/C8/C9/C14 (when DIR has it).
BASELINE = "t5"
# Log axes of % nonzero end here: below it a value is drawn at the floor (0% has no log).
LOG_FLOOR_PCT = 0.01

MakeFigure = Callable[[Sequence[Run], Optional[Run]], object]


# ================================================================================================
# Axes helpers
# ================================================================================================
def _pct_log_axis(ax, values: Sequence[float]) -> None:
  """A log y axis of % nonzero, from a little below the smallest value drawn to 100%, with the 50%
  of a ReLU at initialisation; tick labels in % (1%, 3%, 10%, ...)."""
  from matplotlib import ticker
  finite = [v for v in values if np.isfinite(v) and v > 0]
  low = max(LOG_FLOOR_PCT, min(finite, default=10.0) / 1.6)
  ax.set_yscale("log")
  ax.set_ylim(low, 100.0)
  ax.axhline(INIT_PCT, color="gray", ls=":", lw=1, label="50% (ReLU at init)")
  ticks = (0.01, 0.03, 0.1, 0.3, 1, 3, 10, 30, 50, 100) if low < 3 else (
      5, 10, 20, 30, 40, 50, 70, 100)  # a range under 1.5 decades gets more labels
  ax.yaxis.set_major_locator(ticker.FixedLocator([t for t in ticks if t >= low]))
  ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}%"))
  ax.yaxis.set_minor_formatter(ticker.NullFormatter())
  ax.grid(alpha=0.3, which="both")


def _plot_pct(ax, steps, frac, drawn: list, **kw) -> None:
  """Plots 100 x frac vs step (values at or below 0 clipped to the log floor), records the values."""
  pct = np.maximum(100.0 * np.asarray(frac, np.float64), LOG_FLOOR_PCT)
  if len(steps):
    ax.plot(steps, pct, marker="." if len(steps) < 30 else None, **kw)
    drawn.extend(pct.tolist())


def _no_data(ax, what: str) -> None:
  ax.text(0.5, 0.5, f"no {what} in these runs", ha="center", va="center", transform=ax.transAxes)


def _panels(n: int, width: float = 5.2, height: float = 4.0):
  ncols = max(1, min(n, 3))
  return report._figure(max(7.0, width * ncols), height, ncols=ncols)


# ================================================================================================
# Figures
# ================================================================================================
def fig_mean_vs_step(runs: Sequence[Run], baseline: Optional[Run] = None, splits=SPLITS):
  """Mean % nonzero over layers vs step (log y), one line per run, train and eval panels; the
  baseline run (if given and not among `runs`) in black, dashed."""
  fig, axes = report._figure(5.5 * len(splits), 4, ncols=len(splits))
  others = [r for r in runs if baseline is None or r.workdir != baseline.workdir]
  for ax, split in zip(axes, splits):
    drawn: list = []
    name = f"sparsity/{split}/mean/nonzero_frac"
    for run, color in zip(others, report._run_colors(others)):
      _plot_pct(ax, *run.series(name, dropna=True), drawn, color=color, lw=1.5, label=run.name)
    if baseline is not None:
      _plot_pct(ax, *baseline.series(name, dropna=True), drawn, color="black", ls="--", lw=1.5,
                label=f"{baseline.name} (baseline)")
    _pct_log_axis(ax, drawn)
    ax.set(title=f"{split} data", xlabel="step", ylabel="mean % nonzero over layers")
    if not drawn:
      _no_data(ax, f"{split} sparsity")
    report._legend(ax, len(runs) + 1)
  fig.suptitle("activation sparsity vs step" + (" (ablations vs baseline)" if baseline else ""))
  return fig


def fig_layers_vs_step(runs: Sequence[Run], baseline: Optional[Run] = None, split: str = "eval"):
  """% nonzero of every layer vs step (log y), one panel per run (at most three), layer mean
  dashed: the paper's per-layer training curves."""
  del baseline
  runs = list(runs)[:3]
  fig, axes = _panels(len(runs))
  for ax, run in zip(axes, runs):
    drawn: list = []
    layers = run.layers(split)
    colors = report.layer_colors(layers)
    for layer in layers:
      _plot_pct(ax, *run.series(f"sparsity/{split}/{layer}/nonzero_frac", dropna=True), drawn,
                color=colors[layer], lw=1.2, label=short_layer(layer))
    _plot_pct(ax, *run.series(f"sparsity/{split}/mean/nonzero_frac", dropna=True), drawn,
              color="black", ls="--", lw=2, label="mean")
    _pct_log_axis(ax, drawn)
    ax.set(title=run.name, xlabel="step", ylabel=f"% nonzero ({split} data)")
    if not layers:
      _no_data(ax, f"per-layer {split} sparsity")
    report._legend(ax, len(layers))
  fig.suptitle(f"% nonzero per MLP layer vs step, {split} data")
  return fig


def _first_run(per_run: Callable[[Run], object]) -> MakeFigure:
  """A claim figure that is `lazy-neuron report`'s per-run figure of the claim's first run."""
  def make(runs: Sequence[Run], baseline: Optional[Run] = None):
    del baseline
    return per_run(runs[0])
  make.__doc__ = per_run.__doc__
  return make


# The final % nonzero per layer (bars) and the per-neuron firing-frequency histogram.
fig_final_layers = _first_run(report.fig_final_layers)
fig_firing_hist = _first_run(report.fig_firing_hist)


def fig_train_vs_eval(runs: Sequence[Run], baseline: Optional[Run] = None):
  """Left: mean % nonzero vs step on train (line) and eval (markers) data, per run. Right: the final
  % nonzero of every layer on train and on eval data (the first run)."""
  del baseline
  fig, (left, right) = report._figure(11, 4, ncols=2)
  drawn: list = []
  for run, color in zip(runs, report._run_colors(runs)):
    for split, style in (("train", dict(ls="-", lw=1.5)), ("eval", dict(ls="none", marker="o"))):
      steps, frac = run.series(f"sparsity/{split}/mean/nonzero_frac", dropna=True)
      if len(steps):
        pct = np.maximum(100 * frac, LOG_FLOOR_PCT)
        left.plot(steps, pct, color=color, label=f"{run.name} {split}", **style)
        drawn += pct.tolist()
  _pct_log_axis(left, drawn)
  left.set(title="mean over layers", xlabel="step", ylabel="% nonzero")
  report._legend(left, 2 * len(runs))
  run = runs[0]
  layers = run.layers("eval") or run.layers("train")
  x = np.arange(len(layers))
  for offset, split, color in ((-0.2, "train", "tab:blue"), (0.2, "eval", "tab:orange")):
    pct = [100 * run.final(f"sparsity/{split}/{l}/nonzero_frac") for l in layers]
    right.bar(x + offset, pct, width=0.4, color=color, label=f"{split} (step "
              f"{run.final_step(f'sparsity/{split}/mean/nonzero_frac')})")
  right.set_xticks(x, [short_layer(l) for l in layers], rotation=90 if len(layers) > 16 else 0,
                   fontsize=8)
  right.set(title=f"{run.name}: final, per layer", ylabel="% nonzero")
  right.grid(axis="y", alpha=0.3)
  if not layers:
    _no_data(right, "per-layer sparsity")
  report._legend(right, 2)
  fig.suptitle("sparsity on training data vs held-out data")
  return fig


def _depth_width(run: Run) -> tuple[Optional[int], Optional[int]]:
  from lazy_neuron.reproduce import claims  # numpy-only module; the one definition of depth
  return claims._depth_width(run)


def fig_size(runs: Sequence[Run], baseline: Optional[Run] = None):
  """Final eval mean % nonzero vs width (d_ff; one line per depth) and vs depth (encoder + decoder
  layers; one line per width), each point labelled with its value."""
  del baseline
  grid = {}
  for run in runs:
    depth, width = _depth_width(run)
    value = run.final("sparsity/eval/mean/nonzero_frac")
    if depth is not None and width is not None and math.isfinite(value):
      grid[(depth, width)] = 100 * value
  fig, axes = report._figure(11, 4, ncols=2)
  depths, widths = sorted({d for d, _ in grid}), sorted({w for _, w in grid})
  for ax, (xs, lines, key, xlabel, what) in zip(axes, (
      (widths, depths, lambda line, x: (line, x), "width (d_ff)", "depth"),
      (depths, widths, lambda line, x: (x, line), "depth (encoder + decoder layers)", "width"))):
    cmap = report._run_colors(lines)
    for line, color in zip(lines, cmap):
      pts = [(x, grid[key(line, x)]) for x in xs if key(line, x) in grid]
      if pts:
        px, py = zip(*pts)
        ax.plot(px, py, marker="o", color=color, label=f"{what} {line}")
        for a, b in pts:
          ax.annotate(f"{b:.1f}", (a, b), textcoords="offset points", xytext=(0, 5), fontsize=7,
                      ha="center")
    if xs:
      ax.set_xticks(xs, [str(x) for x in xs])
    ax.set(xlabel=xlabel, ylabel="final mean % nonzero (eval)")
    ax.grid(alpha=0.3)
    if not grid:
      _no_data(ax, "runs with depth, width and eval sparsity")
    report._legend(ax, len(lines))
  axes[0].set_title("wider models (depth fixed)")
  axes[1].set_title("deeper models (width fixed)")
  fig.suptitle("sparsity vs model size")
  return fig


def neuron_kinds(run: Run, split: str = "eval") -> dict[str, dict[str, float]]:
  """{layer: {dead, lazy, active, nonzero, live_nonzero}} at the final step of `split`: the shares
  of neurons that never fired, fired on fewer than LAZY_FIRING_RATE of the tokens, or more often
  (they sum to 1), and the % nonzero among all and among live neurons."""
  out = {}
  for layer in run.layers(split):
    get = lambda m: run.final(f"sparsity/{split}/{layer}/{m}")
    dead, lazy = get("dead_frac"), get("lazy_frac")
    out[layer] = {"dead": dead, "lazy": lazy, "active": 1.0 - dead - lazy,
                  "nonzero": get("nonzero_frac"), "live_nonzero": get("live_nonzero_frac")}
  return out


def fig_dead_lazy_live(runs: Sequence[Run], baseline: Optional[Run] = None):
  """Per layer of the first run, at its final eval: left, the neurons that are dead / lazy / active
  (stacked to 100%); right, % nonzero over all neurons and over live neurons only — the gap is what
  dead neurons explain."""
  del baseline
  run = runs[0]
  kinds = neuron_kinds(run)
  layers = list(kinds)
  x = np.arange(len(layers))
  fig, (left, right) = report._figure(max(9.0, 0.7 * len(layers) + 5), 4, ncols=2)
  bottom = np.zeros(len(layers))
  for kind, color, label in (("dead", "black", "dead (never fire)"),
                             ("lazy", "gold", f"lazy (fire on < {LAZY_FIRING_RATE:.0%} of tokens)"),
                             ("active", "tab:green", "active (the rest)")):
    pct = np.array([100 * kinds[l][kind] for l in layers])
    left.bar(x, pct, bottom=bottom, color=color, label=label, edgecolor="white", lw=0.5)
    bottom += np.nan_to_num(pct)
  left.set(ylabel="% of neurons", ylim=(0, 100), title="neurons by firing frequency")
  for offset, key, color, label in ((-0.2, "nonzero", "tab:blue", "over all neurons"),
                                    (0.2, "live_nonzero", "tab:red", "over live neurons")):
    right.bar(x + offset, [100 * kinds[l][key] for l in layers], width=0.4, color=color,
              label=label)
  right.axhline(INIT_PCT, color="gray", ls=":", lw=1, label="50% (ReLU at init)")
  right.set(ylabel="% nonzero", title="% nonzero: all vs live neurons")
  for ax in (left, right):
    ax.set_xticks(x, [short_layer(l) for l in layers], rotation=90 if len(layers) > 16 else 0,
                  fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    if not layers:
      _no_data(ax, "per-layer eval sparsity")
    report._legend(ax, 3)
  step = run.final_step("sparsity/eval/mean/nonzero_frac")
  fig.suptitle(f"{run.name}: dead, lazy and live neurons, eval data, step {step}")
  return fig


def fig_flops(runs: Sequence[Run], baseline: Optional[Run] = None):
  """Left: the share of the MLP's FLOPs and of the whole forward pass's FLOPs that the measured
  zeros make skippable, vs step (eval, per run). Right: per layer at the final eval (first run)."""
  del baseline
  fig, (left, right) = report._figure(11, 4, ncols=2)
  for run, color in zip(runs, report._run_colors(runs)):
    for what, ls in (("mlp", "-"), ("model", "--")):
      steps, frac = run.series(f"sparsity/eval/{what}_flops_skippable_frac", dropna=True)
      if len(steps):
        left.plot(steps, 100 * frac, color=color, ls=ls, marker=".",
                  label=f"{run.name}: {'MLP' if what == 'mlp' else 'whole model'}")
  left.set(xlabel="step", ylabel="% of FLOPs skippable", title="skippable FLOPs vs step (eval)")
  left.set_ylim(bottom=0)
  left.grid(alpha=0.3)
  if not left.lines:
    _no_data(left, "*_flops_skippable_frac metrics")
  report._legend(left, 2 * len(runs))
  run = runs[0]
  layers = [l for l in run.layers("eval")
            if run.series(f"sparsity/eval/{l}/mlp_flops_skippable_frac")[0].size]
  pct = [100 * run.final(f"sparsity/eval/{l}/mlp_flops_skippable_frac") for l in layers]
  colors = report.layer_colors(layers)
  bars = right.bar(range(len(layers)), pct, color=[colors[l] for l in layers], edgecolor="black",
                   lw=0.5)
  if len(layers) <= 32:
    right.bar_label(bars, fmt="%.1f", fontsize=7)
  right.set_xticks(range(len(layers)), [short_layer(l) for l in layers],
                   rotation=90 if len(layers) > 16 else 0, fontsize=8)
  right.set(ylabel="% of the layer's MLP FLOPs", title=f"{run.name}: skippable, per layer (final)")
  right.grid(axis="y", alpha=0.3)
  if not layers:
    _no_data(right, "per-layer skippable FLOPs")
  fig.suptitle("FLOPs that the zeros of the activation map make skippable (rows of wo)")
  return fig


def fig_loss(runs: Sequence[Run], baseline: Optional[Run] = None):
  """Loss vs step of every run, train and eval (`report.fig_compare_loss`)."""
  del baseline
  return report.fig_compare_loss(list(runs))


def fig_accuracy(runs: Sequence[Run], baseline: Optional[Run] = None):
  """Eval accuracy (solid) and train accuracy on the training labels, noisy ones included (dotted),
  vs step, one color per run."""
  del baseline
  fig, (ax,) = _panels(1, width=7.5)
  for run, color in zip(runs, report._run_colors(runs)):
    for name, style in (("eval/accuracy", "-"), ("train/accuracy", ":")):
      steps, values = run.series(name, dropna=True)
      if len(steps):
        ax.plot(steps, 100 * np.asarray(values), style, color=color,
                label=f"{run.name} ({name.split('/')[0]})")
  ax.set(xlabel="step", ylabel="accuracy %", title="accuracy vs step (train: on its own labels)")
  ax.grid(alpha=0.3)
  report._legend(ax, 2 * len(runs))
  return fig


SEVERITY_PANELS = (("accuracy", "accuracy %", 100.0), ("ece", "ECE (15 bins)", 1.0),
                   ("nonzero_frac", "% nonzero (mean over layers)", 100.0))


def fig_severity(runs: Sequence[Run], baseline: Optional[Run] = None, panels=SEVERITY_PANELS):
  """Mean over corruptions vs severity (0 = the clean eval data), from each run's
  eval_corrupted_<step>.json (`lazy-neuron eval --corruptions`)."""
  from lazy_neuron.reproduce.vision_claims import corrupted_metrics
  del baseline
  fig, axes = _panels(len(panels))
  for run, color in zip(runs, report._run_colors(runs)):
    m = corrupted_metrics(run)
    for ax, (key, label, scale) in zip(axes, panels):
      clean = m.get(f"eval/{key}", m.get(f"sparsity/eval/mean/{key}"))
      points = [(0, clean)] + [(sev, m.get(f"eval_corrupted/mean/{sev}/{key}"))
                               for sev in range(1, 6)]
      points = [(x, y) for x, y in points if y is not None]
      if points:
        ax.plot(*zip(*[(x, scale * y) for x, y in points]), marker="o", color=color,
                label=run.name)
  for ax, (_, label, _) in zip(axes, panels):
    ax.set(xlabel="severity (0 = clean)", ylabel=label)
    ax.grid(alpha=0.3)
    report._legend(ax, len(runs))
  fig.suptitle("under corruption: mean over the corruptions evaluated")
  return fig


def fig_reliability(runs: Sequence[Run], baseline: Optional[Run] = None):
  del baseline
  return report.fig_reliability(list(runs))


PREACT = (("preact_mean", "mean pre-activation", 1.0),
          ("preact_pos_frac", "% of pre-activations > 0", 100.0),
          ("preact_pos_mean", "mean of the positive pre-activations", 1.0))


def fig_preact(runs: Sequence[Run], baseline: Optional[Run] = None, split: str = "eval"):
  """The pre-activation statistics of every layer of the first run vs step: eval (solid, markers)
  and the train windows (thin, dotted); x limited to the first steps (up to the second eval after
  step 0, or the whole run when it has fewer)."""
  del baseline
  run = runs[0]
  fig, axes = report._figure(15, 4, ncols=3)
  eval_steps = run.series(f"sparsity/{split}/mean/preact_mean", dropna=True)[0]
  horizon = int(eval_steps[2]) if len(eval_steps) > 2 else None
  for ax, (metric, label, scale) in zip(axes, PREACT):
    layers = run.layers(split)
    colors = report.layer_colors(layers)
    for layer in layers:
      for sp, style in ((split, dict(lw=1.5, marker="o", ms=3)), ("train", dict(lw=0.8, ls=":"))):
        steps, v = run.series(f"sparsity/{sp}/{layer}/{metric}", dropna=True)
        if len(steps):
          ax.plot(steps, scale * v, color=colors[layer],
                  label=short_layer(layer) if sp == split else None, **style)
    if metric == "preact_mean":
      ax.axhline(0, color="gray", ls=":", lw=1)
    if metric == "preact_pos_frac":
      ax.axhline(INIT_PCT, color="gray", ls=":", lw=1)
    if horizon:
      ax.set_xlim(0, horizon)
    ax.set(xlabel="step", ylabel=label, title=label)
    ax.grid(alpha=0.3)
    if not ax.lines:
      _no_data(ax, f"{metric} metrics")
    report._legend(ax, len(layers))
  fig.suptitle(f"{run.name}: pre-activations of each MLP layer over the first steps "
               f"({split}: solid; train windows: dotted)")
  return fig


# claim id -> [(figure name, maker)]; every claim also gets "nonzero_vs_step" (first).
FIGURES: dict[str, list[tuple[str, MakeFigure]]] = {
    "C1": [("layers_vs_step", fig_layers_vs_step)],
    "C3": [("layers_vs_step", fig_layers_vs_step), ("final_layers", fig_final_layers)],
    "C4": [("train_vs_eval", fig_train_vs_eval)],
    "C5": [("size", fig_size)],
    "C6": [("layers_vs_step", fig_layers_vs_step)],
    "C8": [("dead_lazy_live", fig_dead_lazy_live), ("firing_hist", fig_firing_hist)],
    "C9": [("flops", fig_flops)],
    "C10": [("loss", fig_loss)],
    "C14": [("preact", fig_preact)],
    "C2": [("layers_vs_step", fig_layers_vs_step)],
    "C11": [("accuracy_vs_step", fig_accuracy)],
    "C12": [("severity", fig_severity)],
    "C13": [("reliability", fig_reliability),
            ("ece_vs_severity", lambda runs, baseline: fig_severity(runs, baseline,
                                                                    SEVERITY_PANELS[1:2]))],
}
# Claims whose first figure compares with the baseline run (their runs are ablations of it): the
# "ablations vs baseline" figure.
WITH_BASELINE = ("C7",)


def claim_figures(cid: str, runs: Mapping[str, Run], baseline: Optional[Run] = None
                  ) -> list[tuple[str, Callable[[], object]]]:
  """[(file name relative to DIR, a function drawing the Figure)] for one claim's runs, in order."""
  if not runs:
    return []
  listed = list(runs.values())
  base = baseline if cid in WITH_BASELINE else None
  todo = [(f"figures/{cid}_nonzero_vs_step.png", lambda: fig_mean_vs_step(listed, base))]
  for kind, make in FIGURES.get(cid, []):
    todo.append((f"figures/{cid}_{kind}.png", lambda make=make: make(listed, baseline)))
  return todo


def write_claim_figures(out: str, cid: str, runs: Mapping[str, Run],
                        baseline: Optional[Run] = None) -> list[str]:
  """Draws and saves the figures of one claim under DIR/figures/; returns their relative paths.
  A figure that fails to draw is reported on stderr and skipped, not fatal: no verdict depends on
  a figure."""
  made = []
  for rel, make in claim_figures(cid, runs, baseline):
    try:
      report._save_fig(make(), os.path.join(out, rel))
      made.append(rel)
    except Exception as e:  # noqa: BLE001 - see the docstring
      print(f"figure {rel} not drawn ({type(e).__name__}: {e})", file=sys.stderr)
  return made


def load_dir(out: str) -> tuple[dict, dict[str, Run]]:
  """(summary.json, {run name: Run}) of a reproduce DIR, for drawing its figures again (the
  notebook); runs without metrics are left out."""
  import json

  from lazy_neuron import results
  from lazy_neuron.errors import UserError
  with open(os.path.join(out, "summary.json")) as f:
    summary = json.load(f)
  runs = {}
  for claim in summary["claims"]:
    for rel in claim["runs"]:
      name = rel.split("/", 1)[1]
      if name in runs:
        continue
      try:
        runs[name] = results.load_run(os.path.join(out, rel), name=name)
      except UserError:  # no metrics: drawn as missing
        pass
  if BASELINE not in runs:
    runs.update(load_baseline(out))
  return summary, runs


def load_baseline(out: str) -> dict[str, Run]:
  """{BASELINE: its Run} when DIR/runs/<BASELINE> has metrics, else {}."""
  from lazy_neuron import results
  path = os.path.join(out, "runs", BASELINE)
  if not os.path.exists(os.path.join(path, "metrics.jsonl")):
    return {}
  return {BASELINE: results.load_run(path, name=BASELINE)}


def runs_of(claim: Mapping, runs: Mapping[str, Run]) -> dict[str, Run]:
  """The runs of one summary.json claim entry that `runs` holds, by name."""
  names = [rel.split("/", 1)[1] for rel in claim["runs"]]
  return {n: runs[n] for n in names if n in runs}
