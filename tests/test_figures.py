"""reproduce/figures.py on the session's smoke reproduce DIR and on hand-made runs, and
notebooks/paper_figures.ipynb executed through a real Jupyter kernel (nbclient)."""
from __future__ import annotations

import json
import os

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from lazy_neuron.reproduce import figures  # noqa: E402
from lazy_neuron.results import Run  # noqa: E402


@pytest.fixture(scope="module")
def smoke_runs(reproduce_smoke):
  return figures.load_dir(reproduce_smoke)


def _run(name, config, rows):
  """A Run from {metric: [(step, value), ...]}."""
  metrics = {k: (np.array([s for s, _ in v], np.int64), np.array([x for _, x in v], np.float64))
             for k, v in rows.items()}
  return Run(workdir=f"/nowhere/{name}", name=name, config=config, metrics=metrics)


def test_load_dir(smoke_runs):
  summary, runs = smoke_runs
  assert [c["id"] for c in summary["claims"]] == ["C1", "C7"]
  assert sorted(runs) == ["mlp_gaussian", "t5", "t5_random_inputs"]
  assert list(figures.runs_of(summary["claims"][1], runs)) == ["mlp_gaussian", "t5_random_inputs"]


@pytest.mark.parametrize("cid", ["C1", "C3", "C4", "C8", "C9", "C10", "C14", "C99"])
def test_every_figure_of_the_t5_claims_draws(smoke_runs, cid):
  """Each claim's figures on the smoke T5 run: drawn, with data on them (no "no ... metrics" note);
  an unregistered id gets the one default figure."""
  _, runs = smoke_runs
  todo = figures.claim_figures(cid, {"t5": runs["t5"]})
  names = [n for n, _ in todo]
  assert names[0] == f"figures/{cid}_nonzero_vs_step.png"
  assert len(names) == 1 + len(figures.FIGURES.get(cid, []))
  for name, make in todo:
    fig = make()
    notes = [t.get_text() for ax in fig.axes for t in ax.texts if t.get_text().startswith("no ")]
    assert not notes, (name, notes)
    assert all(ax.lines or ax.patches for ax in fig.axes), name


def test_mean_vs_step_is_log_percent_with_the_baseline(smoke_runs):
  _, runs = smoke_runs
  fig = figures.fig_mean_vs_step([runs["mlp_gaussian"], runs["t5_random_inputs"]], runs["t5"])
  train, evl = fig.axes
  assert train.get_yscale() == "log" and train.get_ylim()[1] == 100.0
  labels = [l.get_label() for l in evl.lines]
  assert labels[:3] == ["mlp_gaussian", "t5_random_inputs", "t5 (baseline)"]
  steps, frac = runs["t5"].series("sparsity/eval/mean/nonzero_frac", dropna=True)
  x, y = evl.lines[2].get_data()
  np.testing.assert_array_equal(x, steps)
  np.testing.assert_allclose(y, 100 * frac, rtol=1e-12)


def test_layers_vs_step_one_line_per_layer(smoke_runs):
  _, runs = smoke_runs
  run = runs["t5"]
  (ax,) = figures.fig_layers_vs_step([run]).axes
  layers = run.layers("eval")
  assert len(layers) == 4  # 2 encoder + 2 decoder layers at the smoke scale
  got = {l.get_label(): l.get_ydata() for l in ax.lines}
  for layer in layers:
    short = figures.short_layer(layer)
    want = 100 * run.series(f"sparsity/eval/{layer}/nonzero_frac", dropna=True)[1]
    np.testing.assert_allclose(got[short], np.maximum(want, figures.LOG_FLOOR_PCT), rtol=1e-12)
  assert ax.get_yscale() == "log"


