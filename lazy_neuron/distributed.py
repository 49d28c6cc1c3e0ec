"""Multi-host runtime: start `jax.distributed` from flags, environment, SLURM or a TPU pod.

Every process of a multi-host job calls `initialize(...)` once, before any JAX call that touches
devices. Where the settings come from, first match wins:

1. flags: `coordinator_address`, `num_processes`, `process_id` (the trainer's `--coordinator_address`,
   `--num_processes`, `--process_id`), field by field over
2. environment: `LAZY_NEURON_COORDINATOR_ADDRESS`, `LAZY_NEURON_NUM_PROCESSES`, `LAZY_NEURON_PROCESS_ID`
   (and `LAZY_NEURON_LOCAL_DEVICE_IDS`). Fields that 1 and 2 leave open are filled from SLURM when
   inside a SLURM step, and are an error otherwise;
3. SLURM: inside `srun` with more than one task (coordinator = first host of the step's node list,
   port from the job id or `LAZY_NEURON_COORDINATOR_PORT`);
4. a Cloud TPU VM or pod: `jax.distributed.initialize()` with no arguments; JAX reads the topology from
   the TPU metadata server, so every worker only has to run the same command;
5. otherwise one process: nothing to start.

`resolve(...)` does the resolution without touching JAX, so it can be tested anywhere.
"""
from __future__ import annotations

import dataclasses
import glob
import importlib.util
import itertools
import logging
import os
import re
from typing import Mapping, Sequence

from lazy_neuron.errors import UserError

ENV_COORDINATOR = "LAZY_NEURON_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "LAZY_NEURON_NUM_PROCESSES"
ENV_PROCESS_ID = "LAZY_NEURON_PROCESS_ID"
ENV_LOCAL_DEVICE_IDS = "LAZY_NEURON_LOCAL_DEVICE_IDS"
ENV_COORDINATOR_PORT = "LAZY_NEURON_COORDINATOR_PORT"

# Environment variables that only exist on Cloud TPU VMs / TPU pods (GKE, multislice, Borg-style).
TPU_ENV_VARS = ("TPU_WORKER_HOSTNAMES", "TPU_PROCESS_ADDRESSES", "TPU_WORKER_ID",
                "CLOUD_TPU_TASK_ID", "MEGASCALE_COORDINATOR_ADDRESS", "MEGASCALE_NUM_SLICES")
_GOOGLE_PCI_VENDOR = "0x1ae0"  # TPU chips show up as PCI devices of this vendor

MODES = ("explicit", "slurm", "tpu", "single")


@dataclasses.dataclass(frozen=True)
class DistributedInfo:
  """How this process joins the job. `mode` is one of MODES; `source` says where values came from."""
  mode: str
  coordinator_address: str | None = None
  num_processes: int = 1
  process_id: int = 0
  local_device_ids: tuple[int, ...] | None = None
  source: str = ""

  @property
  def is_multi_process(self) -> bool:
    return self.mode in ("explicit", "slurm", "tpu")

  def describe(self) -> str:
    if self.mode == "single":
      return "single process (no jax.distributed)"
    if self.mode == "tpu":
      return "Cloud TPU: jax.distributed.initialize() reads the topology from the TPU runtime"
    ids = "" if self.local_device_ids is None else f", local devices {list(self.local_device_ids)}"
    return (f"process {self.process_id} of {self.num_processes}, coordinator "
            f"{self.coordinator_address}{ids} (from {self.source})")


# ----------------------------------------------------------------------------- parsing helpers

_HOST_RE = re.compile(r"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?)$")


def validate_address(address: str, what: str = "--coordinator_address") -> str:
  """Returns `HOST:PORT` unchanged if well formed, else raises UserError."""
  address = str(address).strip()
  host, sep, port = address.rpartition(":")
  ok = bool(sep) and bool(host) and _HOST_RE.match(host) is not None and port.isdigit()
  if ok and not 1 <= int(port) <= 65535:
    ok = False
  if not ok:
    raise UserError(f"{what}={address!r} is not valid; expected HOST:PORT with a port in 1..65535, "
                    "e.g. 10.0.0.1:8476 or node01:8476")
  return address


def _parse_int(value, what: str) -> int:
  if isinstance(value, bool):
    raise UserError(f"{what}={value!r} is not valid; expected an integer")
  if isinstance(value, int):
    return value
  try:
    return int(str(value).strip())
  except ValueError:
    raise UserError(f"{what}={value!r} is not valid; expected an integer") from None


