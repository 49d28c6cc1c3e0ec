#!/usr/bin/env python3
"""Run `lazy-neuron train` on a Cloud TPU VM or pod slice (every worker), from your laptop.

  python launch/tpu.py up --name=ln-v4 --zone=us-central2-b --accelerator-type=v4-32 \\
      --config=configs/t5_base.py --workdir=gs://BUCKET/runs/t5 -- --config.total_steps=1000

`up` = create -> setup (copy the code, a venv with jax[tpu] and the project on every worker) -> run
(start the same train command on all workers, in the background) -> check (every worker started?)
-> logs (follow worker 0 until the run ends) [-> delete with --delete-after]. Each step is also a
command of its own: create, copy, setup, run, check, logs, stop, delete. `--dry-run` prints every
command, one per line, and runs none. Needs only `gcloud` (authenticated) and `tar` locally.

On the workers, jax.distributed needs no settings: `lazy_neuron.distributed` sees a Cloud TPU and
calls `jax.distributed.initialize()`, which reads the topology from the TPU metadata.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import launchlib as common  # noqa: E402  (launch/ is a folder of scripts, not a package)
from launchlib import LaunchError, Runner, UsageError  # noqa: E402

PROG = "launch/tpu.py"
COMMANDS = ("up", "create", "copy", "setup", "run", "check", "logs", "stop", "delete")

# Software versions that Cloud TPU recommends for JAX, by TPU generation (cloud.google.com/tpu/docs/runtimes).
RUNTIME_VERSIONS = {
    "v2": "tpu-ubuntu2204-base", "v3": "tpu-ubuntu2204-base", "v4": "tpu-ubuntu2204-base",
    "v5p": "v2-alpha-tpuv5", "v5litepod": "v2-alpha-tpuv5-lite", "v5e": "v2-alpha-tpuv5-lite",
    "v6e": "v2-alpha-tpuv6e",
}
# The metadata server tells each worker its index; on a non-TPU machine fall back to the host name.
WORKER_ID = ("$(curl -s -m 5 -H Metadata-Flavor:Google http://metadata.google.internal/computeMetadata/"
             "v1/instance/attributes/agent-worker-number 2>/dev/null || hostname)")
TAR_EXCLUDES = (".git", "__pycache__", "*.egg-info", ".venv", "venv", ".pytest_cache",
                ".ipynb_checkpoints", "*.tgz")


def parse_accelerator(accelerator_type: str) -> tuple[str, int]:
  m = re.fullmatch(r"(v\d+[a-z]*)-(\d+)", accelerator_type or "")
  if not m or m.group(1) not in RUNTIME_VERSIONS:
    raise UsageError(f"--accelerator-type={accelerator_type!r} is not valid; expected <generation>-<size> "
                     f"with generation one of {', '.join(RUNTIME_VERSIONS)}, e.g. v4-32, v5litepod-16, v6e-8")
  return m.group(1), int(m.group(2))


def default_runtime_version(accelerator_type: str) -> str:
  return RUNTIME_VERSIONS[parse_accelerator(accelerator_type)[0]]


def workers_for(accelerator_type: str) -> int:
  """Hosts in a slice. v2-v5p count TensorCores (8 per host); v5e/v6e count chips (4 per host when
  the slice spans hosts, up to 8 on one host)."""
  gen, size = parse_accelerator(accelerator_type)
  if gen in ("v5litepod", "v5e", "v6e"):
    return 1 if size <= 8 else size // 4
  return max(1, size // 8)


def build_parser() -> argparse.ArgumentParser:
  p = common.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0],
                            epilog="Flags after `--` go to `lazy-neuron train` unchanged.")
  p.add_argument("command", choices=COMMANDS)
  p.add_argument("--name", required=True, help="TPU VM (and queued resource) name")
  p.add_argument("--zone", required=True, help="e.g. us-central2-b (v4), us-west4-a (v5e), us-east5-b (v6e)")
  p.add_argument("--project", help="GCP project (default: gcloud's configured project)")
  p.add_argument("--accelerator-type", help="e.g. v4-8, v4-32, v5litepod-16, v5p-64, v6e-8")
  p.add_argument("--runtime-version", help="TPU software version (default: the one recommended for "
                 "the generation: tpu-ubuntu2204-base for v2-v4, v2-alpha-tpuv5-lite for v5e, ...)")
  p.add_argument("--queued-resource", action="store_true",
                 help="create through `queued-resources create` (waits in the queue for capacity)")
  cap = p.add_mutually_exclusive_group()
  cap.add_argument("--spot", action="store_true", help="Spot TPU VMs (cheaper, can be preempted)")
  cap.add_argument("--preemptible", action="store_true", help="preemptible TPU VMs (tpu-vm create only)")
  cap.add_argument("--reserved", action="store_true", help="use the project's reservation")
  p.add_argument("--create-arg", action="append", default=[], metavar="FLAG",
                 help="extra flag for the create command, e.g. --create-arg=--service-account=SA@... "
                 "or --create-arg=--network=NET (repeatable)")
  p.add_argument("--num-workers", type=int, help="hosts in the slice (default: from the slice, or "
                 "from --accelerator-type)")
  p.add_argument("--config", help="e.g. configs/t5_base.py or configs/vit.py:variant=B/16")
  p.add_argument("--workdir", help="where the run writes: gs://BUCKET/runs/NAME")
  p.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                 help="environment for the train command, e.g. TFDS_DATA_DIR=gs://BUCKET/tfds (repeatable)")
  p.add_argument("--python", default="3.12", help="Python of the workers' venv (installed with uv)")
  p.add_argument("--extras", default="tpu", help="project extras to install, e.g. tpu or tpu,tf")
  p.add_argument("--code-dir", default="lazy_neuron", help="code folder on each worker, under $HOME")
  p.add_argument("--venv-dir", default="lazy_neuron_venv", help="venv folder on each worker, under $HOME")
  p.add_argument("--log-dir", default="lazy_neuron_logs", help="log/pid folder on each worker, under $HOME")
  p.add_argument("--check-after", type=float, default=30.0,
                 help="seconds between starting and checking that every worker runs")
  p.add_argument("--delete-after", action="store_true",
                 help="`up`: delete the TPU VM once the run has ended (not when you press Ctrl-C)")
  p.add_argument("--skip-config-check", action="store_true",
                 help="launch without first loading --config and its overrides here (the check "
                 "needs the project's packages and the config's local files)")
  p.add_argument("--dry-run", action="store_true", help="print every command, run none")
  return p


class Tpu:
  """The gcloud commands for one TPU VM."""

  def __init__(self, args: argparse.Namespace, runner: Runner):
    self.a, self.r = args, runner
    self.project = [f"--project={args.project}"] if args.project else []
    self._workers = args.num_workers

  # -- gcloud building blocks
  def tpu_vm(self, verb: str, *rest: str) -> list[str]:
    return ["gcloud", "compute", "tpus", "tpu-vm", verb, *rest, f"--zone={self.a.zone}", *self.project]

  def queued(self, verb: str, *rest: str) -> list[str]:
    return ["gcloud", "compute", "tpus", "queued-resources", verb, *rest, f"--zone={self.a.zone}",
            *self.project]

  def ssh(self, script: str, worker: str = "all", **kw):
    return self.r.run(self.tpu_vm("ssh", self.a.name, f"--worker={worker}", f"--command={script}"), **kw)

  def num_workers(self) -> int:
    if self._workers is None and not self.r.dry_run:
      proc = self.r.run(self.tpu_vm("describe", self.a.name, "--format=json(networkEndpoints)"),
                        capture=True, check=False)
      if proc.returncode == 0:
        try:
          self._workers = len(json.loads(proc.stdout).get("networkEndpoints", [])) or None
        except ValueError:
          pass
    if self._workers is None:
      if not self.a.accelerator_type:
        raise UsageError("the number of workers is unknown; pass --accelerator-type (e.g. v4-32) "
                         "or --num-workers")
      self._workers = workers_for(self.a.accelerator_type)
    return self._workers

  # -- steps
  def create(self) -> None:
    a = self.a
    if not a.accelerator_type:
      raise UsageError("--accelerator-type is required to create a TPU VM, e.g. v4-32 or v5litepod-16")
    version = a.runtime_version or default_runtime_version(a.accelerator_type)
    capacity = ["--spot"] if a.spot else ["--preemptible"] if a.preemptible else \
        ["--reserved"] if a.reserved else []
    if a.queued_resource:
      if a.preemptible:
        raise UsageError("--preemptible is not valid with --queued-resource; use --spot")
      self.r.run(self.queued("create", a.name, f"--node-id={a.name}",
                             f"--accelerator-type={a.accelerator_type}",
                             f"--runtime-version={version}", *capacity, *a.create_arg))
      self.wait_active()
    else:
      self.r.run(self.tpu_vm("create", a.name, f"--accelerator-type={a.accelerator_type}",
                             f"--version={version}", *capacity, *a.create_arg))

  def wait_active(self, poll_s: float = 30.0, max_wait_s: float = 7 * 24 * 3600) -> None:
    cmd = self.queued("describe", self.a.name, "--format=value(state.state)")
    if self.r.dry_run:
      self.r.note(f"poll every {poll_s:g} s until the queued resource is ACTIVE:")
      self.r.run(cmd)
      return
    waited = 0.0
    while True:
      state = self.r.run(cmd, capture=True, check=False).stdout.strip()
      if state == "ACTIVE":
        return
      if state in ("FAILED", "SUSPENDED"):
        raise LaunchError(f"queued resource {self.a.name} is {state}; see `gcloud compute tpus "
                          f"queued-resources describe {self.a.name} --zone={self.a.zone}`")
      if waited >= max_wait_s:
        raise LaunchError(f"queued resource {self.a.name} still {state or 'unknown'} after {waited:.0f} s")
      self.r.note(f"queued resource {self.a.name}: {state or 'unknown'}; next look in {poll_s:g} s")
      self.r.sleep(poll_s)
      waited += poll_s

  def copy(self) -> None:
    a = self.a
    tarball = Path(tempfile.gettempdir()) / f"lazy_neuron-{a.name}.tgz"
    excludes = [f"--exclude={e}" for e in TAR_EXCLUDES]
    self.r.run(["tar", "-czf", str(tarball), *excludes, "-C", str(common.PROJECT_ROOT), "."])
    # Fresh VMs sometimes refuse ssh for the first minute: retry.
    self.r.run(self.tpu_vm("scp", str(tarball), f"{a.name}:lazy_neuron.tgz", "--worker=all"),
               retries=3)
    code, new, pid = common.home(a.code_dir), common.home(a.code_dir + ".new"), \
        f"{common.home(a.log_dir)}/train.pid"
    self.ssh("; ".join([
        "set -e",
        f"if [ -f {pid} ] && kill -0 \"$(cat {pid})\" 2>/dev/null; then "
        f"echo \"{common.TAG}: a run is going on $(hostname); stop it before copying code\"; exit 3; fi",
        f"rm -rf {new}", f"mkdir -p {new}", f"tar -xzf \"$HOME/lazy_neuron.tgz\" -C {new}",
        f"rm -rf {code}", f"mv {new} {code}", "rm -f \"$HOME/lazy_neuron.tgz\"",
    ]))

  def setup(self) -> None:
    """A venv with jax[tpu] + the project on every worker. TPU images ship Python 3.10 and JAX needs
    >= 3.11, so uv provides the interpreter (and installs fast on many workers at once)."""
    a = self.a
    venv, uv = common.home(a.venv_dir), '"$HOME/.local/bin/uv"'
    self.ssh("; ".join([
        "set -e",
        f"W={WORKER_ID}",
        f"if [ ! -x {uv} ]; then curl -LsSf https://astral.sh/uv/install.sh | sh; fi",
        f"{uv} venv --allow-existing --python {a.python} {venv}",
        f"{uv} pip install --python {venv}/bin/python -e {common.home(a.code_dir)}'[{a.extras}]'",
        f"echo \"{common.TAG}: worker $W: ready, jax $({venv}/bin/python -c "
        f"'import jax, lazy_neuron; print(jax.__version__)')\"",
    ]), retries=1)

  def check_run_flags(self, n: int | None) -> None:
    """Before anything is created or started: the flags a run needs."""
    a = self.a
    if not a.config or not a.workdir:
      raise UsageError(f"--config and --workdir are required for `{a.command}`, e.g. "
                       "--config=configs/t5_base.py --workdir=gs://BUCKET/runs/t5")
    if n is not None and n > 1 and not a.workdir.startswith("gs://"):
      raise UsageError(f"--workdir={a.workdir!r} is not valid for {n} workers: each would write to its "
                       "own disk; use a shared gs:// path, e.g. gs://BUCKET/runs/NAME")
    common.parse_env(a.env)

  def run(self) -> None:
    a = self.a
    n = self.num_workers()
    self.check_run_flags(n)
    if not a.workdir.startswith("gs://"):
      self.r.note(f"workdir {a.workdir} is on the VM's disk and goes away with the VM")
    train = common.train_command(a.venv_dir, a.config, a.workdir, a.train_flags, common.parse_env(a.env))
    proc = self.ssh(common.start_script(WORKER_ID, a.code_dir, a.log_dir, train),
                    capture=True, check=False)
    self.r.note(f"the same command started on all {n} workers; worker 0's log is {a.log_dir}/train.log")
    status = common.parse_status(proc.stdout or "")
    if not self.r.dry_run:
      common.report_workers([str(i) for i in range(n)], status)

  def check(self) -> None:
    n = self.num_workers()
    proc = self.ssh(common.check_script(WORKER_ID, self.a.log_dir), capture=True, check=False)
    if not self.r.dry_run:
      common.report_workers([str(i) for i in range(n)], common.parse_status(proc.stdout or ""))
      self.r.note(f"all {n} workers are running")

  def logs(self) -> int:
    self.r.note("following worker 0's log until the run ends (Ctrl-C stops following, not the run)")
    return self.ssh(common.stream_script("0", self.a.log_dir), worker="0", check=False).returncode

  def stop(self) -> None:
    self.ssh(common.stop_script(WORKER_ID, self.a.log_dir), check=False)

  def delete(self) -> None:
    if self.a.queued_resource:  # --force deletes the node with the queued resource
      self.r.run(self.queued("delete", self.a.name, "--force", "--quiet"))
    else:
      self.r.run(self.tpu_vm("delete", self.a.name, "--quiet"))


def main(argv: list[str]) -> int:
  own, train_flags = common.split_passthrough(argv)
  args = common.parse(build_parser(), own)
  args.train_flags = common.check_train_flags(train_flags)
  for flag in ("code_dir", "venv_dir", "log_dir"):
    common.check_remote_dir(getattr(args, flag), "--" + flag.replace("_", "-"))
  if args.accelerator_type:
    parse_accelerator(args.accelerator_type)
  if args.num_workers is not None and args.num_workers < 1:
    raise UsageError(f"--num-workers={args.num_workers} is not valid; expected >= 1")
  if not re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", args.name):
    raise UsageError(f"--name={args.name!r} is not valid; use lowercase letters, digits and -, "
                     "starting with a letter, e.g. ln-v4-32")
  if not re.fullmatch(r"[A-Za-z0-9_.,-]+", args.extras) or not re.fullmatch(r"[0-9.]+", args.python):
    raise UsageError(f"--extras={args.extras!r} / --python={args.python!r} is not valid; "
                     "e.g. --extras=tpu,tf --python=3.12")
  for flag in args.create_arg:
    if not flag.startswith("--"):
      raise UsageError(f"--create-arg={flag!r} is not valid; expected a gcloud flag, e.g. --network=NET")
  runner = Runner(args.dry_run)
  tpu = Tpu(args, runner)
  cmd = args.command
  if cmd in ("up", "run"):
    known = args.num_workers or (workers_for(args.accelerator_type) if args.accelerator_type else None)
    tpu.check_run_flags(known)
    if not args.skip_config_check:  # before any VM is created or run started
      common.check_run(args.config, args.workdir, args.train_flags)
  if cmd == "up":
    if not args.accelerator_type:
      raise UsageError("--accelerator-type is required to create a TPU VM, e.g. v4-32 or v5litepod-16")
    if args.queued_resource and args.preemptible:
      raise UsageError("--preemptible is not valid with --queued-resource; use --spot")
    tpu.create()
    tpu.copy()
    tpu.setup()
    tpu.run()
    runner.sleep(args.check_after)
    tpu.check()
    try:
      code = tpu.logs()
    except KeyboardInterrupt:
      runner.note(f"stopped following; the run goes on. Follow again: {PROG} logs --name={args.name} "
                  f"--zone={args.zone}; delete the VM when done: {PROG} delete ...")
      return 130
    if args.delete_after:
      tpu.delete()
    return code
  if cmd == "create":
    tpu.create()
  elif cmd == "copy":
    tpu.copy()
  elif cmd == "setup":
    tpu.copy()
    tpu.setup()
  elif cmd == "run":
    tpu.run()
    runner.sleep(args.check_after)
    tpu.check()
  elif cmd == "check":
    tpu.check()
  elif cmd == "logs":
    try:
      return tpu.logs()
    except KeyboardInterrupt:
      return 130
  elif cmd == "stop":
    tpu.stop()
  elif cmd == "delete":
    tpu.delete()
  return 0


if __name__ == "__main__":
  sys.exit(common.main_wrapper(PROG, main, None))
