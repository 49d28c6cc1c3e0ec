"""The trainer: sharded == single-device, exact resume, every config runs, bad input fails cleanly."""
import glob
import io
import json
import os
import re
import subprocess
import sys

import jax
import numpy as np
import pytest

from lazy_neuron import config_lib, steps as steps_lib, train
from lazy_neuron.errors import UserError

T5_LOCAL = "configs/t5_offline.py:runlocal"


@pytest.fixture(autouse=True)
def _chdir_repo(repo_root, monkeypatch):
  monkeypatch.chdir(repo_root)


def load(spec=T5_LOCAL, *overrides):
  return config_lib.load_config(spec, list(overrides))


# --------------------------------------------------------------------------------------- sharding
# Sharding may change the order of float32 reductions, nothing else. The largest reduction in
# t5 tiny is REDUCTION = 1024 terms (mlp_dim; a batch has 8 x 32 tokens), and a float32 sum of n
# terms reordered differs by about eps * sqrt(n) of their magnitude (random-walk rounding), so
# values compare to RTOL = 16 * eps * sqrt(n) ~ 6e-5 of the largest magnitude in their array (16:
# headroom for the several reductions in a row and the backward pass). The comparison is on what
# sharding can change: the loss and metric sums, and the gradients, read from a plain SGD step
# (lr 1, no clipping or momentum: params_after = params - grad). Not after AdamW, which divides
# each gradient by its own root-mean-square and so turns the rounding noise of a gradient near
# zero into an O(lr) difference.
EPS32 = float(np.finfo(np.float32).eps)
REDUCTION = 1024
RTOL = 16 * EPS32 * np.sqrt(REDUCTION)
PLAIN_SGD = ["config.optimizer.name=sgd", "config.optimizer.momentum=0.0",
             "config.optimizer.learning_rate=1.0", "config.optimizer.schedule=constant",
             "config.optimizer.warmup_steps=0", "config.optimizer.grad_clip_norm=0.0"]


def _two_steps(config, devices, ahead=False):
  """(params before, gradient of step 1, window of steps 1-2, eval outputs after step 2), host.
  ahead=True: the train step compiled ahead of time in a thread, as `train` runs it."""
  setup = steps_lib.build_setup(config, devices)
  steps = steps_lib.Steps(setup)
  if ahead:
    steps.compile_train_step_ahead()
  from lazy_neuron import data
  it = data.build(config.data, split="train", batch_size=config.batch_size, seed=config.seed)
  params = []
  with steps.context():
    state = steps.init(jax.random.PRNGKey(config.seed))
    window = steps.zero_window()
    for _ in range(2):
      params.append(jax.device_get(state["params"]))  # before the donating step
      batch = steps_lib.to_global(next(it), setup.batch_sharding)
      state, window = steps.train_step(state, window, batch)
      jax.block_until_ready(state)  # fake CPU devices deadlock with several steps in flight
    ev = steps.eval_step(state["params"], batch)
  assert steps.compiled_ahead is (True if ahead else None)
  # lr 1: the first step's update is minus its gradient (float64: no rounding of its own).
  grad = jax.tree.map(lambda a, b: np.asarray(a, np.float64) - np.asarray(b, np.float64),
                      params[0], params[1])
  return params[0], grad, *jax.device_get((window, ev))


