"""Multi-host runtime: start `jax.distributed` from flags, the environment, or the cluster.

Every process of a multi-host job calls `initialize(...)` once, before any JAX call that touches
devices. Where the settings come from, first match wins:

1. flags: `coordinator_address`, `num_processes`, `process_id` (the trainer's `--coordinator_address`,
   `--num_processes`, `--process_id`), field by field over
2. environment: `LAZY_NEURON_COORDINATOR_ADDRESS`, `LAZY_NEURON_NUM_PROCESSES`, `LAZY_NEURON_PROCESS_ID`
   (and `LAZY_NEURON_LOCAL_DEVICE_IDS`). Fields that 1 and 2 leave open are detected by JAX when a
   cluster is present (3), and are an error otherwise;
3. a cluster that `jax.distributed.initialize()` detects by itself: a SLURM step of more than one
   task, an Open MPI job of more than one rank, a Cloud TPU VM or pod. It is called with no
   settings and JAX reads them from the cluster (`LAZY_NEURON_COORDINATOR_PORT`, when set, is the
   coordinator's port);
4. otherwise one process: nothing to start.

`resolve(...)` decides without touching JAX, so it can be tested anywhere.
"""
from __future__ import annotations

import dataclasses
import glob
import importlib.util
import logging
import os
import re
from typing import Mapping, Sequence

from lazy_neuron import checks

ENV_COORDINATOR = "LAZY_NEURON_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "LAZY_NEURON_NUM_PROCESSES"
ENV_PROCESS_ID = "LAZY_NEURON_PROCESS_ID"
ENV_LOCAL_DEVICE_IDS = "LAZY_NEURON_LOCAL_DEVICE_IDS"
ENV_COORDINATOR_PORT = "LAZY_NEURON_COORDINATOR_PORT"
JAX_COORDINATOR_PORT = "JAX_COORDINATOR_PORT"  # the port override jax's cluster detection reads

# Environment variables that only exist on Cloud TPU VMs / TPU pods (GKE, multislice).
TPU_ENV_VARS = ("TPU_WORKER_HOSTNAMES", "TPU_PROCESS_ADDRESSES", "TPU_WORKER_ID",
                "CLOUD_TPU_TASK_ID", "MEGASCALE_COORDINATOR_ADDRESS", "MEGASCALE_NUM_SLICES")
_GOOGLE_PCI_VENDOR = "0x1ae0"  # TPU chips show up as PCI devices of this vendor
# What jax's SLURM detection reads; without all of them it detects nothing (not inside `srun`).
_SLURM_VARS = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID",
               "SLURM_LOCALID")

MODES = ("explicit", "cluster", "single")


@dataclasses.dataclass(frozen=True)
class DistributedInfo:
  """How this process joins the job. `mode` is one of MODES; None fields are left to JAX's cluster
  detection; `cluster` names the cluster seen ("slurm", "ompi", "tpu"), `source` the settings'."""
  mode: str
  coordinator_address: str | None = None
  num_processes: int | None = None
  process_id: int | None = None
  local_device_ids: tuple[int, ...] | None = None
  cluster: str | None = None
  coordinator_port: int | None = None
  source: str = ""

  @property
  def is_multi_process(self) -> bool:
    return self.mode != "single"

  def describe(self) -> str:
    if self.mode == "single":
      return "single process (no jax.distributed)"
    detected = "from JAX's detection of " + (self.cluster or "the cluster")
    fields = [f"process {self.process_id if self.process_id is not None else '(detected)'} of "
              f"{self.num_processes if self.num_processes is not None else '(detected)'}",
              f"coordinator {self.coordinator_address or '(detected)'}"]
    if self.local_device_ids is not None:
      fields.append(f"local devices {list(self.local_device_ids)}")
    return f"{', '.join(fields)} ({self.source or detected})"


# ----------------------------------------------------------------------------- parsing helpers

_HOST_RE = re.compile(r"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?)$")