def _parse_device_ids(value, what: str) -> tuple[int, ...] | None:
  if value is None or value == "":
    return None
  items = [value] if isinstance(value, int) else (
      str(value).split(",") if isinstance(value, str) else list(value))
  ids = tuple(_parse_int(v, what) for v in items if str(v).strip() != "")
  if not ids or any(i < 0 for i in ids):
    raise UserError(f"{what}={value!r} is not valid; expected non-negative device ids, e.g. 0,1,2,3")
  return ids


def expand_nodelist(nodelist: str) -> list[str]:
  """Expands a SLURM node list: 'node[01-03,07],gpu-a1' -> [node01, node02, node03, node07, gpu-a1].

  Handles several bracket groups in one name ('rack[1-2]-n[1-2]') and keeps zero padding.
  """
  names = []
  for item in _split_top_level(nodelist.strip()):
    parts = re.split(r"(\[[^\]]*\])", item)
    choices = []
    for part in parts:
      if part.startswith("[") and part.endswith("]"):
        choices.append(_expand_range(part[1:-1], nodelist))
      elif part:
        if "[" in part or "]" in part:
          raise UserError(f"SLURM node list {nodelist!r} is not valid; expected e.g. node[01-04,07],gpu1")
        choices.append([part])
    if choices:
      names.extend("".join(c) for c in itertools.product(*choices))
  if not names:
    raise UserError(f"SLURM node list {nodelist!r} is empty; expected e.g. node[01-04,07]")
  return names


def _split_top_level(text: str) -> list[str]:
  items, depth, start = [], 0, 0
  for i, ch in enumerate(text):
    depth += ch == "["
    depth -= ch == "]"
    if ch == "," and depth == 0:
      items.append(text[start:i])
      start = i + 1
  items.append(text[start:])
  return [s.strip() for s in items if s.strip()]


def _expand_range(body: str, nodelist: str) -> list[str]:
  out = []
  for piece in body.split(","):
    piece = piece.strip()
    m = re.fullmatch(r"(\d+)(?:-(\d+))?", piece)
    if not m or (m.group(2) is not None and int(m.group(2)) < int(m.group(1))):
      raise UserError(f"SLURM node list {nodelist!r} has a bad range {piece!r}; expected e.g. 01-04")
    lo, hi = m.group(1), m.group(2) or m.group(1)
    width = len(lo)
    out.extend(str(n).zfill(width) for n in range(int(lo), int(hi) + 1))
  return out


def _slurm_tasks_per_node(env: Mapping[str, str]) -> int:
  """Largest number of tasks any node runs in this step ('4(x2),2' -> 4); 1 when unknown."""
  for key in ("SLURM_STEP_TASKS_PER_NODE", "SLURM_TASKS_PER_NODE", "SLURM_NTASKS_PER_NODE"):
    if env.get(key):
      counts = [int(m) for m in re.findall(r"(\d+)(?:\(x\d+\))?", env[key])]
      if counts:
        return max(counts)
  return 1