def _assert_close(a, b, name):
  """|a - b| <= RTOL * max|a| + 2 ulp of the largest value (the update's own float32 rounding)."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  scale = float(np.max(np.abs(a), initial=0.0))
  np.testing.assert_allclose(b, a, rtol=0, atol=RTOL * scale + 2 * EPS32 * scale + 1e-30,
                             err_msg=name)


def _assert_same_steps(one, other):
  p_one, g_one, w_one, ev_one = one
  p_other, g_other, w_other, ev_other = other
  flat = lambda t: jax.tree_util.tree_flatten_with_path(t)[0]
  for (path, a), (_, b) in zip(flat(p_one), flat(p_other), strict=True):
    _assert_close(a, b, "init " + jax.tree_util.keystr(path))
  for (path, a), (_, b) in zip(flat(g_one), flat(g_other), strict=True):
    # The gradient is read from float32 params: each side carries 1 ulp of max|params| besides.
    p = max(float(np.max(np.abs(x))) for x in jax.tree.leaves(p_one))
    np.testing.assert_allclose(b, a, rtol=0, err_msg="grad " + jax.tree_util.keystr(path),
                               atol=RTOL * float(np.max(np.abs(a))) + 4 * EPS32 * p)
  for (path, a), (_, b) in zip(flat((w_one, ev_one)), flat((w_other, ev_other)), strict=True):
    key = jax.tree_util.keystr(path)
    if "fire" in key or "correct" in key:
      continue  # counts of thresholded values: compared below
    _assert_close(a, b, key)
  # Counts are integers, but a pre-activation (or a top logit) within rounding of its threshold
  # may flip when the sharded step sums in another order: allow a handful of flips.
  counts = lambda t: [x for p, x in jax.tree_util.tree_flatten_with_path(t)[0]
                      if any(k in jax.tree_util.keystr(p) for k in ("fire", "correct"))]
  for a, b in zip(counts((w_one, ev_one)), counts((w_other, ev_other)), strict=True):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert np.abs(a - b).sum() <= max(2, 1e-4 * a.sum()), (a.sum(), b.sum())


def test_sharded_step_on_8_devices_matches_1_device():
  assert len(jax.devices()) == 8
  config = load(T5_LOCAL, *PLAIN_SGD)
  _assert_same_steps(_two_steps(config, jax.devices()[:1]), _two_steps(config, jax.devices()))


def test_step_compiled_ahead_matches_the_jitted_step():
  """`train` compiles its step in a thread while the state is initialised: the executable that
  runs must compute what the jitted step computes (8 devices, sharded)."""
  config = load(T5_LOCAL, *PLAIN_SGD)
  _assert_same_steps(_two_steps(config, jax.devices()), _two_steps(config, jax.devices(), True))


def test_train_runs_the_step_compiled_ahead(tmp_path, monkeypatch):
  """A fresh run and a resumed one both use the ahead-of-time executable (not a fallback)."""
  made = []
  build = steps_lib.Steps.__init__

  def init(self, setup):
    build(self, setup)
    made.append(self)
  monkeypatch.setattr(steps_lib.Steps, "__init__", init)
  config = load(T5_LOCAL, "config.mesh=[('data', 1)]", "config.total_steps=4",
                "config.eval_every_steps=0")
  train.train_and_evaluate(config, str(tmp_path / "w"), jax.devices()[:1], stream=io.StringIO(),
                           stop_after=2)
  train.train_and_evaluate(config, str(tmp_path / "w"), jax.devices()[:1], stream=io.StringIO())
  assert [s.compiled_ahead for s in made] == [True, True]


@pytest.mark.parametrize("rules", ["fsdp", "tensor_parallel"])
def test_fsdp_and_tensor_parallel_steps_match_data_parallel(rules):
  base = _two_steps(load(T5_LOCAL, *PLAIN_SGD), jax.devices()[:1])
  mesh = "[('data', 2), ('fsdp', 2), ('model', 2)]" if rules == "tensor_parallel" else \
      "[('data', 2), ('fsdp', 4)]"
  other = _two_steps(load(T5_LOCAL, *PLAIN_SGD, f"config.sharding_rules={rules}",
                          f"config.mesh={mesh}"), jax.devices())
  _assert_same_steps(base, other)


# ----------------------------------------------------------------------------------------- resume
def _read_metrics(workdir):
  rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  return rows


def test_resumed_run_continues_at_the_right_step_and_matches(tmp_path, restore_checkpoint):
  config = load(T5_LOCAL, "config.mesh=[('data', 1)]")
  devices = jax.devices()[:1]
  straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
  train.train_and_evaluate(config, straight, devices, stream=io.StringIO())
  out = io.StringIO()
  train.train_and_evaluate(config, resumed, devices, stream=out, stop_after=4)
  assert restore_checkpoint(resumed, config)[0] == 4
  out = io.StringIO()
  train.train_and_evaluate(config, resumed, devices, stream=out)
  assert "resumed from" in out.getvalue() and "checkpoints/4" in out.getvalue()
  assert "step 6/6" in out.getvalue() and "step 2/6 " not in out.getvalue()
  # The loop's own pace (steps 5 -> 6 here: the first step after a resume compiles).
  pace = re.search(r"done: 2 steps in [\d.]+s \(([\d.]+) ms/step after the first\)", out.getvalue())
  assert pace and float(pace.group(1)) > 0, out.getvalue()
  s1, p1, d1 = restore_checkpoint(straight, config)
  s2, p2, d2 = restore_checkpoint(resumed, config)
  assert s1 == s2 == 6 and d1 == d2
  for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p2)):
    np.testing.assert_array_equal(a, b)
  m1, m2 = _read_metrics(straight), _read_metrics(resumed)
  assert [r["step"] for r in m1] == [r["step"] for r in m2]
  for a, b in zip(m1, m2):
    assert a.keys() == b.keys()
    for k in a:  # the same computation on the same device: the same floats, learning rate too
      assert a[k] == b[k], k
  assert os.path.exists(os.path.join(resumed, "sparsity", "step_6.npz"))


# ------------------------------------------------------------------------------------ all configs
CONFIGS = sorted(p for p in glob.glob("configs/*.py") if not p.endswith("common.py"))


@pytest.mark.parametrize("path", CONFIGS)
def test_every_config_trains_with_runlocal(path, tmp_path):
  config = load(f"{path}:runlocal")
  last = train.train_and_evaluate(config, str(tmp_path), stream=io.StringIO())
  rows = _read_metrics(str(tmp_path))
  assert rows[0]["step"] == 0 and "sparsity/eval/mean/nonzero_frac" in rows[0]
  assert rows[-1]["step"] == config.total_steps
  assert any("train/loss" in r for r in rows)
  assert last["step"] == config.total_steps and np.isfinite(last["eval/loss"])
  names = [k for r in rows for k in r if k.startswith("sparsity/train/")]
  assert any(k.endswith("/nonzero_frac") for k in names)
  assert any(k.endswith("/dead_frac") for k in names)
  # The trainer passes the model's FLOP counts: both splits report the skippable fractions.
  for split in ("train", "eval"):
    assert any(f"sparsity/{split}/model_flops_skippable_frac" in r for r in rows), split
  assert glob.glob(str(tmp_path / "sparsity" / "step_*.npz"))
  assert json.load(open(tmp_path / "config.json"))["model"]["name"] == config.model.name


def test_every_config_has_a_docstring_with_its_command():
  for path in CONFIGS:
    text = open(path).read()
    assert text.startswith('"""') and "lazy-neuron train --config=" + path in text, path


