"""Hostile input to every command except train/eval/bench train, and to both launchers: each case is
exit code 2, exactly one error line with the command's prefix, and the folders it was pointed at
byte-identical afterwards (nothing created, changed or removed). In-process `main(argv)` calls: no
subprocess, no jax start-up per case; the launchers only ever with --dry-run."""
from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest

import hostile
from lazy_neuron import report
from lazy_neuron.bench import input as bench_input
from lazy_neuron.bench import topk as bench_topk
from lazy_neuron.data import convert, tokenizer

ROOT = Path(__file__).resolve().parent.parent
CORPUS = "\n".join(f"line {i} of some text about functions and classes" for i in range(300))
GOOD_CONFIG = "configs/t5_c4.py:runlocal"


def _launcher(name):
  spec = importlib.util.spec_from_file_location(f"launch_{name}", ROOT / "launch" / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return lambda argv: module.common.main_wrapper(module.PROG, module.main, argv)


TPU, GPU = _launcher("tpu"), _launcher("gpu")


def _setup(tmp: Path) -> None:
  """Files the cases point at: a workdir, broken workdirs, corpora, a plain file, a folder."""
  (tmp / "run").mkdir()
  (tmp / "run" / "metrics.jsonl").write_text(json.dumps({"step": 1, "train/loss": 2.5}) + "\n")
  for name, body in (("empty", b""), ("torn", b'{"step": 1, "train/lo'),
                     ("latin1", b"\xff\xfe not utf-8 \xe9\n"),
                     ("nul", b"\x00" * 64)):
    (tmp / name).mkdir()
    (tmp / name / "metrics.jsonl").write_bytes(body)
  (tmp / "nometrics").mkdir()
  (tmp / "nometrics" / "config.json").write_text("{}")
  (tmp / "mdir" / "metrics.jsonl").mkdir(parents=True)
  (tmp / "badconfig").mkdir()
  (tmp / "badconfig" / "metrics.jsonl").write_text(json.dumps({"step": 1, "train/loss": 2.5}) + "\n")
  (tmp / "badconfig" / "config.json").write_text("{not json")
  (tmp / "corpus.txt").write_text(CORPUS)
  (tmp / "empty.txt").write_text("")
  (tmp / "blank.txt").write_text("\n  \n\n")
  (tmp / "file").write_text("a plain file")
  (tmp / "folder").mkdir()
  (tmp / "old.model").write_bytes(b"an earlier tokenizer")
  (tmp / "bad_syntax.py").write_text("def get_config(arg=None:\n  pass\n")
  (tmp / "crash.py").write_text("def get_config(arg=None):\n  return 1 / 0\n")


LONG = "x" * 300  # longer than a file name may be
# (id, main, argv after the program name ({t} = the test's folder), fragment of the error line).
CASES = [
    # ---- report
    ("report/missing-run", report.main, ["{t}/nope", "--out={t}/o"], "does not exist"),
    ("report/no-metrics", report.main, ["{t}/nometrics", "--out={t}/o"], "metrics.jsonl not found"),
    ("report/metrics-is-a-folder", report.main, ["{t}/mdir", "--out={t}/o"], "cannot read"),
    ("report/empty-metrics", report.main, ["{t}/empty", "--out={t}/o"], "has no metrics yet"),
    ("report/truncated-metrics", report.main, ["{t}/torn", "--out={t}/o"], "has no metrics yet"),
    ("report/non-utf8-metrics", report.main, ["{t}/latin1", "--out={t}/o"], "latin1"),
    ("report/nul-metrics", report.main, ["{t}/nul", "--out={t}/o"], "metrics"),
    ("report/bad-config-json", report.main, ["{t}/badconfig", "--out={t}/o"], "not valid JSON"),
    ("report/run-is-a-file", report.main, ["{t}/file", "--out={t}/o"], "file"),
    ("report/empty-dir-arg", report.main, ["", "--out={t}/o"], "DIR=''"),
    ("report/out-is-a-file", report.main, ["{t}/run", "--out={t}/file"], "existing file"),
    ("report/out-below-a-file", report.main, ["{t}/run", "--out={t}/file/o"], "is a file"),
    ("report/out-unwritable", report.main, ["{t}/run", "--out=/proc/ln_report"], "not writable"),
    ("report/out-empty", report.main, ["{t}/run", "--out="], "--out=''"),
    ("report/out-name-too-long", report.main, ["{t}/run", f"--out={{t}}/{LONG}"], "refuses"),
    ("report/out-twice", report.main, ["{t}/run", "--out={t}/a", "--out={t}/b"], "given twice"),
    ("report/no-out", report.main, ["{t}/run"], "--out"),
    ("report/no-dir", report.main, ["--out={t}/o"], "DIR"),
    # ---- bench topk (flag checks only: each case fails before any kernel runs)
    ("topk/k-0", bench_topk.main, ["--k=0"], "--k='0'"),
    ("topk/quick-k-0", bench_topk.main, ["--quick", "--k=0"], "--k='0'"),
    ("topk/k-negative", bench_topk.main, ["--k=-4"], "--k='-4'"),
    ("topk/k-above-D", bench_topk.main, ["--k=500", "--D=128"], "--D=128"),
    ("topk/quick-k-above-D", bench_topk.main, ["--quick", "--k=500", "--D=128"], "--D=128"),
    ("topk/k-empty", bench_topk.main, ["--k="], "--k=''"),
    ("topk/D-text", bench_topk.main, ["--D=big"], "--D='big'"),
    ("topk/T-0", bench_topk.main, ["--T=0"], "--T=0"),
    ("topk/T-huge", bench_topk.main, ["--T=100000000000"], "GiB"),
    ("topk/backend", bench_topk.main, ["--backend=nosuch"], "--backend='nosuch'"),
    ("topk/dtypes", bench_topk.main, ["--dtypes=nosuch"], "--dtypes='nosuch'"),
    ("topk/quick-dtypes", bench_topk.main, ["--quick", "--dtypes=float32,int8"], "--dtypes='int8'"),
    ("topk/baselines", bench_topk.main, ["--baselines=lax,nosuch"], "--baselines='nosuch'"),
    ("topk/data", bench_topk.main, ["--data=uniform"], "invalid choice"),
    ("topk/hardware-empty", bench_topk.main, ["--quick", "--hardware="], "--hardware=''"),
    ("topk/out-folder", bench_topk.main, ["--quick", "--out={t}/folder"], "is a folder"),
    ("topk/out-below-file", bench_topk.main, ["--quick", "--out={t}/file/x.json"], "is a file"),
    ("topk/out-unwritable", bench_topk.main, ["--quick", "--out=/proc/ln_topk.json"], "not writable"),
    ("topk/out-trailing-slash", bench_topk.main, ["--quick", "--out={t}/new/"], "separator"),
    ("topk/quick-twice", bench_topk.main, ["--quick", "--quick"], "given twice"),
    ("topk/abbreviated", bench_topk.main, ["--qui"], "unrecognized"),
    # ---- bench input (all before a single record is written into --dir)
    ("input/batch-0", bench_input.main, ["--dir={t}/bi", "--batch-size=0"], "--batch-size=0"),
    ("input/batch-negative", bench_input.main, ["--dir={t}/bi", "--batch-size=-8"], "--batch-size=-8"),
    ("input/batch-text", bench_input.main, ["--dir={t}/bi", "--batch-size=lots"], "invalid int"),
    ("input/records-0", bench_input.main, ["--dir={t}/bi", "--make-records=0"], "--make-records=0"),
    ("input/records-below-batch", bench_input.main, ["--dir={t}/bi", "--make-records=10"],
     "--batch-size=256"),
    ("input/records-huge", bench_input.main, ["--dir={t}/bi", "--make-records=1000000000"], "GiB free"),
    ("input/image-size-0", bench_input.main, ["--dir={t}/bi", "--image-size=0"], "--image-size=0"),
    ("input/image-size-huge", bench_input.main, ["--dir={t}/bi", "--image-size=200000"], "GiB"),
    ("input/workers-huge", bench_input.main, ["--dir={t}/bi", "--workers=100000"], "--workers=100000"),
    ("input/workers-below-minus-1", bench_input.main, ["--dir={t}/bi", "--workers=0,-2"], "--workers"),
    ("input/workers-empty", bench_input.main, ["--dir={t}/bi", "--workers="], "--workers=''"),
    ("input/threads-0", bench_input.main, ["--dir={t}/bi", "--threads=0"], "--threads=0"),
    ("input/batches-0", bench_input.main, ["--dir={t}/bi", "--batches=0"], "--batches=0"),
    ("input/warmup-negative", bench_input.main, ["--dir={t}/bi", "--warmup=-1"], "--warmup=-1"),
    ("input/decode-negative", bench_input.main, ["--dir={t}/bi", "--decode-images=-1"], "--decode-images"),
    ("input/image-dtype", bench_input.main, ["--dir={t}/bi", "--image-dtype=float16"], "invalid choice"),
    ("input/dir-is-a-file", bench_input.main, ["--dir={t}/file", "--out={t}/o.json"], "existing file"),
    ("input/dir-below-a-file", bench_input.main, ["--dir={t}/file/bi", "--out={t}/o.json"], "is a file"),
    ("input/dir-unwritable", bench_input.main, ["--dir=/proc/ln_bench", "--out={t}/o.json"], "not writable"),
    ("input/dir-remote", bench_input.main, ["--dir=gs://bucket/x", "--out={t}/o.json"], "local folder"),
    ("input/dir-empty", bench_input.main, ["--dir=", "--out={t}/o.json"], "--dir=''"),
    ("input/out-folder", bench_input.main, ["--dir={t}/bi", "--out={t}/folder"], "is a folder"),
    ("input/out-empty", bench_input.main, ["--dir={t}/bi", "--out="], "--out=''"),
    ("input/out-unwritable", bench_input.main, ["--dir={t}/bi", "--out=/proc/ln.json"], "not writable"),
    ("input/batch-twice", bench_input.main, ["--dir={t}/bi", "--batch-size=8", "--batch_size=8"],
     "given twice"),
    # ---- tokenizer
    ("tokenizer/missing-corpus", tokenizer.main, ["--corpus={t}/nope.txt", "--vocab-size=64",
                                                  "--out={t}/t.model"], "matches no file"),
    ("tokenizer/corpus-is-a-folder", tokenizer.main, ["--corpus={t}/folder", "--vocab-size=64",
                                                      "--out={t}/t.model"], "holds no file"),
    ("tokenizer/empty-corpus", tokenizer.main, ["--corpus={t}/empty.txt", "--vocab-size=64",
                                                "--out={t}/t.model"], "corpus is empty"),
    ("tokenizer/blank-corpus", tokenizer.main, ["--corpus={t}/blank.txt", "--vocab-size=64",
                                                "--out={t}/t.model"], "corpus is empty"),
    ("tokenizer/corpus-empty-flag", tokenizer.main, ["--corpus=", "--vocab-size=64",
                                                     "--out={t}/t.model"], "--corpus=''"),
    ("tokenizer/corpus-commas", tokenizer.main, ["--corpus=,,", "--vocab-size=64",
                                                 "--out={t}/t.model"], "corpus is empty"),
    ("tokenizer/vocab-too-small", tokenizer.main, ["--corpus={t}/corpus.txt", "--vocab-size=5",
                                                   "--out={t}/t.model"], "use at least"),
    ("tokenizer/vocab-below-4", tokenizer.main, ["--corpus={t}/corpus.txt", "--vocab-size=2",
                                                 "--out={t}/t.model"], "--vocab-size=2"),
    ("tokenizer/vocab-too-large", tokenizer.main, ["--corpus={t}/corpus.txt", "--vocab-size=100000",
                                                   "--out={t}/t.model"], "yields only"),
    ("tokenizer/vocab-int32", tokenizer.main, ["--corpus={t}/corpus.txt", "--vocab-size=9999999999",
                                               "--out={t}/t.model"], "<= 2147483647"),
    ("tokenizer/max-bytes-tiny", tokenizer.main, ["--corpus={t}/corpus.txt", "--vocab-size=64",
                                                  "--max-bytes=10", "--out={t}/t.model"], "empty"),
    ("tokenizer/max-bytes-negative", tokenizer.main, ["--corpus={t}/corpus.txt", "--vocab-size=64",
                                                      "--max-bytes=-1", "--out={t}/t.model"],
     "--max-bytes=-1"),
    ("tokenizer/model-type", tokenizer.main, ["--corpus={t}/corpus.txt", "--vocab-size=64",
                                              "--model-type=word", "--out={t}/t.model"], "invalid choice"),
    ("tokenizer/out-exists", tokenizer.main, ["--corpus={t}/corpus.txt", "--vocab-size=64",
                                              "--out={t}/old.model"], "it exists"),
    ("tokenizer/out-folder", tokenizer.main, ["--corpus={t}/corpus.txt", "--vocab-size=64",
                                              "--out={t}/folder"], "is a folder"),
    ("tokenizer/out-below-file", tokenizer.main, ["--corpus={t}/corpus.txt", "--vocab-size=64",
                                                  "--out={t}/file/t.model"], "is a file"),
    ("tokenizer/out-unwritable", tokenizer.main, ["--corpus={t}/corpus.txt", "--vocab-size=64",
                                                  "--out=/proc/ln_t.model"], "not writable"),
    ("tokenizer/out-empty", tokenizer.main, ["--corpus={t}/corpus.txt", "--vocab-size=64",
                                             "--out="], "--out=''"),
    ("tokenizer/out-name-too-long", tokenizer.main, ["--corpus={t}/corpus.txt", "--vocab-size=64",
                                                     f"--out={{t}}/{LONG}.model"], "refuses"),
    # ---- convert
    ("convert/missing-data-dir", convert.main, ["--dataset=x", "--data_dir={t}/nope",
                                                "--out_dir={t}/o"], "does not exist"),
    ("convert/not-prepared", convert.main, ["--dataset=tiny", "--data_dir={t}/folder",
                                            "--out_dir={t}/o"], "--dataset='tiny'"),
    ("convert/dataset-empty", convert.main, ["--dataset=", "--data_dir={t}/folder",
                                             "--out_dir={t}/o"], "--dataset=''"),
    ("convert/dataset-odd", convert.main, ["--dataset=../../etc", "--data_dir={t}/folder",
                                           "--out_dir={t}/o"], "--dataset="),
    ("convert/out-is-a-file", convert.main, ["--dataset=x", "--data_dir={t}/folder",
                                             "--out_dir={t}/file"], "existing file"),
    ("convert/out-below-a-file", convert.main, ["--dataset=x", "--data_dir={t}/folder",
                                                "--out_dir={t}/file/o"], "is a file"),
    ("convert/out-unwritable", convert.main, ["--dataset=x", "--data_dir={t}/folder",
                                              "--out_dir=/proc/ln_convert"], "not writable"),
    ("convert/workers-0", convert.main, ["--dataset=x", "--data_dir={t}/folder", "--out_dir={t}/o",
                                         "--workers=0"], "--workers=0"),
    ("convert/workers-text", convert.main, ["--dataset=x", "--data_dir={t}/folder", "--out_dir={t}/o",
                                            "--workers=many"], "invalid int"),
    ("convert/data-dir-empty", convert.main, ["--dataset=x", "--data_dir=", "--out_dir={t}/o"],
     "--data_dir=''"),
    # ---- launch/tpu.py (dry runs: nothing would run anyway; the point is the one line, exit 2)
    ("tpu/config-missing", TPU, ["up", "--name=ln", "--zone=z", "--accelerator-type=v4-8",
                                 "--config=configs/nosuch.py", "--workdir=gs://b/r", "--dry-run"],
     "does not exist"),
    ("tpu/config-syntax-error", TPU, ["up", "--name=ln", "--zone=z", "--accelerator-type=v4-8",
                                      "--config={t}/bad_syntax.py", "--workdir=gs://b/r", "--dry-run"],
     "SyntaxError"),
    ("tpu/config-crash", TPU, ["run", "--name=ln", "--zone=z", "--accelerator-type=v4-8",
                               "--config={t}/crash.py", "--workdir=gs://b/r", "--dry-run"],
     "ZeroDivisionError"),
    ("tpu/override-unknown", TPU, ["up", "--name=ln", "--zone=z", "--accelerator-type=v4-8",
                                   f"--config={GOOD_CONFIG}", "--workdir=gs://b/r", "--dry-run", "--",
                                   "--config.nosuch=1"], "unknown config key"),
    ("tpu/override-bad-value", TPU, ["up", "--name=ln", "--zone=z", "--accelerator-type=v4-8",
                                     f"--config={GOOD_CONFIG}", "--workdir=gs://b/r", "--dry-run", "--",
                                     "--config.total_steps=0"], "total_steps=0"),
    ("tpu/override-twice", TPU, ["run", "--name=ln", "--zone=z", "--accelerator-type=v4-8",
                                 f"--config={GOOD_CONFIG}", "--workdir=gs://b/r", "--dry-run", "--",
                                 "--config.seed=1", "--config.seed=2"], "given twice"),
    ("tpu/train-flag-unknown", TPU, ["up", "--name=ln", "--zone=z", "--accelerator-type=v4-8",
                                     f"--config={GOOD_CONFIG}", "--workdir=gs://b/r", "--dry-run", "--",
                                     "--nosuch=1"], "unrecognized"),
    ("tpu/unknown-flag", TPU, ["up", "--name=ln", "--zone=z", "--bogus"], "unrecognized arguments"),
    ("tpu/abbreviated-flag", TPU, ["up", "--name=ln", "--zone=z", "--accel=v4-8"], "unrecognized"),
    ("tpu/flag-twice", TPU, ["up", "--name=ln", "--name=ln2", "--zone=z"], "given twice"),
    ("tpu/no-command", TPU, [], "required"),
    ("tpu/bad-command", TPU, ["launch", "--name=ln", "--zone=z"], "invalid choice"),
    ("tpu/num-workers-text", TPU, ["check", "--name=ln", "--zone=z", "--num-workers=two"], "invalid int"),
    # ---- launch/gpu.py
    ("gpu/slurm-config-missing", GPU, ["slurm", "--config=configs/nosuch.py", "--workdir=/w",
                                       "--log-dir={t}/logs", "--dry-run"], "does not exist"),
    ("gpu/slurm-override", GPU, ["slurm", f"--config={GOOD_CONFIG}", "--workdir=/w", "--log-dir={t}/logs",
                                 "--dry-run", "--", "--config.batch_size=-1"], "batch_size=-1"),
    ("gpu/slurm-config-syntax", GPU, ["slurm", "--config={t}/bad_syntax.py", "--workdir=/w",
                                      "--log-dir={t}/logs", "--dry-run"], "SyntaxError"),
    ("gpu/ssh-config-missing", GPU, ["ssh", "--hosts=a", "--config=configs/nosuch.py", "--workdir=/w",
                                     "--dry-run"], "does not exist"),
    ("gpu/ssh-distributed-twice", GPU, ["ssh", "--hosts=a", f"--config={GOOD_CONFIG}", "--workdir=/w",
                                        "--dry-run", "--", "--num_processes=2"], "given twice"),
    ("gpu/nodes-text", GPU, ["slurm", "--nodes=x"], "invalid int"),
    ("gpu/unknown-flag", GPU, ["slurm", "--bogus"], "unrecognized arguments"),
    ("gpu/flag-twice", GPU, ["slurm", "--nodes=1", "--nodes=2"], "given twice"),
    ("gpu/no-command", GPU, [], "required"),
]


@pytest.fixture
def folder(tmp_path):
  _setup(tmp_path)
  return tmp_path


@pytest.mark.parametrize("main, argv, fragment", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_hostile_input_is_one_line_exit_2_and_writes_nothing(main, argv, fragment, folder, capsys):
  prefix = ("launch/tpu.py: error: " if main is TPU else "launch/gpu.py: error: " if main is GPU
            else hostile.PREFIX)
  argv = ["lazy-neuron x"] + [a.format(t=folder) for a in argv]
  if main in (TPU, GPU):
    argv = argv[1:]  # the launchers' main takes the flags only
  snap = hostile.snapshot(folder)
  line = hostile.refuses(main, argv, capsys, snap, prefix=prefix)
  assert fragment.format(t=folder) in line, line


def test_a_non_utf8_line_among_good_ones_is_skipped_like_a_torn_one(folder, capsys):
  """Documented exit 0: a metrics line that is not UTF-8 (a torn write) is skipped, like a line that
  is not JSON; the other lines make the report."""
  (folder / "run" / "metrics.jsonl").open("ab").write(b'{"step": 2, "train/loss": \xff\xfe}\n')
  rc = report.main(["lazy-neuron report", str(folder / "run"), f"--out={folder}/o"])
  assert rc == 0 and (folder / "o" / "index.html").exists()


def test_quick_keeps_explicit_values_and_k_above_D_is_said(capsys):
  a = bench_topk._parse_flags(["lazy-neuron bench topk", "--quick", "--k=8", "--D=64,4"])
  assert (a.T, a.D, a.k, a.dtypes) == (2048, [64, 4], [8], ["float32"])
  assert a.skipped == [(8, 4)]
  a = bench_topk._parse_flags(["lazy-neuron bench topk", "--quick", "--T=16"])
  assert (a.T, a.D, a.k) == (16, [1024], [16, 128])


def test_launcher_validation_uses_the_project_root_not_the_cwd(tmp_path, monkeypatch, capsys):
  monkeypatch.chdir(tmp_path)  # relative configs are the remote run's: read from the checkout
  assert GPU(["slurm", f"--config={GOOD_CONFIG}", "--workdir=/w", f"--log-dir={tmp_path}/logs",
              "--dry-run"]) == 0
  assert "sbatch --parsable" in capsys.readouterr().out
  # --skip-config-check launches unchecked (for configs whose files exist only remotely).
  assert GPU(["slurm", "--config=configs/nosuch.py", "--workdir=/w", f"--log-dir={tmp_path}/logs",
              "--dry-run", "--skip-config-check"]) == 0
