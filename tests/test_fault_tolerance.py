"""Fault tolerance (docs/fault_tolerance.md), proven on the cheapest config (mlp_gaussian:runlocal):

- SIGKILL at three exact points (before the first checkpoint, inside a checkpoint write, between
  checkpoints) and restarts end bit-identical to an uninterrupted run, metrics.jsonl included;
- SIGTERM / SIGINT checkpoint the step in progress and exit 0; the restart continues from it;
- unusable checkpoints (truncated, no commit marker, garbage) are skipped with a warning naming
  them, moved aside, never deleted; retention keeps the last N and every M-th;
- a non-finite step stops the run naming step and quantity (exit 1), keeping the last good
  checkpoint, or is skipped and counted when configured;
- bad input not covered by tests/test_train.py: unknown dataset, missing data dir;
- soak: repeated kills at random times (3 cycles here, 20 with -m slow).

Subprocesses run the real CLI on one CPU device (the 8 fake devices of conftest.py are removed from
their XLA_FLAGS) and share a persistent compilation cache to keep each start-up short. Kills at exact
points go through tests/fault_runner.py, which patches them into the CLI's process (the trainer
itself has no test hooks).
"""
import glob
import io
import json
import os
import random
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from lazy_neuron import checkpointing, config_lib, train

CONFIG = "configs/mlp_gaussian.py:runlocal"
# 12 steps; rows every 2 steps, eval at 0/6/12, checkpoints every 4 steps (the windows between
# checkpoints and log steps do not line up, so a resume mid-window is exercised).
OVERRIDES = ["config.total_steps=12", "config.log_every_steps=2", "config.eval_every_steps=6",
             "config.checkpoint_every_steps=4", "config.keep_checkpoints=10",
             "config.tensorboard=False"]


@pytest.fixture(autouse=True)
def _chdir_repo(repo_root, monkeypatch):
  monkeypatch.chdir(repo_root)


def _env():
  env = dict(os.environ)
  flags = [f for f in env.get("XLA_FLAGS", "").split()
           if not f.startswith("--xla_force_host_platform_device_count")]
  env["XLA_FLAGS"] = " ".join(flags)
  env["JAX_PLATFORMS"] = "cpu"
  cache = os.path.join(env.get("LAZY_NEURON_CACHE", "/tmp"), "jax_compilation_cache")
  env.setdefault("JAX_COMPILATION_CACHE_DIR", cache)
  env.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
  return env


def _cmd(workdir, *extra, **faults):
  """The real CLI; with `faults`, through tests/fault_runner.py, which patches them in."""
  if faults:
    spec = ",".join(f"{k}={v}" for k, v in faults.items())
    prog = [sys.executable, os.path.join(os.path.dirname(__file__), "fault_runner.py"), spec]
  else:
    prog = [sys.executable, "-m", "lazy_neuron.cli"]
  return prog + ["train", f"--config={CONFIG}", f"--workdir={workdir}"] + \
      [f"--{o}" for o in OVERRIDES] + list(extra)


def _run(workdir, *extra, timeout=120, **faults):
  return subprocess.run(_cmd(workdir, *extra, **faults), env=_env(), capture_output=True,
                        text=True, timeout=timeout)


def _start(workdir, **faults):
  return subprocess.Popen(_cmd(workdir, **faults), env=_env(), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)


def _wait_for_line(proc, prefix, timeout=60):
  """Reads the process's output until a line starting with `prefix`; returns what was read."""
  seen, deadline = [], time.time() + timeout
  while time.time() < deadline:
    line = proc.stdout.readline()
    if not line:
      break
    seen.append(line)
    if line.startswith(prefix):
      return "".join(seen)
  raise AssertionError(f"no line starting with {prefix!r}:\n{''.join(seen)}")


def _metrics(workdir):
  return [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]