def test_dead_lazy_live_stacks_match_the_metrics():
  rows = {}
  want = {"encoder/layer_00": (0.0, 0.1, 0.30, 0.30), "encoder/layer_01": (0.25, 0.05, 0.2, 0.2 / 0.75)}
  for layer, (dead, lazy, nz, live_nz) in want.items():
    for metric, v in (("dead_frac", dead), ("lazy_frac", lazy), ("nonzero_frac", nz),
                      ("live_nonzero_frac", live_nz)):
      rows[f"sparsity/eval/{layer}/{metric}"] = [(0, 0.5), (10, v)]
  run = _run("r", {}, rows)
  kinds = figures.neuron_kinds(run)
  assert kinds["encoder/layer_01"]["active"] == pytest.approx(0.70, abs=1e-12)
  left, right = figures.fig_dead_lazy_live([run]).axes
  heights = np.array([p.get_height() for p in left.patches]).reshape(3, 2)  # dead, lazy, active
  np.testing.assert_allclose(heights.sum(0), [100, 100], rtol=1e-12)
  np.testing.assert_allclose(heights[0], [0, 25], rtol=1e-12)
  live = [p.get_height() for p in right.patches][2:]
  np.testing.assert_allclose(live, [30, 100 * 0.2 / 0.75], rtol=1e-12)


def test_size_figure_lines_per_depth_and_width():
  runs = []
  for depth, width, final in ((1, 64, 0.40), (1, 128, 0.35), (2, 64, 0.30), (2, 128, 0.25)):
    cfg = {"model": {"num_encoder_layers": depth, "num_decoder_layers": depth, "mlp_dim": width}}
    runs.append(_run(f"l{depth}_w{width}", cfg,
                     {"sparsity/eval/mean/nonzero_frac": [(0, 0.5), (100, final)]}))
  by_width, by_depth = figures.fig_size(runs).axes
  lines = {l.get_label(): l.get_xydata().tolist() for l in by_width.lines}
  assert lines == {"depth 2": [[64, 40.0], [128, 35.0]], "depth 4": [[64, 30.0], [128, 25.0]]}
  lines = {l.get_label(): l.get_xydata().tolist() for l in by_depth.lines}
  assert lines == {"width 64": [[2, 40.0], [4, 30.0]], "width 128": [[2, 35.0], [4, 25.0]]}


def test_a_failing_figure_is_skipped(tmp_path, monkeypatch, capsys):
  run = _run("r", {}, {"sparsity/eval/mean/nonzero_frac": [(0, 0.5), (10, 0.4)]})
  monkeypatch.setitem(figures.FIGURES, "C1", [("broken", lambda runs, baseline: 1 / 0)])
  made = figures.write_claim_figures(str(tmp_path), "C1", {"r": run})
  assert made == ["figures/C1_nonzero_vs_step.png"]
  assert (tmp_path / made[0]).stat().st_size > 0
  assert "figures/C1_broken.png not drawn (ZeroDivisionError" in capsys.readouterr().err


# ---- notebooks/paper_figures.ipynb -------------------------------------------------------------
def _generator(repo_root):
  import importlib.util
  spec = importlib.util.spec_from_file_location(
      "make_notebooks", os.path.join(repo_root, "notebooks", "make_notebooks.py"))
  gen = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(gen)
  return gen


def test_notebook_is_generated(repo_root):
  with open(os.path.join(repo_root, "notebooks", "paper_figures.ipynb")) as f:
    nb = json.load(f)
  assert _generator(repo_root).paper_figures() == nb
  install = [c for c in nb["cells"] if "install" in c.get("metadata", {}).get("tags", [])]
  assert len(install) == 1 and "YOUR_" not in "".join(install[0]["source"])


def test_notebook_runs_in_a_kernel(repo_root, reproduce_smoke, monkeypatch):
  """Every cell, the install cell included (a no-op where lazy_neuron is importable), in a real
  ipykernel, on the smoke DIR; every figure comes back as a PNG and no cell errs."""
  nbclient = pytest.importorskip("nbclient")
  import nbformat
  with open(os.path.join(repo_root, "notebooks", "paper_figures.ipynb")) as f:
    nb = nbformat.read(f, as_version=4)
  for cell in nb.cells:
    if "parameters" in cell.metadata.get("tags", []):
      cell.source = f"DIR = {reproduce_smoke!r}\nCLAIMS = None\n"
  # The kernel imports this checkout's lazy_neuron, as the tests do.
  monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
      p for p in (repo_root, os.environ.get("PYTHONPATH")) if p))
  nbclient.NotebookClient(nb, timeout=120, kernel_name="python3",
                          resources={"metadata": {"path": str(repo_root)}}).execute()
  pngs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
          if "image/png" in o.get("data", {})]
  # C1: 2 figures, C7: 1; then one run's per-layer curves and firing histogram
  assert len(pngs) == 5
  errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
            if o.output_type == "error"]
  assert not errors
