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
REPO_URL = "git+https://github.com/YOUR_ORG/lazy_neuron.git"  # placeholder: your fork or mirror


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


INSPECT_RUN = [
    ("markdown", """
# Inspect a lazy_neuron run

Load a workdir written by `lazy-neuron train` (local or `gs://`) and look at activation sparsity:
% nonzero per MLP layer over training, per-neuron firing frequencies (dead and lazy neurons), and
several runs side by side. See *The Lazy Neuron Phenomenon* (Li et al., ICLR 2023).
"""),
    ("code", f"""
# Colab: install lazy_neuron (skipped where it is already installed, e.g. a local Jupyter).
import importlib.util, subprocess, sys
if importlib.util.find_spec("lazy_neuron") is None:
  subprocess.run([sys.executable, "-m", "pip", "install", "-q", "{REPO_URL}"], check=True)
try:  # gs:// workdirs need your Google credentials in Colab
  from google.colab import auth
  auth.authenticate_user()
except ImportError:
  pass
""", ("install",)),
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


def inspect_run() -> dict:
  return _notebook(INSPECT_RUN)


def main() -> None:
  path = os.path.join(HERE, "inspect_run.ipynb")
  with open(path, "w") as f:
    f.write(json.dumps(inspect_run(), indent=1, sort_keys=True, ensure_ascii=False) + "\n")
  print(path)


if __name__ == "__main__":
  main()
