"""Hostile input for `lazy-neuron train` and `lazy-neuron eval` (docs/fault_tolerance.md, "train and
eval"): every case is refused with one line `lazy-neuron: error: ...`, exit code 2, and leaves every
folder it was pointed at byte-identical (tests/hostile.py). Then the cases that must succeed: a
workdir without config.json whose checkpoints fit, metrics rows kept until replayed, torn and
non-UTF-8 metrics lines.

The workdirs are copies of two runs made once per module: `finished` (4 steps of
mlp_gaussian:runlocal, checkpoints 2 and 4, rows 0, 2, 4 and the eval row at 4) and `partial`
(the same command stopped after step 2, as a preempted run).
"""
import io
import json
import os
import shutil
import stat

import pytest

import hostile
from lazy_neuron import evaluate, results, train

CONFIG = "configs/mlp_gaussian.py:runlocal"
FLAGS = ["--config.tensorboard=False"]


@pytest.fixture(autouse=True)
def _chdir_repo(repo_root, monkeypatch):
  monkeypatch.chdir(repo_root)


def _train_argv(workdir, *extra, config=CONFIG):
  return ["lazy-neuron train", f"--config={config}", f"--workdir={workdir}", *FLAGS, *extra]


def _eval_argv(workdir, *extra):
  return ["lazy-neuron eval", f"--workdir={workdir}", *extra]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  root = tmp_path_factory.mktemp("hostile_runs")
  assert train.main(_train_argv(root / "finished")) == 0
  config = train.load_config(CONFIG, ["config." + f[len("--config."):] for f in FLAGS])
  train.train_and_evaluate(config, str(root / "partial"), stream=io.StringIO(), stop_after=2)
  return root


def _copy(runs, tmp_path, which="finished"):
  wd = tmp_path / "run"
  shutil.copytree(runs / which, wd)
  return wd


# Each case: (id, which command, how to prepare the workdir, extra argv, words the line must hold).
# `prepare(wd, tmp_path)` gets a copy of `finished` (or nothing, for workdirs that must not exist)
# and returns the argv's workdir and config spec.
def _rm(wd, name):
  p = wd / name
  shutil.rmtree(p) if p.is_dir() else p.unlink()


def _as_file(name):
  def prepare(wd, tmp_path):
    _rm(wd, name) if (wd / name).exists() else None
    (wd / name).write_text("not a folder")
    return wd, CONFIG
  return prepare


def _as_dir(name):
  def prepare(wd, tmp_path):
    _rm(wd, name) if (wd / name).exists() else None
    (wd / name).mkdir()
    (wd / name / "keep").write_text("x")
    return wd, CONFIG
  return prepare


def _config_json(data: bytes):
  def prepare(wd, tmp_path):
    (wd / "config.json").write_bytes(data)
    return wd, CONFIG
  return prepare


def _config_file(text: str):
  def prepare(wd, tmp_path):
    path = tmp_path / "cfg" / "exp.py"
    path.parent.mkdir()
    path.write_text(text)
    return tmp_path / "new", str(path)
  return prepare


def _new(spec=CONFIG):
  return lambda wd, tmp_path: (tmp_path / "new", spec)


def _same(wd, tmp_path):
  return wd, CONFIG


def _no_config_json(wd, tmp_path):
  (wd / "config.json").unlink()
  return wd, CONFIG


def _workdir_is_file(wd, tmp_path):
  (tmp_path / "file").write_text("x")
  return tmp_path / "file", CONFIG


def _below_a_file(wd, tmp_path):
  (tmp_path / "file").write_text("x")
  return tmp_path / "file" / "run", CONFIG


def _no_checkpoints(wd, tmp_path):
  shutil.rmtree(wd / "checkpoints")
  return wd, CONFIG


def _foreign_config_json(wd, tmp_path):
  cfg = json.loads((wd / "config.json").read_text())
  cfg["model"]["name"] = "t5"
  (wd / "config.json").write_text(json.dumps(cfg))
  return wd, CONFIG