# ------------------------------------------------------------------------------------- bad input
BAD = [
    (["--config.model.nme=3"], "unknown config key 'config.model.nme'"),
    (["--config.total_steps=abc"], "config.total_steps='abc' is not a valid int"),
    (["--config.model.activation=rleu"], "model.activation='rleu'"),
    (["--config.model.topk=5000"], "model.topk=5000"),
    (["--config.mesh=[('data', 3)]"], "config.mesh=[('data', 3)]"),
    (["--config.batch_size=6"], "batch_size=6 is not divisible"),
    (["--config.optimizer.name=adamm"], "optimizer.name='adamm'"),
    (["--config.data.tokenizer=/nonexistent/spm.model"], "/nonexistent/spm.model"),
    (["--wrkdir=/tmp/x"], "unrecognized arguments: --wrkdir=/tmp/x"),
    (["--config.total_steps=3000000000"], "total_steps=3000000000 is not valid; use an integer >= 1 "
                                          "and <= 2147483647"),
    (["--config.keep_checkpoints=0"], "keep_checkpoints=0 is not valid"),
    (["--config.seed=1.5"], "config.seed='1.5' is not a valid int"),
    (["--num_processes=two"], "argument --num_processes: invalid int value: 'two'"),
    (["--workdir=/tmp/other"], "flag --workdir is given twice"),
]


