"""`lazy-neuron reproduce`: each verdict rule on hand-made metrics (supported / not supported /
inconclusive), the smoke scale end to end (C1, C7), summary.json's schema, resuming, bad input."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from lazy_neuron.reproduce import claims, command
from lazy_neuron.reproduce.claims import INCONCLUSIVE, REFUTED, SUPPORTED
from lazy_neuron.results import Run
from tests import hostile

T5_CFG = {"model": {"num_encoder_layers": 2, "num_decoder_layers": 2, "mlp_dim": 64,
                    "topk": None}}


def mk(name="r", config=None, **metrics):
  """A Run from {metric name with '.' for '/': [(step, value), ...]}."""
  cols = {}
  for key, points in metrics.items():
    steps, values = zip(*points)
    cols[key.replace(".", "/")] = (np.array(steps, np.int64), np.array(values, np.float64))
  return Run(workdir=f"/nowhere/{name}", name=name, config=config or T5_CFG, metrics=cols)


def nz(start, final, split="eval", layer="mean", steps=(0, 100)):
  return {f"sparsity.{split}.{layer}.nonzero_frac": [(steps[0], start), (steps[1], final)]}


# ------------------------------------------------------------------------------------------------
# Rules on hand-made metrics
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("start,final,want", [
    (0.50, 0.30, SUPPORTED),       # near 50%, falls by 0.2
    (0.50, 0.52, REFUTED),         # does not fall
    (0.30, 0.10, REFUTED),         # starts far from 50%
    (0.50, 0.47, INCONCLUSIVE),    # falls, but by less than the margin
    (0.42, 0.20, INCONCLUSIVE),    # start near, not within the band
])
def test_c1(start, final, want):
  assert claims.judge_c1({"a": mk(**nz(start, final))})[0] == want


def test_c1_needs_step_zero_and_runs():
  assert claims.judge_c1({"a": mk(**nz(0.5, 0.2, steps=(10, 100)))})[0] == INCONCLUSIVE
  verdict, rule, evidence = claims.judge_c1({})
  assert verdict == INCONCLUSIVE and "reason" in evidence and "0.45" in rule


def _layers(values: dict):
  """{layer: (start, final)} -> per-layer eval metrics."""
  out = {}
  for layer, (s, f) in values.items():
    out.update(nz(s, f, layer=layer))
  return out


def test_c3():
  good = {"encoder.layer_00": (0.5, 0.30), "encoder.layer_01": (0.5, 0.20),
          "decoder.layer_00": (0.5, 0.35), "decoder.layer_01": (0.5, 0.25)}
  assert claims.judge_c3({"a": mk(**_layers(good))})[0] == SUPPORTED
  # the second encoder layer clearly denser than the first
  bad = dict(good, **{"encoder.layer_01": (0.5, 0.40)})
  assert claims.judge_c3({"a": mk(**_layers(bad))})[0] == REFUTED
  # a layer that did not fall at all
  flat = dict(good, **{"decoder.layer_01": (0.5, 0.5)})
  assert claims.judge_c3({"a": mk(**_layers(flat))})[0] == REFUTED
  # denser than the first, but within the margin; or a layer falling by too little
  close = dict(good, **{"encoder.layer_01": (0.5, 0.305)})
  assert claims.judge_c3({"a": mk(**_layers(close))})[0] == INCONCLUSIVE
  small = dict(good, **{"decoder.layer_00": (0.5, 0.48)})  # still the densest of its stack
  assert claims.judge_c3({"a": mk(**_layers(small))})[0] == INCONCLUSIVE


@pytest.mark.parametrize("eval_final,train_final,want", [
    (0.30, 0.31, SUPPORTED), (0.30, 0.45, REFUTED), (0.30, 0.36, INCONCLUSIVE),
    (0.49, 0.49, INCONCLUSIVE),  # equal, but nothing became sparse: not evidence
])
def test_c4(eval_final, train_final, want):
  run = mk(**nz(0.5, eval_final), **nz(0.5, train_final, split="train", steps=(50, 100)))
  assert claims.judge_c4({"a": run})[0] == want


def _grid(values: dict):
  """{(layers per stack, width): final} -> runs."""
  return {f"l{d}_w{w}": mk(f"l{d}_w{w}", {"model": {"num_encoder_layers": d,
                                                    "num_decoder_layers": d, "mlp_dim": w}},
                           **nz(0.5, f))
          for (d, w), f in values.items()}


def test_c5():
  good = {(1, 64): 0.40, (1, 128): 0.35, (2, 64): 0.30, (2, 128): 0.25}
  verdict, _, evidence = claims.judge_c5(_grid(good))
  assert verdict == SUPPORTED and len(evidence["sparser_by"]) == 4
  assert claims.judge_c5(_grid({**good, (2, 128): 0.33}))[0] == REFUTED  # wider denser
  assert claims.judge_c5(_grid({**good, (2, 128): 0.295}))[0] == INCONCLUSIVE  # in margin
  # an ordering in line with the claim among runs that never became sparse decides nothing
  flat = {(1, 64): 0.49, (1, 128): 0.47, (2, 64): 0.46, (2, 128): 0.44}
  assert claims.judge_c5(_grid(flat))[0] == INCONCLUSIVE
  assert claims.judge_c5(_grid({(1, 64): 0.4, (2, 64): 0.3}))[0] == INCONCLUSIVE  # one width


@pytest.mark.parametrize("judge", [claims.judge_c6])
def test_c6(judge):
  assert judge({"a": mk(**nz(0.5, 0.3)), "b": mk(**nz(0.5, 0.2))})[0] == SUPPORTED
  assert judge({"a": mk(**nz(0.5, 0.3)), "b": mk(**nz(0.48, 0.49))})[0] == REFUTED
  assert judge({"a": mk(**nz(0.5, 0.3)), "b": mk(**nz(0.5, 0.47))})[0] == INCONCLUSIVE


def test_c7_reads_the_train_split():
  train = lambda s, f: mk(**nz(s, f, split="train", steps=(50, 500)))
  assert claims.judge_c7({"a": train(0.5, 0.1), "b": train(0.5, 0.3)})[0] == SUPPORTED
  assert claims.judge_c7({"a": train(0.5, 0.1), "b": train(0.4, 0.45)})[0] == REFUTED
  assert claims.judge_c7({"a": train(0.5, 0.1), "b": train(0.5, 0.46)})[0] == INCONCLUSIVE
  # eval-only metrics: the random data's own split is missing
  assert claims.judge_c7({"a": mk(**nz(0.5, 0.1))})[0] == INCONCLUSIVE


def _live(start, final):
  return {"sparsity.eval.encoder.layer_00.live_nonzero_frac": [(0, start), (100, final)]}


def test_c8():
  base = nz(0.5, 0.2)
  assert claims.judge_c8({"a": mk(**base, **_live(0.5, 0.3))})[0] == SUPPORTED
  assert claims.judge_c8({"a": mk(**base, **_live(0.5, 0.5))})[0] == REFUTED
  assert claims.judge_c8({"a": mk(**base, **_live(0.5, 0.47))})[0] == INCONCLUSIVE
  verdict, _, evidence = claims.judge_c8({"a": mk(**base)})
  assert verdict == INCONCLUSIVE and "live_nonzero_frac not recorded" in evidence["reason"]


def _flops(mlp, model):
  return {"sparsity.eval.mlp_flops_skippable_frac": [(0, mlp[0]), (100, mlp[1])],
          "sparsity.eval.model_flops_skippable_frac": [(0, model[0]), (100, model[1])]}


def test_c9():
  assert claims.judge_c9({"a": mk(**_flops((0.25, 0.4), (0.1, 0.2)))})[0] == SUPPORTED
  assert claims.judge_c9({"a": mk(**_flops((0.25, 0.24), (0.1, 0.2)))})[0] == REFUTED
  assert claims.judge_c9({"a": mk(**_flops((0.25, 0.26), (0.1, 0.2)))})[0] == INCONCLUSIVE
  verdict, _, evidence = claims.judge_c9({"a": mk(**nz(0.5, 0.2))})
  assert verdict == INCONCLUSIVE and "not recorded" in evidence["reason"]


def _c10(dense_start, dense_final, topk_final):
  topk_cfg = {"model": dict(T5_CFG["model"], topk=16)}
  return {"dense": mk("dense", **{"eval.loss": [(0, dense_start), (100, dense_final)]}),
          "topk": mk("topk", topk_cfg, **{"eval.loss": [(0, dense_start), (100, topk_final)]})}


def test_c10():
  assert claims.judge_c10(_c10(6.0, 3.0, 3.03))[0] == SUPPORTED
  assert claims.judge_c10(_c10(6.0, 3.0, 3.3))[0] == REFUTED
  assert claims.judge_c10(_c10(6.0, 3.0, 3.1))[0] == INCONCLUSIVE  # between the margins
  assert claims.judge_c10(_c10(6.0, 5.9, 5.9))[0] == INCONCLUSIVE  # dense run learned nothing
  assert claims.judge_c10({"a": mk(**{"eval.loss": [(0, 6), (9, 3)]})})[0] == INCONCLUSIVE


def _pre(mean, pos):
  return {"sparsity.eval.mean.preact_mean": [(0, mean[0]), (10, mean[1]), (100, -1.0)],
          "sparsity.eval.mean.preact_pos_frac": [(0, pos[0]), (10, pos[1]), (100, 0.1)]}


def test_c14():
  assert claims.judge_c14({"a": mk(**_pre((0.0, -0.1), (0.5, 0.45)))})[0] == SUPPORTED
  assert claims.judge_c14({"a": mk(**_pre((0.0, -0.1), (0.5, 0.52)))})[0] == REFUTED
  assert claims.judge_c14({"a": mk(**_pre((0.0, -0.1), (0.5, 0.495)))})[0] == INCONCLUSIVE
  assert claims.judge_c14({"a": mk(**nz(0.5, 0.2))})[0] == INCONCLUSIVE


def test_length_guard():
  """Every registered rule: a run shorter than MIN_STEPS decides nothing, whatever it shows."""
  judge = claims.CLAIMS["C1"].judge
  assert judge({"a": mk(**nz(0.5, 0.2, steps=(0, 100)))})[0] == SUPPORTED
  verdict, rule, evidence = judge({"a": mk(**nz(0.5, 0.2, steps=(0, 99)))})
  assert verdict == INCONCLUSIVE and "shorter than 100 steps" in evidence["reason"]
  assert evidence["rule_verdict_before_length_guard"] == SUPPORTED and claims.LENGTH_RULE in rule
  verdict, _, evidence = claims.CLAIMS["C8"].judge({"a": mk(**nz(0.5, 0.2, steps=(0, 6)))})
  assert "shorter than 100" in evidence["reason"] and "not recorded" in evidence["reason"]
  assert claims.CLAIMS["C7"].judge({"a": mk(**nz(0.5, 0.6, "train", steps=(2, 6)))})[0] == (
      INCONCLUSIVE)
  assert all(c.judge.__name__ == "guarded" or c.judge.__name__.startswith("judge")
             for c in claims.CLAIMS.values())


def test_registry():
  assert list(claims.CLAIMS) == ["C1", "C2", "C3", "C4", "C5", "C6", "C7", "C8", "C9", "C10",
                                 "C11", "C12", "C13", "C14"]
  for scale in claims.SCALES:  # every experiment's config loads and validates at every scale
    exps = claims.experiments_for(list(claims.CLAIMS), scale)
    assert len({e.name for e in exps}) == len(exps)
    configs = command.load_configs(exps)
    assert len(configs) == len(exps)


def test_docs_print_the_rules_in_the_code():
  docs = open(os.path.join(command.ROOT, "docs", "reproduction.md")).read()
  for cid, claim in claims.CLAIMS.items():
    rule = claim.judge({})[1].replace(claims.LENGTH_RULE, "")
    assert f"Rule: {rule}" in docs, f"docs/reproduction.md is stale for {cid}"


# ------------------------------------------------------------------------------------------------
# End to end at the smoke scale
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def smoke(reproduce_smoke):
  return reproduce_smoke  # conftest.py: shared with tests/test_figures.py


def test_smoke_summary_schema(smoke):
  with open(os.path.join(smoke, "summary.json")) as f:
    summary = json.load(f)
  assert set(summary) == {"scale", "claims"} and summary["scale"] == "smoke"
  assert [c["id"] for c in summary["claims"]] == ["C1", "C7"]
  for c in summary["claims"]:
    assert set(c) == {"id", "claim", "verdict", "rule", "evidence", "paper", "runs", "figures"}
    assert c["verdict"] in claims.VERDICTS
    # 6 steps cannot show a fall of 5 points: the honest verdict is inconclusive
    assert c["verdict"] == INCONCLUSIVE and c["evidence"]["reason"]
    for r in c["runs"]:
      assert os.path.exists(os.path.join(smoke, r, "metrics.jsonl"))
    assert c["figures"] and all(os.path.getsize(os.path.join(smoke, f)) for f in c["figures"])
  assert summary["claims"][0]["figures"] == ["figures/C1_nonzero_vs_step.png",
                                             "figures/C1_layers_vs_step.png"]
  assert summary["claims"][1]["runs"] == ["runs/mlp_gaussian", "runs/t5_random_inputs"]
  md = open(os.path.join(smoke, "reproduction.md")).read()
  assert claims.C1_RULE in md and "lazy-neuron reproduce --claims=C1,C7 --scale=smoke" in md


def test_rerun_skips_finished_runs(smoke, capsys):
  before = hostile.snapshot(os.path.join(smoke, "runs"))
  capsys.readouterr()
  assert command.main(["lazy-neuron reproduce", "--claims=C7", "--scale=smoke",
                       f"--out={smoke}"]) == 0
  printed = capsys.readouterr().out
  assert printed.count("skipped") == 2 and "training to step" not in printed
  assert not hostile.changes(before, hostile.snapshot(os.path.join(smoke, "runs")))
  with open(os.path.join(smoke, "summary.json")) as f:  # C1 kept from the first invocation
    assert [c["id"] for c in json.load(f)["claims"]] == ["C1", "C7"]


# ------------------------------------------------------------------------------------------------
# Bad input: one line, exit 2, nothing written
# ------------------------------------------------------------------------------------------------
def _refuses(argv, capsys, *roots):
  snap = hostile.snapshot(*roots)
  return hostile.refuses(command.main, ["lazy-neuron reproduce", *argv], capsys, snap)


def test_bad_claim_and_scale(tmp_path, capsys):
  out = str(tmp_path / "out")
  assert "C15 is not a claim id" in _refuses(["--claims=C1,C15", f"--out={out}"], capsys, tmp_path)
  assert "is not a claim id" in _refuses(["--claims=C1,", f"--out={out}"], capsys, tmp_path)
  assert "--scale='tpu'" in _refuses(["--scale=tpu", f"--out={out}"], capsys, tmp_path)
  assert "--out" in _refuses(["--claims=C1"], capsys, tmp_path)
  (tmp_path / "file").write_text("x")
  assert "existing file" in _refuses([f"--out={tmp_path / 'file'}"], capsys, tmp_path)


def test_out_of_another_scale(smoke, tmp_path, capsys):
  line = _refuses(["--claims=C1", "--scale=cpu", f"--out={smoke}"], capsys, smoke)
  assert "scale 'smoke'" in line
  # a summary.json alone (its runs moved away) still names its scale
  alone = tmp_path / "alone"
  alone.mkdir()
  (alone / "summary.json").write_text(json.dumps({"scale": "gpu", "claims": []}))
  line = _refuses(["--claims=C1", "--scale=smoke", f"--out={alone}"], capsys, tmp_path)
  assert "holds results of scale 'gpu'" in line
  # runs of another scale without a summary.json (a run interrupted before judging)
  out = tmp_path / "out"
  (out / "runs" / "t5").mkdir(parents=True)
  saved = os.path.join(smoke, "runs", "t5", "config.json")
  (out / "runs" / "t5" / "config.json").write_bytes(open(saved, "rb").read())
  line = _refuses(["--claims=C1", "--scale=cpu", f"--out={out}"], capsys, tmp_path)
  assert "runs/t5 holds a run of scale 'smoke'" in line


def test_print_commands_gives_the_runs_train_commands_and_writes_nothing(smoke, tmp_path, capsys):
  """--print-commands: one `lazy-neuron train` per unfinished run, whose config (file, args and
  overrides) is exactly the experiment's; nothing is written; finished runs are left out."""
  import shlex
  from lazy_neuron import config_lib, train
  out = tmp_path / "new"
  assert command.main(["lazy-neuron reproduce", "--claims=C7,C10", "--scale=smoke", f"--out={out}",
                       "--print-commands"]) == 0
  assert not out.exists()
  lines = capsys.readouterr().out.strip().splitlines()
  experiments = claims.experiments_for(["C7", "C10"], "smoke")
  assert len(lines) == len(experiments) + 1 and lines[-1].startswith("# then, to judge:")
  want = command.load_configs(experiments)
  for line, e in zip(lines, experiments):
    argv = shlex.split(line)
    assert argv[:2] == ["lazy-neuron", "train"] and argv[3] == f"--workdir={out}/runs/{e.name}"
    overrides = [a[2:] for a in argv[4:]]
    got = config_lib.load_config(argv[2].removeprefix("--config="), overrides)
    assert not train._diff_keys(json.loads(config_lib.to_json(got)),
                                json.loads(config_lib.to_json(want[e.name])))
  # The smoke DIR's runs (C1, C7) are finished: only the judging line is left.
  assert command.main(["lazy-neuron reproduce", "--claims=C1,C7", "--scale=smoke", f"--out={smoke}",
                       "--print-commands"]) == 0
  assert capsys.readouterr().out.strip().splitlines()[0].startswith("# then, to judge:")


