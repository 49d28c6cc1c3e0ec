"""`lazy-neuron report DIR [DIR ...] --out=OUT`: paper-style figures, index.html and summary.json.

Per run: per-layer % nonzero vs step (train and eval, 50%-at-init line), per-layer % nonzero at the
final eval step, and the histogram of per-neuron firing frequencies (dead and lazy neurons marked).
For runs that logged the magnitude-threshold counts (`sparsity/<split>/<layer>/frac_abs_le_<t>`:
non-ReLU checkpoints imported with `lazy-neuron import`), the % of activations with |a| <= t per
layer at the final step, vs t (the curve CATS / TEAL pick a threshold from).
Across runs: mean % nonzero vs step and loss curves, and (for runs evaluated with `lazy-neuron eval
--corruptions`) a reliability diagram on clean and on corrupted data. OUT may be local or gs://. Every workdir is
read and checked before anything is written, so bad input leaves OUT untouched.
"""
from __future__ import annotations

import html
import io
import json
import math
import os
import re
import sys
from typing import Any, Sequence

import numpy as np

from lazy_neuron import checks, errors, fileio, outpaths, results
from lazy_neuron.errors import UserError
from lazy_neuron.results import LAZY_FIRING_RATE, Run
from lazy_neuron.sparsity.summary import layer_sort_key, short_layer

# A ReLU of zero-mean, symmetric pre-activations (a freshly initialised layer) fires half the time.
INIT_NONZERO_PCT = 50.0
SPLITS = ("train", "eval")
# Per-run figure files, relative to OUT/<run slug>/: drawn for every run, and ...
RUN_FIGURES = {"layers_vs_step": "layers_vs_step.png", "final_layers": "final_layers.png",
               "firing_hist": "firing_hist.png"}
# ... for runs with magnitude-threshold metrics only.
MAGNITUDE_FIGURE = "magnitude_curve.png"
_MAGNITUDE = re.compile(r"^sparsity/(train|eval)/(.+)/frac_abs_le_([^/]+)$")
COMPARE_FIGURES = {"compare_sparsity": "compare_sparsity.png", "compare_loss": "compare_loss.png"}
# Drawn when some run has a corrupted evaluation (`lazy-neuron eval --corruptions`).
RELIABILITY_FIGURE = "reliability.png"


# ---- layer groups and colours ------------------------------------------------------------------
def layer_group(layer: str) -> str:
  """What gets one colour family / one histogram panel: encoder, decoder, mixer token/channel."""
  scope, _, name = layer.rpartition("/")
  for prefix in ("token", "channel"):
    if name.startswith(prefix):
      return f"{scope} {prefix}"
  return scope or "mlp"


_GROUP_CMAPS = {"encoder": "Blues", "decoder": "Oranges", "mixer token": "Greens",
                "mixer channel": "Purples"}


def layer_colors(layers: Sequence[str]) -> dict[str, Any]:
  """Encoder blues, decoder oranges, others viridis; darker = deeper."""
  import matplotlib
  colors: dict[str, Any] = {}
  groups: dict[str, list[str]] = {}
  for layer in layers:
    groups.setdefault(layer_group(layer), []).append(layer)
  for group, members in groups.items():
    cmap = matplotlib.colormaps[_GROUP_CMAPS.get(group, "viridis")]
    lo, hi = (0.0, 0.85) if group not in _GROUP_CMAPS else (0.45, 0.95)
    for i, layer in enumerate(members):
      colors[layer] = cmap(lo + (hi - lo) * (i / max(len(members) - 1, 1)))
  return colors


def _figure(width: float, height: float, ncols: int = 1):
  # Figure objects (not pyplot): no global state, Agg canvas, safe in a server or a test.
  from matplotlib.figure import Figure
  fig = Figure(figsize=(width, height), layout="constrained")
  axes = fig.subplots(1, ncols, squeeze=False)[0]
  return fig, list(axes)