def _assert_same_run(workdir, reference, restore):
  step, state, data_state = restore(workdir)
  ref_step, ref_state, ref_data = reference["final"]
  assert step == ref_step == 12 and data_state == ref_data
  for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(ref_state), strict=True):
    np.testing.assert_array_equal(a, b)  # bit-identical
  assert _metrics(workdir) == reference["metrics"]  # every row, every value, exactly


@pytest.fixture(scope="module")
def reference(tmp_path_factory, restore_checkpoint):
  """One uninterrupted run of the command every test below interrupts."""
  workdir = tmp_path_factory.mktemp("reference")
  proc = _run(workdir)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  rows = _metrics(workdir)
  assert [r["step"] for r in rows] == [0, 2, 4, 6, 6, 8, 10, 12, 12]
  return {"final": restore_checkpoint(workdir), "metrics": rows}


# ------------------------------------------------------------------------------------- SIGKILL
def test_sigkill_at_three_points_then_restart_is_bit_identical(tmp_path, reference,
                                                              restore_checkpoint):
  wd = tmp_path / "run"
  # 1. Killed after step 3: no checkpoint yet; the restart starts again from step 0.
  proc = _run(wd, kill_after_step=3)
  assert proc.returncode == -signal.SIGKILL
  assert not glob.glob(str(wd / "checkpoints" / "[0-9]*"))
  # 2. Killed inside the write of checkpoint 8: checkpoint 4 stays intact, 8 is only a tmp folder.
  proc = _run(wd, kill_in_save=8)
  assert proc.returncode == -signal.SIGKILL, proc.stdout + proc.stderr
  assert "resumed from" not in proc.stdout
  assert glob.glob(str(wd / "checkpoints" / "8.orbax-checkpoint-tmp*"))
  assert restore_checkpoint(wd)[0] == 4
  # 3. Killed after step 11, between checkpoints.
  proc = _run(wd, kill_after_step=11)
  assert proc.returncode == -signal.SIGKILL
  assert f"resumed from {wd / 'checkpoints' / '4'}" in proc.stdout
  # (The asynchronous save of step 8 may still have been in flight at this kill: then the restart
  # resumes from 4 again.)
  # The same command, no hooks: finishes, and matches the uninterrupted run bit for bit.
  proc = _run(wd)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  assert re.search(r"resumed from \S+/checkpoints/(4|8)\n", proc.stdout), proc.stdout
  assert not glob.glob(str(wd / "checkpoints" / "*tmp*"))  # interrupted saves were cleaned up
  _assert_same_run(wd, reference, restore_checkpoint)


# ---------------------------------------------------------------------------------- preemption
def test_sigterm_and_sigint_checkpoint_the_current_step_and_exit_0(tmp_path, reference,
                                                                   restore_checkpoint):
  wd = tmp_path / "run"
  stopped = []
  for sig, after in ((signal.SIGTERM, "step 2/"), (signal.SIGINT, "step 8/")):
    proc = _start(wd, step_sleep=0.25)
    out = _wait_for_line(proc, after)
    sent = time.time()
    proc.send_signal(sig)
    rest, _ = proc.communicate(timeout=30)
    out += rest
    assert time.time() - sent < 30
    assert proc.returncode == 0, out
    m = re.search(rf"stopped by {sig.name} after step (\d+): checkpoint (\S+) written", out)
    assert m, out
    step = int(m.group(1))
    assert m.group(2) == str(wd / "checkpoints" / str(step)) and restore_checkpoint(wd)[0] == step
    stopped.append(step)
  assert stopped[0] < stopped[1] < 12
  proc = _run(wd)
  assert proc.returncode == 0 and f"resumed from {wd / 'checkpoints' / str(stopped[1])}" in \
      proc.stdout, proc.stdout + proc.stderr
  _assert_same_run(wd, reference, restore_checkpoint)


