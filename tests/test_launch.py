"""The launchers: `--dry-run` output of every mode, flag validation, and the per-worker scripts run for
real against fake `gcloud`/`ssh`/`curl` binaries (no network, no cloud account)."""
import os
import shlex
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TPU, GPU = str(ROOT / "launch" / "tpu.py"), str(ROOT / "launch" / "gpu.py")
TPU_FLAGS = ["--name=ln-test", "--zone=us-central2-b", "--project=my-proj"]
RUN_FLAGS = ["--config=configs/t5_c4.py:runlocal", "--workdir=gs://bucket/runs/t5"]


def launch(script, *args, env=None, check=True):
  proc = subprocess.run([sys.executable, script, *args], capture_output=True, text=True, timeout=60,
                        env={**os.environ, **(env or {})})
  if check:
    assert proc.returncode == 0, proc.stderr
  return proc


def commands(stdout):
  """The printed commands, comments and heredocs left out, each split as a shell would."""
  out, in_heredoc = [], False
  for line in stdout.splitlines():
    if in_heredoc:
      in_heredoc = line != "EOF"
      continue
    if line.startswith("cat > ") and line.endswith("<<'EOF'"):
      in_heredoc = True
    if line and not line.startswith("#"):
      out.append(shlex.split(line))
  return out


def remote(cmd):
  """The remote script of a `gcloud ... ssh --command=...` or `ssh host script` command."""
  for arg in cmd:
    if arg.startswith("--command="):
      return arg[len("--command="):]
  return cmd[-1]


# ----------------------------------------------------------------------------- TPU, dry run

def test_tpu_up_dry_run_prints_every_step():
  proc = launch(TPU, "up", *TPU_FLAGS, "--accelerator-type=v4-32", *RUN_FLAGS,
                "--env=TFDS_DATA_DIR=gs://bucket/tfds", "--dry-run", "--", "--config.total_steps=7")
  cmds = commands(proc.stdout)
  assert all(c[0] in ("gcloud", "tar") for c in cmds), proc.stdout
  create = cmds[0]
  assert create[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "create", "ln-test"]
  assert {"--accelerator-type=v4-32", "--version=tpu-ubuntu2204-base", "--zone=us-central2-b",
          "--project=my-proj"} <= set(create)
  assert cmds[1][0] == "tar" and "--exclude=.git" in cmds[1]
  scp = cmds[2]
  assert scp[4] == "scp" and "--worker=all" in scp and "ln-test:lazy_neuron.tgz" in scp
  ssh_all = [c for c in cmds if c[4] == "ssh" and "--worker=all" in c]
  assert len(ssh_all) == 4  # unpack code, venv, start, check: each on every worker
  unpack, venv, start, check = (remote(c) for c in ssh_all)
  assert "tar -xzf" in unpack
  assert "venv" in venv and "--python 3.12" in venv and "[tpu]" in venv and "pip install" in venv
  assert "lazy-neuron train" in start and "nohup" in start and "train.pid" in start
  for part in ("--config=configs/t5_c4.py:runlocal", "--workdir=gs://bucket/runs/t5",
               "--config.total_steps=7", "TFDS_DATA_DIR=gs://bucket/tfds"):
    assert part in start
  assert "kill -0" in check
  follow = cmds[-1]
  assert "--worker=0" in follow and "tail" in remote(follow)
  assert not any("delete" in c for c in cmds)  # only when asked
  assert "all 4 workers" in proc.stdout


def test_tpu_up_delete_after_and_spot():
  proc = launch(TPU, "up", *TPU_FLAGS, "--accelerator-type=v5litepod-16", "--spot", "--delete-after",
                "--create-arg=--network=my-net", *RUN_FLAGS, "--dry-run")
  cmds = commands(proc.stdout)
  assert "--spot" in cmds[0] and "--version=v2-alpha-tpuv5-lite" in cmds[0]
  assert "--network=my-net" in cmds[0]
  assert cmds[-1][:6] == ["gcloud", "compute", "tpus", "tpu-vm", "delete", "ln-test"]
  assert "--quiet" in cmds[-1]
  assert "all 4 workers" in proc.stdout