def _legend(ax, n: int) -> None:
  if ax.get_legend_handles_labels()[0]:
    ax.legend(fontsize=7, ncol=2 if n > 8 else 1, loc="best", framealpha=0.8)


def _topk_pct(run: Run) -> float | None:
  """k / d_ff in %, the nonzero level a Top-k run is pinned at (d_ff from the npz or config)."""
  k = run.cfg("model.topk")
  if not k:
    return None
  d_ff = run.cfg("model.mlp_dim")
  if not d_ff and run.npz_steps():
    d_ff = len(next(iter(run.firing().values())))
  return 100.0 * k / d_ff if d_ff else None


# ---- per-run figures ---------------------------------------------------------------------------
def fig_layers_vs_step(run: Run):
  """% nonzero of each layer vs step, train and eval panels, with the layer mean and 50% at init."""
  layers = run.layers()
  colors = layer_colors(layers)
  topk = _topk_pct(run)
  fig, axes = _figure(11, 4, ncols=2)
  for ax, split in zip(axes, SPLITS):
    for layer in run.layers(split):
      steps, frac = run.series(f"sparsity/{split}/{layer}/nonzero_frac")
      ax.plot(steps, 100 * frac, color=colors[layer], lw=1.2, marker="." if len(steps) < 30 else None,
              label=short_layer(layer))
    steps, mean = run.series(f"sparsity/{split}/mean/nonzero_frac")
    if len(steps):
      ax.plot(steps, 100 * mean, color="black", lw=2, ls="--", label="mean")
    ax.axhline(INIT_NONZERO_PCT, color="gray", ls=":", lw=1, label="50% (ReLU at init)")
    if topk is not None:
      ax.axhline(topk, color="red", ls=":", lw=1, label=f"k/d_ff = {topk:.1f}%")
    ax.set(title=f"{split} data", xlabel="step", ylabel="% nonzero entries of the activation map")
    ax.set_ylim(0, max(60.0, ax.get_ylim()[1]))
    ax.grid(alpha=0.3)
    if not len(steps) and not run.layers(split):
      ax.text(0.5, 0.5, f"no sparsity/{split}/* metrics", ha="center", transform=ax.transAxes)
    _legend(ax, len(layers))
  fig.suptitle(f"{run.name}: activation sparsity per layer")
  return fig


def final_layer_fracs(run: Run) -> tuple[str | None, dict[str, dict[str, float]]]:
  """(split, {layer: {nonzero_frac, dead_frac, lazy_frac}}) at the last step of the eval split,
  or of train when the run never evaluated."""
  for split in ("eval", "train"):
    layers = run.layers(split)
    if layers:
      return split, {layer: {kind: run.final(f"sparsity/{split}/{layer}/{kind}")
                             for kind in ("nonzero_frac", "dead_frac", "lazy_frac")}
                     for layer in layers}
  return None, {}


def fig_final_layers(run: Run):
  """Bar per layer: % nonzero at the final eval step, encoder/decoder coloured, with the mean."""
  split, fracs = final_layer_fracs(run)
  fig, (ax,) = _figure(max(5.0, 0.45 * len(fracs) + 2), 4)
  if not fracs:
    ax.text(0.5, 0.5, "no sparsity metrics in this run", ha="center", transform=ax.transAxes)
    return fig
  layers = list(fracs)
  colors = layer_colors(layers)
  pct = [100 * fracs[layer]["nonzero_frac"] for layer in layers]
  bars = ax.bar(range(len(layers)), pct, color=[colors[l] for l in layers], edgecolor="black", lw=0.5)
  if len(layers) <= 32:
    ax.bar_label(bars, fmt="%.1f", fontsize=7)
  mean = 100 * run.final(f"sparsity/{split}/mean/nonzero_frac")
  if not math.isfinite(mean):
    mean = float(np.nanmean(pct))
  ax.axhline(mean, color="black", ls="--", lw=1.5, label=f"mean {mean:.1f}%")
  ax.axhline(INIT_NONZERO_PCT, color="gray", ls=":", lw=1, label="50% (ReLU at init)")
  ax.set_xticks(range(len(layers)), [short_layer(l) for l in layers],
                rotation=90 if len(layers) > 16 else 0, fontsize=8)
  ax.set_ylim(0, max(60.0, max(pct, default=0) * 1.1))
  step = run.final_step(f"sparsity/{split}/mean/nonzero_frac")
  ax.set(ylabel="% nonzero", title=f"{run.name}: per-layer % nonzero, {split} data, step {step}")
  ax.grid(axis="y", alpha=0.3)
  ax.legend(fontsize=8)
  return fig


