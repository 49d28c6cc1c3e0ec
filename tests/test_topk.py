"""Top-k mask kernels vs the lax.top_k reference: exact equality, gradients, jit/vmap/sharding.

Pallas kernels run in interpret mode here (the Triton one with interpret=True, the Mosaic one with
TPU interpret parameters); on a GPU the same file also runs the compiled Triton kernel.
"""
import functools
import os
import sys

if "jax" not in sys.modules:  # tests/conftest.py normally sets this; keep the file standalone
  os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lazy_neuron.errors import UserError
from lazy_neuron.kernels import topk as topk_lib
from lazy_neuron.kernels.topk import keys as keys_lib
from lazy_neuron.kernels.topk import topk_mask, topk_mask_reference

ON_GPU = jax.default_backend() == "gpu"
DTYPES = (jnp.float32, jnp.bfloat16)


def adversarial(t, d, dtype, seed=0):
  """Rows: random, constant, massive ties, NaN (both signs), +-inf, -0.0/+0.0, relu, all -inf..."""
  rng = np.random.default_rng(seed + d)
  x = rng.standard_normal((t, d)).astype(np.float32)
  rows = [
      lambda: rng.standard_normal(d),
      lambda: np.full(d, 1.0),
      lambda: rng.integers(-1, 3, d).astype(np.float32),
      lambda: np.where(rng.random(d) < 0.1, np.where(rng.random(d) < 0.5, np.nan, -np.nan),
                       rng.standard_normal(d)),
      lambda: np.where(rng.random(d) < 0.1, np.where(rng.random(d) < 0.5, np.inf, -np.inf),
                       rng.standard_normal(d)),
      lambda: np.where(rng.random(d) < 0.5, -0.0, 0.0) + np.where(rng.random(d) < 0.01, 1.0, 0.0),
      lambda: np.maximum(rng.standard_normal(d), 0.0),
      lambda: np.full(d, -np.inf),
      lambda: np.full(d, np.nan),
      lambda: np.round(rng.standard_normal(d) * 4) / 4,
      lambda: np.where(rng.random(d) < 0.5, -0.0, rng.standard_normal(d) * 1e-30),
      lambda: np.exp(rng.standard_normal(d) * 4),
  ]
  for i in range(min(t, len(rows))):
    x[i] = rows[i]()
  return jnp.asarray(x).astype(dtype)


def bits(a):
  return np.asarray(a).view(np.uint16 if np.asarray(a).dtype.itemsize == 2 else np.uint32)


def assert_exact(y, x, k):
  ref = topk_mask_reference(x, k)
  np.testing.assert_array_equal(bits(y), bits(ref))


@functools.lru_cache(maxsize=None)
def jitted(k, backend):
  return jax.jit(functools.partial(topk_mask, k=k, backend=backend))


# ---------------------------------------------------------------------------- semantics + reference
@pytest.mark.parametrize("dtype", DTYPES)
def test_reference_matches_numpy_total_order(dtype):
  x = adversarial(12, 100, dtype)
  xf = np.asarray(x.astype(jnp.float32))
  b = bits(x).astype(np.int64)
  nbits = 8 * np.asarray(x).dtype.itemsize
  sign = b >> (nbits - 1)
  key = np.where(sign == 1, -(b & ((1 << (nbits - 1)) - 1)) - 1, b)  # total order
  key = np.where(np.isnan(xf), key.max() + 10**6, key)  # every NaN above +inf, all tied
  for k in (1, 2, 7, 50, 99):
    order = np.argsort(-key, axis=-1, kind="stable")[:, :k]
    keep = np.zeros(x.shape, bool)
    np.put_along_axis(keep, order, True, axis=-1)
    want = np.where(keep, np.asarray(x), np.zeros((), np.asarray(x).dtype))
    np.testing.assert_array_equal(bits(topk_mask_reference(x, k)), bits(want))


def test_reference_matches_lax_top_k_on_floats():
  x = adversarial(12, 100, jnp.float32)
  x = jnp.where(jnp.isnan(x), jnp.nan, x)  # lax.top_k ranks -NaN lowest; we rank every NaN highest
  for k in (1, 5, 60):
    _, idx = jax.lax.top_k(x, k)
    keep = np.zeros(x.shape, bool)
    np.put_along_axis(keep, np.asarray(idx), True, axis=-1)
    np.testing.assert_array_equal(bits(topk_mask_reference(x, k)),
                                  bits(np.where(keep, np.asarray(x), 0.0).astype(np.float32)))


