"""lazy_neuron: activation sparsity in Transformers, measured in-graph and enforced with Top-k."""

import os as _os

__version__ = "0.1.0"

# XLA GPU settings that measured faster for our models (docs/performance.md): on one H200, a
# ViT-B/16 bf16 train step took 90.8 ms instead of 95.4 ms, and compiled in 14 s instead of 22 s,
# with XLA's Triton GEMM emitter off (cuBLAS picks the matmuls). XLA reads XLA_FLAGS when its first
# backend starts, so this runs at import; a flag the user already set in XLA_FLAGS is left alone.
# CPU and TPU backends ignore these GPU flags.
DEFAULT_XLA_FLAGS = ("--xla_gpu_enable_triton_gemm=false",)


def _add_default_xla_flags() -> None:
  current = _os.environ.get("XLA_FLAGS", "")
  extra = [f for f in DEFAULT_XLA_FLAGS if f.split("=")[0] not in current]
  if extra:
    _os.environ["XLA_FLAGS"] = " ".join([current, *extra]).strip()


_add_default_xla_flags()
