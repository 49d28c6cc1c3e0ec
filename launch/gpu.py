#!/usr/bin/env python3
"""Run `lazy-neuron train` on one or more GPU hosts: through SLURM, or over plain ssh.

SLURM (writes an sbatch script, one task per node, and submits it):

  python launch/gpu.py slurm --nodes=2 --gpus-per-node=8 --time=04:00:00 --partition=gpu \\
      --venv=/shared/lazy_neuron/.venv --config=configs/vit.py --workdir=gs://BUCKET/runs/vit

  Every task finds its place from SLURM's variables (lazy_neuron.distributed: coordinator = first
  node of the step, process id = SLURM_PROCID), so the train command carries no distributed flags.

ssh (the same command on every host, process i on the i-th host of --hosts):

  python launch/gpu.py ssh --hosts=gpu1,gpu2 --config=configs/vit.py --workdir=gs://BUCKET/runs/vit

  adds --coordinator_address=gpu1:PORT --num_processes=2 --process_id=i, starts each in the
  background with a pid file and a log, checks that every host started (names the ones that did not),
  then follows host 0's log. `check`, `logs` and `stop` act on a running ssh job; `--sync` copies the
  code (rsync) and `--setup` makes a venv with jax[cuda13] and the project on every host first.

Flags after `--` go to `lazy-neuron train` unchanged. `--dry-run` prints the script and every
command, runs nothing.
"""
from __future__ import annotations

import argparse
import re
import shlex
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import launchlib as common  # noqa: E402  (launch/ is a folder of scripts, not a package)
from launchlib import Runner, UsageError  # noqa: E402

PROG = "launch/gpu.py"
COMMANDS = ("slurm", "ssh", "check", "logs", "stop")
RSYNC_EXCLUDES = (".git", "__pycache__", "*.egg-info", ".venv", "venv", ".pytest_cache",
                  ".ipynb_checkpoints")


def build_parser() -> argparse.ArgumentParser:
  p = common.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0],
                            epilog="Flags after `--` go to `lazy-neuron train` unchanged.")
  p.add_argument("command", choices=COMMANDS,
                 help="slurm: submit a batch job; ssh: start on --hosts; check/logs/stop: a running ssh job")
  p.add_argument("--config", help="e.g. configs/vit.py or configs/t5_base.py:runlocal")
  p.add_argument("--workdir", help="shared by all hosts: gs://BUCKET/runs/NAME or a shared filesystem")
  p.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                 help="environment for the train command, e.g. TFDS_DATA_DIR=gs://BUCKET/tfds (repeatable)")
  p.add_argument("--skip-config-check", action="store_true",
                 help="launch without first loading --config and its overrides here (the check "
                 "needs the project's packages and the config's local files)")
  p.add_argument("--dry-run", action="store_true", help="print the script and every command, run none")
  s = p.add_argument_group("slurm")
  s.add_argument("--nodes", type=int, default=1)
  s.add_argument("--gpus-per-node", type=int, default=8)
  s.add_argument("--cpus-per-task", type=int, help="CPU cores per node's task (input pipeline)")
  s.add_argument("--time", default="24:00:00", help="wall-clock limit, e.g. 04:00:00 or 2-00:00:00")
  s.add_argument("--partition")
  s.add_argument("--account")
  s.add_argument("--job-name", default="lazy-neuron")
  s.add_argument("--venv", help="venv with the project installed, on a filesystem every node sees "
                 "(default: <project>/.venv)")
  s.add_argument("--log-dir", help="where SLURM writes the job's output (default: <project>/logs)")
  s.add_argument("--port", type=int, help="coordinator port (default: derived from the job id)")
  s.add_argument("--sbatch-arg", action="append", default=[], metavar="FLAG",
                 help="extra #SBATCH line, e.g. --sbatch-arg=--qos=high (repeatable)")
  h = p.add_argument_group("ssh")
  h.add_argument("--hosts", help="comma-separated hosts (ssh names); process i runs on the i-th")
  h.add_argument("--coordinator-host", help="address the others reach host 0 at (default: host 0)")
  h.add_argument("--coordinator-port", type=int, default=8476)
  h.add_argument("--code-dir", default="lazy_neuron", help="code on each host: under $HOME, or absolute")
  h.add_argument("--venv-dir", default="lazy_neuron_venv", help="venv on each host: under $HOME, or absolute")
  h.add_argument("--remote-log-dir", default="lazy_neuron_logs", help="log/pid folder on each host")
  h.add_argument("--sync", action="store_true", help="rsync this checkout to --code-dir on every host first")
  h.add_argument("--setup", action="store_true",
                 help="create the venv with jax[cuda13] and the project (pip install -e) on every host first")
  h.add_argument("--python", default="python3", help="interpreter that --setup makes the venv from (>= 3.11)")
  h.add_argument("--extras", default="cuda", help="project extras --setup installs, e.g. cuda or cuda,tf")
  h.add_argument("--check-after", type=float, default=30.0,
                 help="seconds between starting and checking that every host runs")
  h.add_argument("--no-follow", action="store_true", help="ssh: do not follow host 0's log")
  return p


