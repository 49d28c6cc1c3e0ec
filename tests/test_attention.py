"""`model.attention`: the fused attention path (jax.nn.dot_product_attention with lengths, causal
flag and T5's relative-position bias; cuDNN's flash attention on GPUs) computes what our XLA ops
compute at every real token position. On CPU the fused API runs on XLA ("fused_xla", internal):
this checks the plumbing (lengths, causality, bias, scale) that cuDNN receives on a GPU."""
import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from lazy_neuron import sparsity
from lazy_neuron.errors import UserError
from lazy_neuron.models import build_model, common, dummy_batch

EPS32 = float(np.finfo(np.float32).eps)
# The same float32 math, fused differently: a softmax over at most 24 keys, then matmuls whose
# widest reduction is d_ff = 1024 terms; a reordered float32 sum of n terms moves by about
# eps * sqrt(n) of its size (16: headroom for several layers in a row).
RTOL = 16 * EPS32 * np.sqrt(1024)


def _mha(q_len, kv_len, **kw):
  rng = np.random.default_rng(0)
  b, e = 3, 32
  q_in = jnp.asarray(rng.normal(size=(b, q_len, e)), jnp.float32)
  kv_in = jnp.asarray(rng.normal(size=(b, kv_len, e)), jnp.float32)
  q_lens = jnp.asarray([q_len, q_len - 3, 1], jnp.int32)
  kv_lens = jnp.asarray([kv_len, kv_len - 5, 2], jnp.int32)
  q_valid = jnp.arange(q_len)[None] < q_lens[:, None]
  kv_valid = jnp.arange(kv_len)[None] < kv_lens[:, None]
  return q_in, kv_in, q_valid, kv_valid, (q_lens, kv_lens)


@pytest.mark.parametrize("causal,with_bias,scale_in_init", [
    (False, True, True),    # T5 encoder self attention
    (True, True, True),     # T5 decoder self attention
    (False, False, True),   # T5 cross attention
    (False, False, False),  # ViT: 1/sqrt(d) at run time, no mask
])
def test_fused_matches_xla_ops_at_real_positions(causal, with_bias, scale_in_init):
  length = 13  # odd: the fused path pads to an even length for cuDNN
  q_in, kv_in, q_valid, kv_valid, lengths = _mha(length, length if causal or with_bias else 16)
  if not scale_in_init:  # ViT: no padding at all
    q_valid, kv_valid = jnp.ones_like(q_valid), jnp.ones_like(kv_valid)
    lengths = None
  mask = q_valid[:, None, :, None] & kv_valid[:, None, None, :] if lengths is not None else None
  if causal:
    mask = mask & jnp.tril(jnp.ones((length, length), bool))[None, None]
  bias = (jax.random.normal(jax.random.PRNGKey(3), (1, 4, length, length))
          if with_bias else None)
  kw = dict(num_heads=4, head_dim=8, query_scale_in_init=scale_in_init, use_bias=not scale_in_init)
  ops = common.MultiHeadAttention(implementation="xla", **kw)
  fused = common.MultiHeadAttention(implementation="fused_xla", **kw)
  params = ops.init(jax.random.PRNGKey(0), q_in, kv_in, mask=mask, bias=bias)
  want = ops.apply(params, q_in, kv_in, mask=mask, bias=bias)
  got = fused.apply(params, q_in, kv_in, mask=mask, bias=bias, lengths=lengths, causal=causal)
  real = np.asarray(q_valid)
  np.testing.assert_allclose(np.asarray(got)[real], np.asarray(want)[real], rtol=RTOL,
                             atol=RTOL * float(jnp.max(jnp.abs(want))))


def _t5(attention, monkeypatch):
  monkeypatch.setattr(common, "ATTENTION_IMPLEMENTATIONS", ("auto", "xla", "cudnn", "fused_xla"))
  info = types.SimpleNamespace(task="span_corruption", vocab_size=300, inputs_length=24,
                               targets_length=8)
  cfg = ml_collections.ConfigDict(dict(name="t5", variant="tiny", activation="relu",
                                       activation_threshold=0.0, topk=None, topk_backend="auto",
                                       dtype="float32", attention=attention))
  return build_model(cfg, info), info


