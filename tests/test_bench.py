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
    (["--steps=0"], "--steps=0 must be >= 1"),
    (["--bogus=1"], "unknown flag '--bogus=1'"),
])
def test_bench_train_rejects_bad_flags_before_any_work(flags, message, capsys):
  rc = bench_train.main(["lazy-neuron bench train", "--config=configs/vit_digits.py:runlocal", *flags])
  assert rc == 2
  err = capsys.readouterr().err.strip()
  assert message in err and len(err.splitlines()) == 1
