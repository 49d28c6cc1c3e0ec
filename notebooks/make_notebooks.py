"""Writes the notebooks in this folder from the cell sources below (no outputs stored).

    python notebooks/make_notebooks.py

Edit the cells here, not the .ipynb, so the notebooks stay reviewable and in sync
(tests/test_report.py checks that the committed .ipynb equals what this writes, and runs its cells).
Cells tagged `install` are skipped by the test; cells tagged `parameters` are replaced by its values.
"""
from __future__ import annotations

import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))


def _cell(kind: str, source: str, index: int, tags: tuple[str, ...] = ()) -> dict:
  lines = source.strip("\n").splitlines(keepends=True)
  cell = {"cell_type": kind, "id": f"cell-{index:02d}", "metadata": {"tags": list(tags)} if tags else {},
          "source": lines}
  if kind == "code":
    cell.update(execution_count=None, outputs=[])
  return cell


def _notebook(cells: list[tuple]) -> dict:
  return {"cells": [_cell(*c[:2], i, *c[2:]) for i, c in enumerate(cells)],
          "metadata": {"colab": {"provenance": []},
                       "kernelspec": {"display_name": "Python 3", "language": "python",
                                      "name": "python3"},
                       "language_info": {"name": "python"}},
          "nbformat": 4, "nbformat_minor": 5}


# The install cell of every notebook. There is no public package index entry or git URL to install
# from, so it installs what the user has: the checkout the notebook sits in (local Jupyter), a
# wheel or a zip of the repository uploaded to Colab or kept in Google Drive, or any pip
# requirement given as SOURCE (e.g. the git URL of your copy).
INSTALL = ("code", """
# Install lazy_neuron unless it is importable already (a local Jupyter with the project installed).
# SOURCE: a pip requirement: a checkout folder, a wheel (`pip wheel --no-deps -w dist .` in the
# repository), a zip of the repository, or the git URL of your copy. Empty: the checkout this
# notebook sits in, else a lazy_neuron*.whl / *.zip in the working folder or Drive's MyDrive,
# else (Colab) a file upload prompt.
SOURCE = ""
import glob, importlib, importlib.util, os, subprocess, sys
if importlib.util.find_spec("lazy_neuron") is None:
  found = [SOURCE] if SOURCE else [p for p in ("..", ".") if os.path.isfile(f"{p}/pyproject.toml")]
  for pattern in ("lazy_neuron*.whl", "lazy_neuron*.zip", "/content/drive/MyDrive/lazy_neuron*"):
    found += sorted(glob.glob(pattern))
  if not found:
    from google.colab import files  # outside Colab: set SOURCE
    found = list(files.upload())
  subprocess.run([sys.executable, "-m", "pip", "install", "-q", found[0]], check=True)
  importlib.invalidate_caches()
try:  # gs:// workdirs need your Google credentials in Colab
  from google.colab import auth
  auth.authenticate_user()
except ImportError:
  pass
""", ("install",))