# ----------------------------------------------------------------------------- SLURM

def sbatch_script(args: argparse.Namespace, venv: str, log_dir: str) -> str:
  lines = ["#!/bin/bash",
           f"#SBATCH --job-name={args.job_name}",
           f"#SBATCH --nodes={args.nodes}",
           "#SBATCH --ntasks-per-node=1",
           f"#SBATCH --gpus-per-node={args.gpus_per_node}",
           f"#SBATCH --time={args.time}",
           f"#SBATCH --output={log_dir}/%x-%j.out"]
  if args.cpus_per_task:
    lines.append(f"#SBATCH --cpus-per-task={args.cpus_per_task}")
  if args.partition:
    lines.append(f"#SBATCH --partition={args.partition}")
  if args.account:
    lines.append(f"#SBATCH --account={args.account}")
  lines += [f"#SBATCH {a}" for a in args.sbatch_arg]
  lines += [
      f"# Written by {PROG}. One task per node, each with all of its node's GPUs. lazy_neuron.distributed",
      "# reads SLURM's variables: coordinator = first node of the step, process id = SLURM_PROCID.",
      "set -euo pipefail",
      f"cd {shlex.quote(str(common.PROJECT_ROOT))}",
  ]
  for key, value in common.parse_env(args.env).items():
    lines.append(f"export {key}={shlex.quote(value)}")
  if args.port:
    lines.append(f"export LAZY_NEURON_COORDINATOR_PORT={args.port}")
  srun = ["srun", f"--nodes={args.nodes}", "--ntasks-per-node=1", f"--gpus-per-node={args.gpus_per_node}",
          "--kill-on-bad-exit=1"]
  if args.cpus_per_task:
    srun.append(f"--cpus-per-task={args.cpus_per_task}")
  train = [f"{venv}/bin/lazy-neuron", "train", f"--config={args.config}", f"--workdir={args.workdir}",
           *args.train_flags]
  lines.append(shlex.join(srun + train))
  return "\n".join(lines) + "\n"


def slurm(args: argparse.Namespace, runner: Runner) -> int:
  if args.nodes < 1 or args.gpus_per_node < 1:
    raise UsageError(f"--nodes={args.nodes} --gpus-per-node={args.gpus_per_node} is not valid; both >= 1")
  if args.port is not None and not 1 <= args.port <= 65535:
    raise UsageError(f"--port={args.port} is not valid; expected 1..65535")
  if not re.fullmatch(r"[A-Za-z0-9_.-]+", args.job_name):
    raise UsageError(f"--job-name={args.job_name!r} is not valid; use letters, digits and ._-")
  if not re.fullmatch(r"(\d+-)?\d+(:\d+){0,2}", args.time):
    raise UsageError(f"--time={args.time!r} is not valid; expected e.g. 04:00:00, 90 or 2-00:00:00")
  venv = str(Path(args.venv).resolve() if args.venv else common.PROJECT_ROOT / ".venv")
  log_dir = str(Path(args.log_dir).resolve() if args.log_dir else common.PROJECT_ROOT / "logs")
  stamp = time.strftime("%Y%m%d-%H%M%S")
  script = Path(log_dir) / f"{args.job_name}-{stamp}.sbatch"
  if args.nodes > 1 and not args.workdir.startswith("gs://"):
    runner.note(f"workdir {args.workdir} must be on a filesystem that all {args.nodes} nodes share")
  runner.run(["mkdir", "-p", log_dir])
  runner.write_file(script, sbatch_script(args, venv, log_dir))
  proc = runner.run(["sbatch", "--parsable", str(script)], capture=True)
  job = (proc.stdout or "").strip().split(";")[0] or "JOBID"
  runner.note(f"job {job}: watch with `squeue -j {job}`, follow with "
              f"`tail -F {log_dir}/{args.job_name}-{job}.out`, cancel with `scancel {job}`")
  return 0


# ----------------------------------------------------------------------------- ssh

def hosts_of(args: argparse.Namespace) -> list[str]:
  hosts = [h.strip() for h in (args.hosts or "").split(",") if h.strip()]
  if not hosts:
    raise UsageError("--hosts is required for ssh mode, e.g. --hosts=gpu1,gpu2")
  for h in hosts:
    if not re.fullmatch(r"([A-Za-z0-9._-]+@)?[A-Za-z0-9._:-]+", h):
      raise UsageError(f"--hosts entry {h!r} is not valid; expected [user@]host")
  if len(set(hosts)) != len(hosts):
    raise UsageError(f"--hosts={args.hosts!r} names a host twice; one process per host")
  return hosts


def ssh(host: str, script: str) -> list[str]:
  # BatchMode: fail instead of waiting for a password prompt nobody sees.
  return ["ssh", "-o", "BatchMode=yes", host, script]


def _distributed_flags(coordinator: str, n: int, i: int) -> list[str]:
  return [f"--coordinator_address={coordinator}", f"--num_processes={n}", f"--process_id={i}"]


