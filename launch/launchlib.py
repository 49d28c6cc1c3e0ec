"""What the launchers share: a runner with a dry run, the train command, and the per-worker scripts.

The launchers run on a laptop that has gcloud/ssh/sbatch. Their own code is the standard library
plus the project's stdlib-only flag parser (`lazy_neuron.flags`: one-line errors, repeated flags
refused); checking the run's config before anything is created (`check_run`) needs the project's
packages (ml_collections, jax, ...), as `lazy-neuron train` does; `--skip-config-check` launches
without them. Every remote script is one line of bash, so `--dry-run` prints one command per line.
"""
from __future__ import annotations

import contextlib
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Mapping, Sequence

PROJECT_ROOT = Path(__file__).resolve().parent.parent
if str(PROJECT_ROOT) not in sys.path:  # this checkout's lazy_neuron, installed or not
  sys.path.insert(0, str(PROJECT_ROOT))
from lazy_neuron import flags as _flags  # noqa: E402  (stdlib only)
from lazy_neuron.errors import UserError  # noqa: E402

ArgumentParser = _flags.ArgumentParser  # argparse with one-line errors, no abbreviations
# Tag that the per-worker scripts print; the launchers read it back to tell who started.
TAG = "lazy-neuron"
STATUS_RE = re.compile(rf"^{TAG}: worker (\S+): (started|running|finished|NOT RUNNING|BUSY)\b(.*)$")
_SAFE_PATH = re.compile(r"^[A-Za-z0-9._/+-]+$")


class LaunchError(Exception):
  """A launch step failed (a command, a worker that did not start); exit code 1."""


class UsageError(Exception):
  """Bad flags; one line naming the bad value and what is valid; exit code 2."""


class Runner:
  """Runs commands, or with dry_run prints each one, shell-quoted, one per line on stdout."""

  def __init__(self, dry_run: bool, out=None):
    self.dry_run = dry_run
    self.out = out or sys.stdout

  def note(self, message: str) -> None:
    if self.dry_run:
      print(f"# {message}", file=self.out)
    else:
      print(f"[launch] {message}", file=sys.stderr, flush=True)

  def run(self, cmd: Sequence[str], *, check: bool = True, capture: bool = False,
          retries: int = 0, retry_wait_s: float = 20.0) -> subprocess.CompletedProcess:
    cmd = [str(c) for c in cmd]
    line = shlex.join(cmd)
    if self.dry_run:
      print(line, file=self.out)
      return subprocess.CompletedProcess(cmd, 0, stdout="", stderr="")
    for attempt in range(retries + 1):
      print(f"+ {line}", file=sys.stderr, flush=True)
      try:
        proc = subprocess.run(cmd, text=True, capture_output=capture)
      except FileNotFoundError:
        raise LaunchError(f"{cmd[0]!r} is not installed or not on PATH") from None
      if capture and proc.stdout:
        sys.stdout.write(proc.stdout)
      if proc.returncode == 0 or attempt == retries:
        break
      self.note(f"exit code {proc.returncode}; retrying in {retry_wait_s:.0f} s "
                f"({attempt + 1}/{retries})")
      time.sleep(retry_wait_s)
    if check and proc.returncode != 0:
      raise LaunchError(f"command failed with exit code {proc.returncode}: {line}")
    return proc

  def write_file(self, path: Path, text: str) -> None:
    """Writes a file; in a dry run prints the equivalent `cat > path <<'EOF'` instead."""
    if self.dry_run:
      print(f"cat > {shlex.quote(str(path))} <<'EOF'\n{text.rstrip()}\nEOF", file=self.out)
      return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    self.note(f"wrote {path}")

  def sleep(self, seconds: float) -> None:
    if self.dry_run:
      self.note(f"wait {seconds:g} s")
    else:
      time.sleep(seconds)


def parse(p: ArgumentParser, argv: Sequence[str]):
  """The launcher's own flags: a mistake (unknown, missing, repeated) is one UserError line."""
  return _flags.parse(p, argv)[0]