def test_t5_fused_path_same_loss_and_sparsity(monkeypatch):
  """End to end through a tiny T5 with padding at the end of inputs and targets (and one padded
  eval example): the same per-token loss and the same per-layer sparsity counts."""
  plain, info = _t5("xla", monkeypatch)
  fused, _ = _t5("fused_xla", monkeypatch)
  batch = dummy_batch(plain, info, 4)
  rng = np.random.default_rng(0)
  for k in ("encoder_input_tokens", "decoder_input_tokens", "decoder_target_tokens"):
    batch[k] = rng.integers(2, 300, batch[k].shape).astype(np.int32)
  batch["encoder_input_tokens"][1, -7:] = 0
  batch["decoder_target_tokens"][:, -2:] = 0
  batch["decoder_target_tokens"][2, -5:] = 0
  batch["mask"] = np.array([1, 1, 1, 0], np.int32)  # a padded eval example: no real token
  params = nn.meta.unbox(plain.module.init(jax.random.PRNGKey(0), **plain.inputs(batch))["params"])
  real = (batch["decoder_target_tokens"] > 0) & (batch["mask"][:, None] > 0)

  def run(model):
    logits, state = jax.jit(lambda p: model.module.apply(
        {"params": p}, **model.inputs(batch), mutable=["sparsity"]))(params)
    nll = jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(
        logits, jnp.asarray(batch["decoder_target_tokens"])[..., None], -1)[..., 0]
    assert np.all(np.isfinite(np.asarray(nll)))  # even the example without a real token
    return np.asarray(nll)[real], sparsity.flatten_stats(jax.device_get(state["sparsity"]))

  (want, want_stats), (got, got_stats) = run(plain), run(fused)
  np.testing.assert_allclose(got, want, rtol=RTOL, atol=RTOL)
  assert set(got_stats) == set(want_stats) and len(got_stats) == 4
  for layer, w in want_stats.items():
    g = got_stats[layer]
    assert g.tokens == w.tokens
    # Firing counts are integers: a pre-activation within float noise of 0 may flip; allow a few.
    assert np.abs(g.fire - w.fire).sum() <= 1e-3 * w.fire.sum() + 2, layer
    np.testing.assert_allclose(g.pre_sum, w.pre_sum, rtol=RTOL, atol=RTOL * w.tokens)


def _vit(attention, monkeypatch, pool, scan, side):
  monkeypatch.setattr(common, "ATTENTION_IMPLEMENTATIONS", ("auto", "xla", "cudnn", "fused_xla"))
  info = types.SimpleNamespace(task="classification", image_shape=(side, side, 3), num_classes=5)
  cfg = ml_collections.ConfigDict(dict(name="vit", variant="tiny", activation="relu",
                                       activation_threshold=0.0, topk=None, topk_backend="auto",
                                       dtype="float32", attention=attention, pool=pool,
                                       scan_layers=scan))
  return build_model(cfg, info), info


