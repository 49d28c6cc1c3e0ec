"""`lazy-neuron bench train`: fixed-batch and pipeline-fed timing rows, and its usage errors."""
import json
import os

import jax
import pytest

from lazy_neuron import flops
from lazy_neuron.bench import train as bench_train

import hostile


def test_bench_train_times_the_step_fed_by_the_input_pipeline(tmp_path, capsys):
  out = tmp_path / "bench.json"
  rc = bench_train.main(["lazy-neuron bench train", "--config=configs/vit_digits.py:runlocal",
                         "--variants=dense", "--input=pipeline", "--steps=2", "--warmup=0",
                         "--pipeline-warmup=1", f"--out={out}", f"--profile={tmp_path}/prof"])
  assert rc == 0
  row, = json.loads(out.read_text())["rows"]
  assert row["variant"] == "dense" and row["pipeline_warmup_steps"] == 1
  for key in ("step_ms", "pipeline_step_ms", "pipeline_examples_per_s"):
    assert row[key] > 0, key
  # --profile traces fixed-batch steps and pipeline-fed steps, each into a directory of its own.
  for key, where in (("profile", "prof/dense"), ("pipeline_profile", "prof/dense_pipeline")):
    assert row[key]["steps_traced"] == 2 and row[key]["device_ms_per_step"] > 0, key
    assert row[key]["trace_dir"].startswith(str(tmp_path / where)), key
  printed = capsys.readouterr().out
  assert "fed by the input pipeline" in printed and "dense (fed by the pipeline)" in printed


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


def test_bench_train_runs_the_t5_c4_config_on_synthetic_batches_without_a_tokenizer(tmp_path,
                                                                                    capsys):
  """configs/t5_c4.py sets no tokenizer (a real run must give one); synthetic batches need none."""
  out = tmp_path / "sub" / "t5.json"
  rc = bench_train.main(["lazy-neuron bench train", "--config=configs/t5_c4.py",
                         "--synthetic=text,16,8,250", "--config.model.variant=tiny",
                         "--config.batch_size=8", "--variants=dense", "--steps=1", "--warmup=0",
                         f"--out={out}"])
  printed = capsys.readouterr().out
  assert rc == 0
  result = json.loads(out.read_text())
  row, = result["rows"]
  # tiny T5 (2 + 2 layers, d 128, 4 x 32 heads, d_ff 1024), vocab 250 padded to 256
  sizes = dict(emb_dim=128, num_heads=4, head_dim=32, mlp_dim=1024, num_encoder_layers=2,
               num_decoder_layers=2)
  assert row["flops_per_step"] == flops.t5(sizes, 256, 8, 16, 8).model
  assert row["tokens_per_s"] == pytest.approx(8 * (16 + 8) / (row["step_ms"] / 1e3))
  assert row["compile_s"] > 0 and row["first_step_s"] >= row["compile_s"]
  assert row["init_s"] > 0 and row["start_s"] == row["init_s"] + row["first_step_s"]
  assert row["step_bytes_per_device"] > 0 and row["tflops_per_s"] > 0
  assert row["mfu"] is None and "CPU" in row["mfu_peak"]  # no peak for CPUs
  assert "peak_bytes_per_device" in row
  assert result["hardware"]["platform"] == "cpu" and result["hardware"]["host_cpu"]
  assert set(result["versions"]) >= {"python", "jax", "jaxlib", "flax", "optax"}
  assert "commit" in result["git"] and result["command"].startswith("lazy-neuron bench train ")
  assert "model FLOPs/step" in printed and "MFU" in printed


def test_bench_train_still_validates_the_rest_of_a_synthetic_config(capsys):
  line = hostile.refuses(bench_train.main, [
      "lazy-neuron bench train", "--config=configs/t5_c4.py", "--synthetic=text,16,8,250",
      "--config.optimizer.learning_rate=-1"], capsys)
  assert "optimizer.learning_rate=-1" in line


@pytest.mark.parametrize("where", ["file_as_folder", "folder", "readonly"])
def test_bench_train_refuses_an_unwritable_out_before_any_work(where, tmp_path, capsys,
                                                               monkeypatch):
  blocker = tmp_path / "a_file"
  blocker.write_text("x")
  out = {"file_as_folder": blocker / "deeper" / "bench.json", "folder": tmp_path,
         "readonly": tmp_path / "ro" / "bench.json"}[where]
  if where == "readonly":  # root may write anywhere: ask os.access as an unprivileged user would
    (tmp_path / "ro").mkdir()
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, m: False if str(p).endswith("ro") else real(p, m))
  monkeypatch.setattr(bench_train, "time_variant",
                      lambda *a, **k: pytest.fail("the benchmark ran before --out was checked"))
  snap = hostile.snapshot(tmp_path)
  line = hostile.refuses(bench_train.main, [
      "lazy-neuron bench train", "--config=configs/vit_digits.py:runlocal", f"--out={out}"],
      capsys, snap)
  assert line.startswith(f"lazy-neuron: error: --out='{out}' is not valid"), line


def test_bench_attention_times_every_case_and_writes_json(tmp_path, capsys):
  """`bench attention` on CPU (XLA's implementation, tiny shapes): one row per case and lengths
  setting, positive times, the JSON with hardware and versions; cuDNN where it cannot run is one
  line, exit 2, nothing written."""
  from lazy_neuron.bench import attention
  out = tmp_path / "att.json"
  assert attention.main(["lazy-neuron bench attention", "--implementation=xla", "--batch=2",
                         "--heads=2", "--head-dim=8", "--enc-len=8", "--dec-len=4", "--steps=1",
                         f"--out={out}"]) == 0
  result = json.loads(out.read_text())
  rows = result["rows"]
  assert [(r["case"], r["lengths"]) for r in rows] == [
      (c[0], lengths) for lengths in (False, True) for c in attention.CASES]
  assert all(r["fwd_ms"] > 0 and r["fwd_bwd_ms"] > 0 for r in rows)
  assert {r["k_len"] for r in rows if r["case"] == "dec_cross"} == {8}
  assert result["versions"]["jax"] and result["hardware"]["device_kind"]
  capsys.readouterr()
  bad = tmp_path / "bad.json"
  if jax.default_backend() != "gpu":
    assert attention.main(["lazy-neuron bench attention", "--implementation=cudnn",
                           f"--out={bad}"]) == 2
    assert "--implementation='cudnn'" in capsys.readouterr().err
  assert attention.main(["lazy-neuron bench attention", "--enc-len=0", f"--out={bad}"]) == 2
  assert not bad.exists()
