"""lazy_neuron.results, `lazy-neuron report` and notebooks/inspect_run.ipynb on synthetic workdirs."""
from __future__ import annotations

import json
import math
import os

import matplotlib

matplotlib.use("Agg")  # before pyplot is imported by the notebook cells

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from lazy_neuron import report, results  # noqa: E402
from lazy_neuron.errors import UserError  # noqa: E402
from lazy_neuron.sparsity import LayerStats, save_npz  # noqa: E402

LAYERS = ["decoder/layer_00", "encoder/layer_01", "encoder/layer_00", "decoder/layer_01"]
D_FF = 256
TOKENS = 4000


def _fracs(step: int, split: str) -> dict[str, float]:
  # Sparsity emerging: 50% at step 0 decaying towards a per-layer floor, like the paper's figures.
  out = {}
  for i, layer in enumerate(LAYERS):
    floor = 0.05 + 0.05 * i
    nz = floor + (0.5 - floor) * math.exp(-step / 30) + (0.01 if split == "eval" else 0.0)
    out[f"sparsity/{split}/{layer}/nonzero_frac"] = nz
    out[f"sparsity/{split}/{layer}/dead_frac"] = 0.01 * i * step / 100
    out[f"sparsity/{split}/{layer}/lazy_frac"] = 0.1 * step / 100
  for kind in ("nonzero_frac", "dead_frac", "lazy_frac"):
    vals = [v for k, v in out.items() if k.endswith(kind)]
    out[f"sparsity/{split}/mean/{kind}"] = float(np.mean(vals))
  return out


def make_workdir(path, topk=None, steps=(0, 20, 40, 60, 80, 100), eval_steps=(0, 50, 100),
                 loss_scale=1.0) -> str:
  """A workdir as the trainer writes it: config.json, metrics.jsonl (train and eval lines for the
  same step, a duplicated step whose last line wins, nulls), two sparsity npz files."""
  os.makedirs(path, exist_ok=True)
  config = {"model": {"name": "t5", "variant": "tiny", "activation": "relu", "topk": topk,
                      "mlp_dim": D_FF},
            "data": {"name": "docstrings"}, "total_steps": steps[-1], "batch_size": 8}
  with open(os.path.join(path, "config.json"), "w") as f:
    json.dump(config, f)
  lines = []
  for s in steps:
    if s == 0:
      continue
    row = {"step": s, "train/loss": loss_scale * 5.0 / (1 + s / 50), "train/accuracy": s / 200,
           "train/grad_norm": None if s == 40 else 1.0, "train/learning_rate": 1e-3, **_fracs(s, "train")}
    lines.append(row)
  for s in eval_steps:
    lines.append({"step": s, "eval/loss": loss_scale * 5.5 / (1 + s / 50), "eval/accuracy": s / 250,
                  "eval/ece": 0.05, **_fracs(s, "eval")})
  # A replayed step (resume without truncation): the later line must win.
  lines.insert(2, {"step": 100, "train/loss": 99.0, "eval/loss": 99.0})
  lines.append({"step": 60, "train/loss": None})  # a diverged (NaN) value at step 60, last wins
  with open(os.path.join(path, "metrics.jsonl"), "w") as f:
    f.write("".join(json.dumps(r) + "\n" for r in lines))
    f.write('{"step": 101, "train/lo')  # a trainer caught mid-write
  rng = np.random.default_rng(0)
  for s in (50, 100):
    stats = {}
    for i, layer in enumerate(LAYERS):
      rate = rng.beta(0.3 + 0.2 * i, 3.0, D_FF)
      rate[: 4 + i] = 0.0  # dead neurons
      stats[layer] = LayerStats(fire=np.round(rate * TOKENS).astype(np.int64), tokens=TOKENS)
    save_npz(path, s, stats)
  return str(path)


@pytest.fixture(scope="module")
def workdirs(tmp_path_factory):
  root = tmp_path_factory.mktemp("runs")
  dense = make_workdir(root / "sweep" / "dense")
  topk = make_workdir(root / "sweep" / "topk", topk=8, loss_scale=1.1)
  return dense, topk


# ---- results -----------------------------------------------------------------------------------
def test_load_run(workdirs):
  run = results.load_run(workdirs[0])
  assert run.name == "dense"
  assert run.layers("eval") == ["encoder/layer_00", "encoder/layer_01", "decoder/layer_00",
                                "decoder/layer_01"]
  steps, loss = run.series("train/loss")
  assert list(steps) == [20, 40, 60, 80, 100]
  assert math.isnan(loss[2])  # null at step 60 (the later line) wins over the number
  assert loss[-1] == pytest.approx(5.0 / 3)  # the later step-100 line wins over the replayed 99.0
  assert run.final("eval/loss") == pytest.approx(5.5 / 3)
  assert len(run.series("train/grad_norm", dropna=True)[0]) == 4
  assert run.series("no/such")[0].size == 0 and math.isnan(run.final("no/such"))
  assert run.npz_steps() == [50, 100]
  fire = run.firing()
  assert list(fire) == run.layers("eval") and fire["encoder/layer_00"].shape == (D_FF,)
  assert run.firing(50).keys() == fire.keys()
  with pytest.raises(UserError, match="available steps: 50, 100"):
    run.firing(7)
  assert run.config_summary()["model"] == "t5" and run.cfg("model.mlp_dim") == D_FF
  assert results.find_runs(os.path.dirname(workdirs[0])) == sorted(workdirs)