def test_tpu_queued_resource_dry_run():
  proc = launch(TPU, "up", *TPU_FLAGS, "--queued-resource", "--accelerator-type=v6e-8", "--spot",
                "--delete-after", *RUN_FLAGS, "--dry-run")
  cmds = commands(proc.stdout)
  create = cmds[0]
  assert create[:6] == ["gcloud", "compute", "tpus", "queued-resources", "create", "ln-test"]
  assert {"--node-id=ln-test", "--accelerator-type=v6e-8", "--runtime-version=v2-alpha-tpuv6e",
          "--spot"} <= set(create)
  assert cmds[1][4] == "describe" and "--format=value(state.state)" in cmds[1]  # waits for ACTIVE
  assert "ACTIVE" in proc.stdout
  # Code and runs still go through the node's ssh.
  assert any(c[3:5] == ["tpu-vm", "ssh"] and "--worker=all" in c for c in cmds)
  delete = cmds[-1]
  assert delete[3:6] == ["queued-resources", "delete", "ln-test"] and "--force" in delete


@pytest.mark.parametrize("accelerator, version, workers", [
    ("v4-8", "tpu-ubuntu2204-base", 1), ("v4-32", "tpu-ubuntu2204-base", 4),
    ("v3-32", "tpu-ubuntu2204-base", 4), ("v5p-64", "v2-alpha-tpuv5", 8),
    ("v5litepod-8", "v2-alpha-tpuv5-lite", 1), ("v5litepod-64", "v2-alpha-tpuv5-lite", 16),
    ("v6e-256", "v2-alpha-tpuv6e", 64),
])
def test_tpu_runtime_version_and_workers(accelerator, version, workers):
  proc = launch(TPU, "up", *TPU_FLAGS, f"--accelerator-type={accelerator}", *RUN_FLAGS, "--dry-run")
  assert f"--version={version}" in commands(proc.stdout)[0]
  assert f"all {workers} workers" in proc.stdout


def test_tpu_explicit_runtime_version_and_num_workers():
  proc = launch(TPU, "up", *TPU_FLAGS, "--accelerator-type=v4-32", "--runtime-version=v2-alpha-tpuv4",
                "--num-workers=2", *RUN_FLAGS, "--dry-run")
  assert "--version=v2-alpha-tpuv4" in commands(proc.stdout)[0]
  assert "all 2 workers" in proc.stdout


@pytest.mark.parametrize("command, expected", [
    ("create", [["create"]]),
    ("copy", [["tar"], ["scp"], ["ssh"]]),
    ("setup", [["tar"], ["scp"], ["ssh"], ["ssh"]]),
    ("run", [["ssh"], ["ssh"]]),
    ("check", [["ssh"]]),
    ("logs", [["ssh"]]),
    ("stop", [["ssh"]]),
    ("delete", [["delete"]]),
])
def test_tpu_each_subcommand(command, expected):
  proc = launch(TPU, command, *TPU_FLAGS, "--accelerator-type=v4-16", *RUN_FLAGS, "--dry-run")
  cmds = commands(proc.stdout)
  verbs = [["tar"] if c[0] == "tar" else [c[4]] for c in cmds]
  assert verbs == expected, proc.stdout


def test_tpu_stop_ends_the_process_group():
  cmds = commands(launch(TPU, "stop", *TPU_FLAGS, "--accelerator-type=v4-8", "--dry-run").stdout)
  assert "kill -TERM -- -" in remote(cmds[0]) and "--worker=all" in cmds[0]


@pytest.mark.parametrize("args, message", [
    (["up", *TPU_FLAGS, "--accelerator-type=v4-32", "--config=c.py", "--workdir=/tmp/run"], "gs://"),
    (["create", *TPU_FLAGS, "--accelerator-type=v9-32"], "--accelerator-type='v9-32'"),
    (["create", *TPU_FLAGS], "--accelerator-type is required"),
    (["create", *TPU_FLAGS, "--accelerator-type=v4-8", "--queued-resource", "--preemptible"], "--spot"),
    (["run", *TPU_FLAGS, "--accelerator-type=v4-8", "--config=c.py"], "--workdir"),
    (["run", *TPU_FLAGS, "--accelerator-type=v4-8", *RUN_FLAGS, "--", "total_steps=3"], "'total_steps=3'"),
    (["run", *TPU_FLAGS, "--accelerator-type=v4-8", *RUN_FLAGS, "--env=NOEQUALS"], "NAME=VALUE"),
    (["run", "--name=Bad_Name", "--zone=z", "--accelerator-type=v4-8", *RUN_FLAGS], "--name='Bad_Name'"),
    (["run", *TPU_FLAGS, "--accelerator-type=v4-8", *RUN_FLAGS, "--code-dir=../x"], "--code-dir"),
    (["check", *TPU_FLAGS], "--num-workers"),
])
def test_tpu_bad_flags(args, message):
  proc = launch(TPU, *args, "--dry-run", check=False)
  assert proc.returncode == 2
  assert message in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
  assert proc.stdout == ""  # nothing printed, nothing run