def test_keys_are_order_preserving_and_nan_largest():
  v = np.array([-np.inf, -3.0, -1e-30, -0.0, 0.0, 1e-30, 2.0, np.inf], np.float32)
  for dtype in (jnp.float32, jnp.bfloat16, jnp.float16):
    k = np.asarray(keys_lib.float_to_key(jnp.asarray(v).astype(dtype)))
    assert np.all(np.diff(k) >= 0) and k[3] < k[4]
    nans = jnp.asarray(np.array([np.nan, -np.nan], np.float32)).astype(dtype)
    assert np.all(np.asarray(keys_lib.float_to_key(nans)) == keys_lib.nan_key(dtype))
    assert keys_lib.nan_key(dtype) > k[-1]


# -------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize("k", [0, -1, 101, 2.0, True, None])
def test_bad_k_is_a_one_line_user_error(k):
  with pytest.raises(UserError, match=r"k=") as e:
    topk_mask(jnp.ones((2, 100)), k)
  assert "\n" not in str(e.value)


def test_bad_backend_and_dtype():
  with pytest.raises(UserError, match="backend='cuda'"):
    topk_mask(jnp.ones((2, 8)), 2, backend="cuda")
  with pytest.raises(UserError, match="int32"):
    topk_mask(jnp.ones((2, 8), jnp.int32), 2)
  assert isinstance(UserError("x"), ValueError)


def test_k_equal_d_is_identity_and_backends_resolve():
  x = adversarial(4, 10, jnp.float32)
  assert topk_mask(x, 10) is x
  assert topk_lib.resolve_backend("auto") in topk_lib.BACKENDS
  assert set(topk_lib.AUTO_BY_PLATFORM.values()) <= set(topk_lib.BACKENDS)


# ------------------------------------------------------------------------------------ exactness
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: jnp.dtype(d).name)
@pytest.mark.parametrize("d", [100, 1000, 3072, 4096])
def test_jnp_exact(d, dtype):
  x = adversarial(16, d, dtype)
  for k in (1, 2, 128 if d > 128 else 50, d - 1, d):
    assert_exact(jitted(k, "jnp")(x), x, k)


INTERPRET_GPU_CASES = [(100, 1, jnp.float32), (100, 2, jnp.bfloat16), (1000, 999, jnp.bfloat16),
                       (3072, 128, jnp.float32), (4096, 2, jnp.bfloat16)]


@pytest.mark.parametrize("d,k,dtype", INTERPRET_GPU_CASES, ids=str)
def test_interpret_gpu_exact(d, k, dtype):
  x = adversarial(12, d, dtype)
  assert_exact(jitted(k, "interpret_gpu")(x), x, k)


@pytest.mark.parametrize("d,k,dtype", [(100, 2, jnp.bfloat16), (300, 299, jnp.float32)], ids=str)
def test_interpret_tpu_exact(d, k, dtype):
  x = adversarial(12, d, dtype)  # 12 rows: also exercises the pad to a multiple of 8 rows
  assert_exact(jitted(k, "interpret_tpu")(x), x, k)


def test_pallas_gpu_multirow_blocks_and_chunks():
  from lazy_neuron.kernels.topk import pallas_gpu
  x = adversarial(12, 1000, jnp.bfloat16)
  y, _, _ = pallas_gpu.forward(x, 5, interpret=True, rows=4, chunk=256)  # 12 rows, 4 chunks
  assert_exact(y, x, 5)
  y, _, _ = pallas_gpu.forward(x, 5, interpret=True, num_warps=1, chunk=512, bracket="full")
  assert_exact(y, x, 5)


@pytest.mark.parametrize("tie", ["cumsum", "min", "auto", "bisect"])
def test_pallas_gpu_tie_cuts(tie):
  # Adversarial rows hold many ties (constant rows, ReLU zeros: "auto" falls back to cumsum) and
  # a few (bf16 N(0, 1): min-reductions); 4-row blocks mix rows that need each.
  from lazy_neuron.kernels.topk import pallas_gpu
  x = jnp.concatenate([adversarial(16, 300, jnp.bfloat16),
                       jax.random.normal(jax.random.key(3), (16, 300)).astype(jnp.bfloat16)])
  for k in (7, 64):
    y, _, _ = pallas_gpu.forward(x, k, interpret=True, rows=4, chunk=128, tie=tie)
    assert_exact(y, x, k)