def test_signal_handlers_are_restored_after_training(tmp_path):
  before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
  config = config_lib.load_config(CONFIG, ["config.total_steps=2", "config.eval_every_steps=0"])
  train.train_and_evaluate(config, str(tmp_path), jax.devices()[:1], stream=io.StringIO())
  assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before


# --------------------------------------------------------------------------------- checkpoints
def _corrupt(step_dir, how):
  files = [f for f in glob.glob(str(step_dir / "state" / "**"), recursive=True)
           if os.path.isfile(f) and os.sep + "d" + os.sep in f]
  assert files
  if how == "truncated":
    for f in files:
      with open(f, "r+b") as fh:
        fh.truncate(os.path.getsize(f) // 2)
  elif how == "no commit marker":
    os.remove(step_dir / checkpointing.COMMIT_MARKER)
  elif how == "garbage":
    rng = np.random.default_rng(0)
    for f in files:
      with open(f, "wb") as fh:
        fh.write(rng.bytes(os.path.getsize(f)))


def test_unusable_checkpoints_are_skipped_moved_aside_and_never_deleted(tmp_path,
                                                                        restore_checkpoint):
  config = config_lib.load_config(CONFIG, OVERRIDES + ["config.checkpoint_every_steps=2"])
  devices = jax.devices()[:1]
  wd = tmp_path / "run"
  train.train_and_evaluate(config, str(wd), devices, stream=io.StringIO())
  _, good, _ = restore_checkpoint(wd)
  ck = wd / "checkpoints"
  for step, how in ((12, "truncated"), (10, "no commit marker"), (8, "garbage")):
    _corrupt(ck / str(step), how)
  (ck / "9.orbax-checkpoint-tmp-123").mkdir()  # an interrupted save: incomplete by definition
  out = io.StringIO()
  train.train_and_evaluate(config, str(wd), devices, stream=out)
  text = out.getvalue()
  for step in (12, 10, 8):
    assert f"warning: checkpoint {ck / str(step)} is unusable" in text, text
    assert f"moved unusable checkpoint {ck / str(step)} to {wd / 'checkpoints.unusable' / str(step)}" \
        in text
    assert (wd / "checkpoints.unusable" / str(step) / "state").is_dir()  # kept, not deleted
  assert "missing commit marker" in text and f"resumed from {ck / '6'}" in text
  # Steps 8-12 were trained again from 6 and saved anew: the same parameters as before.
  step, state, _ = restore_checkpoint(wd)
  assert step == 12
  for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(good), strict=True):
    np.testing.assert_array_equal(a, b)
  # No checkpoint usable at all: a warning, a fresh start, and still nothing deleted.
  for d in glob.glob(str(ck / "[0-9]*")):
    os.remove(os.path.join(d, checkpointing.COMMIT_MARKER))
  out = io.StringIO()
  train.train_and_evaluate(config, str(wd), devices, stream=out)
  assert "no usable checkpoint; starting from step 0" in out.getvalue()
  assert sorted(os.listdir(wd / "checkpoints.unusable")) == sorted(
      ["8", "10", "12", "2", "4", "6", "8.1", "10.1", "12.1"])
  assert restore_checkpoint(wd)[0] == 12


def test_eval_command_skips_an_unusable_checkpoint_and_leaves_it(tmp_path, capsys):
  from lazy_neuron import evaluate
  config = config_lib.load_config(CONFIG, ["config.total_steps=4", "config.eval_every_steps=0",
                                      "config.checkpoint_every_steps=2"])
  train.train_and_evaluate(config, str(tmp_path), jax.devices()[:1], stream=io.StringIO())
  _corrupt(tmp_path / "checkpoints" / "4", "truncated")
  out = io.StringIO()
  evaluate.run(config, str(tmp_path), stream=out)
  assert f"checkpoint {tmp_path / 'checkpoints' / '4'} is unusable" in out.getvalue()
  assert "evaluated checkpoint 2" in out.getvalue()
  assert (tmp_path / "checkpoints" / "4").is_dir()