def check_run(config: str, workdir: str, train_flags: Sequence[str]) -> None:
  """Runs the checks `lazy-neuron train` makes before it starts (its flags, the config file, the
  `--config.*` overrides, `validate_config`), here, before any machine is created or job submitted.
  Relative paths are read from the project root: the remote run starts in a copy of it."""
  try:
    from lazy_neuron import config_lib, train
  except ImportError as e:
    raise UsageError(f"checking --config={config} before launching needs the project's packages "
                     f"({e}); run the launcher with the project's venv (.venv/bin/python "
                     f"{Path(sys.argv[0]).name} ...) or pass --skip-config-check") from None
  with contextlib.chdir(PROJECT_ROOT):
    ns, overrides = train.parse_flags(["lazy-neuron train", f"--config={config}",
                                       f"--workdir={workdir}", *train_flags])
    try:
      config_lib.load_config(ns.config, overrides)
    except UserError:
      raise
    except Exception as e:  # noqa: BLE001 - a config file is user code: a syntax error, a crash
      where = f" (line {e.lineno})" if isinstance(e, SyntaxError) and e.lineno else ""
      detail = e.msg if isinstance(e, SyntaxError) else (str(e).strip().splitlines() or [""])[0][:200]
      raise UsageError(f"--config={config} cannot be loaded: {type(e).__name__}{where}: {detail}; "
                       "fix the config file") from None


def split_passthrough(argv: Sequence[str]) -> tuple[list[str], list[str]]:
  """Splits `launcher flags -- train flags` at the first `--`."""
  argv = list(argv)
  if "--" in argv:
    i = argv.index("--")
    return argv[:i], argv[i + 1:]
  return argv, []


def check_train_flags(extra: Sequence[str]) -> list[str]:
  for arg in extra:
    if not arg.startswith("--") or arg == "--":
      raise UsageError(f"train flag {arg!r} is not valid; after `--` pass flags of `lazy-neuron train`, "
                       "e.g. --config.total_steps=1000")
  return list(extra)


def check_remote_dir(value: str, flag: str, absolute_ok: bool = False) -> str:
  """Remote folders are under $HOME (or absolute where allowed); keep them simple to quote."""
  if not _SAFE_PATH.match(value) or (value.startswith("/") and not absolute_ok) \
      or ".." in value.split("/"):
    where = "a folder under $HOME or an absolute path" if absolute_ok else "a folder under $HOME"
    raise UsageError(f"{flag}={value!r} is not valid; use {where} made of letters, digits and "
                     "._-/+, e.g. lazy_neuron")
  return value.rstrip("/") or value


def parse_env(pairs: Sequence[str]) -> dict[str, str]:
  env = {}
  for pair in pairs:
    key, sep, value = pair.partition("=")
    if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
      raise UsageError(f"--env {pair!r} is not valid; expected NAME=VALUE, e.g. TFDS_DATA_DIR=gs://b/tfds")
    env[key] = value
  return env


def home(path: str) -> str:
  """A remote path: absolute as given, else under $HOME, quoted so that only $HOME expands."""
  return shlex.quote(path) if path.startswith("/") else f'"$HOME/{path}"'


def train_command(venv: str, config: str, workdir: str, extra: Sequence[str],
                  env: Mapping[str, str] | None = None) -> str:
  """The shell text of `lazy-neuron train ...` with the remote venv's entry point."""
  parts = []
  if env:
    parts += ["env"] + [shlex.quote(f"{k}={v}") for k, v in env.items()]
  parts.append(f"{home(venv)}/bin/lazy-neuron")
  parts += ["train", shlex.quote(f"--config={config}"), shlex.quote(f"--workdir={workdir}")]
  parts += [shlex.quote(a) for a in extra]
  return " ".join(parts)


def start_script(worker: str, code_dir: str, log_dir: str, train: str) -> str:
  """One line of bash: start `train` in the background on this worker, with a pid file and a log.

  The run gets its own session (setsid), so `stop` can end exactly its process group. The earlier
  log is kept under a timestamped name. Refuses to start a second run next to a live one.
  """
  logs, pid = home(log_dir), f'{home(log_dir)}/train.pid'
  inner = f"{train}; echo $? > {logs}/train.exit"
  return "; ".join([
      f"W={worker}",
      f"mkdir -p {logs}",
      f"cd {home(code_dir)} || {{ echo \"{TAG}: worker $W: NOT RUNNING: no code in ~/{code_dir}\"; exit 1; }}",
      f"if [ -f {pid} ] && kill -0 \"$(cat {pid})\" 2>/dev/null; then "
      f"echo \"{TAG}: worker $W: BUSY: a run is already going (pid $(cat {pid})); stop it first\"; exit 3; fi",
      f"if [ -f {logs}/train.log ]; then mv {logs}/train.log {logs}/train.$(date +%Y%m%d-%H%M%S).log; fi",
      f"rm -f {logs}/train.exit",
      f"setsid nohup bash -c {shlex.quote(inner)} > {logs}/train.log 2>&1 < /dev/null & echo $! > {pid}",
      f"echo \"{TAG}: worker $W: started (pid $!)\"",
  ])