def firing_stats(freqs: np.ndarray) -> dict[str, float]:
  """Dead (never fire) and lazy (fire on < LAZY_FIRING_RATE of tokens) fractions of neurons."""
  freqs = np.asarray(freqs, np.float64)
  return {"d_ff": int(freqs.size), "dead_frac": float(np.mean(freqs == 0)),
          "lazy_frac": float(np.mean((freqs > 0) & (freqs < LAZY_FIRING_RATE))),
          "median_firing": float(np.median(freqs)) if freqs.size else math.nan}


def fig_firing_hist(run: Run, step: int | None = None):
  """Histogram (log x) of per-neuron firing frequency at an npz step, one panel per encoder/decoder
  (one step-line per layer, darker = deeper); lazy region shaded, dead counts in the legend."""
  steps = run.npz_steps()
  if not steps:
    fig, (ax,) = _figure(6, 3.5)
    ax.text(0.5, 0.5, "no sparsity/step_<N>.npz in this run", ha="center", transform=ax.transAxes)
    return fig
  step = steps[-1] if step is None else step
  freqs = run.firing(step)
  groups: dict[str, list[str]] = {}
  for layer in freqs:
    groups.setdefault(layer_group(layer), []).append(layer)
  positive = np.concatenate([f[f > 0] for f in freqs.values()] + [np.ones(1)])
  lo = min(float(positive.min()), 1e-3) / 1.5
  bins = np.logspace(np.log10(lo), 0, 41)
  colors = layer_colors(list(freqs))
  fig, axes = _figure(5.5 * len(groups), 4, ncols=len(groups))
  for ax, (group, layers) in zip(axes, groups.items()):
    ax.axvspan(lo, LAZY_FIRING_RATE, color="gold", alpha=0.2, label=f"lazy (< {LAZY_FIRING_RATE:.0%})")
    for layer in layers:
      f = np.asarray(freqs[layer], np.float64)
      s = firing_stats(f)
      ax.hist(f[f > 0], bins=bins, weights=np.full(int((f > 0).sum()), 100.0 / max(f.size, 1)),
              histtype="step", lw=1.3, color=colors[layer],
              label=f"{short_layer(layer)}: dead {100 * s['dead_frac']:.1f}%, "
                    f"lazy {100 * s['lazy_frac']:.1f}%")
    pooled = firing_stats(np.concatenate([freqs[l] for l in layers]))
    ax.text(0.02, 0.97, f"dead (never fire): {100 * pooled['dead_frac']:.1f}%\n"
                        f"lazy (< 1%): {100 * pooled['lazy_frac']:.1f}%",
            transform=ax.transAxes, va="top", fontsize=8,
            bbox=dict(boxstyle="round", fc="white", alpha=0.8))
    ax.set_xscale("log")
    ax.set(xlim=(lo, 1.0), xlabel="firing frequency (fraction of tokens a neuron is nonzero on)",
           ylabel="% of neurons", title=group)
    ax.grid(alpha=0.3)
    if len(layers) <= 12:
      ax.legend(fontsize=7, loc="upper right")
  fig.suptitle(f"{run.name}: per-neuron firing frequency, eval data, step {step}")
  return fig