def test_dry_run_runs_nothing(tmp_path):
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  for name in ("gcloud", "tar", "ssh", "rsync", "sbatch", "mkdir"):
    _script(bin_dir / name, f"#!/bin/sh\necho {name} >> {tmp_path}/ran\n")
  env = {"PATH": f"{bin_dir}:{os.environ['PATH']}"}
  launch(TPU, "up", *TPU_FLAGS, "--accelerator-type=v4-32", *RUN_FLAGS, "--delete-after", "--dry-run",
         env=env)
  launch(GPU, "ssh", "--hosts=a,b", "--sync", "--setup", *RUN_FLAGS, "--dry-run", env=env)
  launch(GPU, "slurm", *RUN_FLAGS, f"--log-dir={tmp_path}/logs", "--dry-run", env=env)
  assert not (tmp_path / "ran").exists()
  assert not (tmp_path / "logs").exists()


# ----------------------------------------------------------------------------- GPU, dry run

def test_slurm_dry_run_prints_the_script_and_sbatch(tmp_path):
  proc = launch(GPU, "slurm", "--nodes=4", "--gpus-per-node=8", "--time=02:00:00", "--partition=a100",
                "--account=lab", "--cpus-per-task=32", "--sbatch-arg=--qos=high", "--port=9999",
                f"--venv={tmp_path}/venv", f"--log-dir={tmp_path}/logs", "--env=TFDS_DATA_DIR=gs://b/tfds",
                *RUN_FLAGS, "--dry-run", "--", "--config.seed=3")
  out = proc.stdout
  script = out.split("<<'EOF'\n")[1].split("\nEOF")[0]
  for line in ("#!/bin/bash", "#SBATCH --nodes=4", "#SBATCH --ntasks-per-node=1", "#SBATCH --gpus-per-node=8",
               "#SBATCH --time=02:00:00", "#SBATCH --partition=a100", "#SBATCH --account=lab",
               "#SBATCH --cpus-per-task=32", "#SBATCH --qos=high", f"#SBATCH --output={tmp_path}/logs/%x-%j.out",
               "export TFDS_DATA_DIR=gs://b/tfds", "export LAZY_NEURON_COORDINATOR_PORT=9999",
               f"cd {ROOT}"):
    assert line in script.splitlines(), line
  srun = shlex.split(script.splitlines()[-1])
  assert srun[0] == "srun" and "--kill-on-bad-exit=1" in srun and "--ntasks-per-node=1" in srun
  assert srun[srun.index(f"{tmp_path}/venv/bin/lazy-neuron"):] == [
      f"{tmp_path}/venv/bin/lazy-neuron", "train", "--config=configs/t5_c4.py:runlocal",
      "--workdir=gs://bucket/runs/t5", "--config.seed=3"]
  assert "--coordinator_address" not in script  # SLURM's variables give it (lazy_neuron.distributed)
  cmds = commands(out)
  assert cmds[0] == ["mkdir", "-p", f"{tmp_path}/logs"]
  assert cmds[-1][:2] == ["sbatch", "--parsable"] and cmds[-1][2].endswith(".sbatch")


def test_slurm_defaults_and_bad_flags():
  proc = launch(GPU, "slurm", *RUN_FLAGS, "--dry-run")
  assert "#SBATCH --nodes=1" in proc.stdout and f"{ROOT}/.venv/bin/lazy-neuron" in proc.stdout
  assert "--partition" not in proc.stdout
  for bad, message in ((["--nodes=0"], "--nodes=0"), (["--time=soon"], "--time='soon'"),
                       (["--job-name=a b"], "--job-name")):
    proc = launch(GPU, "slurm", *RUN_FLAGS, *bad, "--dry-run", check=False)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr


def test_ssh_dry_run_starts_every_host_and_follows_host_0():
  proc = launch(GPU, "ssh", "--hosts=gpu1,me@gpu2,gpu3", "--coordinator-port=9000", "--sync", "--setup",
                *RUN_FLAGS, "--dry-run", "--", "--config.seed=1")
  cmds = commands(proc.stdout)
  rsync = [c for c in cmds if c[0] == "rsync"]
  assert [c[-1] for c in rsync] == ["gpu1:lazy_neuron/", "me@gpu2:lazy_neuron/", "gpu3:lazy_neuron/"]
  ssh_cmds = [c for c in cmds if c[0] == "ssh"]
  hosts = [c[3] for c in ssh_cmds]
  assert hosts == ["gpu1", "me@gpu2", "gpu3"] * 3 + ["gpu1"]  # setup, start, check; follow host 0
  setups = [remote(c) for c in ssh_cmds[:3]]
  assert all("-m venv" in s and "[cuda]" in s for s in setups)
  for i, cmd in enumerate(ssh_cmds[3:6]):
    start = remote(cmd)
    for part in ("lazy-neuron train", "--config=configs/t5_c4.py:runlocal", "--config.seed=1",
                 "--coordinator_address=gpu1:9000", "--num_processes=3", f"--process_id={i}", "nohup"):
      assert part in start, part
  assert "kill -0" in remote(ssh_cmds[6]) and "tail" in remote(ssh_cmds[-1])


@pytest.mark.parametrize("args, message", [
    (["ssh", *RUN_FLAGS], "--hosts is required"),
    (["ssh", "--hosts=a,a", *RUN_FLAGS], "names a host twice"),
    (["ssh", "--hosts=a;rm", *RUN_FLAGS], "'a;rm'"),
    (["ssh", "--hosts=a", "--config=c.py"], "--workdir"),
    (["ssh", "--hosts=a", *RUN_FLAGS, "--coordinator-port=0"], "--coordinator-port=0"),
])
def test_ssh_bad_flags(args, message):
  proc = launch(GPU, *args, "--dry-run", check=False)
  assert proc.returncode == 2 and message in proc.stderr, proc.stderr


def test_gpu_stop_check_logs_dry_run():
  for command, needle in (("stop", "kill -TERM"), ("check", "kill -0"), ("logs", "tail")):
    cmds = commands(launch(GPU, command, "--hosts=a,b", "--dry-run").stdout)
    assert all(needle in remote(c) for c in cmds)
    assert [c[3] for c in cmds] == (["a"] if command == "logs" else ["a", "b"])


# ----------------------------------------------------------------------------- scripts, run for real

def _script(path: Path, text: str) -> None:
  path.write_text(textwrap.dedent(text))
  path.chmod(path.stat().st_mode | stat.S_IEXEC)


FAKE_TRAIN = """\
  #!/bin/bash
  echo "fake train in $(pwd): $*"
  echo "TFDS_DATA_DIR=$TFDS_DATA_DIR"
  sleep 0.3
  echo "fake train done"
"""


def _fake_host(home: Path, with_code: bool = True) -> None:
  home.mkdir(parents=True)
  if with_code:
    (home / "lazy_neuron").mkdir()
  (home / "lazy_neuron_venv" / "bin").mkdir(parents=True)
  _script(home / "lazy_neuron_venv" / "bin" / "lazy-neuron", FAKE_TRAIN)