def test_retention_keeps_the_last_n_and_every_mth(tmp_path):
  config = config_lib.load_config(CONFIG, ["config.total_steps=12", "config.eval_every_steps=0",
                                      "config.checkpoint_every_steps=1",
                                      "config.keep_checkpoints=2",
                                      "config.keep_checkpoint_every_steps=5"])
  train.train_and_evaluate(config, str(tmp_path), jax.devices()[:1], stream=io.StringIO())
  kept = sorted(int(d) for d in os.listdir(tmp_path / "checkpoints") if d.isdigit())
  assert kept == [5, 10, 11, 12]


def test_torn_metrics_line_is_dropped_on_resume(tmp_path):
  config = config_lib.load_config(CONFIG, ["config.total_steps=4", "config.eval_every_steps=0",
                                      "config.checkpoint_every_steps=2"])
  devices = jax.devices()[:1]
  train.train_and_evaluate(config, str(tmp_path), devices, stream=io.StringIO(), stop_after=2)
  with open(tmp_path / "metrics.jsonl", "a") as f:
    f.write('{"step": 3, "train/lo')  # a write cut by a kill
  out = io.StringIO()
  train.train_and_evaluate(config, str(tmp_path), devices, stream=out)
  assert "dropping unreadable line 2" in out.getvalue()
  assert [r["step"] for r in _metrics(tmp_path)] == [2, 4]


# ------------------------------------------------------------------------------------ numerics
DIVERGE = [f"--config={CONFIG}", "--config.total_steps=12", "--config.log_every_steps=1",
           "--config.eval_every_steps=0", "--config.checkpoint_every_steps=4",
           # Plain SGD at lr 1e5 overflows to inf/NaN within a few steps (Adam's normalised
           # updates would stay finite, just huge).
           "--config.optimizer.name=sgd", "--config.optimizer.momentum=0.9",
           "--config.optimizer.learning_rate=1e5", "--config.tensorboard=False"]


def test_nonfinite_loss_stops_with_step_and_quantity_and_keeps_last_good(tmp_path, capsys,
                                                                         restore_checkpoint):
  wd = tmp_path / "run"
  code = train.main(["lazy-neuron train", f"--workdir={wd}"] + DIVERGE)
  err = capsys.readouterr().err.strip()
  assert code == 1 and len(err.splitlines()) == 1, err
  m = re.fullmatch(r"lazy-neuron: error: non-finite (loss|gradient|parameters after the update) "
                   r"at step (\d+) \((\S+)=(\S+)\); last good checkpoint: (\S+); .*", err)
  assert m, err
  bad, last = int(m.group(2)), m.group(5)
  good = sorted(int(d) for d in os.listdir(wd / "checkpoints") if d.isdigit())
  assert good and good[-1] < bad and last == str(wd / "checkpoints" / str(good[-1]))
  _, state, _ = restore_checkpoint(wd)
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(state["params"]))
  rows = _metrics(wd)
  assert rows and max(r["step"] for r in rows) < bad
  assert all(v is not None for r in rows for v in r.values())  # no non-finite row written


def test_skip_nonfinite_updates_resumes_the_diverged_run_and_counts_skips(tmp_path, capfd,
                                                                          restore_checkpoint):
  # The run stops at the first non-finite step; the same workdir resumes from the last good
  # checkpoint with skipping on (a resumable key), skips the bad updates and counts them.
  wd = tmp_path / "run"
  assert train.main(["lazy-neuron train", f"--workdir={wd}"] + DIVERGE) == 1
  last_good = restore_checkpoint(wd)[0]
  before = [r for r in _metrics(wd) if r["step"] <= last_good]
  code = train.main(["lazy-neuron train", f"--workdir={wd}", "--config.skip_nonfinite_updates=True"]
                    + DIVERGE)
  assert code == 0, capfd.readouterr().err
  rows = _metrics(wd)
  assert [r["step"] for r in rows] == list(range(1, 13))  # resumed: no step twice
  assert rows[:last_good] == before  # the rows up to the last good checkpoint are the first run's
  skipped = sum(r.get("train/skipped_updates", 0) for r in rows)
  assert skipped > 0
  assert all(v is not None for r in rows for v in r.values())
  step, state, _ = restore_checkpoint(wd)
  assert step == 12 and int(state["step"]) == 12
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(state["params"]))