TRAIN_CASES = [
    # --- workdir states (item 1, 4)
    ("no config.json, checkpoints of another mlp_dim", _no_config_json,
     ["--config.model.mlp_dim=64"], ["does not fit the config", "params/", "(128,)", "(64,)"]),
    ("checkpoints is a file", _as_file("checkpoints"), [], ["checkpoints", "is a file where a folder"]),
    ("sparsity is a file", _as_file("sparsity"), [], ["sparsity", "is a file where a folder"]),
    ("checkpoints.unusable is a file", _as_file("checkpoints.unusable"), [],
     ["checkpoints.unusable", "is a file where a folder"]),
    ("metrics.jsonl is a folder", _as_dir("metrics.jsonl"), [],
     ["metrics.jsonl", "is a folder where a file"]),
    ("config.json is a folder", _as_dir("config.json"), [], ["config.json", "is a folder where a file"]),
    ("sharding_plan.txt is a folder", _as_dir("sharding_plan.txt"), [],
     ["sharding_plan.txt", "is a folder where a file"]),
    ("workdir is a file", _workdir_is_file, [], ["is a file, not a folder"]),
    ("workdir below a file", _below_a_file, [], ["is not writable"]),
    ("empty workdir flag", lambda wd, tmp: ("", CONFIG), [], ["--workdir=''"]),
    ("truncated config.json", _config_json(b'{"seed": 0,'), [], ["config.json", "not a readable JSON"]),
    ("empty config.json", _config_json(b""), [], ["config.json", "not a readable JSON"]),
    ("non-UTF-8 config.json", _config_json(b'{"seed": "\xff\xfe"}'), [],
     ["config.json", "UnicodeDecodeError"]),
    ("config.json holds a list", _config_json(b"[1, 2]"), [], ["holds a JSON list"]),
    ("config.json of another model", _foreign_config_json, [],
     ["different config", "model.name: 't5' -> 'mlp'"]),
    # --- values checked too late or not at all (item 1, 3)
    ("batch_size beyond memory", _new(), ["--config.batch_size=1000000000000"],
     ["batch_size=1000000000000", "GiB of host memory", "smaller batch_size"]),
    ("eval_batch_size beyond memory", _new(), ["--config.eval_batch_size=1000000000000"],
     ["eval_batch_size=1000000000000", "GiB of host memory"]),
    ("eval_batch_size negative", _new(), ["--config.eval_batch_size=-5"], ["eval_batch_size=-5"]),
    ("eval_batch_size zero", _new(), ["--config.eval_batch_size=0"], ["eval_batch_size=0"]),
    ("total_steps beyond int32", _new(), ["--config.total_steps=99999999999"],
     ["total_steps=99999999999", "<= 2147483647"]),
    ("total_steps below the checkpoint", _same, ["--config.total_steps=2"],
     ["total_steps=2", "checkpoints/4", "step 4"]),
    ("runlocal with width=0", _new("configs/mlp_gaussian.py:runlocal,width=0"), [],
     ["model.mlp_dim=0"]),
    ("width=0", _new("configs/mlp_gaussian.py:width=0"), [], ["model.mlp_dim=0"]),
    ("runlocal with steps=0", _new("configs/t5_offline.py:runlocal,steps=0"), [],
     ["total_steps=0"]),
    ("runlocal with a missing spm", _new("configs/t5_c4.py:runlocal,spm=/nonexistent/spm.model"),
     [], ["data.tokenizer", "/nonexistent/spm.model"]),
    ("runlocal with a dataset it ignores", _new("configs/t5_c4.py:runlocal,dataset=c4/en"), [],
     ["'dataset' cannot be combined with runlocal"]),
    ("flag given twice", _new(), ["--workdir=/tmp/elsewhere"], ["--workdir is given twice"]),
    # --- config files (item 2, 4)
    ("config file with a syntax error", _config_file("def get_config(:\n"), [],
     ["exp.py", "SyntaxError", "line 1"]),
    ("config file whose get_config raises",
     _config_file("def get_config(arg=None):\n  raise RuntimeError('boom')\n"), [],
     ["exp.py", "RuntimeError: boom", "line 2"]),
    ("config file raising on import", _config_file("import no_such_module_xyz\n"), [],
     ["exp.py", "ModuleNotFoundError"]),
    ("a .py that is not a config", _config_file("x = 1\n"), [], ["has no get_config"]),
    ("get_config returns a dict", _config_file("def get_config(arg=None):\n  return {}\n"), [],
     ["must return an ml_collections.ConfigDict"]),
    ("--config is a directory", lambda wd, tmp: (tmp / "new", "configs"), [],
     ["expected a Python config file"]),
    ("--config is a missing file", _new("configs/nope.py"), [], ["does not exist"]),
]


@pytest.mark.parametrize("prepare,extra,words", [c[1:] for c in TRAIN_CASES],
                         ids=[c[0] for c in TRAIN_CASES])
