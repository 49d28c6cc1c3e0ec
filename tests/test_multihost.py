"""Multi-host: 2 local processes x 4 fake CPU devices == 1 process x 8 fake devices.

The 2-process run goes through the real path: `lazy-neuron train ... --coordinator_address=...
--num_processes=2 --process_id=I` (jax.distributed over gloo), each process loading only its shard of
the data, global batches assembled with jax.make_array_from_process_local_data, Orbax writing the
sharded state collectively into one shared workdir, process 0 alone writing metrics.
"""
import io
import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from lazy_neuron import config_lib, train

CONFIG = "configs/mlp_gaussian.py:runlocal"
# Parameters sharded across the two processes (fsdp over 4 devices, data over 2).
# Plain SGD: a parameter moves by lr * gradient, so reduction-order noise in a gradient moves it by
# lr * noise (AdamW divides a near-zero gradient by its own root-mean-square: noise -> O(lr)).
OVERRIDES = ["--config.mesh=[('data', 2), ('fsdp', 4)]", "--config.sharding_rules=fsdp",
             "--config.tensorboard=False", "--config.eval_every_steps=2",
             "--config.optimizer.name=sgd", "--config.optimizer.momentum=0.0"]
# The two runs have the same mesh, but the all-reduce across processes (gloo) may sum in another
# order than the one within a process. Largest float32 reduction: mlp_dim = 128 terms (batch 16,
# inputs 64); a reordered sum differs by about eps * sqrt(n) of its terms' magnitude, so values
# agree to RTOL = 16 * eps * sqrt(128) ~ 2e-5 (16: several reductions in a row, and backward).
MLP_DIM = 128
RTOL = 16 * float(np.finfo(np.float32).eps) * np.sqrt(MLP_DIM)
TIMEOUT_S = 120


@pytest.fixture(autouse=True)
def _chdir_repo(repo_root, monkeypatch):
  monkeypatch.chdir(repo_root)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _env(devices: int) -> dict:
  env = dict(os.environ)
  env["XLA_FLAGS"] = (f"--xla_force_host_platform_device_count={devices} "
                      "--xla_cpu_collective_call_terminate_timeout_seconds=20")
  env["JAX_PLATFORMS"] = "cpu"
  for key in ("LAZY_NEURON_COORDINATOR_ADDRESS", "LAZY_NEURON_NUM_PROCESSES",
              "LAZY_NEURON_PROCESS_ID", "SLURM_PROCID", "SLURM_NTASKS"):
    env.pop(key, None)
  return env


def _run_processes(argvs: list[list[str]], cwd: str) -> list[subprocess.CompletedProcess]:
  """Starts every argv at once (they are one job), waits for all; a hang fails, not stalls."""
  procs = [subprocess.Popen(argv, cwd=cwd, env=_env(4), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True) for argv in argvs]
  results = []
  try:
    for p, argv in zip(procs, argvs):
      out, err = p.communicate(timeout=TIMEOUT_S)
      results.append(subprocess.CompletedProcess(argv, p.returncode, out, err))
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.communicate()
  return results


def test_two_processes_match_one_process_with_8_devices(tmp_path, repo_root,
                                                        restore_checkpoint):
  two, one = str(tmp_path / "two"), str(tmp_path / "one")
  argvs = lambda port, *extra: [
      [sys.executable, "-m", "lazy_neuron.cli", "train", f"--config={CONFIG}", f"--workdir={two}",
       *OVERRIDES, *extra, f"--coordinator_address=localhost:{port}", "--num_processes=2",
       f"--process_id={i}"] for i in range(2)]
  # Steps 1-2, then resumed for steps 3-4: each process restores its own data-iterator state.
  for extra in (["--config.total_steps=2"], []):
    results = _run_processes(argvs(_free_port(), *extra), repo_root)
    for i, r in enumerate(results):
      assert r.returncode == 0, f"process {i} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    # Only process 0 reports.
    assert "done:" in results[0].stdout
    assert "step " not in results[1].stdout and "done:" not in results[1].stdout
  assert "resumed from" in results[0].stdout and "step 4/4" in results[0].stdout

  config = config_lib.load_config(CONFIG, [a[2:] for a in OVERRIDES])
  train.train_and_evaluate(config, one, jax.devices(), stream=io.StringIO())

  m2 = [json.loads(line) for line in open(os.path.join(two, "metrics.jsonl"))]
  m1 = [json.loads(line) for line in open(os.path.join(one, "metrics.jsonl"))]
  # One writer: each (step, metric group) once, exactly as many lines as the 1-process run.
  keys = [(r["step"], "eval/loss" in r) for r in m2]
  assert len(keys) == len(set(keys)) and len(m2) == len(m1)
  assert any("train/loss" in r for r in m2)
  for a, b in zip(m1, m2):
    assert a.keys() == b.keys()
    for k in a:
      # Sparsity metrics count pre-activations > 0, and one within rounding of 0 may flip: allow
      # one neuron's worth (1/MLP_DIM: one neuron turning lazy or dead, or far more than a few
      # flips of single activations). An argmax flip (accuracy) needs a tie within rounding.
      tol = 1.0 / MLP_DIM if k.startswith("sparsity/") else RTOL
      assert b[k] == pytest.approx(a[k], rel=RTOL, abs=tol), k

  # Restored onto one device: the sharded checkpoints of both runs hold the same values.
  local = config_lib.load_config(CONFIG, [a[2:] for a in OVERRIDES] + ["config.mesh=[('data', 1)]"])
  s1, p1, _ = restore_checkpoint(one, local)
  s2, p2, _ = restore_checkpoint(two, local)
  assert s1 == s2 == config.total_steps
  for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p2), strict=True):
    scale = float(np.max(np.abs(a)))  # of the whole array: an entry near 0 has no relative error
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=0, atol=RTOL * scale)
  assert os.path.exists(os.path.join(two, "sharding_plan.txt"))


_GATHER = """
import sys
from lazy_neuron import distributed
info = distributed.initialize(coordinator_address=sys.argv[1], num_processes=2,
                              process_id=int(sys.argv[2]))
import jax
me = {"process_index": jax.process_index(), "pad": "x" * (5 + 40 * jax.process_index())}
saved = distributed.gather_process_states(me)
assert saved == {"per_process": [{"process_index": 0, "pad": "x" * 5},
                                 {"process_index": 1, "pad": "x" * 45}]}, saved
assert distributed.this_process_state(saved) == me
print("ok", jax.process_index())
"""


def test_per_process_data_states_gather_and_pick(repo_root):
  """The helpers a checkpoint needs to keep every process's data-iterator state."""
  address = f"localhost:{_free_port()}"
  results = _run_processes([[sys.executable, "-c", _GATHER, address, str(i)] for i in range(2)],
                           repo_root)
  for i, r in enumerate(results):
    assert r.returncode == 0 and f"ok {i}" in r.stdout, r.stderr[-3000:]