@pytest.fixture
def fake_cloud(tmp_path):
  """`ssh HOST SCRIPT` and `gcloud ... ssh NAME --worker=W --command=SCRIPT` that run SCRIPT locally
  with HOME=<tmp>/<host> (or <tmp>/worker<i>), and a `curl` that answers the TPU worker number."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  _script(bin_dir / "ssh", f"""\
    #!/bin/bash
    host="${{@: -2:1}}"; script="${{@: -1}}"
    HOME="{tmp_path}/$host" exec bash -c "$script"
  """)
  _script(bin_dir / "curl", "#!/bin/bash\necho \"$FAKE_WORKER_ID\"\n")
  _script(bin_dir / "gcloud", f"""\
    #!{sys.executable}
    import json, os, subprocess, sys
    args = sys.argv[1:]
    n = int(os.environ["FAKE_WORKERS"])
    if "describe" in args:
      print(json.dumps({{"networkEndpoints": [{{}}] * n}}))
      sys.exit(0)
    assert "ssh" in args, args
    worker = next(a.split("=", 1)[1] for a in args if a.startswith("--worker="))
    script = next(a.split("=", 1)[1] for a in args if a.startswith("--command="))
    rc = 0
    for w in (range(n) if worker == "all" else [int(worker)]):
      env = dict(os.environ, HOME="{tmp_path}/worker%d" % w, FAKE_WORKER_ID=str(w))
      rc = max(rc, subprocess.run(["bash", "-c", script], env=env).returncode)
    sys.exit(rc)
  """)
  return tmp_path, {"PATH": f"{bin_dir}:{os.environ['PATH']}"}


def test_ssh_mode_runs_checks_and_follows_host_0(fake_cloud):
  tmp, env = fake_cloud
  for host in ("hostA", "hostB"):
    _fake_host(tmp / host)
  proc = launch(GPU, "ssh", "--hosts=hostA,hostB", *RUN_FLAGS, "--check-after=0",
                "--env=TFDS_DATA_DIR=gs://b/tfds", "--", "--config.seed=5", env=env, check=False)
  assert proc.returncode == 0, proc.stderr
  # Host 0's log, followed to the end: the train command with its distributed flags.
  assert "fake train in " + str(tmp / "hostA" / "lazy_neuron") in proc.stdout
  assert "--process_id=0" in proc.stdout and "--coordinator_address=hostA:8476" in proc.stdout
  assert "--config.seed=5" in proc.stdout and "TFDS_DATA_DIR=gs://b/tfds" in proc.stdout
  assert "fake train done" in proc.stdout and "run ended (exit code 0)" in proc.stdout
  host_b_log = (tmp / "hostB" / "lazy_neuron_logs" / "train.log").read_text()
  assert "--process_id=1" in host_b_log and "--num_processes=2" in host_b_log


def test_ssh_mode_names_the_host_that_did_not_start(fake_cloud):
  tmp, env = fake_cloud
  _fake_host(tmp / "hostA")
  _fake_host(tmp / "hostB", with_code=False)
  proc = launch(GPU, "ssh", "--hosts=hostA,hostB", *RUN_FLAGS, "--check-after=0", env=env, check=False)
  assert proc.returncode == 1
  assert "1 of 2 hosts did not start: host 1 (hostB) (NOT RUNNING)" in proc.stderr, proc.stderr


def test_tpu_run_starts_every_worker_and_reports_a_missing_one(fake_cloud):
  tmp, env = fake_cloud
  env = {**env, "FAKE_WORKERS": "3"}
  for w in range(3):
    _fake_host(tmp / f"worker{w}", with_code=w != 2)
  proc = launch(TPU, "run", *TPU_FLAGS, *RUN_FLAGS, "--check-after=0", env=env, check=False)
  assert proc.returncode == 1
  assert "1 of 3 workers did not start: 2 (NOT RUNNING)" in proc.stderr, proc.stderr
  for w in range(2):
    log = (tmp / f"worker{w}" / "lazy_neuron_logs" / "train.log").read_text()
    assert "--workdir=gs://bucket/runs/t5" in log
  # After the runs end, `check` says so and `logs` prints worker 0's log with its exit code.
  (tmp / "worker2" / "lazy_neuron").mkdir()
  launch(TPU, "run", *TPU_FLAGS, *RUN_FLAGS, "--check-after=0", env=env, check=False)
  proc = launch(TPU, "logs", *TPU_FLAGS, env=env)
  assert "fake train done" in proc.stdout and "worker 0: run ended (exit code 0)" in proc.stdout
  proc = launch(TPU, "check", *TPU_FLAGS, env=env, check=False)
  assert "finished (exit code 0)" in proc.stdout and proc.returncode == 0, proc.stderr


def test_a_second_run_next_to_a_live_one_is_refused_and_stop_ends_it(fake_cloud):
  tmp, env = fake_cloud
  _fake_host(tmp / "hostA")
  _script(tmp / "hostA" / "lazy_neuron_venv" / "bin" / "lazy-neuron", "#!/bin/bash\nsleep 30\n")
  flags = ["--hosts=hostA", *RUN_FLAGS, "--check-after=0", "--no-follow"]
  launch(GPU, "ssh", *flags, env=env)
  proc = launch(GPU, "ssh", *flags, env=env, check=False)
  assert proc.returncode == 1 and "BUSY" in proc.stderr
  proc = launch(GPU, "stop", "--hosts=hostA", env=env)
  assert "stopped pid" in proc.stdout
  pid = int((tmp / "hostA" / "lazy_neuron_logs" / "train.pid").read_text())
  with pytest.raises(ProcessLookupError):
    os.kill(pid, 0)
  # The next run starts, and keeps the earlier log under a timestamped name.
  launch(GPU, "ssh", *flags, env=env)
  assert len(list((tmp / "hostA" / "lazy_neuron_logs").glob("train.*.log"))) == 1
  launch(GPU, "stop", "--hosts=hostA", env=env)