@pytest.mark.parametrize("extra,message", BAD)
def test_bad_config_fails_with_one_line_error_and_writes_nothing(extra, message, tmp_path,
                                                                 capsys):
  workdir = tmp_path / "run"
  code = train.main(["lazy-neuron train", f"--config={T5_LOCAL}", f"--workdir={workdir}"] + extra)
  err = capsys.readouterr().err.strip()
  assert code == 2
  assert len(err.splitlines()) == 1 and err.startswith("lazy-neuron: error:"), err
  assert message in err, err
  assert not workdir.exists()


def test_flags_take_a_value_after_a_space_and_help_exits_0(tmp_path, capsys):
  workdir = tmp_path / "run"
  code = train.main(["lazy-neuron train", "--config", T5_LOCAL, "--workdir", str(workdir),
                     "--config.model.nme", "3"])
  assert code == 2 and "unknown config key 'config.model.nme'" in capsys.readouterr().err
  assert not workdir.exists()
  with pytest.raises(SystemExit) as e:
    train.main(["lazy-neuron train", "--help"])
  assert e.value.code == 0 and "--workdir" in capsys.readouterr().out


def test_bad_config_arg_fails_from_the_console_script(tmp_path):
  workdir = tmp_path / "run"
  proc = subprocess.run(
      [sys.executable, "-m", "lazy_neuron.cli", "train", "--config=configs/t5_offline.py:runlocl",
       f"--workdir={workdir}"], capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines() == [
      "lazy-neuron: error: unknown config arg 'runlocl'; valid args: runlocal, steps, tokenizer, "
      "topk, variant"]
  assert not workdir.exists()


def test_workdir_with_a_different_config_is_refused(tmp_path, capsys):
  workdir = tmp_path / "run"
  workdir.mkdir()
  (workdir / "config.json").write_text(json.dumps({"seed": 123}))
  before = sorted(os.listdir(workdir))
  code = train.main(["lazy-neuron train", f"--config={T5_LOCAL}", f"--workdir={workdir}"])
  err = capsys.readouterr().err
  assert code == 2 and "holds a run with a different config" in err
  assert sorted(os.listdir(workdir)) == before


def test_unwritable_workdir_is_refused(tmp_path, capsys):
  blocker = tmp_path / "file"
  blocker.write_text("not a directory")
  code = train.main(["lazy-neuron train", f"--config={T5_LOCAL}",
                     f"--workdir={blocker / 'run'}"])
  assert code == 2 and "not writable" in capsys.readouterr().err


def test_parse_arg_types_and_rejects():
  from lazy_neuron.config_lib import parse_arg
  a = parse_arg("runlocal,steps=7,lr=0.5,name=x", runlocal=False, steps=1, lr=1.0, name="y")
  assert (a.runlocal, a.steps, a.lr, a.name) == (True, 7, 0.5, "x")
  with pytest.raises(UserError, match="unknown config arg 'bogus'"):
    parse_arg("bogus=1", steps=1)
  with pytest.raises(UserError, match="not a valid int"):
    parse_arg("steps=x", steps=1)


def test_tensorboard_events_when_tensorflow_is_installed(tmp_path):
  pytest.importorskip("tensorflow")
  from tensorboard.backend.event_processing import event_accumulator
  config = load("configs/mlp_gaussian.py:runlocal")
  train.train_and_evaluate(config, str(tmp_path), stream=io.StringIO())
  events = glob.glob(str(tmp_path / "events.out.tfevents.*"))
  assert len(events) == 1
  acc = event_accumulator.EventAccumulator(events[0], size_guidance={"tensors": 0})
  acc.Reload()
  assert "sparsity/eval/mean/nonzero_frac" in acc.Tags()["tensors"]
  assert [e.step for e in acc.Tensors("sparsity/eval/mean/nonzero_frac")] == [0, 4]