def test_train_refuses_hostile_input_and_changes_nothing(prepare, extra, words, runs, tmp_path,
                                                         capsys):
  wd, spec = prepare(_copy(runs, tmp_path), tmp_path)
  snap = hostile.snapshot(tmp_path)
  line = hostile.refuses(train.main, _train_argv(wd, *extra, config=spec), capsys, snap)
  for w in words:
    assert w in line, line


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_train_refuses_a_read_only_workdir(runs, tmp_path, capsys):
  wd = _copy(runs, tmp_path)
  os.chmod(wd, stat.S_IRUSR | stat.S_IXUSR)
  try:
    snap = hostile.snapshot(tmp_path)
    line = hostile.refuses(train.main, _train_argv(wd, "--config.total_steps=6"), capsys, snap)
    assert "not writable" in line
  finally:
    os.chmod(wd, stat.S_IRWXU)


def _eval_with_config(spec, *extra):
  def prepare(wd, tmp_path):
    return wd, spec, [f"--config={spec}", *extra]
  return prepare


def _eval(prepare_train):
  def prepare(wd, tmp_path):
    wd, _ = prepare_train(wd, tmp_path)
    return wd, None, []
  return prepare


EVAL_CASES = [
    ("truncated config.json", _eval(_config_json(b'{"seed": 0,')), ["not a readable JSON"]),
    ("non-UTF-8 config.json", _eval(_config_json(b'{"a": "\xff"}')), ["UnicodeDecodeError"]),
    ("config.json of no lazy-neuron run", _eval(_config_json(b'{"a": 1}')),
     ["is not a lazy-neuron config", "total_steps"]),
    ("config.json is a folder", _eval(_as_dir("config.json")), ["is a folder where a file"]),
    ("no config.json and no --config", _eval(_no_config_json), ["has no config.json"]),
    ("a config and no checkpoint", _eval(_no_checkpoints), ["has no checkpoint to evaluate"]),
    ("checkpoints is a file", _eval(_as_file("checkpoints")), ["is a file where a folder"]),
    ("sparsity is a file", _eval(_as_file("sparsity")), ["is a file where a folder"]),
    ("eval_4.json is a folder", _eval(_as_dir("eval_4.json")), ["eval_4.json", "is a folder"]),
    ("workdir missing", _eval(lambda wd, tmp: (tmp / "nope", CONFIG)), ["does not exist"]),
    ("workdir is a file", _eval(_workdir_is_file), ["is a file, not a folder"]),
    ("empty workdir flag", _eval(lambda wd, tmp: ("", CONFIG)), ["--workdir=''"]),
    ("checkpoint of another mlp_dim",
     _eval_with_config(CONFIG, "--config.model.mlp_dim=64"), ["does not fit the config", "(64,)"]),
    ("override without --config", lambda wd, tmp: (wd, None, ["--config.seed=1"]),
     ["need --config"]),
    ("config file with a syntax error",
     lambda wd, tmp: (wd, None, [f"--config={_config_file('x = (')(wd, tmp)[1]}"]),
     ["SyntaxError"]),
]


@pytest.mark.parametrize("prepare,words", [c[1:] for c in EVAL_CASES],
                         ids=[c[0] for c in EVAL_CASES])
def test_eval_refuses_hostile_input_and_writes_nothing(prepare, words, runs, tmp_path, capsys):
  wd, _, extra = prepare(_copy(runs, tmp_path), tmp_path)
  snap = hostile.snapshot(tmp_path)
  line = hostile.refuses(evaluate.main, _eval_argv(wd, *extra), capsys, snap)
  for w in words:
    assert w in line, line


# ------------------------------------------------------------------------------ what must succeed
def test_workdir_without_config_json_resumes_when_its_checkpoints_fit(runs, tmp_path, capsys):
  wd = _copy(runs, tmp_path, "partial")
  (wd / "config.json").unlink()
  assert train.main(_train_argv(wd)) == 0
  out = capsys.readouterr().out
  assert f"resumed from {wd / 'checkpoints' / '2'}" in out
  assert (wd / "config.json").read_bytes() == (runs / "finished" / "config.json").read_bytes()
  assert (wd / "metrics.jsonl").read_bytes() == (runs / "finished" / "metrics.jsonl").read_bytes()


