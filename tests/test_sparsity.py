"""The reported nonzero fractions equal a direct numpy computation on captured activations."""
import types

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import pytest

from lazy_neuron import sparsity
from lazy_neuron.models import build_model, dummy_batch
from lazy_neuron.models.activations import ACTIVATIONS

INFO = types.SimpleNamespace(task="span_corruption", vocab_size=200, inputs_length=20,
                             targets_length=6)


def cfg(**kw):
  d = dict(name="t5", variant="tiny", activation="relu", activation_threshold=0.0, topk=None,
           topk_backend="auto", dtype="float32", mlp_dim=256, emb_dim=64, num_heads=2, head_dim=32)
  d.update(kw)
  return ml_collections.ConfigDict(d)


def padded_batch(seed=0):
  rng = np.random.default_rng(seed)
  b = {"encoder_input_tokens": rng.integers(2, 200, (4, 20)).astype(np.int32),
       "decoder_input_tokens": rng.integers(2, 200, (4, 6)).astype(np.int32),
       "decoder_target_tokens": rng.integers(2, 200, (4, 6)).astype(np.int32)}
  # Different amounts of padding per example (pad id 0), including one fully padded target row.
  for i, n in enumerate([0, 5, 11, 19]):
    if n:
      b["encoder_input_tokens"][i, -n:] = 0
  for i, n in enumerate([0, 2, 6, 3]):
    if n:
      b["decoder_target_tokens"][i, -n:] = 0
  return b


def run_and_capture(model_config, batch):
  model = build_model(model_config, INFO)
  variables = model.module.init(jax.random.PRNGKey(1), **model.inputs(batch))
  params = nn.meta.unbox(variables["params"])
  # Capture each MLP's pre-activation (the output of its `wi` Dense) to recompute the map in numpy.
  _, state = model.module.apply(
      {"params": params}, **model.inputs(batch), mutable=["sparsity", "intermediates"],
      capture_intermediates=lambda mdl, _: mdl.name == "wi")
  return model, state


def numpy_nonzero(pre, mask, activation, threshold):
  """Per-neuron count of real tokens with |act(pre)| > threshold, the number of real tokens, and
  per neuron the real entries too close to the threshold to call: the compiled step may compute
  gelu/silu with other float32 ops (fused, vectorised) than numpy does, so an entry within a few
  float32 ulps (here 8 eps relative, eps = 1.2e-7) of the threshold may fall either side."""
  a = np.asarray(ACTIVATIONS[activation](pre), np.float64)
  real = mask[..., None].astype(bool)
  nz = (np.abs(a) > threshold) & real
  close = (np.abs(np.abs(a) - threshold) <= 8 * np.finfo(np.float32).eps * max(threshold, 1e-30))
  return nz.sum(axis=(0, 1)), int(mask.sum()), (close & real).sum(axis=(0, 1))


@pytest.mark.parametrize("activation,threshold", [("relu", 0.0), ("gelu", 0.05), ("silu", 0.1),
                                                  ("relu2", 0.0)])
def test_reported_fractions_equal_numpy_with_padding_excluded(activation, threshold):
  batch = padded_batch()
  model, state = run_and_capture(cfg(activation=activation, activation_threshold=threshold), batch)
  stats = sparsity.flatten_stats(jax.device_get(state["sparsity"]))
  masks = {"encoder": batch["encoder_input_tokens"] > 0,
           "decoder": batch["decoder_target_tokens"] > 0}
  inter = state["intermediates"]
  assert list(stats) == ["encoder/layer_00", "encoder/layer_01", "decoder/layer_00",
                         "decoder/layer_01"]
  for layer, s in stats.items():
    stack, name = layer.split("/")
    pre = np.asarray(inter[stack][name]["mlp"]["wi"]["__call__"][0])
    fire, tokens, undecided = numpy_nonzero(pre, masks[stack], activation, threshold)
    assert s.tokens == tokens
    assert np.all(np.abs(s.fire - fire) <= undecided), (layer, np.abs(s.fire - fire).max())
    # Ratios of integer counts in float64: equal to the last bit or two (rel 1e-12).
    entries = tokens * pre.shape[-1]
    assert abs(s.nonzero_frac - fire.sum() / entries) <= undecided.sum() / entries + 1e-12
    if not undecided.any():
      np.testing.assert_array_equal(s.fire, fire)
      assert s.dead_frac == pytest.approx(np.mean(fire == 0), rel=1e-12)
  metrics = sparsity.metrics_from_stats(stats, "eval")
  # A mean of 4 float64 fractions: rel 1e-12 covers any summation order.
  assert metrics["sparsity/eval/mean/nonzero_frac"] == pytest.approx(
      np.mean([s.nonzero_frac for s in stats.values()]), rel=1e-12)
  assert "sparsity/eval/decoder/layer_01/dead_frac" in metrics


