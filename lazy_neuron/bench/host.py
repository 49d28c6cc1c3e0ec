"""The host a benchmark ran on. Standard library only: the PyTorch peer's process imports it, and
that process must not import JAX or the libraries it lacks."""
from __future__ import annotations

import os
import platform


def cpu_name() -> str:
  """The CPU model as /proc/cpuinfo names it (Linux), else what `platform` knows."""
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def host_info() -> dict:
  return {"host": platform.node(), "host_cpu": cpu_name(), "host_cpu_count": os.cpu_count()}