def test_load_run_errors(tmp_path):
  with pytest.raises(UserError, match="does not exist"):
    results.load_run(tmp_path / "missing")
  with pytest.raises(UserError, match="metrics.jsonl not found"):
    results.load_run(tmp_path)
  (tmp_path / "metrics.jsonl").write_text("\n")
  with pytest.raises(UserError, match="no metrics yet"):
    results.load_run(tmp_path)


def test_gs_without_gcsfs_is_a_user_error():
  import importlib.util
  if importlib.util.find_spec("gcsfs") is not None:
    pytest.skip("gcsfs installed; this would reach the network")
  # Without TensorFlow, epath needs gcsfs; with it, tf.io.gfile tries the (unreachable) bucket.
  tf = importlib.util.find_spec("tensorflow") is not None
  with pytest.raises(UserError, match="cannot reach gs://some-bucket/runs/t5" if tf else
                     "pip install gcsfs") as e:
    results.load_run("gs://some-bucket/runs/t5")
  assert "\n" not in str(e.value)


def test_unreachable_remote_path_is_a_user_error():
  class Remote:  # a remote filesystem's own error, as tf.io.gfile or gcsfs raise it offline
    def __fspath__(self):
      return "gs://bucket/run"

    def exists(self):
      raise OSError("Could not resolve host: storage.googleapis.com\nmore")

  with pytest.raises(UserError, match=r"cannot reach gs://bucket/run \(OSError: Could not resolve host"):
    results.exists(Remote())


def test_unique_names():
  assert results.unique_names(["/a/x/t5", "/b/x/t5", "/c/vit"]) == ["a/x/t5", "b/x/t5", "vit"]
  assert results.unique_names(["gs://b/r/t5", "gs://b/r/t5"]) == ["gs://b/r/t5#0", "gs://b/r/t5#1"]


# ---- report ------------------------------------------------------------------------------------
def _png_ok(path) -> bool:
  with open(path, "rb") as f:
    return f.read(8) == b"\x89PNG\r\n\x1a\n" and os.path.getsize(path) > 5000


def test_report_two_runs(workdirs, tmp_path, capsys):
  out = tmp_path / "report"
  assert report.main(["lazy-neuron report", *workdirs, f"--out={out}"]) == 0
  assert capsys.readouterr().out.strip() == str(out / "index.html")
  for slug in ("dense", "topk"):
    for name in report.RUN_FIGURES.values():
      assert _png_ok(out / slug / name), (slug, name)
  for name in report.COMPARE_FIGURES.values():
    assert _png_ok(out / name)
  summary = json.loads((out / "summary.json").read_text())
  dense = summary["runs"][0]
  assert dense["name"] == "dense" and dense["config"]["variant"] == "tiny"
  assert dense["final"]["eval/loss"] == pytest.approx(5.5 / 3)
  assert dense["final"]["train/loss"] == pytest.approx(5.0 / 3)
  assert dense["final"]["eval/ece"] == pytest.approx(0.05)
  mean_eval = dense["final"]["sparsity/eval/mean/nonzero_frac"]
  assert mean_eval == pytest.approx(_fracs(100, "eval")["sparsity/eval/mean/nonzero_frac"])
  assert dense["layers"]["split"] == "eval" and dense["layers"]["step"] == 100
  assert list(dense["layers"]["values"])[0] == "encoder/layer_00"
  assert dense["firing"]["step"] == 100
  fire = results.load_run(workdirs[0]).firing(100)["encoder/layer_00"]
  assert dense["firing"]["layers"]["encoder/layer_00"]["dead_frac"] == pytest.approx(np.mean(fire == 0))
  assert dense["firing"]["layers"]["encoder/layer_00"]["dead_frac"] >= 6 / D_FF
  assert summary["runs"][1]["config"]["topk"] == 8
  page = (out / "index.html").read_text()
  assert f"{100 * mean_eval:.1f}%" in page and f"{5.5 / 3:.4g}" in page
  for slug in ("dense", "topk"):
    for name in report.RUN_FIGURES.values():
      assert f"src='{slug}/{name}'" in page
  assert "src='compare_sparsity.png'" in page and "/tmp" not in page.split("<h2")[0]


def test_report_module_entry_point(workdirs, tmp_path):
  # `python -m lazy_neuron.report` is the same program; check it parses and writes.
  import subprocess
  import sys
  out = tmp_path / "r"
  proc = subprocess.run([sys.executable, "-m", "lazy_neuron.report", workdirs[0], "--out", str(out)],
                        capture_output=True, text=True, timeout=60)
  assert proc.returncode == 0, proc.stderr
  assert (out / "index.html").exists() and not (out / "compare_loss.png").exists()


