"""Corruptions (lazy_neuron/corruptions.py): spec parsing, severity 0/1/5, determinism per example,
numpy's global RNG left alone, small grayscale images; `lazy-neuron eval --corruptions` and the
vision claims C12/C13 end to end at the smoke scale on small IDX files; bad input refused."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from lazy_neuron import corruptions, evaluate
from lazy_neuron.data import config as data_config
from lazy_neuron.data.images import normalize
from lazy_neuron.reproduce import claims, command, vision_claims
from lazy_neuron.reproduce.claims import INCONCLUSIVE, REFUTED, SUPPORTED
from tests import hostile
from tests.test_fashion_mnist import idx  # noqa: F401 - the small IDX files fixture
from tests.test_reproduce import mk


def _images(shape, n=4):
  """Structured uint8 images (gradients and a bright square), not noise: blurs and noise act."""
  h, w, c = shape
  yy, xx = np.mgrid[:h, :w]
  base = (yy * 255 // max(h - 1, 1) // 2 + xx * 255 // max(w - 1, 1) // 2).astype(np.uint8)
  out = np.repeat(np.stack([np.roll(base, i, axis=1) for i in range(n)])[..., None], c, -1)
  out[:, h // 4: h // 2, w // 4: w // 2] = 255
  if c == 3:  # colour (saturate leaves gray unchanged)
    out = (out * np.array([1.0, 0.6, 0.3])).astype(np.uint8)
  return out


def test_parse_specs_and_errors():
  assert len(corruptions.parse("all")) == 19 * 5
  assert corruptions.parse("common:3") == [(n, 3) for n in corruptions.COMMON]
  assert corruptions.parse("gaussian_noise, FROST:1-2") == [
      ("gaussian_noise", 1), ("gaussian_noise", 2), ("frost", 1), ("frost", 2)]
  assert corruptions.parse("fog,fog:0") == [("fog", 0)]
  for bad, match in [("fogg", "'fogg' is not a corruption"), ("fog:6", "outside 0..5"),
                     ("fog:3-1", "outside"), ("fog:x", "not an integer"), ("", "non-empty")]:
    with pytest.raises(Exception, match=match) as e:
      corruptions.parse(bad)
    assert "\n" not in str(e.value) and str(e.value).startswith("--corruptions=")


@pytest.mark.parametrize("shape", [(28, 28, 1), (8, 8, 1), (32, 32, 3)])
def test_every_corruption_small_and_grayscale(shape):
  x = _images(shape, n=1)
  for name in corruptions.NAMES:
    y = corruptions.corrupt_image(x[0], name, 3, seed=7)
    assert y.shape == shape and y.dtype == np.uint8, name
    assert not np.array_equal(y, x[0]), f"{name} left the image unchanged"


def test_severity_zero_is_clean_and_five_is_stronger_than_one():
  x = _images((28, 28, 1))
  index = np.arange(len(x))
  assert corruptions.corrupt_batch(x, index, "frost", 0) is x
  # the documented order of severities, on corruptions whose strength is a distance from the image
  for name in ("gaussian_noise", "shot_noise", "impulse_noise", "contrast", "defocus_blur",
               "brightness", "pixelate"):
    d1, d5 = (np.abs(corruptions.corrupt_batch(x, index, name, s).astype(np.float64) - x).mean()
              for s in (1, 5))
    assert d5 > d1 > 0, (name, d1, d5)


def test_deterministic_per_example_and_global_rng_untouched():
  x = _images((28, 28, 1), n=4)
  index = np.array([10, 11, 12, 13])
  np.random.seed(123)
  want = np.random.rand(3)
  np.random.seed(123)
  a = corruptions.corrupt_batch(x, index, "gaussian_noise", 2)
  np.testing.assert_array_equal(np.random.rand(3), want)  # the global RNG state was restored
  np.testing.assert_array_equal(a, corruptions.corrupt_batch(x, index, "gaussian_noise", 2))
  # an example's corruption depends on its index, not on its batch or position
  np.testing.assert_array_equal(a[2:3], corruptions.corrupt_batch(x[2:3], index[2:3],
                                                                  "gaussian_noise", 2))
  moved = corruptions.corrupt_batch(x, index + 1, "gaussian_noise", 2)
  assert not np.array_equal(a, moved)
  for name in ("impulse_noise", "frost", "glass_blur", "spatter"):  # all their randomness seeded
    np.testing.assert_array_equal(corruptions.corrupt_batch(x, index, name, 4),
                                  corruptions.corrupt_batch(x, index, name, 4))


def test_float_batches_round_trip_through_uint8():
  x = _images((28, 28, 3), n=2)
  floats = normalize(x)
  out = corruptions.corrupt_batch(floats, np.arange(2), "contrast", 2)
  assert out.dtype == np.float32
  np.testing.assert_allclose(out, normalize(corruptions.corrupt_batch(x, np.arange(2), "contrast",
                                                                      2)), rtol=0, atol=1e-6)


# ------------------------------------------------------------------------------------------------
# C12 / C13 rules on hand-made corrupted evaluations
# ------------------------------------------------------------------------------------------------
def _clean_pair(tmp_path, dense, topk):
  runs = {}
  for name, k, m in (("d", 0, dense), ("t", 16, topk)):
    run = mk(name, config={"model": {"topk": k or None}, "data": {"label_noise": 0.0}},
             **{"eval.accuracy": [(0, 0.1), (200, m.get("eval/accuracy", 0.8))]})
    run.workdir = str(tmp_path / name)
    os.makedirs(run.workdir, exist_ok=True)
    if m:  # none: the run has no corrupted evaluation
      with open(os.path.join(run.workdir, "eval_corrupted_200.json"), "w") as f:
        json.dump(m, f)
    runs[name] = run
  return runs


def _m(acc, corrupted_acc, ece=0.05, corrupted_ece=0.1):
  return {"eval/accuracy": acc, "eval_corrupted/mean/accuracy": corrupted_acc, "eval/ece": ece,
          "eval_corrupted/mean/ece": corrupted_ece}


def test_c12_c13_rules(tmp_path):
  c12, c13 = vision_claims.judge_c12, vision_claims.judge_c13
  assert c12(_clean_pair(tmp_path, _m(0.80, 0.50), _m(0.805, 0.55)))[0] == SUPPORTED
  assert c12(_clean_pair(tmp_path, _m(0.80, 0.50), _m(0.80, 0.45)))[0] == REFUTED
  assert c12(_clean_pair(tmp_path, _m(0.80, 0.50), _m(0.80, 0.505)))[0] == INCONCLUSIVE
  verdict, _, ev = c12(_clean_pair(tmp_path, _m(0.80, 0.50), _m(0.85, 0.60)))
  assert verdict == INCONCLUSIVE and "clean accuracy differs" in ev["reason"]
  assert c13(_clean_pair(tmp_path, _m(0.8, 0.5), _m(0.8, 0.5, 0.03, 0.05)))[0] == SUPPORTED
  assert c13(_clean_pair(tmp_path, _m(0.8, 0.5), _m(0.8, 0.5, 0.03, 0.2)))[0] == REFUTED
  assert c13(_clean_pair(tmp_path, _m(0.8, 0.5), _m(0.8, 0.5, 0.048, 0.05)))[0] == INCONCLUSIVE
  os.remove(os.path.join(tmp_path, "t", "eval_corrupted_200.json"))
  verdict, _, ev = c12(_clean_pair(tmp_path, _m(0.8, 0.5), {}))
  assert verdict == INCONCLUSIVE and "no corrupted evaluation of t" in ev["reason"]


def test_c11_and_c6_rules():
  def run(name, noise, topk, final):
    return mk(name, config={"model": {"topk": topk or None}, "data": {"label_noise": noise}},
              **{"eval.accuracy": [(0, 0.1), (100, final + 0.05), (200, final)]})
  base = {"d": run("d", 0.0, 0, 0.8), "dn": run("dn", 0.4, 0, 0.6)}
  assert vision_claims.judge_c11({**base, "tn": run("tn", 0.4, 16, 0.65)})[0] == SUPPORTED
  assert vision_claims.judge_c11({**base, "tn": run("tn", 0.4, 16, 0.55)})[0] == REFUTED
  verdict, _, ev = vision_claims.judge_c11({**base, "tn": run("tn", 0.4, 16, 0.605)})
  assert verdict == INCONCLUSIVE and ev["dn"]["dip_from_best"] == pytest.approx(0.05)
  layers = lambda tok, ch: {**{f"sparsity.eval.mixer/token_0{i}.nonzero_frac": tok for i in (0, 1)},
                            **{f"sparsity.eval.mixer/channel_0{i}.nonzero_frac": ch for i in (0, 1)}}
  mixer_cfg = {"model": {"name": "mixer"}}
  sparse = mk("m", config=mixer_cfg, **layers([(0, 0.5), (200, 0.3)], [(0, 0.5), (200, 0.2)]))
  token_flat = mk("m", config=mixer_cfg, **layers([(0, 0.5), (200, 0.51)], [(0, 0.5), (200, 0.2)]))
  mlp = mk("mlp", config={"model": {"name": "mlp"}}, **{
      "sparsity.eval.mean.nonzero_frac": [(0, 0.5), (200, 0.3)]})
  assert vision_claims.judge_c6({"m": sparse, "mlp": mlp})[0] == SUPPORTED
  verdict, _, ev = vision_claims.judge_c6({"m": token_flat, "mlp": mlp})
  assert verdict == REFUTED and ev["m/token"]["final_nonzero"] == 0.51


# ------------------------------------------------------------------------------------------------
# End to end: reproduce C12,C13 at the smoke scale, then `lazy-neuron eval --corruptions`
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def smoke(idx, tmp_path_factory, repo_root):  # noqa: F811 - the fixture imported above
  patch = pytest.MonkeyPatch()
  patch.setitem(data_config.DEFAULTS["fashion_mnist"], "idx_dir", idx[0])
  patch.setitem(data_config.DEFAULTS["fashion_mnist"], "source", "idx")
  out = str(tmp_path_factory.mktemp("vision") / "out")
  try:
    assert command.main(["lazy-neuron reproduce", "--claims=C12,C13", "--scale=smoke",
                         f"--out={out}"]) == 0
    yield out
  finally:
    patch.undo()


def test_smoke_c12_c13(smoke):
  with open(os.path.join(smoke, "summary.json")) as f:
    entries = {c["id"]: c for c in json.load(f)["claims"]}
  assert set(entries) == {"C12", "C13"}
  for c in entries.values():  # 6 steps decide nothing, but the evidence is there
    assert c["verdict"] == INCONCLUSIVE and "shorter than" in c["evidence"]["reason"]
    assert "eval_corrupted/mean/accuracy" in c["evidence"]["vit_fmnist_topk16"]
  saved = json.load(open(os.path.join(smoke, "runs", "vit_fmnist", "eval_corrupted_6.json")))
  plan = corruptions.parse("gaussian_noise,contrast:1-5")  # the smoke config's corruption_eval
  for name, sev in plan:
    for metric in ("accuracy", "ece", "nll", "nonzero_frac"):
      assert np.isfinite(saved[f"eval_corrupted/{name}/{sev}/{metric}"])
  assert set(saved["reliability"]) == {"clean"} | {f"{n}/{s}" for n, s in plan}
  assert sum(saved["reliability"]["clean"]["count"]) == 16  # corruption_eval.examples
  means = [saved[f"eval_corrupted/mean/{s}/accuracy"] for s in range(1, 6)]
  assert saved["eval_corrupted/mean/accuracy"] == pytest.approx(np.mean(means))


def test_eval_corruptions_cli_and_refusals(smoke, capsys, tmp_path):
  workdir = os.path.join(smoke, "runs", "vit_fmnist")
  assert evaluate.main(["lazy-neuron eval", f"--workdir={workdir}", "--corruptions=fog:0"]) == 0
  saved = json.load(open(os.path.join(workdir, "eval_corrupted_6.json")))
  # severity 0 is the clean eval set: the same metrics as the clean evaluation
  assert saved["eval_corrupted/fog/0/accuracy"] == saved["eval/accuracy"]
  assert saved["eval_corrupted/fog/0/nll"] == pytest.approx(saved["eval/loss"], rel=1e-6)
  snap = hostile.snapshot(smoke)
  line = hostile.refuses(evaluate.main, ["lazy-neuron eval", f"--workdir={workdir}",
                                         "--corruptions=snowy:2"], capsys, snap)
  assert "'snowy' is not a corruption" in line
  line = hostile.refuses(evaluate.main, ["lazy-neuron eval", f"--workdir={workdir}",
                                         "--corruptions=snow:7"], capsys, snap)
  assert "outside 0..5" in line
  line = hostile.refuses(evaluate.main, [
      "lazy-neuron eval", f"--workdir={workdir}", "--config=configs/t5_offline.py:runlocal",
      "--corruptions=all"], capsys, snap)
  assert "needs an image classifier" in line and "docstrings" in line
  # missing data: the workdir's Fashion-MNIST is gone (and TFDS has none)
  moved = json.load(open(os.path.join(workdir, "config.json")))
  moved["data"].update(idx_dir=str(tmp_path / "gone"), data_dir=str(tmp_path))
  other = tmp_path / "w"
  other.mkdir()
  (other / "config.json").write_text(json.dumps(moved))
  snap = hostile.snapshot(smoke, tmp_path)
  line = hostile.refuses(evaluate.main, ["lazy-neuron eval", f"--workdir={other}",
                                         "--corruptions=all"], capsys, snap)
  assert "Fashion-MNIST not found" in line


def test_reproduce_draws_the_corruption_figures_from_the_runs_numbers(smoke, tmp_path):
  import shutil
  from lazy_neuron.reproduce import figures
  from lazy_neuron.results import load_run
  with open(os.path.join(smoke, "summary.json")) as f:
    drawn = {c["id"]: c["figures"] for c in json.load(f)["claims"]}
  assert "figures/C12_severity.png" in drawn["C12"]
  assert {"figures/C13_reliability.png", "figures/C13_ece_vs_severity.png"} <= set(drawn["C13"])
  # The severity figure plots what the run's eval_corrupted file says (a copy of the run, with
  # known numbers: other tests here re-evaluate the shared workdir on other corruptions).
  workdir = tmp_path / "run"
  shutil.copytree(os.path.join(smoke, "runs", "vit_fmnist"), workdir)
  numbers = {"eval/accuracy": 0.8, "eval/ece": 0.05, "sparsity/eval/mean/nonzero_frac": 0.4}
  for s in (1, 3, 5):
    numbers.update({f"eval_corrupted/mean/{s}/accuracy": 0.8 - 0.1 * s,
                    f"eval_corrupted/mean/{s}/ece": 0.05 + 0.01 * s,
                    f"eval_corrupted/mean/{s}/nonzero_frac": 0.4 + 0.01 * s})
  (workdir / "eval_corrupted_6.json").write_text(json.dumps(numbers))
  fig = figures.fig_severity([load_run(workdir)])
  for ax, key, scale in zip(fig.axes, ("accuracy", "ece", "nonzero_frac"), (100, 1, 100)):
    line = ax.lines[0]
    clean = numbers.get(f"eval/{key}", numbers.get(f"sparsity/eval/mean/{key}"))
    want = [clean] + [numbers[f"eval_corrupted/mean/{s}/{key}"] for s in (1, 3, 5)]
    np.testing.assert_allclose(line.get_xdata(), [0, 1, 3, 5])
    np.testing.assert_allclose(line.get_ydata(), scale * np.asarray(want), rtol=1e-12)


def test_reliability_diagram_in_the_report(smoke, tmp_path, capsys):
  from lazy_neuron import report
  runs = [os.path.join(smoke, "runs", n) for n in ("vit_fmnist", "vit_fmnist_topk16")]
  assert report.main(["lazy-neuron report", *runs, f"--out={tmp_path}"]) == 0
  summary = json.loads((tmp_path / "summary.json").read_text())
  assert summary["figures"]["reliability"] == report.RELIABILITY_FIGURE
  assert (tmp_path / report.RELIABILITY_FIGURE).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_registry_has_the_vision_claims():
  assert list(claims.CLAIMS) == ["C1", "C2", "C3", "C4", "C5", "C6", "C7", "C8", "C9", "C10",
                                 "C11", "C12", "C13", "C14"]
  assert [e.name for e in claims.CLAIMS["C6"].experiments("cpu")] == ["mixer_fmnist", "mlp_digits"]
  assert len(claims.CLAIMS["C11"].experiments("cpu")) == 9  # {0, 0.2, 0.4} x {dense, 2 Top-k}


# ------------------------------------------------------------------------------------------------
# One pipeline for every corrupted pass
# ------------------------------------------------------------------------------------------------
def test_eval_transforms_are_passes_of_one_pipeline(idx):  # noqa: F811 - the fixture imported above
  """`data.build(eval_transforms=[...])` yields, transform-major, exactly the batches of building
  each transform alone (padding zeroed and masked), on each of 2 process shards."""
  from lazy_neuron import data
  from tests.test_fashion_mnist import cfg
  transforms = [None, corruptions.batch_transform("gaussian_noise", 2),
                corruptions.batch_transform("contrast", 4)]
  real = []
  for shard in (dict(process_index=0, process_count=2), dict(process_index=1, process_count=2)):
    kw = dict(split="eval", batch_size=16, seed=0, **shard)  # 21 examples: 2 batches, 11 padding
    with data.build(cfg(idx), eval_transforms=transforms, **kw) as it:
      assert len(it) == 3 * 2
      together = list(it)
    alone = [b for t in transforms for b in data.build(cfg(idx), eval_transform=t, **kw)]
    assert len(together) == len(alone) == 6
    for a, b in zip(together, alone):
      assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(together[0]["image"], together[2]["image"])  # corrupted
    real += [sum(b["mask"].sum() for b in together[j * 2:(j + 1) * 2]) for j in range(3)]
  assert real == [11] * 3 + [10] * 3  # the 21 examples of each pass, split between the shards


def test_corrupted_eval_starts_one_pipeline_and_matches_each_pass_alone(smoke, tmp_path,
                                                                         monkeypatch):
  """`evaluate_corrupted` builds ONE eval iterator for the clean pass and every (corruption,
  severity) pass, and each pass's metrics equal that pass evaluated alone through `_evaluate`."""
  import io
  import shutil
  from lazy_neuron import data
  workdir = tmp_path / "run"  # a copy: other tests read the shared run's eval_corrupted file
  shutil.copytree(os.path.join(smoke, "runs", "vit_fmnist"), workdir)
  config = evaluate._config_from_workdir(str(workdir))  # 21 test images: 2 batches, one padded
  plan = corruptions.parse("gaussian_noise,contrast:2-3") + [("fog", 0)]
  builds, seen = [], {}
  build, corrupted = data.build, evaluate.evaluate_corrupted
  monkeypatch.setattr(data, "build", lambda *a, **k: builds.append(k) or build(*a, **k))

  def spy(steps, params, config, plan):
    seen.update(steps=steps, params=params, config=config)
    return corrupted(steps, params, config, plan)

  monkeypatch.setattr(evaluate, "evaluate_corrupted", spy)
  results = evaluate.run(config, str(workdir), stream=io.StringIO(), corruptions=plan)
  assert len(builds) == 1 and len(builds[0]["eval_transforms"]) == 1 + len(plan)
  steps, params, config = seen["steps"], seen["params"], seen["config"]
  # float32 per-batch sums of 21 examples, added in float64: equal up to a few float32 roundings
  approx = lambda v: pytest.approx(v, rel=21 * float(np.finfo(np.float32).eps), abs=1e-7)
  clean, _, bins = evaluate._evaluate(steps, params, config)
  assert results["eval/accuracy"] == approx(clean["eval/accuracy"])
  assert results["eval/loss"] == approx(clean["eval/loss"])
  np.testing.assert_allclose(results["reliability"]["clean"]["count"], evaluate._bins(bins)["count"])
  for name, severity in plan:
    alone, _, bins = evaluate._evaluate(steps, params, config,
                                        corruptions.batch_transform(name, severity))
    key = f"eval_corrupted/{name}/{severity}/"
    for metric, want in [("accuracy", alone["eval/accuracy"]), ("nll", alone["eval/loss"]),
                         ("ece", alone["eval/ece"]), ("nonzero_frac", alone[evaluate.NONZERO])]:
      assert results[key + metric] == approx(want), (key + metric)
    for field, values in evaluate._bins(bins).items():
      np.testing.assert_allclose(results["reliability"][f"{name}/{severity}"][field], values,
                                 rtol=21 * np.finfo(np.float32).eps, atol=1e-6)
  assert results["eval_corrupted/fog/0/nll"] == approx(results["eval/loss"])
  assert results["eval_corrupted/gaussian_noise/3/nll"] != approx(results["eval/loss"])
