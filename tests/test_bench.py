"""`lazy-neuron bench train`: fixed-batch and pipeline-fed timing rows, and its usage errors."""
import json

import pytest

from lazy_neuron.bench import train as bench_train


def test_bench_train_times_the_step_fed_by_the_input_pipeline(tmp_path, capsys):
  out = tmp_path / "bench.json"
  rc = bench_train.main(["lazy-neuron bench train", "--config=configs/vit_digits.py:runlocal",
                         "--variants=dense", "--input=pipeline", "--steps=2", "--warmup=0",
                         "--pipeline-warmup=1", f"--out={out}"])
  assert rc == 0
  row, = json.loads(out.read_text())["rows"]
  assert row["variant"] == "dense" and row["pipeline_warmup_steps"] == 1
  for key in ("step_ms", "pipeline_step_ms", "pipeline_examples_per_s"):
    assert row[key] > 0, key
  assert "fed by the input pipeline" in capsys.readouterr().out


@pytest.mark.parametrize("flags, message", [
    (["--input=pipeline", "--synthetic=image,8,10"], "cannot be combined with --synthetic"),
    (["--steps=0"], "--steps=0 is not valid; use an integer >= 1"),
    (["--steps", "0"], "--steps=0 is not valid; use an integer >= 1"),
    (["--warmup=-1"], "--warmup=-1 is not valid; use an integer >= 0"),
    (["--steps=x"], "argument --steps: invalid int value: 'x'"),
    (["--input=bogus"], "argument --input: invalid choice: 'bogus'"),
    (["--bogus=1"], "unrecognized arguments: --bogus=1"),
    (["--steps=2", "--steps=3"], "flag --steps is given twice"),
    (["--variants=bogus"], "--variants entry 'bogus' is not valid"),
    (["--config.model.nme=3"], "unknown config key 'config.model.nme'"),
])
def test_bench_train_rejects_bad_flags_before_any_work(flags, message, capsys):
  rc = bench_train.main(["lazy-neuron bench train", "--config=configs/vit_digits.py:runlocal", *flags])
  captured = capsys.readouterr()
  err = captured.err.strip()
  assert rc == 2 and captured.out == "", captured.out
  assert err.startswith("lazy-neuron: error: ") and len(err.splitlines()) == 1, err
  assert message in err, err


def test_bench_train_requires_config_in_one_line(capsys):
  assert bench_train.main(["lazy-neuron bench train", "--steps", "1"]) == 2
  err = capsys.readouterr().err.strip()
  assert err.splitlines() == [err] and "the following arguments are required: --config" in err


def test_bench_train_help_exits_0(capsys):
  with pytest.raises(SystemExit) as e:
    bench_train.main(["lazy-neuron bench train", "--help"])
  assert e.value.code == 0 and "--pipeline-warmup" in capsys.readouterr().out