INSPECT_RUN = [
    ("markdown", """
# Inspect a lazy_neuron run

Load a workdir written by `lazy-neuron train` (local or `gs://`) and look at activation sparsity:
% nonzero per MLP layer over training, per-neuron firing frequencies (dead and lazy neurons), and
several runs side by side. See *The Lazy Neuron Phenomenon* (Li et al., ICLR 2023).
"""),
    INSTALL,
    ("code", """
WORKDIR = "/tmp/ln_report/t5"   # or "gs://YOUR_BUCKET/runs/t5_base"
COMPARE = []                    # more workdirs, e.g. results.find_runs("gs://YOUR_BUCKET/runs")
OUT = "/tmp/lazy_neuron_report" # where the full HTML report goes (last cell)
""", ("parameters",)),
    ("code", """
import json
import matplotlib.pyplot as plt
import numpy as np
from lazy_neuron import report, results

run = results.load_run(WORKDIR)
print(run)
print(json.dumps(run.config_summary(), indent=1))
"""),
    ("markdown", "The resolved config of the run (model, data, optimizer):"),
    ("code", """
print(json.dumps({k: run.config.get(k) for k in ("model", "data", "optimizer")}, indent=1))
"""),
    ("markdown", "## Final numbers\nValue at the last logged step; `None` = not logged (or NaN)."),
    ("code", """
for name, value in run.summary().items():
  print(f"{name:<36} {value if value is None else round(value, 4)}")
"""),
    ("markdown", """
## % nonzero per layer over training
The paper's measure: the share of MLP activation-map entries that are nonzero, per token.
A ReLU MLP starts near 50% (dotted line); the lazy neuron phenomenon is the fall below it.
"""),
    ("code", """
colors = report.layer_colors(run.layers())
fig, axes = plt.subplots(1, 2, figsize=(12, 4), sharey=True)
for ax, split in zip(axes, ["train", "eval"]):
  for layer in run.layers(split):
    steps, frac = run.series(f"sparsity/{split}/{layer}/nonzero_frac")
    ax.plot(steps, 100 * frac, color=colors[layer], label=report.short_layer(layer))
  ax.axhline(50, color="gray", ls=":")
  ax.set(title=f"{split} data", xlabel="step", ylabel="% nonzero")
  ax.set_ylim(bottom=0)
  ax.legend(fontsize=7)
plt.show()
"""),
    ("markdown", """
## Per-neuron firing frequencies
How often each neuron is nonzero, from `sparsity/step_<N>.npz`. Dead neurons never fire (not on the
log axis, counted in the legend); lazy ones fire on fewer than 1% of tokens (left of the line).
"""),
    ("code", """
print("steps with firing frequencies:", run.npz_steps())
STEP = None  # None = the latest
freqs = run.firing(STEP)
colors = report.layer_colors(list(freqs))
fig, ax = plt.subplots(figsize=(8, 4))
for layer, f in freqs.items():
  s = report.firing_stats(f)
  ax.hist(f[f > 0], bins=np.logspace(-4, 0, 41), histtype="step", color=colors[layer],
          label=f"{report.short_layer(layer)}: dead {s['dead_frac']:.1%}, lazy {s['lazy_frac']:.1%}")
ax.axvline(results.LAZY_FIRING_RATE, color="gray", ls=":")
ax.set(xscale="log", xlabel="firing frequency", ylabel="neurons")
ax.legend(fontsize=7)
plt.show()
"""),
    ("markdown", "## Compare runs\nE.g. dense vs Top-k, or model sizes: mean % nonzero over layers and eval loss."),
    ("code", """
runs = results.load_runs([WORKDIR, *COMPARE])
fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4))
for r in runs:
  steps, frac = r.series("sparsity/eval/mean/nonzero_frac")
  a.plot(steps, 100 * frac, label=r.name)
  b.plot(*r.series("eval/loss", dropna=True), label=r.name)
a.set(xlabel="step", ylabel="mean % nonzero (eval)")
b.set(xlabel="step", ylabel="eval loss")
a.legend()
plt.show()
for r in runs:
  s = r.summary()
  print(f"{r.name:<24} topk={r.cfg('model.topk')!s:<6} eval loss={s['eval/loss']!s:<22} "
        f"nonzero={s['sparsity/eval/mean/nonzero_frac']}")
"""),
    ("markdown", "## Full report\nThe figures of `lazy-neuron report`, with `index.html` and `summary.json`."),
    ("code", """
print(report.write_report(runs, OUT))
"""),
]


PAPER_FIGURES = [
    ("markdown", """
# The paper's figures from a `lazy-neuron reproduce` folder

Draws the figures of *The Lazy Neuron Phenomenon* (Li et al., ICLR 2023) from the folder `DIR`
written by `lazy-neuron reproduce --scale=smoke|cpu|gpu --out=DIR`: for every claim judged there,
its verdict, the rule that gave it, the evidence numbers and the figures (the same ones the command
writes into `DIR/figures/`). Only `DIR/summary.json` and the runs' `metrics.jsonl`, `config.json`
and `sparsity/step_<N>.npz` are read; checkpoints are not needed. In Colab, upload a zip of `DIR`
(without `runs/*/checkpoints`) or put it in Google Drive, and set `DIR` below.
"""),
    INSTALL,
    ("code", """
DIR = "/tmp/ln/repro_cpu"  # the --out of `lazy-neuron reproduce` (unzip an upload first)
CLAIMS = None              # e.g. ["C1", "C8"]; None: every claim in DIR/summary.json
""", ("parameters",)),
    ("code", """
%matplotlib inline
from IPython.display import Markdown, display
from lazy_neuron.reproduce import figures

summary, runs = figures.load_dir(DIR)
claims = [c for c in summary["claims"] if CLAIMS is None or c["id"] in CLAIMS]
rows = [f"| {c['id']} | {c['claim']} | **{c['verdict']}** |" for c in claims]
display(Markdown(f"Scale `{summary['scale']}`, {len(runs)} runs.\\n\\n| claim | | verdict |\\n|---|---|---|\\n"
                 + "\\n".join(rows)))
"""),
    ("markdown", """
## Claim by claim
Each verdict comes from the rule printed under it, applied to the runs' own metrics. % nonzero
is the share of MLP activation-map entries that are nonzero (a ReLU starts near 50%); the log
axes follow the paper's figures. C7 compares its random-data runs with the plain run `runs/t5`
when `DIR` has it (black, dashed).
"""),
    ("code", """
import json
for c in claims:
  display(Markdown(f"### {c['id']}: {c['claim']}\\n\\n**Verdict: {c['verdict']}**\\n\\n"
                   f"Rule: {c['rule']}\\n\\nPaper: {c['paper']}"))
  print("evidence:", json.dumps(c["evidence"], indent=1, sort_keys=True))
  baseline = runs.get(figures.BASELINE)
  for name, make in figures.claim_figures(c["id"], figures.runs_of(c, runs), baseline):
    display(make())  # the figure DIR/<name> holds
"""),
    ("markdown", """
## Any run on its own
Per-layer % nonzero on train and eval data (linear axis), and the firing-frequency histogram
(dead and lazy neurons) of one run; `sorted(runs)` lists the names.
"""),
    ("code", """
from lazy_neuron import report
RUN = figures.BASELINE if figures.BASELINE in runs else sorted(runs)[0]
display(report.fig_layers_vs_step(runs[RUN]))
display(report.fig_firing_hist(runs[RUN]))
"""),
]