def test_rows_after_the_checkpoint_are_replaced_only_by_their_replay(runs, tmp_path, capsys):
  """Checkpoint 4 lost: rows 4 (train and eval) are kept while the run fails before its first
  step, then replaced in place by the identical replayed rows."""
  wd = _copy(runs, tmp_path)
  shutil.rmtree(wd / "checkpoints" / "4")
  before = (wd / "metrics.jsonl").read_bytes()
  assert [json.loads(r)["step"] for r in before.splitlines()] == [0, 2, 4, 4]
  # A failure after the restore cuts nothing: without config.json, a batch_size that the
  # checkpoint's data state was not written with.
  config_json = (wd / "config.json").read_bytes()
  (wd / "config.json").unlink()
  snap = hostile.snapshot(wd)
  line = hostile.refuses(train.main, _train_argv(wd, "--config.batch_size=32"), capsys, snap)
  assert "batch_size" in line
  (wd / "config.json").write_bytes(config_json)
  assert train.main(_train_argv(wd)) == 0
  assert (wd / "metrics.jsonl").read_bytes() == before


def test_a_changed_log_cadence_keeps_the_old_rows_it_does_not_replay(runs, tmp_path):
  wd = _copy(runs, tmp_path)
  shutil.rmtree(wd / "checkpoints" / "4")
  rows = [json.loads(r) for r in (wd / "metrics.jsonl").read_text().splitlines()]
  rows.insert(2, {"step": 3, "train/loss": 1.0})  # as logged by a run with log_every_steps=1
  (wd / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  assert train.main(_train_argv(wd, "--config.log_every_steps=4")) == 0
  steps = [json.loads(r)["step"] for r in (wd / "metrics.jsonl").read_text().splitlines()]
  assert steps == [0, 2, 3, 4, 4]


def test_torn_and_non_utf8_metrics_lines_are_dropped_on_resume_and_skipped_by_load_run(
    runs, tmp_path, capsys):
  wd = _copy(runs, tmp_path, "partial")
  with open(wd / "metrics.jsonl", "ab") as f:
    f.write(b'{"step": 3, "train/loss": "\xff\xfe"}\n{"step": 3, "train/lo')
  run = results.load_run(wd)  # what `lazy-neuron report` reads
  assert run.last_step == 2
  assert train.main(_train_argv(wd)) == 0
  out = capsys.readouterr().out
  assert "dropping unreadable line 3" in out and "dropping unreadable line 4" in out
  assert (wd / "metrics.jsonl").read_bytes() == (runs / "finished" / "metrics.jsonl").read_bytes()


def test_a_finished_run_rerun_writes_nothing(runs, tmp_path, capsys):
  wd = _copy(runs, tmp_path)
  snap = hostile.snapshot(wd)
  assert train.main(_train_argv(wd, "--config.log_every_steps=1")) == 0
  assert "nothing to do: checkpoint" in capsys.readouterr().out
  assert not hostile.changes(snap, hostile.snapshot(wd))


def test_runlocal_gives_way_to_explicit_args():
  from lazy_neuron import config_lib
  c = config_lib.load_config("configs/mlp_gaussian.py:runlocal,width=64,steps=6")
  assert (c.model.mlp_dim, c.total_steps, c.checkpoint_every_steps) == (64, 6, 3)
  c = config_lib.load_config("configs/mlp_gaussian.py:runlocal")
  assert (c.model.mlp_dim, c.total_steps) == (128, 4)
  c = config_lib.load_config("configs/t5_c4.py:runlocal,batch=16,variant=small")
  assert (c.batch_size, c.model.variant, c.total_steps) == (16, "small", 6)


@pytest.mark.parametrize("error,code", [
    (lambda: __import__("jax").errors.JaxRuntimeError(
        "RESOURCE_EXHAUSTED: Out of memory while trying to allocate 1.00TiB."), 2),
    (lambda: RuntimeError("a genuine bug"), None),
])
def test_a_failure_in_the_first_step_writes_nothing(error, code, tmp_path, capsys, monkeypatch):
  """Out of memory in the first step (as a device reports it: the CPU test devices never run out)
  is one line naming batch_size, exit 2; a bug keeps its traceback. Either way nothing is written,
  so the corrected command is not refused afterwards."""
  import jax
  real = jax.block_until_ready

  def fail(x):  # the first step's result is waited for before anything is written
    raise error()

  monkeypatch.setattr(jax, "block_until_ready", fail)
  snap = hostile.snapshot(tmp_path)
  argv = _train_argv(tmp_path / "new", "--config.eval_every_steps=0")  # the first wait: step 1
  if code is None:
    with pytest.raises(RuntimeError, match="a genuine bug"):
      train.main(argv)
    assert not hostile.changes(snap, hostile.snapshot(tmp_path))
  else:
    line = hostile.refuses(train.main, argv, capsys, snap)
    assert "out of memory in the first train step with batch_size=16" in line, line
  monkeypatch.setattr(jax, "block_until_ready", real)
  assert train.main(argv) == 0