def test_padding_does_not_change_the_counts():
  """Appending padding tokens leaves every count (fire, tokens, nonzero, pre_pos_count) and sum
  (pre_sum, pre_pos_sum) of every layer alone."""
  batch = padded_batch()
  _, state = run_and_capture(cfg(), batch)
  longer = dict(batch)
  longer["encoder_input_tokens"] = np.concatenate(
      [batch["encoder_input_tokens"], np.zeros((4, 12), np.int32)], axis=1)
  _, state2 = run_and_capture(cfg(), longer)
  leaves = [jax.tree_util.tree_flatten_with_path(jax.device_get(st["sparsity"]))[0]
            for st in (state, state2)]
  assert [k for k, _ in leaves[0]] == [k for k, _ in leaves[1]] and len(leaves[0]) == 6 * 4
  masks = {"encoder": batch["encoder_input_tokens"] > 0,
           "decoder": batch["decoder_target_tokens"] > 0}
  for (path, a), (_, b) in zip(*leaves):
    key = jax.tree_util.keystr(path)
    stack, layer = path[0].key, path[1].key
    if key.endswith("['tokens']"):
      assert int(a) == int(b) == int(masks[stack].sum()), key
      continue
    # The longer encoder sums attention over more (masked, exactly zero-weighted) keys, so a real
    # token's pre-activation may move by float32 rounding: |change| <= 1e-4 (eps_f32 = 1.2e-7 times
    # reductions of width <= 64 over 2 layers, with ~100x margin). Only entries that close to the
    # ReLU's zero may flip; there are none in this batch, so in practice the counts are equal.
    pre = [np.asarray(st["intermediates"][stack][layer]["mlp"]["wi"]["__call__"][0])
           for st in (state, state2)]
    length = pre[0].shape[1]
    real = masks[stack]
    np.testing.assert_allclose(pre[1][:, :length][real], pre[0][real], rtol=0, atol=1e-4)
    near_zero = ((np.abs(pre[0]) <= 1e-4) & real[..., None]).sum(axis=(0, 1))
    if key.endswith("['fire']"):
      assert np.all(np.abs(np.asarray(a, np.int64) - np.asarray(b, np.int64)) <= near_zero), key
    elif key.endswith("sum']"):  # pre_sum, pre_pos_sum: each real entry moves by <= 1e-4, and
      # each float32 sum rounds by <= (terms) * eps_f32 of the sum of |pre|: 1e-5 covers 80 terms.
      entries = real.sum() * pre[0].shape[-1]
      assert abs(float(a) - float(b)) <= 1e-4 * entries + 1e-5 * np.abs(pre[0][real]).sum(), key
    else:  # nonzero, pre_pos_count
      assert abs(float(a) - float(b)) <= near_zero.sum(), key
  for st in (state, state2):  # and `nonzero` is the sum of `fire`, exactly, in both runs
    for layer_stats in jax.tree_util.tree_leaves(
        jax.device_get(st["sparsity"]), is_leaf=lambda t: isinstance(t, dict) and "fire" in t):
      assert float(layer_stats["nonzero"]) == float(np.sum(layer_stats["fire"]))