@pytest.mark.skipif(not ON_GPU, reason="needs a GPU")
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: jnp.dtype(d).name)
@pytest.mark.parametrize("d", [100, 1000, 3072, 4096, 16384])
def test_pallas_gpu_exact(d, dtype):
  x = jnp.concatenate([adversarial(16, d, dtype), adversarial(500, d, dtype, seed=1)[16:]])
  for k in sorted({1, 2, min(16, d - 1), min(128, d - 1), d - 1}):
    assert_exact(jitted(k, "pallas_gpu")(x), x, k)


# ------------------------------------------------------------------------------------- gradients
@pytest.mark.parametrize("backend", ["jnp", "interpret_gpu"])
def test_gradient_matches_reference(backend):
  x = adversarial(10, 100, jnp.float32)
  x = jnp.where(jnp.isfinite(x), x, 3.0)
  g = jnp.asarray(np.random.default_rng(1).standard_normal(x.shape), jnp.float32)
  k = 7
  _, vjp = jax.vjp(lambda a: topk_mask(a, k, backend=backend), x)
  _, vjp_ref = jax.vjp(lambda a: topk_mask_reference(a, k), x)
  np.testing.assert_array_equal(np.asarray(vjp(g)[0]), np.asarray(vjp_ref(g)[0]))
  # numerical check of the (piecewise linear) function on a row without ties
  xs = jnp.asarray(np.random.default_rng(2).standard_normal((3, 50)), jnp.float32)
  f = jax.jit(lambda a: jnp.sum(topk_mask(a, 5, backend=backend) * g[:3, :50]))
  eps = 1e-3
  pts = [(i, j) for i in range(3) for j in range(0, 50, 7)]
  plus = jnp.stack([xs.at[i, j].add(eps) for i, j in pts])
  minus = jnp.stack([xs.at[i, j].add(-eps) for i, j in pts])
  fv = jax.jit(jax.vmap(f))
  num = np.asarray((fv(plus) - fv(minus)) / (2 * eps))
  ana = np.asarray(jax.grad(f)(xs))[:, ::7].reshape(-1)
  np.testing.assert_allclose(num, ana, atol=1e-2)


def test_gradient_bf16_with_ties_through_jit():
  x = adversarial(12, 300, jnp.bfloat16)
  g = jnp.ones_like(x)
  dx = jax.jit(jax.grad(lambda a: jnp.sum(topk_mask(a, 9, backend="jnp").astype(jnp.float32)
                                          * g.astype(jnp.float32))))(x)
  keep = topk_mask_reference(x, 9) != 0
  ref = jax.grad(lambda a: jnp.sum(topk_mask_reference(a, 9).astype(jnp.float32)))(x)
  np.testing.assert_array_equal(np.asarray(dx), np.asarray(ref))
  assert (np.asarray(dx) != 0).sum() == 9 * 12 and keep.sum() <= 9 * 12


# ------------------------------------------------------------------------ shapes, vmap, sharding
@pytest.mark.parametrize("backend", ["jnp", "interpret_gpu"])
def test_leading_shape_and_vmap(backend):
  x = adversarial(12, 100, jnp.bfloat16).reshape(2, 3, 2, 100)
  y = topk_mask(x, 3, backend=backend)
  assert y.shape == x.shape
  assert_exact(y.reshape(12, 100), x.reshape(12, 100), 3)
  yv = jax.vmap(lambda a: topk_mask(a, 3, backend=backend))(x)
  np.testing.assert_array_equal(bits(yv), bits(y))
  gv = jax.vmap(jax.grad(lambda a: jnp.sum(topk_mask(a, 3, backend=backend)
                                           .astype(jnp.float32))))(x)
  assert int((np.asarray(gv) != 0).sum()) == 12 * 3