PRETRAINED_SPARSITY = [
    ("markdown", """
# How sparse is a pretrained model? Layer by layer

Loads a pretrained checkpoint with `lazy_neuron.pretrained.load` (Hugging Face T5 v1.0 / v1.1 /
Flan-T5 / mT5, T5X, Hugging Face ViT, timm ViT, big_vision ViT `.npz`; the format is detected from
the files), runs it on a few batches, and plots the fraction of nonzero MLP activations per layer.
For a non-ReLU checkpoint (GELU, gated GELU) almost nothing is exactly zero, so it also plots the
fraction of activations at or below a set of magnitude thresholds: the curve from which
magnitude-threshold methods (CATS, TEAL) pick their threshold.

`CHECKPOINT` is a local folder or file, or a Hugging Face hub id, downloaded with
`huggingface_hub` (preinstalled in Colab; elsewhere `pip install huggingface_hub`). CI runs this
notebook on a tiny random fixture checkpoint (set through `LAZY_NEURON_CHECKPOINT`), whose
numbers mean nothing.
"""),
    INSTALL,
    ("code", """
import os
CHECKPOINT = os.environ.get("LAZY_NEURON_CHECKPOINT", "google/flan-t5-small")
BATCHES, BATCH_SIZE = 4, 8  # what is measured: BATCHES x BATCH_SIZE examples of the eval split
""", ("parameters",)),
    ("code", """
from lazy_neuron import pretrained

model = pretrained.load(CHECKPOINT)
print(model.kind, dict(model.config.model))
"""),
    ("markdown", """
Batches come from the config's data (for T5 by default the Python standard library's
docstrings with a byte tokenizer: any text works for measuring activations; for ViT scikit-learn's
digits resized to the checkpoint's image size). `measure` sums the exact counts over the batches.
"""),
    ("code", """
import itertools
from lazy_neuron import data

with data.build(model.config.data, split="eval", batch_size=BATCH_SIZE, seed=0) as it:
  metrics, layer_stats = model.measure(itertools.islice(it, BATCHES))
for layer, s in layer_stats.items():
  print(f"{layer:<20} nonzero {100 * s.nonzero_frac:6.2f}%  dead {100 * s.dead_frac:5.1f}%  "
        f"lazy {100 * s.lazy_frac:5.1f}%")
print("mean nonzero:", metrics["sparsity/eval/mean/nonzero_frac"])
"""),
    ("code", """
%matplotlib inline
import matplotlib.pyplot as plt
from lazy_neuron.sparsity.summary import short_layer

layers = list(layer_stats)
thresholds = list(model.config.model.get("magnitude_thresholds") or [])
fig, axes = plt.subplots(1, 2, figsize=(11, 3.5))
axes[0].bar(range(len(layers)), [100 * layer_stats[l].nonzero_frac for l in layers])
axes[0].set_xticks(range(len(layers)), [short_layer(l) for l in layers], rotation=90)
axes[0].set_ylabel("% nonzero activations")
for l in layers:
  if thresholds:
    axes[1].plot(thresholds, [100 * layer_stats[l].frac_abs_le(t) for t in thresholds],
                 marker="o", label=short_layer(l))
axes[1].set_xscale("log")
axes[1].set(xlabel="magnitude threshold t", ylabel="% activations with |a| <= t",
            title="non-ReLU only" if thresholds else "ReLU: exact zeros, left panel")
if thresholds:
  axes[1].legend(fontsize=7)
fig.tight_layout()
plt.show()
"""),
]


def inspect_run() -> dict:
  return _notebook(INSPECT_RUN)


def paper_figures() -> dict:
  return _notebook(PAPER_FIGURES)


def pretrained_sparsity() -> dict:
  return _notebook(PRETRAINED_SPARSITY)


NOTEBOOKS = {"inspect_run.ipynb": inspect_run, "paper_figures.ipynb": paper_figures,
             "pretrained_sparsity.ipynb": pretrained_sparsity}


def main() -> None:
  for name, make in NOTEBOOKS.items():
    path = os.path.join(HERE, name)
    with open(path, "w") as f:
      f.write(json.dumps(make(), indent=1, sort_keys=True, ensure_ascii=False) + "\n")
    print(path)


if __name__ == "__main__":
  main()