def ssh_start(args: argparse.Namespace, runner: Runner) -> int:
  hosts = hosts_of(args)
  if not args.config or not args.workdir:
    raise UsageError("--config and --workdir are required, e.g. --config=configs/vit.py "
                     "--workdir=gs://BUCKET/runs/vit")
  if not 1 <= args.coordinator_port <= 65535:
    raise UsageError(f"--coordinator-port={args.coordinator_port} is not valid; expected 1..65535")
  n = len(hosts)
  coordinator = f"{args.coordinator_host or hosts[0].split('@')[-1]}:{args.coordinator_port}"
  if not args.skip_config_check:  # before any host is touched; with host 0's distributed flags
    common.check_run(args.config, args.workdir, [*args.train_flags, *_distributed_flags(
        coordinator, n, 0)])
  if n > 1 and not args.workdir.startswith("gs://"):
    runner.note(f"workdir {args.workdir} must be on a filesystem that all {n} hosts share")
  env = common.parse_env(args.env)
  if args.sync:
    excludes = [f"--exclude={e}" for e in RSYNC_EXCLUDES]
    for host in hosts:
      # rsync reads a relative destination as relative to the remote $HOME, like the scripts do.
      runner.run(["rsync", "-az", *excludes, f"{common.PROJECT_ROOT}/", f"{host}:{args.code_dir}/"])
  if args.setup:
    venv = common.home(args.venv_dir)
    for host in hosts:
      runner.run(ssh(host, "; ".join([
          "set -e",
          f"{shlex.quote(args.python)} -m venv {venv}",
          f"{venv}/bin/pip install -q -U pip",
          f"{venv}/bin/pip install -q -e {common.home(args.code_dir)}'[{args.extras}]'",
          f"echo \"{common.TAG}: host $(hostname): ready, jax $({venv}/bin/python -c "
          f"'import jax, lazy_neuron; print(jax.__version__)')\"",
      ])))
  status = {}
  for i, host in enumerate(hosts):
    flags = [*args.train_flags, *_distributed_flags(coordinator, n, i)]
    train = common.train_command(args.venv_dir, args.config, args.workdir, flags, env)
    proc = runner.run(ssh(host, common.start_script(str(i), args.code_dir, args.remote_log_dir, train)),
                      capture=True, check=False)
    status.update(common.parse_status(proc.stdout or ""))
  names = {str(i): f"host {i} ({h})" for i, h in enumerate(hosts)}
  if not runner.dry_run:
    common.report_workers([str(i) for i in range(n)], status, "host", names)
  runner.note(f"started on {n} hosts; coordinator {coordinator}")
  runner.sleep(args.check_after)
  ssh_check(args, runner)
  if args.no_follow:
    return 0
  return ssh_logs(args, runner)


def ssh_check(args: argparse.Namespace, runner: Runner) -> int:
  hosts = hosts_of(args)
  status = {}
  for i, host in enumerate(hosts):
    proc = runner.run(ssh(host, common.check_script(str(i), args.remote_log_dir)), capture=True, check=False)
    status.update(common.parse_status(proc.stdout or ""))
  if not runner.dry_run:
    names = {str(i): f"host {i} ({h})" for i, h in enumerate(hosts)}
    common.report_workers([str(i) for i in range(len(hosts))], status, "host", names)
    runner.note(f"all {len(hosts)} hosts are running")
  return 0


def ssh_logs(args: argparse.Namespace, runner: Runner) -> int:
  host = hosts_of(args)[0]
  runner.note(f"following host 0 ({host})'s log until the run ends (Ctrl-C stops following, not the run)")
  try:
    return runner.run(ssh(host, common.stream_script("0", args.remote_log_dir)), check=False).returncode
  except KeyboardInterrupt:
    return 130


def ssh_stop(args: argparse.Namespace, runner: Runner) -> int:
  for i, host in enumerate(hosts_of(args)):
    runner.run(ssh(host, common.stop_script(str(i), args.remote_log_dir)), check=False)
  return 0


def main(argv: list[str]) -> int:
  own, train_flags = common.split_passthrough(argv)
  args = common.parse(build_parser(), own)
  args.train_flags = common.check_train_flags(train_flags)
  for flag in ("code_dir", "venv_dir", "remote_log_dir"):
    common.check_remote_dir(getattr(args, flag), "--" + flag.replace("_", "-"), absolute_ok=True)
  if not re.fullmatch(r"[A-Za-z0-9_.,-]+", args.extras):
    raise UsageError(f"--extras={args.extras!r} is not valid; e.g. cuda or cuda,tf")
  runner = Runner(args.dry_run)
  if args.command == "slurm":
    if not args.config or not args.workdir:
      raise UsageError("--config and --workdir are required, e.g. --config=configs/vit.py "
                       "--workdir=gs://BUCKET/runs/vit")
    if not args.skip_config_check:  # before the script is written or the job submitted
      common.check_run(args.config, args.workdir, args.train_flags)
    return slurm(args, runner)
  return {"ssh": ssh_start, "check": ssh_check, "logs": ssh_logs, "stop": ssh_stop}[args.command](
      args, runner)


if __name__ == "__main__":
  sys.exit(common.main_wrapper(PROG, main, None))