def validate_address(address: str, what: str = "--coordinator_address") -> str:
  """Returns `HOST:PORT` unchanged if well formed, else raises UserError."""
  address = str(address).strip()
  host, sep, port = address.rpartition(":")
  ok = bool(sep) and bool(host) and _HOST_RE.match(host) is not None and port.isdigit()
  if not ok or not 1 <= int(port) <= 65535:
    raise checks.fail(what, address, "use HOST:PORT with a port in 1..65535, e.g. 10.0.0.1:8476 "
                                     "or node01:8476")
  return address


def _integer(value, what: str, **bounds) -> int:
  """An int from a flag (int) or an environment variable (text), checked by `checks.integer`."""
  if isinstance(value, str):
    try:
      value = int(value.strip())
    except ValueError:
      raise checks.fail(what, value, "use an integer") from None
  return checks.integer(what, value, **bounds)


def _parse_device_ids(value, what: str) -> tuple[int, ...] | None:
  if value is None or value == "":
    return None
  items = [value] if isinstance(value, int) else (
      str(value).split(",") if isinstance(value, str) else list(value))
  ids = tuple(_integer(v, what, min=0) for v in items if str(v).strip() != "")
  if not ids:
    raise checks.fail(what, value, "use non-negative device ids, e.g. 0,1,2,3")
  return ids


def on_cloud_tpu(env: Mapping[str, str] | None = None, pci_root: str = "/sys/bus/pci/devices") -> bool:
  """True on a Cloud TPU VM: TPU environment variables are set, or a Google TPU chip is attached.

  (A plain TPU VM sets no variables; jax reads its topology from the metadata server, which is too
  slow to ask on every start, so the chip's PCI vendor tells cheaply that there is one to ask.)
  """
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


def detect_cluster(env: Mapping[str, str], on_tpu: bool | None = None) -> str | None:
  """The multi-process cluster this process runs in, if any ("slurm", "ompi", "tpu"): only whether
  one is present; `jax.distributed.initialize()` reads its settings. One task/rank is no cluster."""
  if all(k in env for k in _SLURM_VARS) and _integer(env["SLURM_NTASKS"], "SLURM_NTASKS") > 1:
    return "slurm"
  if ("OMPI_MCA_orte_hnp_uri" in env and
      _integer(env.get("OMPI_COMM_WORLD_SIZE", "1"), "OMPI_COMM_WORLD_SIZE") > 1):
    return "ompi"
  if on_tpu if on_tpu is not None else on_cloud_tpu(env):
    return "tpu"
  return None