def test_judge_only_judges_copied_runs_without_training(smoke, tmp_path, capsys):
  """--judge-only: runs copied back without their checkpoints (trained elsewhere) are judged as
  they are — same verdicts, nothing trained; a missing run is named and its claim undecided."""
  import shutil
  out = tmp_path / "copied"
  shutil.copytree(smoke, out, ignore=shutil.ignore_patterns("checkpoints"))
  os.remove(out / "summary.json")
  want = {c["id"]: c["verdict"] for c in json.load(open(os.path.join(smoke, "summary.json")))["claims"]}
  assert command.main(["lazy-neuron reproduce", "--claims=C1,C7", "--scale=smoke", f"--out={out}",
                       "--judge-only"]) == 0
  capsys.readouterr()
  got = json.load(open(out / "summary.json"))
  assert {c["id"]: c["verdict"] for c in got["claims"]} == want
  assert not list(out.glob("runs/*/checkpoints"))  # trained nothing
  shutil.rmtree(out / "runs" / "t5")
  assert command.main(["lazy-neuron reproduce", "--claims=C1", "--scale=smoke", f"--out={out}",
                       "--judge-only"]) == 0
  assert "no metrics in runs/t5" in capsys.readouterr().out
  assert json.load(open(out / "summary.json"))["claims"][0]["verdict"] == claims.INCONCLUSIVE
  assert not (out / "runs" / "t5").exists()
  line = _refuses(["--claims=C1", "--scale=smoke", f"--out={out}", "--judge-only",
                   "--print-commands"], capsys, tmp_path)
  assert "--judge-only" in line and "--print-commands" in line