def _run_script(worker: str, log_dir: str, *commands: str) -> str:
  """One line of bash about this worker's run: sets W (the worker) and P (the run's pid, empty when
  none was started), then runs `commands`."""
  return "; ".join([f"W={worker}", f"P=$(cat {home(log_dir)}/train.pid 2>/dev/null)", *commands])


def _if_running(then: str, otherwise: str) -> str:
  """bash: `then` while the process $P is alive, else `otherwise`."""
  return f"if [ -n \"$P\" ] && kill -0 \"$P\" 2>/dev/null; then {then}; else {otherwise}; fi"


def check_script(worker: str, log_dir: str, tail_lines: int = 20) -> str:
  """One line of bash: say whether this worker's run is going, finished cleanly, or failed."""
  logs = home(log_dir)
  return _run_script(
      worker, log_dir,
      f"E=$(cat {logs}/train.exit 2>/dev/null)",
      f"if [ -n \"$P\" ] && kill -0 \"$P\" 2>/dev/null; then echo \"{TAG}: worker $W: running (pid $P)\"; "
      f"elif [ \"$E\" = 0 ]; then echo \"{TAG}: worker $W: finished (exit code 0)\"; "
      f"else echo \"{TAG}: worker $W: NOT RUNNING (exit code ${{E:-unknown}}); last lines of ~/{log_dir}/train.log:\"; "
      f"tail -n {tail_lines} {logs}/train.log 2>/dev/null; exit 1; fi")


def stream_script(worker: str, log_dir: str) -> str:
  """One line of bash: print the log from the start and follow it until the run ends."""
  logs = home(log_dir)
  return _run_script(
      worker, log_dir,
      _if_running(f"tail --pid=\"$P\" -s 0.5 -n +1 -F {logs}/train.log", f"cat {logs}/train.log"),
      f"E=$(cat {logs}/train.exit 2>/dev/null)",
      f"echo \"{TAG}: worker $W: run ended (exit code ${{E:-unknown}})\"",
      "exit ${E:-1}")


def stop_script(worker: str, log_dir: str) -> str:
  """One line of bash: end this worker's run (its whole process group), if one is going."""
  stop = ("kill -TERM -- -\"$P\"; "
          "for i in $(seq 300); do kill -0 \"$P\" 2>/dev/null || break; sleep 0.2; done; "
          f"echo \"{TAG}: worker $W: stopped pid $P\"")
  return _run_script(worker, log_dir, _if_running(stop, f"echo \"{TAG}: worker $W: no run going\""))


def parse_status(text: str) -> dict[str, str]:
  """Worker label -> status ('started', 'running', 'finished', 'NOT RUNNING', 'BUSY') from output."""
  status = {}
  for line in text.splitlines():
    m = STATUS_RE.match(line.strip())
    if m:
      status[m.group(1)] = m.group(2)
  return status


def report_workers(expected: Sequence[str], status: Mapping[str, str], what: str = "worker",
                   names: Mapping[str, str] | None = None) -> None:
  """Raises LaunchError naming every worker that did not start (or did not answer)."""
  names = names or {}
  bad = [w for w in expected if status.get(w) not in ("started", "running", "finished")]
  if bad:
    detail = ", ".join(f"{names.get(w, w)} ({status.get(w, 'no answer')})" for w in bad)
    raise LaunchError(f"{len(bad)} of {len(expected)} {what}s did not start: {detail}")


def main_wrapper(prog: str, main, argv: Sequence[str] | None) -> int:
  try:
    return main(list(sys.argv[1:] if argv is None else argv)) or 0
  except (UsageError, UserError) as e:
    print(f"{prog}: error: {e}", file=sys.stderr)
    return 2
  except LaunchError as e:
    print(f"{prog}: failed: {e}", file=sys.stderr)
    return 1