def _cluster_device_ids(env: Mapping[str, str], cluster: str | None) -> tuple[int, ...] | None:
  """Local devices for a SLURM/MPI task that drives more than one GPU, else None (JAX's default).

  JAX's SLURM and Open MPI detection assume one process per GPU and restrict each to the GPU of its
  local rank (jax-ml/jax#16788). A task alone on its node (our SLURM launcher: one task per node),
  or one given its own GPUs by SLURM (`--gpus-per-task`: CUDA_VISIBLE_DEVICES holds only those),
  must see all of its visible GPUs instead.
  """
  if cluster not in ("slurm", "ompi"):
    return None
  visible = [d for d in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
  if cluster == "ompi":
    alone = env.get("OMPI_COMM_WORLD_LOCAL_SIZE") == "1"
  else:
    nodes = env.get("SLURM_STEP_NUM_NODES") or env.get("SLURM_NNODES")
    alone = env.get("SLURM_NTASKS_PER_NODE") == "1" or (nodes is not None and
                                                        env.get("SLURM_NTASKS") == nodes)
  if not alone and len(visible) != 1:
    return None
  count = len(visible) or _integer(env.get("SLURM_GPUS_ON_NODE", "0"), "SLURM_GPUS_ON_NODE", min=0)
  if not count:
    logging.warning("%s: cannot tell how many GPUs this task has, so JAX will use only the GPU of "
                    "its local rank; set %s (e.g. 0,1,2,3) to use more", cluster, ENV_LOCAL_DEVICE_IDS)
    return None
  return tuple(range(count))  # ordinals: CUDA numbers the visible devices from 0


# ----------------------------------------------------------------------------- resolution (pure)

def resolve(coordinator_address: str | None = None,
            num_processes: int | str | None = None,
            process_id: int | str | None = None,
            local_device_ids: int | str | Sequence[int] | None = None,
            env: Mapping[str, str] | None = None,
            on_tpu: bool | None = None) -> DistributedInfo:
  """Decides how this process joins the job; touches no JAX state. See the module docstring.

  `env` defaults to os.environ and `on_tpu` to `on_cloud_tpu(env)`; tests pass both.
  Raises UserError for a malformed address, num_processes < 1, process_id outside
  [0, num_processes), or settings that are incomplete outside a cluster.
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

  num = pid = None
  if "num_processes" in given:
    num = _integer(given["num_processes"], origin["num_processes"], min=1)
  if "process_id" in given:
    pid = _integer(given["process_id"], origin["process_id"], min=0,
                   max=None if num is None else num - 1)
  address = None
  if "coordinator_address" in given:
    address = validate_address(given["coordinator_address"], origin["coordinator_address"])
  ids = _parse_device_ids(given.get("local_device_ids"),
                          origin.get("local_device_ids", "--local_device_ids"))
  port = None
  if env.get(ENV_COORDINATOR_PORT, "").strip():
    port = _integer(env[ENV_COORDINATOR_PORT], ENV_COORDINATOR_PORT, min=1, max=65535)
  source = ", ".join(sorted({origin[k] for k in given}))
  explicit = [k for k in given if k != "local_device_ids"]

  if explicit and num == 1 and pid in (None, 0):
    return DistributedInfo(mode="single", num_processes=1, process_id=0, source=source)
  cluster = detect_cluster(env, on_tpu)
  if explicit:
    missing = [names[k][0] for k in ("coordinator_address", "num_processes", "process_id")
               if k not in given]
    if missing and cluster is None:
      raise checks.fail(origin[explicit[0]], given[explicit[0]],
                        f"multi-process settings are incomplete: {', '.join(missing)} missing; "
                        f"pass all three (or the {ENV_COORDINATOR}/{ENV_NUM_PROCESSES}/"
                        f"{ENV_PROCESS_ID} variables), or run under srun, mpirun or on a TPU pod")
    return DistributedInfo(mode="explicit", coordinator_address=address, num_processes=num,
                           process_id=pid, local_device_ids=ids or _cluster_device_ids(env, cluster),
                           cluster=cluster, coordinator_port=port, source=source)
  if cluster is not None:
    return DistributedInfo(mode="cluster", local_device_ids=ids or _cluster_device_ids(env, cluster),
                           cluster=cluster, coordinator_port=port, source=source)
  return DistributedInfo(mode="single", num_processes=1, process_id=0, source=source or "default")


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
  if info.mode == "cluster" and info.cluster == "tpu" and not _libtpu_installed():
    logging.warning("This looks like a Cloud TPU VM but libtpu is not installed, so JAX will run on "
                    "the CPU; install the project with pip install -e '.[tpu]'.")
    info = DistributedInfo(mode="single", num_processes=1, process_id=0,
                           source="Cloud TPU without libtpu")
  if info.mode != "single":
    if info.coordinator_port is not None and JAX_COORDINATOR_PORT not in os.environ:
      os.environ[JAX_COORDINATOR_PORT] = str(info.coordinator_port)
    settings = {"coordinator_address": info.coordinator_address,
                "num_processes": info.num_processes, "process_id": info.process_id,
                "local_device_ids": None if info.local_device_ids is None
                else list(info.local_device_ids)}
    # Only what was decided here; JAX detects the rest from the cluster.
    jax.distributed.initialize(**{k: v for k, v in settings.items() if v is not None})
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