def magnitude_curve(run: Run) -> dict[str, Any] | None:
  """{split, step, thresholds, layers: {layer: [fraction with |a| <= t per threshold]}} at the
  final step of the eval split (train when the run never evaluated); None without
  `frac_abs_le_<t>` metrics (ReLU runs: exact zeros are the `nonzero_frac` figures)."""
  for split in ("eval", "train"):
    found: dict[str, dict[float, str]] = {}
    for name in run.names(f"sparsity/{split}/"):
      m = _MAGNITUDE.match(name)
      if m:
        found.setdefault(m.group(2), {})[float(m.group(3))] = name
    if found:
      thresholds = sorted({t for per in found.values() for t in per})
      step = max(run.final_step(n) for per in found.values() for n in per.values())
      values = {l: [run.final(per[t]) if t in per else math.nan for t in thresholds]
                for l, per in found.items()}
      mean = values.pop("mean", None) or list(np.nanmean(list(values.values()), axis=0))
      return {"split": split, "step": step, "thresholds": thresholds, "mean": mean,
              "layers": {l: values[l] for l in sorted(values, key=layer_sort_key)}}
  return None


def fig_magnitude_curve(run: Run):
  """% of activation-map entries with |a| <= t vs the threshold t (log x), one line per layer and
  the layer mean, at the final step; a note when the run has no such metrics."""
  curve = magnitude_curve(run)
  fig, (ax,) = _figure(7, 4)
  if curve is None:
    ax.text(0.5, 0.5, "no sparsity/*/frac_abs_le_<t> metrics (ReLU run: see % nonzero)",
            ha="center", transform=ax.transAxes)
    return fig
  t = curve["thresholds"]
  colors = layer_colors(list(curve["layers"]))
  for layer, fracs in curve["layers"].items():
    ax.plot(t, 100 * np.asarray(fracs), color=colors[layer], marker=".", lw=1.2,
            label=short_layer(layer))
  ax.plot(t, 100 * np.asarray(curve["mean"]), color="black", ls="--", lw=2, label="mean")
  ax.set_xscale("log")
  ax.set(xlabel="magnitude threshold t", ylabel="% of activations with |a| <= t", ylim=(0, 100),
         title=f"{run.name}: activation magnitudes, {curve['split']} data, step {curve['step']}")
  ax.grid(alpha=0.3)
  _legend(ax, len(curve["layers"]))
  return fig


# ---- comparison figures ------------------------------------------------------------------------
def _run_colors(runs: Sequence[Run]) -> list:
  import matplotlib
  cmap = matplotlib.colormaps["tab10" if len(runs) <= 10 else "tab20"]
  return [cmap(i % cmap.N) for i in range(len(runs))]


def _compare(runs: Sequence[Run], metric: str, ylabel: str, scale: float = 1.0, ref: float | None = None):
  fig, axes = _figure(11, 4, ncols=2)
  for ax, split in zip(axes, SPLITS):
    name = metric.format(split=split)
    for run, color in zip(runs, _run_colors(runs)):
      steps, values = run.series(name)
      if len(steps):
        ax.plot(steps, scale * values, color=color, lw=1.5, marker="." if len(steps) < 30 else None,
                label=run.name)
    if ref is not None:
      ax.axhline(ref, color="gray", ls=":", lw=1, label="50% (ReLU at init)")
    ax.set(title=f"{split} data", xlabel="step", ylabel=ylabel)
    if ref is not None:  # % nonzero: from 0, like the paper's figures
      ax.set_ylim(0, max(55.0, ax.get_ylim()[1]))
    ax.grid(alpha=0.3)
    _legend(ax, len(runs))
  return fig


def fig_compare_sparsity(runs: Sequence[Run]):
  """Mean % nonzero over layers vs step, one line per run."""
  fig = _compare(runs, "sparsity/{split}/mean/nonzero_frac", "mean % nonzero over layers", 100.0,
                 INIT_NONZERO_PCT)
  fig.suptitle("activation sparsity across runs")
  return fig