def test_sharded_inputs_on_fake_devices():
  from jax.sharding import NamedSharding, PartitionSpec as P
  n = min(8, jax.device_count())
  mesh = jax.make_mesh((n,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  x = adversarial(16, 256, jnp.float32)
  xs = jax.device_put(x, NamedSharding(mesh, P("data", None)))
  for backend in ("jnp", "interpret_gpu"):
    f = jax.jit(lambda a: topk_mask(a, 4, backend=backend),
                out_shardings=NamedSharding(mesh, P("data", None)))
    y = jax.block_until_ready(f(xs))
    assert_exact(y, x, 4)
    gf = jax.jit(jax.grad(lambda a: jnp.sum(topk_mask(a, 4, backend=backend))))
    g = jax.block_until_ready(gf(xs))
    assert int((np.asarray(g) != 0).sum()) == 16 * 4


# ------------------------------------------------------------------- ReLU + Top-k in one pass
@pytest.mark.parametrize("backend", ["jnp", "interpret_gpu"] + (["pallas_gpu"] if ON_GPU else []))
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: jnp.dtype(d).name)
def test_relu_fused_equals_topk_of_relu(backend, dtype):
  # Adversarial rows (NaN, +-inf, -0.0, all -inf, constant) and rows with fewer than k positive
  # entries, where top-k of h alone would keep negatives: relu=True must drop them.
  x = adversarial(12, 300, dtype)
  few = jnp.where(jax.random.uniform(jax.random.key(5), (4, 300)) < 0.02, 1.0, -1.0)
  x = jnp.concatenate([x, (few * jnp.abs(x[:4])).astype(dtype)])
  g = jax.random.normal(jax.random.key(6), x.shape).astype(dtype)
  for k in (3, 64, 299):
    fused = lambda a: topk_mask(a, k, backend=backend, relu=True)
    plain = lambda a: topk_mask_reference(jax.nn.relu(a), k)
    y, vjp = jax.vjp(jax.jit(fused), x)
    y_ref, vjp_ref = jax.vjp(plain, x)
    # Selections of input values, no arithmetic: equal as values (+0.0 == -0.0, NaN == NaN).
    np.testing.assert_array_equal(np.asarray(y, np.float32), np.asarray(y_ref, np.float32))
    np.testing.assert_array_equal(np.asarray(vjp(g)[0], np.float32),
                                  np.asarray(vjp_ref(g)[0], np.float32))
  positives = np.nan_to_num(np.asarray(x[12:], np.float32)) > 0
  assert positives.sum(axis=1).max() < 64  # the few-positive rows have fewer than k = 64


def test_mlp_block_uses_relu_topk_with_the_same_output_and_gradient():
  import flax.linen as nn
  from lazy_neuron.models.common import MlpSettings
  from lazy_neuron.models.mlp import MlpBlock
  d_ff, k = 64, 40  # k above the ~32 positive pre-activations per row at initialisation
  block = MlpBlock(MlpSettings(topk=k, topk_backend="jnp"), d_ff=d_ff, use_bias=True)
  x = jax.random.normal(jax.random.key(0), (2, 5, 16))
  params = nn.meta.unbox(block.init(jax.random.key(1), x)["params"])

  def by_hand(p, x):
    h = x @ p["wi"]["kernel"] + p["wi"]["bias"]
    return topk_mask_reference(jax.nn.relu(h), k) @ p["wo"]["kernel"] + p["wo"]["bias"]

  def loss(f, p):
    return jnp.sum(f(p, x) ** 2)

  apply = lambda p, x: block.apply({"params": p}, x, mutable=["sparsity"])[0]
  (l1, g1), (l2, g2) = (jax.jit(jax.value_and_grad(functools.partial(loss, f)))(params)
                        for f in (apply, by_hand))
  # The same float32 ops in the same order, up to the matmuls' summation order: a few eps of
  # a sum over d_ff = 64 terms.
  tol = 64 * np.finfo(np.float32).eps
  np.testing.assert_allclose(l1, l2, rtol=tol)
  for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
    np.testing.assert_allclose(a, b, rtol=tol, atol=tol * float(jnp.max(jnp.abs(b))))


def test_bench_topk_times_the_relu_fused_kernel_and_checks_it_against_the_reference():
  from lazy_neuron.bench import topk as bench_topk
  # k = 290 of 300: N(0, 1) rows have about 150 positive entries, so the ReLU decides the output
  rec = bench_topk.run_one(64, 300, 290, jnp.dtype(jnp.bfloat16), backend="jnp", baselines=(),
                           data="relu_fused", torch=None, check=True)
  assert rec["exact"] is True and rec["data"] == "relu_fused"
  assert rec["fwd_ms"] > 0 and rec["bwd_ms"] > 0
