"""Where a training step's device time goes, op class by op class (`bench train --profile=DIR`).

A few steps are traced with `jax.profiler.trace` (the trace stays in DIR for TensorBoard / XProf /
Perfetto) and read back with `jax.profiler.ProfileData`: every device event that XLA attributes
to an HLO op (the `hlo_op` stat: a kernel on a GPU stream, a thunk on a CPU) is summed by op class.
The classes come from the kernel's and the HLO op's names, as XLA and the libraries name them:

| class | what | recognised by |
|---|---|---|
| matmul | cuBLAS / CUTLASS / Triton GEMMs, cuDNN convolutions, XLA dots | gemm, xmma, nvjet, cutlass, wgmma, cublas, dot, conv |
| attention | cuDNN fused (flash) attention | fmha, flash, sdpa, attention |
| top-k | the Pallas / Triton Top-k mask kernels | topk, pallas |
| reduction | XLA reduction fusions (norms, softmax sums, the sparsity statistics, the loss) | input_*, reduce |
| elementwise | XLA loop fusions (activations, residuals, casts, the optimizer update) | loop_*, fusion |
| copy | copies, transposes, dynamic slices, all-to-host transfers | copy, transpose, slice, memcpy |
| other | the rest | |

On a CPU the same table is made from the XLA thunks (useful to test the plumbing; CPU times are
not the GPU's story).
"""
from __future__ import annotations

import collections
import glob
import os
import re
from typing import Callable

import jax

_CLASSES = (  # (class, pattern on "kernel name | hlo op"), first match wins
    ("attention", re.compile(r"fmha|flash|sdpa|attention", re.I)),
    ("top-k", re.compile(r"topk|top_k|pallas", re.I)),
    ("matmul", re.compile(r"gemm|xmma|nvjet|cutlass|wgmma|cublas|\bdot|conv", re.I)),
    ("copy", re.compile(r"copy|transpose|memcpy|memset|dynamic.slice|dynamic.update", re.I)),
    ("reduction", re.compile(r"input_|reduce", re.I)),
    ("elementwise", re.compile(r"loop_|fusion", re.I)),
)


def op_class(kernel: str, hlo_op: str) -> str:
  """The class of one event from its kernel's and its HLO op's names (the first pattern that
  matches either, in the table's order: a cuDNN or cuBLAS kernel wins over its custom-call's name)."""
  text = f"{kernel} | {hlo_op}"
  return next((name for name, pattern in _CLASSES if pattern.search(text)), "other")


def _device_events(path: str):
  """(kernel name, hlo op, duration ns) of every event attributed to an HLO op on a device plane
  (or, on a CPU-only trace, on the host's XLA threads)."""
  data = jax.profiler.ProfileData.from_file(path)
  planes = [p for p in data.planes if p.name.startswith("/device:")]
  if not planes:
    planes = [p for p in data.planes if p.name.startswith("/host:CPU")]
  for plane in planes:
    for line in plane.lines:
      # GPU traces also carry derived lines ("XLA Ops", "XLA Modules") that repeat the kernels'
      # time per op / per module: count each kernel once, from the stream lines.
      if line.name in ("XLA Ops", "XLA Modules", "Steps", "Framework Ops"):
        continue
      for event in line.events:
        stats = dict(event.stats)
        if "hlo_op" in stats:
          yield event.name, str(stats["hlo_op"]), float(event.duration_ns)


def profile_steps(run_steps: Callable[[int], None], steps: int, trace_dir: str) -> dict:
  """Trace `run_steps(steps)` (which must block until its steps are done) into `trace_dir`;
  return {"classes": {class: ms per step}, "top_kernels": [[kernel, class, ms per step], ...],
  "device_ms_per_step": total, "trace_dir": ...}."""
  os.makedirs(trace_dir, exist_ok=True)
  with jax.profiler.trace(trace_dir):
    run_steps(steps)
  files = sorted(glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True),
                 key=os.path.getmtime)
  if not files:
    return {"error": f"no trace was written under {trace_dir}"}
  by_class: dict[str, float] = collections.Counter()
  by_op: dict[tuple[str, str], float] = collections.Counter()
  for kernel, hlo_op, ns in _device_events(files[-1]):
    cls = op_class(kernel, hlo_op)
    by_class[cls] += ns
    # By kernel name: with XLA's command buffers (on by default) the hlo_op of most kernels is
    # just the buffer's name, while the kernel names stay telling.
    by_op[(kernel[:120], cls)] += ns
  per_step = lambda ns: ns / 1e6 / steps
  top = sorted(by_op.items(), key=lambda kv: -kv[1])[:25]
  return {"device_ms_per_step": per_step(sum(by_class.values())),
          "classes": {c: per_step(v) for c, v in sorted(by_class.items(), key=lambda kv: -kv[1])},
          "top_kernels": [[op, cls, per_step(v)] for (op, cls), v in top],
          "steps_traced": steps, "trace_dir": files[-1]}


def print_profile(variant: str, prof: dict) -> None:
  if "classes" not in prof:
    print(f"{variant}: {prof.get('error')}")
    return
  total = prof["device_ms_per_step"]
  print(f"\n{variant}: device time by op class ({prof['steps_traced']} traced steps, "
        f"{total:.2f} ms of device work per step)")
  for cls, ms in prof["classes"].items():
    print(f"  {cls:<12} {ms:>9.2f} ms  {ms / max(total, 1e-9):>6.1%}")