# ----------------------------------------------------------------------------------- bad input
# tests/test_train.py covers unknown keys, wrong types, Top-k k, the mesh, batch divisibility, a
# missing tokenizer, unknown flags, a different-config workdir and an unwritable one.
def test_unknown_dataset_fails_with_one_line_error_and_writes_nothing(tmp_path, capsys):
  wd = tmp_path / "run"
  code = train.main(["lazy-neuron train", f"--config={CONFIG}", f"--workdir={wd}",
                     "--config.data.name=imagenet_fake"])
  err = capsys.readouterr().err.strip()
  assert code == 2 and len(err.splitlines()) == 1, err
  assert "data.name='imagenet_fake'" in err and "gaussian" in err, err
  assert not wd.exists()


def test_missing_data_dir_fails_with_one_line_error_and_writes_nothing(tmp_path, capsys,
                                                                         repo_root):
  missing = tmp_path / "no_such_tfds_dir"
  spec = tmp_path / "tfds_vit.py"
  spec.write_text(
      "import sys\n"
      f"sys.path.insert(0, {os.path.join(repo_root, 'configs')!r})\n"
      "from vit_digits import get_config as vit\n"
      "from lazy_neuron import data\n"
      "def get_config(arg=None):\n"
      "  c = vit('runlocal')\n"
      f"  c.data = data.get_data_config('tfds', dataset='mnist', data_dir={str(missing)!r})\n"
      "  return c\n")
  wd = tmp_path / "run"
  code = train.main(["lazy-neuron train", f"--config={spec}", f"--workdir={wd}"])
  err = capsys.readouterr().err.strip()
  assert code == 2 and len(err.splitlines()) == 1, err
  assert "data.dataset='mnist'" in err and str(missing) in err, err
  assert not wd.exists() and not missing.exists()


# ---------------------------------------------------------------------------------------- soak
def _soak(tmp_path, reference, cycles, seed, restore_checkpoint):
  """`cycles` SIGKILLs at random times, then the same command to the end.

  Even cycles kill at a random time after the loop started (mid-step, mid-save, mid-metrics-write);
  odd ones at a random time after the process started (import, compile, restore, truncation...).
  """
  rng = random.Random(seed)
  wd = tmp_path / "run"
  killed = 0
  for i in range(cycles):
    proc = _start(wd, step_sleep=0.3)
    if i % 2 == 0:
      try:
        _wait_for_line(proc, "step ")  # eval 0 or a train row: the loop is running
      except AssertionError:
        pass  # it finished already (resumed at the last step): the kill below is a no-op
      time.sleep(rng.uniform(0.0, 1.0))
    else:
      time.sleep(rng.uniform(0.0, 4.0))
    proc.kill()
    proc.communicate(timeout=30)
    killed += proc.returncode == -signal.SIGKILL
  assert killed >= min(cycles, 2), killed  # the kills did land while the runs were going
  proc = _run(wd)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  _assert_same_run(wd, reference, restore_checkpoint)


def test_soak_3_kill_restart_cycles_match_an_uninterrupted_run(tmp_path, reference,
                                                           restore_checkpoint):
  _soak(tmp_path, reference, cycles=3, seed=0, restore_checkpoint=restore_checkpoint)


@pytest.mark.slow
def test_soak_20_kill_restart_cycles_match_an_uninterrupted_run(tmp_path, reference,
                                                            restore_checkpoint):
  _soak(tmp_path, reference, cycles=20, seed=1, restore_checkpoint=restore_checkpoint)