def test_dead_and_lazy_fractions_equal_numpy():
  """dead = fired on no real token; lazy = fired, but on < 1% of the real tokens (strictly)."""
  info = types.SimpleNamespace(task="classification", num_classes=10, image_shape=(32,))
  model = build_model(ml_collections.ConfigDict(dict(
      name="mlp", variant="tiny", activation="relu", activation_threshold=0.0, topk=None,
      topk_backend="auto", dtype="float32", mlp_dim=64)), info)
  x = np.random.default_rng(0).normal(size=(2100, 32)).astype(np.float32)
  mask = np.ones(2100, np.float32)
  mask[2000:] = 0  # 2000 real examples (tokens); the padded ones fire a lot but must not count
  x[2000:] = 50 * x[:100]
  params = nn.meta.unbox(model.module.init(jax.random.PRNGKey(0), image=x)["params"])
  # Bias the first neurons so they fire on few real examples: k = 0 (dead), 1, 5, 19 (lazy: under
  # 20 = 1% of 2000), 20 (exactly 1%: not lazy), 21. The bias sits halfway between two sorted
  # pre-activations, so the counts do not hinge on rounding.
  layer = params["mlp"]["layer_00"]
  pre = x @ np.asarray(layer["wi"]["kernel"])
  bias = np.asarray(layer["wi"]["bias"]).copy()
  for j, k in enumerate([0, 0, 1, 5, 19, 20, 21]):
    top = np.sort(pre[:2000, j])[::-1]
    bias[j] = -(top[k] + top[k - 1]) / 2 if k else -top[0] - 1.0
  layer["wi"]["bias"] = bias
  _, state = model.module.apply({"params": params}, image=x, example_mask=mask,
                                mutable=["sparsity", "intermediates"],
                                capture_intermediates=lambda mdl, _: mdl.name == "wi")
  metrics = sparsity.metrics_from_stats(sparsity.flatten_stats(jax.device_get(state["sparsity"])),
                                        "train")
  a = np.asarray(state["intermediates"]["mlp"]["layer_00"]["wi"]["__call__"][0])
  fire = ((a > 0) & (mask[:, None] > 0)).sum(axis=0)
  tokens = int(mask.sum())
  dead = np.mean(fire == 0)
  lazy = np.mean((fire > 0) & (fire < 0.01 * tokens))
  np.testing.assert_array_equal(fire[:7], [0, 0, 1, 5, 19, 20, 21])
  assert 0 < dead < 1 and 0 < lazy < 1
  assert not np.array_equal(fire, (a > 0).sum(axis=0))  # the padded examples would change it
  # Means of 64 booleans in float64: exact up to the last bit of the division.
  assert metrics["sparsity/train/mlp/layer_00/dead_frac"] == pytest.approx(dead, rel=1e-12)
  assert metrics["sparsity/train/mlp/layer_00/lazy_frac"] == pytest.approx(lazy, rel=1e-12)
  assert metrics["sparsity/train/mlp/layer_00/nonzero_frac"] == pytest.approx(
      fire.sum() / (tokens * fire.size), rel=1e-12)


def tiny_model_stats(name, info, topk, batch_size):
  """Sparsity stats of a freshly initialised tiny model on one random batch."""
  model = build_model(ml_collections.ConfigDict(dict(
      name=name, variant="tiny", activation="relu", activation_threshold=0.0, topk=topk,
      topk_backend="auto", dtype="float32")), info)
  batch = dummy_batch(model, info, batch_size)
  rng = np.random.default_rng(0)
  if name == "t5":
    for key in ("encoder_input_tokens", "decoder_input_tokens", "decoder_target_tokens"):
      batch[key] = rng.integers(2, info.vocab_size, batch[key].shape).astype(np.int32)
  else:
    batch["image"] = rng.normal(size=batch["image"].shape).astype(np.float32)
  variables = model.module.init(jax.random.PRNGKey(0), **model.inputs(batch))
  _, state = model.module.apply({"params": nn.meta.unbox(variables["params"])},
                                **model.inputs(batch), mutable=["sparsity"])
  return sparsity.flatten_stats(jax.device_get(state["sparsity"]))


@pytest.mark.parametrize("name,info", [
    ("t5", INFO),
    ("vit", types.SimpleNamespace(task="classification", num_classes=10, image_shape=(16, 16, 3))),
    ("mixer", types.SimpleNamespace(task="classification", num_classes=10,
                                    image_shape=(16, 16, 3))),
    ("mlp", types.SimpleNamespace(task="classification", num_classes=10, image_shape=(64,))),
])
def test_about_half_nonzero_at_initialisation(name, info):
  stats = tiny_model_stats(name, info, topk=None, batch_size=8)
  assert stats
  for layer, s in stats.items():
    assert 0.40 < s.nonzero_frac < 0.60, (layer, s.nonzero_frac)