def test_runs_copied_back_without_checkpoints_count_as_finished(smoke, tmp_path, capsys):
  """Metrics that reach the last step make a run finished even without its checkpoints: rerunning
  `reproduce` judges it and never trains it again (which would replace its metrics)."""
  import shutil
  out = tmp_path / "copied"
  shutil.copytree(smoke, out, ignore=shutil.ignore_patterns("checkpoints"))
  metrics = (out / "runs" / "t5" / "metrics.jsonl").read_bytes()
  assert command.main(["lazy-neuron reproduce", "--claims=C1", "--scale=smoke",
                       f"--out={out}"]) == 0
  assert "runs/t5: finished (step 6), skipped" in capsys.readouterr().out
  assert (out / "runs" / "t5" / "metrics.jsonl").read_bytes() == metrics
  assert not list(out.glob("runs/*/checkpoints"))
  # A run whose metrics stop short is not finished: its train command is printed.
  rows = metrics.decode().strip().splitlines()
  (out / "runs" / "t5" / "metrics.jsonl").write_text(
      "\n".join(r for r in rows if json.loads(r)["step"] < 6) + "\n")
  assert command.main(["lazy-neuron reproduce", "--claims=C1", "--scale=smoke", f"--out={out}",
                       "--print-commands"]) == 0
  assert "--workdir=" + str(out / "runs" / "t5") in capsys.readouterr().out
