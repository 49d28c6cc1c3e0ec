"""Top-k mask: keep the k largest entries of each row, zero the rest (see docs/kernels.md).

    y = topk_mask(x, k, backend="auto")

Semantics (every backend, bit for bit): along the last axis keep exactly k entries, the k largest
in IEEE total order (-inf < ... < -0.0 < +0.0 < ... < +inf) with every NaN counted as larger than +inf;
ties go to the lowest index. Kept entries keep their bits (NaN payloads, -0.0), the rest become +0.0.
k is checked statically: 1 <= k <= D (k == D returns x). The gradient passes the cotangent through
the kept entries only; the backward pass rebuilds the mask from x and 8 bytes a row (threshold key,
tie cut), never from indices.

    y = topk_mask(h, k, relu=True)

equals `topk_mask(jax.nn.relu(h), k)`, values and gradient, in one pass over the pre-activations
h: the k largest of relu(h) are the k largest of h wherever a row has k positive entries (the same
order and the same tie rule), and where it has fewer both keep exactly its positive entries (and
NaNs, counted largest by both); the rest are 0 either way. The MLP block uses it for ReLU + Top-k:
the ReLU output is then never written to memory, and the backward pass needs only the output y
(its mask is y > 0), which the next layer keeps anyway for its own gradient.

Backends: "pallas_gpu" (Pallas Triton), "pallas_tpu" (Pallas Mosaic), "interpret_gpu" /
"interpret_tpu" (the same kernels in Pallas interpret mode, any platform), "jnp" (the same search in
plain jnp), "reference" (lax.top_k). "auto" picks pallas_gpu on GPU, pallas_tpu on TPU, jnp on CPU.
"""
from __future__ import annotations

import functools
import operator

import jax
import jax.numpy as jnp

from lazy_neuron.errors import UserError
from lazy_neuron.kernels.topk import keys as keys_lib
from lazy_neuron.kernels.topk.reference import topk_mask_reference, topk_threshold_reference

BACKENDS = ("auto", "pallas_gpu", "pallas_tpu", "interpret_gpu", "interpret_tpu", "jnp",
            "reference")
AUTO_BY_PLATFORM = {"gpu": "pallas_gpu", "cuda": "pallas_gpu", "rocm": "pallas_gpu",
                    "tpu": "pallas_tpu", "cpu": "jnp"}


def resolve_backend(backend: str = "auto") -> str:
  """The concrete backend `topk_mask` will use (raises UserError for an unknown name)."""
  if backend is None:
    backend = "auto"
  if backend not in BACKENDS:
    raise UserError(f"topk backend={backend!r} is not valid; choose one of {', '.join(BACKENDS)}")
  if backend == "auto":
    return AUTO_BY_PLATFORM.get(jax.default_backend(), "jnp")
  return backend


def _check(x, k, backend):
  backend = resolve_backend(backend)
  if jnp.dtype(x.dtype) not in keys_lib.SUPPORTED_DTYPES:
    raise UserError(f"topk_mask dtype {jnp.dtype(x.dtype).name} is not supported; "
                    "use bfloat16, float16 or float32")
  if jnp.ndim(x) < 1:
    raise UserError("topk_mask needs an array with at least one axis; got a scalar")
  d = x.shape[-1]
  if isinstance(k, bool):
    k = None
  try:
    k = operator.index(k)
  except TypeError:
    raise UserError(f"topk k={k!r} is not valid; k must be a static Python int in [1, {d}]") from None
  if not 1 <= k <= d:
    raise UserError(f"topk k={k} is not valid for rows of D={d}; choose 1 <= k <= {d}")
  return k, backend


def _forward(x, k, backend, relu=False):
  """(y, t, cut) for x[..., D]; t and cut have shape x.shape[:-1]."""
  lead, d = x.shape[:-1], x.shape[-1]
  x2d = x.reshape(-1, d)
  if backend == "reference":
    t, cut = topk_threshold_reference(x2d, k)
    y = jnp.where(keys_lib.keep_mask(x2d, t, cut), x2d, jnp.zeros((), x.dtype))
  elif backend == "jnp":
    from lazy_neuron.kernels.topk import jnp_impl
    y, t, cut = jnp_impl.forward(x2d, k)
  elif backend in ("pallas_gpu", "interpret_gpu"):
    from lazy_neuron.kernels.topk import pallas_gpu
    y, t, cut = pallas_gpu.forward(x2d, k, interpret=backend == "interpret_gpu", relu=relu)
    relu = False  # applied in the kernel's store
  elif backend in ("pallas_tpu", "interpret_tpu"):
    from lazy_neuron.kernels.topk import pallas_tpu
    interpret = pallas_tpu.interpret_params() if backend == "interpret_tpu" else False
    y, t, cut = pallas_tpu.forward(x2d, k, interpret=interpret)
  else:  # pragma: no cover - resolve_backend rejects the rest
    raise AssertionError(backend)
  if relu:
    y = jnp.where(relu_drops(y), jnp.zeros((), y.dtype), y)
  return y.reshape(x.shape), t.reshape(lead), cut.reshape(lead)


def relu_drops(x):
  """Where ReLU outputs 0: x <= 0 (NaN is not dropped: jax.nn.relu(NaN) is NaN)."""
  return x <= jnp.zeros((), x.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _topk(x, k, backend, relu):
  return _forward(x, k, backend, relu)[0]


def _topk_fwd(x, k, backend, relu):
  y, t, cut = _forward(x, k, backend, relu)
  if relu:
    # The gradient passes where the entry is kept and x > 0 (jax.nn.relu's: 0 at x == 0 and at
    # NaN), which is exactly where y > 0. So y alone is the residual: the next layer keeps it
    # anyway for its own gradient, x need not be kept, and no key is recomputed.
    return y, (y,)
  return y, (x, t, cut)


def _topk_bwd(k, backend, relu, res, g):
  if relu:
    (y,) = res
    keep = y > jnp.zeros((), y.dtype)
  else:
    x, t, cut = res
    keep = keys_lib.keep_mask(x, t, cut)
  return (jnp.where(keep, g, jnp.zeros((), g.dtype)),)


_topk.defvjp(_topk_fwd, _topk_bwd)


def topk_mask(x, k: int, *, backend: str = "auto", relu: bool = False):
  """Keeps the k largest entries of each row of x[..., D] (ties: lowest index), zeroes the rest.

  Args:
    x: bfloat16, float16 or float32 array, any leading shape.
    k: static int, 1 <= k <= D. k == D returns x unchanged (relu(x) with relu=True).
    backend: one of BACKENDS ("auto" picks by `jax.default_backend()`).
    relu: return topk_mask(jax.nn.relu(x), k), values and gradient, without materialising
      relu(x) (see the module docstring).
  Raises:
    UserError: bad k, backend or dtype (one line naming the value and what is valid).
  """
  k, backend = _check(x, k, backend)
  if k == x.shape[-1] or x.size == 0:
    return jax.nn.relu(x) if relu else x
  return _topk(x, k, backend, bool(relu))


def topk_threshold(x, k: int, *, backend: str = "auto"):
  """(t, cut) int32 per row such that keep = key > t | (key == t & column < cut) (for tests)."""
  k, backend = _check(x, k, backend)
  _, t, cut = _forward(x, k, backend)
  return t, cut


__all__ = ["BACKENDS", "resolve_backend", "topk_mask", "topk_mask_reference", "topk_threshold"]