@pytest.mark.parametrize("args", [[], ["{missing}"], ["{empty}"], ["{good}", "{missing}"],
                                  ["{good}", "--out={file}"]])
def test_report_bad_input(args, workdirs, tmp_path, capsys):
  empty = tmp_path / "empty"
  empty.mkdir()
  (empty / "metrics.jsonl").write_text("")
  (tmp_path / "a_file").write_text("x")
  fmt = dict(missing=tmp_path / "nope", empty=empty, good=workdirs[0], file=tmp_path / "a_file")
  argv = [a.format(**fmt) for a in args]
  if not any(a.startswith("--out") for a in argv):
    argv.append(f"--out={tmp_path / 'out'}")
  assert report.main(["lazy-neuron report", *argv]) == 2
  err = capsys.readouterr().err
  assert err.startswith("lazy-neuron: error: ") and err.count("\n") == 1, err
  assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("layer, short", [
    ("encoder/layer_00", "enc0"), ("decoder/layer_11", "dec11"), ("mixer/token_03", "tok3"),
    ("mixer/channel_10", "ch10"), ("vit/layer_03", "L3"), ("mlp/layer_00", "L0")])
def test_layer_short_names_are_one_rule_for_the_report_and_the_progress_line(layer, short):
  from lazy_neuron import metrics
  from lazy_neuron.sparsity import summary
  assert summary.short_layer(layer) == short
  assert report.short_layer is summary.short_layer and metrics.short_layer is summary.short_layer


# ---- notebook ----------------------------------------------------------------------------------
def _notebook(repo_root) -> dict:
  with open(os.path.join(repo_root, "notebooks", "inspect_run.ipynb")) as f:
    return json.load(f)


def test_notebook_is_valid(repo_root):
  nb = _notebook(repo_root)
  assert nb["nbformat"] == 4 and nb["cells"]
  for cell in nb["cells"]:
    assert cell["cell_type"] in ("markdown", "code") and isinstance(cell["source"], (list, str))
    if cell["cell_type"] == "code":
      assert cell["outputs"] == [] and cell["execution_count"] is None
  # The committed notebook is what the generator writes.
  import importlib.util
  spec = importlib.util.spec_from_file_location(
      "make_notebooks", os.path.join(repo_root, "notebooks", "make_notebooks.py"))
  gen = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(gen)
  assert gen.inspect_run() == nb


def test_notebook_runs(repo_root, workdirs, tmp_path):
  import matplotlib.pyplot as plt
  nb = _notebook(repo_root)
  ns = {"__name__": "__main__"}
  for cell in nb["cells"]:
    tags = cell.get("metadata", {}).get("tags", [])
    if cell["cell_type"] != "code" or "install" in tags:
      continue
    src = "".join(cell["source"])
    if "parameters" in tags:  # the test's values instead of the user's
      src = (f"WORKDIR = {workdirs[0]!r}\nCOMPARE = [{workdirs[1]!r}]\n"
             f"OUT = {str(tmp_path / 'nb_report')!r}\n")
    src = "\n".join(l for l in src.splitlines() if not l.lstrip().startswith(("%", "!")))
    exec(compile(src, "<notebook cell>", "exec"), ns)
  assert ns["run"].name == "dense" and [r.name for r in ns["runs"]] == ["dense", "topk"]
  assert (tmp_path / "nb_report" / "index.html").exists()
  plt.close("all")


def test_report_sparse_logs(tmp_path, capsys):
  # A run without sparsity metrics or npz, and a Mixer run logged on eval data only: no crash,
  # the figures say what is missing, summary.json has nulls.
  plain, mixer = tmp_path / "plain", tmp_path / "mixer"
  plain.mkdir()
  mixer.mkdir()
  (plain / "metrics.jsonl").write_text('{"step": 1, "train/loss": 2.0}\n')
  rows = [{"step": s, "eval/loss": 1.0 / (s + 1), "sparsity/eval/mean/nonzero_frac": 0.5 - 0.01 * s,
           **{f"sparsity/eval/mixer/{k}_{i:02d}/nonzero_frac": 0.5 - 0.01 * s
              for i in range(2) for k in ("token", "channel")}} for s in range(3)]
  (mixer / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  out = tmp_path / "out"
  assert report.main(["lazy-neuron report", str(plain), str(mixer), f"--out={out}"]) == 0
  summary = json.loads((out / "summary.json").read_text())
  assert summary["runs"][0]["final"]["eval/loss"] is None
  assert list(summary["runs"][1]["layers"]["values"]) == [
      "mixer/token_00", "mixer/channel_00", "mixer/token_01", "mixer/channel_01"]
  assert _png_ok(out / "plain" / "firing_hist.png") and _png_ok(out / "mixer" / "final_layers.png")