def fig_compare_loss(runs: Sequence[Run]):
  fig = _compare(runs, "{split}/loss", "loss")
  fig.suptitle("loss across runs")
  return fig


# ---- summary, HTML, writing --------------------------------------------------------------------
def reliability_bins(run: Run) -> dict | None:
  """The ECE bins ({"clean": {count, conf, correct}, "<corruption>/<severity>": ...}) of the run's
  newest eval_corrupted_<step>.json (`lazy-neuron eval --corruptions`), or None."""
  from etils import epath
  files = sorted(epath.Path(run.workdir).glob("eval_corrupted_*.json"),
                 key=lambda p: int(re.sub(r"\D", "", p.name) or 0))
  if not files:
    return None
  return json.loads(files[-1].read_text()).get("reliability")


def fig_reliability(runs: Sequence[Run]):
  """Reliability diagram (accuracy vs confidence per 15-bin confidence bin; the diagonal is perfect
  calibration), on clean data and on every corrupted evaluation pooled, one line per run."""
  fig, axes = _figure(11, 4.5, ncols=2)
  for run, color in zip(runs, _run_colors(runs)):
    bins = reliability_bins(run) or {}
    corrupted = [b for k, b in bins.items() if k != "clean" and not k.endswith("/0")]
    pooled = {k: np.sum([b[k] for b in corrupted], 0) for k in ("count", "conf", "correct")} \
        if corrupted else None
    for ax, b in zip(axes, (bins.get("clean"), pooled)):
      if not b:
        continue
      n, conf, correct = (np.asarray(b[k], np.float64) for k in ("count", "conf", "correct"))
      ece = float(np.abs(correct - conf).sum() / max(n.sum(), 1e-9))
      used = n > 0
      ax.plot(conf[used] / n[used], correct[used] / n[used], color=color, marker="o", lw=1.5,
              label=f"{run.name} (ECE {ece:.3f})")
  for ax, title in zip(axes, ("clean eval data", "corrupted eval data (all pooled)")):
    ax.plot([0, 1], [0, 1], color="gray", ls=":", lw=1, label="perfect calibration")
    ax.set(title=title, xlabel="confidence (bin mean)", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1))
    ax.grid(alpha=0.3)
    _legend(ax, len(runs) + 1)
  fig.suptitle("reliability diagram")
  return fig