def test_example_mask_excludes_padded_examples():
  info = types.SimpleNamespace(task="classification", num_classes=10, image_shape=(64,))
  model = build_model(ml_collections.ConfigDict(dict(
      name="mlp", variant="tiny", activation="relu", activation_threshold=0.0, topk=None,
      topk_backend="auto", dtype="float32")), info)
  x = np.random.default_rng(0).normal(size=(6, 64)).astype(np.float32)
  mask = np.array([1, 1, 1, 0, 0, 1], np.float32)
  variables = model.module.init(jax.random.PRNGKey(0), image=x)
  params = nn.meta.unbox(variables["params"])
  _, state = model.module.apply({"params": params}, image=x, example_mask=mask,
                                mutable=["sparsity", "intermediates"],
                                capture_intermediates=lambda mdl, _: mdl.name == "wi")
  s = sparsity.flatten_stats(jax.device_get(state["sparsity"]))["mlp/layer_00"]
  pre = np.asarray(state["intermediates"]["mlp"]["layer_00"]["wi"]["__call__"][0])
  assert s.tokens == 4
  np.testing.assert_array_equal(s.fire, ((pre > 0) & (mask[:, None] > 0)).sum(0))


def test_npz_round_trip(tmp_path):
  stats = {"encoder/layer_00": sparsity.LayerStats(fire=np.array([0, 3, 10]), tokens=10)}
  path = sparsity.save_npz(str(tmp_path), 7, stats)
  assert path.endswith("sparsity/step_7.npz")
  loaded = sparsity.load_npz(path)
  # Firing rates are stored in float32: one rounding, rel <= eps_f32 = 1.2e-7.
  np.testing.assert_allclose(loaded["encoder/layer_00"], [0.0, 0.3, 1.0], rtol=2e-7)


@pytest.mark.parametrize("name,info", [
    ("t5", INFO),
    ("mixer", types.SimpleNamespace(task="classification", num_classes=10,
                                    image_shape=(16, 16, 3))),
])
def test_topk_models_report_at_most_k_over_d_nonzero(name, info):
  k = 8
  stats = tiny_model_stats(name, info, topk=k, batch_size=4)
  for layer, s in stats.items():
    assert 0 < s.nonzero_frac <= k / s.d_ff + 1e-12, (layer, s.nonzero_frac)
    # ReLU then top-k: exactly k per token wherever a token has >= k positive pre-activations.
    assert s.fire.sum() <= k * s.tokens


def test_scanned_stacks_are_unstacked_into_the_unrolled_layer_names(tmp_path):
  """A scanned stack sows under `layers` with a leading layer axis; the host reads it as the
  unrolled names, and the firing npz has the same layout."""
  rng = np.random.default_rng(0)
  fire = rng.integers(0, 50, (3, 8)).astype(np.int32)  # 3 layers, d_ff 8
  tokens = np.array([50, 50, 50], np.int32)
  one = lambda i: {"fire": fire[i], "tokens": tokens[i], "nonzero": np.float32(fire[i].sum())}
  unrolled = {"encoder": {f"layer_{i:02d}": {"mlp": one(i)} for i in range(3)},
              "mixer": {f"token_{i:02d}": one(i) for i in range(3)}}
  stacked = {"fire": fire, "tokens": tokens, "nonzero": fire.sum(axis=1).astype(np.float32)}
  scanned = {"encoder": {"layers": {"mlp": stacked}}, "mixer": {"layers": {"token": stacked}}}
  want, got = sparsity.flatten_stats(unrolled), sparsity.flatten_stats(scanned)
  assert list(got) == list(want) == ["encoder/layer_00", "encoder/layer_01", "encoder/layer_02",
                                     "mixer/token_00", "mixer/token_01", "mixer/token_02"]
  for layer in want:
    np.testing.assert_array_equal(got[layer].fire, want[layer].fire)
    assert got[layer].tokens == want[layer].tokens and got[layer].fire.dtype == np.int64
  a = sparsity.load_npz(sparsity.save_npz(str(tmp_path / "a"), 1, want))
  b = sparsity.load_npz(sparsity.save_npz(str(tmp_path / "b"), 1, got))
  assert list(a) == list(b)
  for k in a:
    np.testing.assert_array_equal(a[k], b[k])