@pytest.mark.parametrize("pool,scan,side", [("token", False, 16), ("gap", True, 12)])
def test_vit_fused_path_pads_once_same_logits_and_sparsity(monkeypatch, pool, scan, side):
  """An odd sequence (16 patches + the class token = 17; 9 patches with gap pooling, here with
  scanned layers) gets one padding token for the fused attention: the logits and every layer's
  sparsity counts are those of the unpadded model (the padding token never reaches the head or
  the probe)."""
  plain, info = _vit("xla", monkeypatch, pool, scan, side)
  fused, _ = _vit("fused_xla", monkeypatch, pool, scan, side)
  batch = dummy_batch(plain, info, 4)
  batch["image"] = np.random.default_rng(0).normal(size=batch["image"].shape).astype(np.float32)
  batch["mask"] = np.array([1, 1, 1, 0], np.int32)  # a padded eval example
  params = nn.meta.unbox(plain.module.init(jax.random.PRNGKey(0), **plain.inputs(batch))["params"])
  head = params["head"]["kernel"]  # zero-initialised: give it weights, or the logits say nothing
  params["head"]["kernel"] = jax.random.normal(jax.random.PRNGKey(1), head.shape, head.dtype)

  def run(model):
    logits, state = jax.jit(lambda p: model.module.apply(
        {"params": p}, **model.inputs(batch), mutable=["sparsity"]))(params)
    return np.asarray(logits), sparsity.flatten_stats(jax.device_get(state["sparsity"]))

  (want, want_stats), (got, got_stats) = run(plain), run(fused)
  np.testing.assert_allclose(got, want, rtol=RTOL, atol=RTOL * float(np.abs(want).max()))
  assert set(got_stats) == set(want_stats) and len(got_stats) == 4
  for layer, w in want_stats.items():
    g = got_stats[layer]
    assert g.tokens == w.tokens == 3 * ((side // 4) ** 2 + (pool == "token")), layer
    assert np.abs(g.fire - w.fire).sum() <= 1e-3 * w.fire.sum() + 2, layer
    np.testing.assert_allclose(g.pre_sum, w.pre_sum, rtol=RTOL, atol=RTOL * w.tokens)


def test_cudnn_where_it_cannot_run_is_a_one_line_error(monkeypatch):
  if jax.default_backend() == "gpu":
    pytest.skip("this machine can run cuDNN attention")
  with pytest.raises(UserError, match=r"model\.attention='cudnn' is not valid; it needs an "
                                      r"NVIDIA GPU .*; use auto or xla"):
    _t5("cudnn", monkeypatch)
  with pytest.raises(UserError, match=r"model\.attention='flash' is not valid"):
    _t5("flash", monkeypatch)
  model, _ = _t5("auto", monkeypatch)  # auto: XLA's ops here, no error
  assert model.sizes["attention"] == "auto"


@pytest.mark.skipif(jax.default_backend() != "gpu", reason="cuDNN attention needs an NVIDIA GPU")
@pytest.mark.parametrize("causal,with_bias,length", [(False, True, 64), (True, True, 64),
                                                     (False, False, 64), (False, False, 197)])
def test_cudnn_matches_xla_ops_on_gpu(causal, with_bias, length):
  """bf16 inputs: cuDNN's flash attention (online softmax, bf16 probabilities for the second
  matmul) against our ops (float32 softmax, bf16 probabilities): a few bf16 roundings apart.
  197: ViT-B/16's odd length, which the fused path pads for cuDNN."""
  q_in, kv_in, q_valid, kv_valid, lengths = _mha(length, length if causal or with_bias else 80)
  mask = q_valid[:, None, :, None] & kv_valid[:, None, None, :]
  if causal:
    mask = mask & jnp.tril(jnp.ones((length, length), bool))[None, None]
  bias = (jax.random.normal(jax.random.PRNGKey(3), (1, 4, length, length))
          if with_bias else None)
  kw = dict(num_heads=4, head_dim=64, query_scale_in_init=True, dtype=jnp.bfloat16)
  ops = common.MultiHeadAttention(implementation="xla", **kw)
  fused = common.MultiHeadAttention(implementation="cudnn", **kw)
  params = ops.init(jax.random.PRNGKey(0), q_in, kv_in, mask=mask, bias=bias)
  want = ops.apply(params, q_in, kv_in, mask=mask, bias=bias).astype(jnp.float32)
  got = fused.apply(params, q_in, kv_in, mask=mask, bias=bias, lengths=lengths,
                    causal=causal).astype(jnp.float32)
  real = np.asarray(q_valid)
  eps = float(jnp.finfo(jnp.bfloat16).eps)
  np.testing.assert_allclose(np.asarray(got)[real], np.asarray(want)[real], rtol=8 * eps,
                             atol=8 * eps * float(jnp.max(jnp.abs(want))))
  # And the gradients, which the cuDNN backward kernel computes (bias gradient included).
  loss = lambda m, p, **kw: jnp.sum(m.apply(p, q_in, kv_in, mask=mask, bias=bias, **kw)
                                    .astype(jnp.float32)[real] ** 2)
  g_want = jax.grad(lambda p: loss(ops, p))(params)
  g_got = jax.grad(lambda p: loss(fused, p, lengths=lengths, causal=causal))(params)
  for a, b in zip(jax.tree_util.tree_leaves(g_got), jax.tree_util.tree_leaves(g_want)):
    scale = float(jnp.max(jnp.abs(b)))
    np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32),
                               atol=0.05 * scale)