def _clean(x: Any) -> Any:
  """NaN/inf -> None, recursively, so summary.json is strict JSON."""
  if isinstance(x, float):
    return x if math.isfinite(x) else None
  if isinstance(x, dict):
    return {k: _clean(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_clean(v) for v in x]
  return x


def run_summary(run: Run) -> dict[str, Any]:
  """The numbers of one run, as they go into summary.json and the HTML tables."""
  split, fracs = final_layer_fracs(run)
  out: dict[str, Any] = {
      "name": run.name, "workdir": run.workdir, "config": run.config_summary(),
      "final": run.summary(),
      "final_step": {k: run.final_step(k) for k in results.SUMMARY_METRICS},
      "layers": {"split": split, "step": run.final_step(f"sparsity/{split}/mean/nonzero_frac")
                 if split else None, "values": fracs},
  }
  curve = magnitude_curve(run)
  if curve is not None:
    out["magnitude"] = curve
  steps = run.npz_steps()
  if steps:
    out["firing"] = {"step": steps[-1],
                     "layers": {l: firing_stats(f) for l, f in run.firing(steps[-1]).items()}}
  return _clean(out)


def _slugs(runs: Sequence[Run]) -> list[str]:
  slugs: list[str] = []
  for run in runs:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", run.name).strip("._") or "run"
    while slug in slugs or slug in ("index.html", "summary.json") or slug in COMPARE_FIGURES.values():
      slug += "_"
    slugs.append(slug)
  return slugs


def _fmt(x: Any, kind: str = "num") -> str:
  if x is None or (isinstance(x, float) and not math.isfinite(x)):
    return "–"
  if kind == "pct":
    return f"{100 * x:.1f}%"
  if isinstance(x, float):
    return f"{x:.4g}"
  return html.escape(str(x))


_OVERVIEW = [("train loss", "train/loss", "num"), ("eval loss", "eval/loss", "num"),
             ("train acc", "train/accuracy", "num"), ("eval acc", "eval/accuracy", "num"),
             ("eval ECE", "eval/ece", "num"),
             ("% nonzero train", "sparsity/train/mean/nonzero_frac", "pct"),
             ("% nonzero eval", "sparsity/eval/mean/nonzero_frac", "pct"),
             ("dead train", "sparsity/train/mean/dead_frac", "pct"),
             ("dead eval", "sparsity/eval/mean/dead_frac", "pct"),
             ("lazy train", "sparsity/train/mean/lazy_frac", "pct"),
             ("lazy eval", "sparsity/eval/mean/lazy_frac", "pct")]
_CONFIG_KEYS = ("model", "variant", "activation", "topk", "data", "steps", "batch_size",
                "last_logged_step")

_CSS = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1400px}
table{border-collapse:collapse;margin:.5em 0 1em}td,th{border:1px solid #ccc;padding:3px 8px;
text-align:right}th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
img{max-width:100%;border:1px solid #eee;margin:4px 0}code{background:#f5f5f5;padding:0 3px}
.note{color:#555;font-size:90%}"""


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
  head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
  body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
  return f"<table><tr>{head}</tr>{body}</table>"


def render_html(summaries: Sequence[dict], compare: dict[str, str]) -> str:
  """index.html: overview table, comparison figures, then one section per run (relative links)."""
  parts = ["<!doctype html><html><head><meta charset='utf-8'><title>lazy-neuron report</title>",
           f"<style>{_CSS}</style></head><body><h1>lazy-neuron report</h1>",
           "<p class='note'>% nonzero = share of MLP activation-map entries that are nonzero, over "
           "real tokens (the paper's measure; a ReLU MLP starts near 50%). Dead = neurons that never "
           f"fired on the measured tokens; lazy = fired on fewer than {LAZY_FIRING_RATE:.0%} of "
           "them. Final = value at the last logged step.</p>"]
  rows = [[f"<a href='#{html.escape(s['slug'])}'>{html.escape(s['name'])}</a>"]
          + [_fmt(s["config"].get(k)) for k in _CONFIG_KEYS[:6]]
          + [_fmt(s["final"].get(key), kind) for _, key, kind in _OVERVIEW] for s in summaries]
  parts.append(_table(["run", *_CONFIG_KEYS[:6], *[h for h, _, _ in _OVERVIEW]], rows))
  for path in compare.values():
    parts.append(f"<img src='{html.escape(path)}'>")
  for s in summaries:
    parts.append(f"<h2 id='{html.escape(s['slug'])}'>{html.escape(s['name'])}</h2>"
                 f"<p class='note'><code>{html.escape(s['workdir'])}</code></p>")
    parts.append(_table(["config", "value"], [[k, _fmt(s["config"].get(k))] for k in _CONFIG_KEYS]))
    parts.append(_table(["final", "value", "step"],
                        [[html.escape(key), _fmt(s["final"].get(key), kind),
                          _fmt(s["final_step"].get(key))] for _, key, kind in _OVERVIEW]))
    layers = s["layers"]
    if layers["values"]:
      firing = s.get("firing", {}).get("layers", {})
      parts.append(f"<p>Per layer, {layers['split']} data, step {layers['step']}"
                   + (f" (firing frequencies: step {s['firing']['step']})" if firing else "")
                   + ":</p>")
      parts.append(_table(
          ["layer", "% nonzero", "dead", "lazy", "median firing"],
          [[html.escape(l), _fmt(v["nonzero_frac"], "pct"), _fmt(v["dead_frac"], "pct"),
            _fmt(v["lazy_frac"], "pct"), _fmt(firing.get(l, {}).get("median_firing"), "pct")]
           for l, v in layers["values"].items()]))
    for path in s["figures"].values():
      parts.append(f"<img src='{html.escape(path)}'>")
  parts.append("</body></html>")
  return "\n".join(parts)


def _save_fig(fig, path) -> None:
  buf = io.BytesIO()
  fig.savefig(buf, format="png", dpi=110)  # Figure's default canvas is Agg: no display needed
  fileio.write_atomic(path, buf.getvalue())


def write_report(runs: Sequence[Run], out: str) -> str:
  """Writes the figures, index.html and summary.json into `out`; returns the index.html path."""
  from etils import epath
  root = epath.Path(out)
  summaries = []
  for run, slug in zip(runs, _slugs(runs)):
    figures = {}
    makers = [("layers_vs_step", fig_layers_vs_step), ("final_layers", fig_final_layers),
              ("firing_hist", fig_firing_hist)]
    if magnitude_curve(run) is not None:
      makers.append(("magnitude_curve", fig_magnitude_curve))
    for kind, make in makers:
      figures[kind] = f"{slug}/{RUN_FIGURES.get(kind, MAGNITUDE_FIGURE)}"
      _save_fig(make(run), root / figures[kind])
    summaries.append({"slug": slug, **run_summary(run), "figures": figures})
  compare = {}
  if len(runs) > 1:
    for kind, make in (("compare_sparsity", fig_compare_sparsity), ("compare_loss", fig_compare_loss)):
      compare[kind] = COMPARE_FIGURES[kind]
      _save_fig(make(runs), root / compare[kind])
  if any(reliability_bins(r) for r in runs):
    compare["reliability"] = RELIABILITY_FIGURE
    _save_fig(fig_reliability(runs), root / compare["reliability"])
  summary = {"generated_by": "lazy-neuron report", "runs": summaries, "figures": compare}
  fileio.write_atomic(root / "summary.json", json.dumps(summary, indent=1) + "\n")
  index = root / "index.html"
  fileio.write_atomic(index, render_html(summaries, compare))
  return os.fspath(index)


def _load_runs(workdirs: Sequence[str]) -> list[Run]:
  """results.load_runs, with an unreadable workdir file (a folder named metrics.jsonl, no read
  permission, bytes that are not UTF-8) as a UserError naming it instead of a traceback."""
  for w in workdirs:
    checks.string("DIR", w)
  try:
    return results.load_runs(workdirs)
  except OSError as e:
    where = e.filename or " ".join(workdirs)
    raise UserError(f"cannot read {where} ({e.strerror or type(e).__name__}); pass the --workdir "
                    "of a `lazy-neuron train` run") from None
  except UnicodeDecodeError as e:
    raise UserError(f"a file in {' '.join(workdirs)} is not UTF-8 text ({e.reason} at byte "
                    f"{e.start}); pass the --workdir of a `lazy-neuron train` run") from None


def main(argv: Sequence[str] | None = None) -> int:
  from lazy_neuron import cli, flags

  argv = list(sys.argv if argv is None else argv)
  p = flags.parser(cli.prog_name(argv, "lazy-neuron report"),
                   "Figures, index.html and summary.json from one or more workdirs.")
  p.add_argument("workdirs", nargs="+", metavar="DIR", help="workdirs of `lazy-neuron train`")
  p.add_argument("--out", required=True, help="output folder (local or gs://); an earlier report "
                 "there is replaced")
  try:
    args, _ = flags.parse(p, argv[1:])
    runs = _load_runs(args.workdirs)  # all read and checked before anything is written
    outpaths.folder("--out", args.out)
  except UserError as e:
    return errors.report(e)
  print(write_report(runs, args.out))
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv))