def _slurm(env: Mapping[str, str]) -> dict | None:
  """SLURM settings when this process is one task of a multi-task `srun` step, else None."""
  if "SLURM_PROCID" not in env or "SLURM_NTASKS" not in env:
    return None
  nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
  if not nodelist:
    return None
  num = _parse_int(env.get("SLURM_STEP_NUM_TASKS", env["SLURM_NTASKS"]), "SLURM_NTASKS")
  if num <= 1:
    return None
  if env.get(ENV_COORDINATOR_PORT):
    port = _parse_int(env[ENV_COORDINATOR_PORT], ENV_COORDINATOR_PORT)
  else:  # same rule on every task, so all agree without talking: a port in [61440, 65535]
    port = 61440 + _parse_int(env.get("SLURM_JOB_ID", "0"), "SLURM_JOB_ID") % 4096
  local_ids = None
  # Several tasks on one node (one task per GPU): each takes the GPU of its local rank, unless SLURM
  # already gave each task its own single visible GPU.
  visible = [d for d in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
  if _slurm_tasks_per_node(env) > 1 and "SLURM_LOCALID" in env and len(visible) != 1:
    local_ids = (_parse_int(env["SLURM_LOCALID"], "SLURM_LOCALID"),)
  return {
      "coordinator_address": f"{expand_nodelist(nodelist)[0]}:{port}",
      "num_processes": num,
      "process_id": _parse_int(env["SLURM_PROCID"], "SLURM_PROCID"),
      "local_device_ids": local_ids,
  }


def on_cloud_tpu(env: Mapping[str, str] | None = None, pci_root: str = "/sys/bus/pci/devices") -> bool:
  """True on a Cloud TPU VM: TPU environment variables are set, or a Google TPU chip is attached."""
  env = os.environ if env is None else env
  if any(env.get(k) for k in TPU_ENV_VARS):
    return True
  if env.get("TPU_SKIP_MDS_QUERY"):
    return False
  for vendor in glob.glob(os.path.join(pci_root, "*", "vendor")):
    try:
      with open(vendor) as f:
        if f.read().strip() == _GOOGLE_PCI_VENDOR:
          return True
    except OSError:
      continue
  return False


# ----------------------------------------------------------------------------- resolution (pure)

def resolve(coordinator_address: str | None = None,
            num_processes: int | str | None = None,
            process_id: int | str | None = None,
            local_device_ids: int | str | Sequence[int] | None = None,
            env: Mapping[str, str] | None = None,
            on_tpu: bool | None = None) -> DistributedInfo:
  """Decides how this process joins the job; touches no JAX state. See the module docstring.

  `env` defaults to os.environ and `on_tpu` to `on_cloud_tpu(env)`; tests pass both.
  Raises UserError for a malformed address, num_processes < 1, or process_id outside
  [0, num_processes).
  """
  env = os.environ if env is None else env
  fields = {"coordinator_address": coordinator_address, "num_processes": num_processes,
            "process_id": process_id, "local_device_ids": local_device_ids}
  names = {"coordinator_address": ("--coordinator_address", ENV_COORDINATOR),
           "num_processes": ("--num_processes", ENV_NUM_PROCESSES),
           "process_id": ("--process_id", ENV_PROCESS_ID),
           "local_device_ids": ("--local_device_ids", ENV_LOCAL_DEVICE_IDS)}
  given, origin = {}, {}
  for key, value in fields.items():
    flag, env_name = names[key]
    if value is not None and value != "":
      given[key], origin[key] = value, flag
    elif env.get(env_name, "").strip():
      given[key], origin[key] = env[env_name].strip(), env_name

  slurm = _slurm(env)
  explicit = {k: v for k, v in given.items() if k != "local_device_ids"}
  if explicit:
    merged = dict(given)
    for key in ("coordinator_address", "num_processes", "process_id", "local_device_ids"):
      if key not in merged and slurm is not None and slurm[key] is not None:
        merged[key], origin[key] = slurm[key], "SLURM"
    num = _parse_int(merged["num_processes"], origin["num_processes"]) \
        if "num_processes" in merged else None
    if num is not None and num < 1:
      raise UserError(f"{origin['num_processes']}={num} is not valid; expected a number of processes >= 1")
    pid = _parse_int(merged["process_id"], origin["process_id"]) if "process_id" in merged else None
    if num is not None and pid is not None and not 0 <= pid < num:
      raise UserError(f"{origin['process_id']}={pid} is not valid; with {num} processes it must be in "
                      f"0..{num - 1}")
    if num == 1 and pid in (None, 0):
      return DistributedInfo(mode="single", source=", ".join(sorted(set(origin.values()))))
    missing = [names[k][0] for k in ("coordinator_address", "num_processes", "process_id")
               if k not in merged]
    if missing:
      have = ", ".join(f"{origin[k]}" for k in explicit)
      raise UserError(f"multi-process settings are incomplete: {have} given but {', '.join(missing)} "
                      f"missing; pass all three (or the {ENV_COORDINATOR}/{ENV_NUM_PROCESSES}/"
                      f"{ENV_PROCESS_ID} variables), or run under srun or on a TPU pod")
    address = validate_address(merged["coordinator_address"], origin["coordinator_address"])
    ids = _parse_device_ids(merged.get("local_device_ids"), origin.get("local_device_ids",
                                                                       "--local_device_ids"))
    return DistributedInfo(mode="explicit", coordinator_address=address, num_processes=num,
                           process_id=pid, local_device_ids=ids,
                           source=", ".join(sorted(set(origin.values()))))

  if slurm is not None:
    ids = slurm["local_device_ids"]
    if "local_device_ids" in given:
      ids = _parse_device_ids(given["local_device_ids"], origin["local_device_ids"])
    if not 0 <= slurm["process_id"] < slurm["num_processes"]:
      raise UserError(f"SLURM_PROCID={slurm['process_id']} is not valid; with SLURM_NTASKS="
                      f"{slurm['num_processes']} it must be in 0..{slurm['num_processes'] - 1}")
    return DistributedInfo(mode="slurm", coordinator_address=validate_address(
        slurm["coordinator_address"], "SLURM coordinator"), num_processes=slurm["num_processes"],
                           process_id=slurm["process_id"], local_device_ids=ids, source="SLURM")

  if on_tpu if on_tpu is not None else on_cloud_tpu(env):
    return DistributedInfo(mode="tpu", source="Cloud TPU")
  return DistributedInfo(mode="single", source="default")


# ----------------------------------------------------------------------------- runtime

def _libtpu_installed() -> bool:
  return importlib.util.find_spec("libtpu") is not None


_INFO: DistributedInfo | None = None


def initialize(coordinator_address: str | None = None,
               num_processes: int | None = None,
               process_id: int | None = None,
               local_device_ids: int | Sequence[int] | None = None) -> DistributedInfo:
  """Starts `jax.distributed` if this process is part of a multi-host job; see the module docstring.

  Call it before any JAX call that touches devices. Calling it again returns the first result.
  """
  global _INFO
  if _INFO is not None:
    return _INFO
  info = resolve(coordinator_address, num_processes, process_id, local_device_ids)
  import jax  # here, so that `resolve` and the module import stay JAX-free

  if jax.distributed.is_initialized():  # someone (a notebook, a test harness) already did it
    _INFO = info
    return info
  if info.mode == "tpu":
    if not _libtpu_installed():
      logging.warning("This looks like a Cloud TPU VM but libtpu is not installed, so JAX will run on "
                      "the CPU; install the project with pip install -e '.[tpu]'.")
      info = DistributedInfo(mode="single", source="Cloud TPU without libtpu")
    else:
      jax.distributed.initialize()
  elif info.mode in ("explicit", "slurm"):
    jax.distributed.initialize(
        coordinator_address=info.coordinator_address, num_processes=info.num_processes,
        process_id=info.process_id,
        local_device_ids=list(info.local_device_ids) if info.local_device_ids is not None else None)
  logging.info("jax.distributed: %s", info.describe())
  _INFO = info
  return info


def is_main_process() -> bool:
  """True on the process that writes metrics, reports and other single-writer files."""
  import jax
  return jax.process_index() == 0


# ----------------------------------------------------------------------------- per-process state

PER_PROCESS_KEY = "per_process"


def allgather_json(obj) -> list:
  """Every process's JSON-serialisable `obj`, in process order (a collective: all processes call)."""
  import json

  import jax
  import numpy as np
  if jax.process_count() == 1:
    return [obj]
  from jax.experimental import multihost_utils
  raw = np.frombuffer(json.dumps(obj, sort_keys=True).encode(), np.uint8)
  sizes = multihost_utils.process_allgather(np.asarray([raw.size], np.int32))
  padded = np.zeros(int(np.max(sizes)), np.uint8)
  padded[:raw.size] = raw
  rows = multihost_utils.process_allgather(padded)
  return [json.loads(bytes(row[:int(n)]).decode())
          for row, n in zip(np.asarray(rows).reshape(len(sizes), -1), np.ravel(sizes))]


def gather_process_states(state: dict) -> dict:
  """For a checkpoint item written by process 0 only (Orbax JsonSave): one process -> `state`
  unchanged; several -> {"per_process": [state of process 0, 1, ...]} (a collective). Each
  process's data iterator has its own state (its shard), and all of them are needed to resume."""
  import jax
  if jax.process_count() == 1:
    return state
  return {PER_PROCESS_KEY: allgather_json(state)}


def this_process_state(saved: dict) -> dict:
  """The inverse of `gather_process_states` on restore: this process's entry. A checkpoint written
  with another number of processes gives process 0's state, whose fingerprint (process_count) the
  data iterator then refuses with a clear error."""
  import jax
  if not isinstance(saved, dict) or PER_PROCESS_KEY not in saved:
    return saved
  states = saved[PER_PROCESS_KEY]
  index = jax.process_index()
  return states[index] if len(states) == jax.process_count() else states[0]
