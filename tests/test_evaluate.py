"""`lazy-neuron eval`: flags (both forms, unknown ones refused), results equal to the trainer's own
evaluation of the same checkpoint, and eval-set accumulation weighted by examples."""
import io
import json

import numpy as np
import pytest

from lazy_neuron import config_lib, evaluate, train

CONFIG = "configs/mlp_gaussian.py:runlocal"


@pytest.fixture(autouse=True)
def _chdir_repo(repo_root, monkeypatch):
  monkeypatch.chdir(repo_root)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  """A finished 4-step run (eval at 4, checkpoints at 2 and 4) on the 8 test devices, as the eval
  command builds its mesh from all devices."""
  wd = tmp_path_factory.mktemp("eval_run")
  config = config_lib.load_config(CONFIG, ["config.tensorboard=False"])
  train.train_and_evaluate(config, str(wd), stream=io.StringIO())
  return wd


def test_eval_with_space_separated_workdir_matches_the_trainers_eval(workdir, capsys):
  assert evaluate.main(["lazy-neuron eval", "--workdir", str(workdir)]) == 0
  out = capsys.readouterr().out
  assert f"evaluated checkpoint 4 of {workdir}" in out
  got = json.loads((workdir / "eval_4.json").read_text())
  row, = [json.loads(line) for line in open(workdir / "metrics.jsonl")
          if json.loads(line)["step"] == 4 and "eval/loss" in line]
  keys = [k for k in row if k.startswith(("eval/", "sparsity/eval/"))]
  assert "eval/loss" in keys and "eval/accuracy" in keys and "eval/ece" in keys
  # The same program on the same devices and the same float64 host sums: equal up to the last
  # bits of a float64 division (the JSON round trip keeps float64 exactly).
  for k in keys:
    assert got[k] == pytest.approx(row[k], rel=1e-12, abs=1e-15), k


def test_eval_with_config_flag_and_override(workdir, capsys):
  rc = evaluate.main(["lazy-neuron eval", f"--workdir={workdir}", "--config", CONFIG,
                      "--config.tensorboard", "False"])
  assert rc == 0, capsys.readouterr().err
  assert "evaluated checkpoint 4" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    ([], "the following arguments are required: --workdir"),
    (["--workdir=/nonexistent/x", "--bogus=1"], "unrecognized arguments: --bogus=1"),
    (["--workdir=/nonexistent/x", "--workdir=/y"], "flag --workdir is given twice"),
    (["--workdir=/nonexistent/x", "--config.seed=3"], "--config.KEY overrides need --config="),
    (["--workdir", "/nonexistent/x"], "--workdir='/nonexistent/x' does not exist"),
])
def test_eval_bad_flags_fail_with_one_line_error(argv, message, capsys):
  assert evaluate.main(["lazy-neuron eval", *argv]) == 2
  captured = capsys.readouterr()
  err = captured.err.strip()
  assert err.startswith("lazy-neuron: error: ") and len(err.splitlines()) == 1, err
  assert message in err and captured.out == "", err


def test_eval_help_exits_0(capsys):
  with pytest.raises(SystemExit) as e:
    evaluate.main(["lazy-neuron eval", "--help"])
  assert e.value.code == 0 and "--workdir" in capsys.readouterr().out


def test_eval_batches_add_up_weighted_by_examples():
  """Loss and accuracy are sums over all examples / their number, not a mean of batch means."""
  batch = lambda loss, weight, correct: evaluate._batch_metrics(
      {"sums": {"loss_sum": np.float32(loss), "weight_sum": np.float32(weight),
                "correct_sum": np.float32(correct)}, "sparsity": {}})
  total = evaluate._merge(batch(2.0, 1.0, 1.0), batch(9.0, 3.0, 0.0))
  # Small integers: every value is exact in float32 and float64.
  assert float(total["loss"].compute()) == 11.0 / 4.0  # a mean of batch means would be 2.5
  assert float(total["accuracy"].compute()) == 1.0 / 4.0
