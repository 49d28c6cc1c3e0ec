"""The sparsity metrics beyond the nonzero fraction, each against numpy (or a hand count):
live neurons (live_frac, live_nonzero_frac), the pre-activation sums (preact_*), and the FLOPs the
measured zeros make skippable (*_flops_skippable_frac, with flops.forward_flops)."""
import types

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import pytest

from lazy_neuron import config_lib, evaluate, flops, sparsity, steps as steps_lib
from lazy_neuron.models import build_model, dummy_batch, stack_layers
from test_sparsity import padded_batch as padded_t5_batch  # one padded T5 batch for both files

EPS32 = float(np.finfo(np.float32).eps)
T5_INFO = types.SimpleNamespace(task="span_corruption", vocab_size=200, inputs_length=20,
                                targets_length=6)
IMAGE_INFO = types.SimpleNamespace(task="classification", num_classes=10, image_shape=(16, 16, 3))
FLAT_INFO = types.SimpleNamespace(task="classification", num_classes=10, image_shape=(32,))
INFOS = {"t5": T5_INFO, "vit": IMAGE_INFO, "mixer": IMAGE_INFO, "mlp": FLAT_INFO}


def cfg(name="t5", **kw):
  d = dict(name=name, variant="tiny", activation="relu", activation_threshold=0.0, topk=None,
           topk_backend="auto", dtype="float32")
  if name == "t5":
    d.update(mlp_dim=256, emb_dim=64, num_heads=2, head_dim=32)
  d.update(kw)
  return ml_collections.ConfigDict(d)


def t5_masks(batch):
  return {"encoder": batch["encoder_input_tokens"] > 0,
          "decoder": batch["decoder_target_tokens"] > 0}


def apply_capturing_wi(model, params, **inputs):
  """(sparsity collection on the host, {module path: wi output}) of one forward pass."""
  _, state = model.module.apply({"params": params}, **inputs,
                                mutable=["sparsity", "intermediates"],
                                capture_intermediates=lambda mdl, _: mdl.name == "wi")
  return jax.device_get(state["sparsity"]), state["intermediates"]


def numpy_topk(a, k):
  """Keeps the k largest entries of each row (ties do not occur with random float inputs) and
  zeroes the rest, as the Top-k block does after the activation."""
  kth = np.sort(a, axis=-1)[..., -k][..., None]
  return np.where(a >= kth, a, 0.0)


# ----------------------------------------------------------------------------- live neurons
def test_live_fractions_by_hand():
  s = sparsity.LayerStats(fire=np.array([0, 0, 3, 5]), tokens=10)
  dead = sparsity.LayerStats(fire=np.zeros(4, np.int64), tokens=10)
  # 8 nonzero entries: 8 / (10 x 4) over all neurons, 8 / (10 x 2) over the two live ones.
  assert s.nonzero_frac == pytest.approx(0.2, rel=1e-15)
  assert s.live_frac == 0.5 and s.live_frac == 1 - s.dead_frac
  assert s.live_nonzero_frac == pytest.approx(0.4, rel=1e-15)
  assert np.isnan(dead.live_nonzero_frac) and dead.live_frac == 0.0
  m = sparsity.metrics_from_stats({"a/layer_00": s, "a/layer_01": dead}, "eval")
  assert m["sparsity/eval/a/layer_00/live_nonzero_frac"] == pytest.approx(0.4, rel=1e-15)
  # The mean skips the layer where it is undefined; live_frac averages both layers.
  assert m["sparsity/eval/mean/live_nonzero_frac"] == pytest.approx(0.4, rel=1e-15)
  assert m["sparsity/eval/mean/live_frac"] == 0.25
  # Without pre-activation sums (a LayerStats built from fire and tokens only): no preact metrics.
  assert not any("preact" in k for k in m)


def test_live_fractions_equal_numpy_with_padding_excluded():
  """The 2-layer MLP with some neurons biased to be dead or rarely firing, and padded examples
  that fire a lot but must not count."""
  model = build_model(cfg("mlp", mlp_dim=64), FLAT_INFO)
  rng = np.random.default_rng(0)
  x = rng.normal(size=(600, 32)).astype(np.float32)
  mask = np.ones(600, np.float32)
  mask[500:] = 0
  x[500:] = 50 * x[:100]
  params = nn.meta.unbox(model.module.init(jax.random.PRNGKey(0), image=x)["params"])
  layer = params["mlp"]["layer_00"]
  pre = x @ np.asarray(layer["wi"]["kernel"])
  bias = np.asarray(layer["wi"]["bias"]).copy()
  bias[:10] = -np.max(pre[:500, :10], axis=0) - 1.0  # 10 neurons dead on the real examples
  bias[10:20] = -np.sort(pre[:500, 10:20], axis=0)[-3] + 1e-3  # fire on ~2 real examples
  layer["wi"]["bias"] = bias
  tree, inter = apply_capturing_wi(model, params, image=x, example_mask=mask)
  h = np.asarray(inter["mlp"]["layer_00"]["wi"]["__call__"][0])
  fire = ((h > 0) & (mask[:, None] > 0)).sum(axis=0)
  live = fire > 0
  assert 0 < live.mean() < 1 and not np.array_equal(fire, (h > 0).sum(axis=0))
  m = sparsity.metrics_from_stats(sparsity.flatten_stats(tree), "train")
  # Ratios of integer counts in float64: equal to the last bit or two.
  assert m["sparsity/train/mlp/layer_00/live_frac"] == pytest.approx(live.mean(), rel=1e-12)
  want = fire[live].sum() / (500 * live.sum())
  assert m["sparsity/train/mlp/layer_00/live_nonzero_frac"] == pytest.approx(want, rel=1e-12)
  assert m["sparsity/train/mean/live_nonzero_frac"] == pytest.approx(want, rel=1e-12)
  # Dead neurons explain part of the sparsity: the live-only fraction is the larger one.
  assert want > m["sparsity/train/mlp/layer_00/nonzero_frac"]


# ------------------------------------------------------------------------ pre-activations
@pytest.mark.parametrize("activation,topk,dtype", [("relu", None, "float32"),
                                                   ("gelu", None, "float32"),
                                                   ("relu", 8, "float32"),
                                                   ("relu", None, "bfloat16")])
def test_preactivation_stats_equal_numpy(activation, topk, dtype):
  batch = padded_t5_batch()
  model = build_model(cfg(activation=activation, topk=topk, dtype=dtype), T5_INFO)
  inputs = model.inputs(batch)
  params = nn.meta.unbox(model.module.init(jax.random.PRNGKey(1), **inputs)["params"])
  tree, inter = apply_capturing_wi(model, params, **inputs)
  stats = sparsity.flatten_stats(tree)
  metrics = sparsity.metrics_from_stats(stats, "eval")
  masks = t5_masks(batch)
  differs = False
  for layer, s in stats.items():
    stack, name = layer.split("/")
    h = np.asarray(np.asarray(inter[stack][name]["mlp"]["wi"]["__call__"][0]), np.float64)
    real = np.broadcast_to(masks[stack][..., None], h.shape)
    hr = h[real]
    pos = hr[hr > 0]
    # The count is exact: the same h, compared with 0, counted in int32 per neuron, and a float32
    # sum of d_ff integers below 2**24.
    assert s.pre_pos_count == pos.size, layer
    # float32 sums of |terms| <= 20*4 tokens per neuron, then d_ff = 256 neurons: at most
    # (80 + 256) * eps_f32 times the sum of |h| (sequential worst case).
    tol = (80 + 256) * EPS32 * np.abs(hr).sum()
    assert abs(s.pre_sum - hr.sum()) <= tol, layer
    assert abs(s.pre_pos_sum - pos.sum()) <= tol, layer
    entries = real.sum()
    key = f"sparsity/eval/{layer}/"
    assert abs(metrics[key + "preact_mean"] - hr.mean()) <= tol / entries
    assert metrics[key + "preact_pos_frac"] == pytest.approx(pos.size / entries, rel=1e-12)
    assert abs(metrics[key + "preact_pos_mean"] - pos.mean()) <= tol / pos.size
    # At initialisation about half the pre-activations are positive.
    assert 0.3 < metrics[key + "preact_pos_frac"] < 0.7
    differs |= s.pre_pos_count != s.fire.sum()
  # With GELU or top-k the positive count is not `fire`: that is why it is sown separately.
  assert differs == (activation != "relu" or topk is not None)
  assert metrics["sparsity/eval/mean/preact_pos_frac"] == pytest.approx(
      np.mean([s.preact_pos_frac for s in stats.values()]), rel=1e-12)


def test_nothing_is_sown_when_the_probe_is_off():
  batch = padded_t5_batch()
  model = build_model(cfg(), T5_INFO, measure=False)
  inputs = model.inputs(batch)
  params = nn.meta.unbox(model.module.init(jax.random.PRNGKey(1), **inputs)["params"])
  _, state = model.module.apply({"params": params}, **inputs, mutable=["sparsity"])
  assert not jax.tree.leaves(state.get("sparsity", {}))


@pytest.mark.parametrize("name", ["t5", "mixer"])
def test_scanned_model_reports_the_unrolled_preactivation_stats(name):
  info = INFOS[name]
  kw = {"mlp_dim": 256} if name == "t5" else {}
  plain = build_model(cfg(name, scan_layers=False, **kw), info)
  scanned = build_model(cfg(name, scan_layers=True, **kw), info)
  batch = padded_t5_batch() if name == "t5" else {
      "image": np.random.default_rng(0).normal(size=(4, 16, 16, 3)).astype(np.float32)}
  params = nn.meta.unbox(plain.module.init(jax.random.PRNGKey(0),
                                           **plain.inputs(batch))["params"])
  run = lambda m, p: sparsity.flatten_stats(jax.device_get(jax.jit(lambda q: m.module.apply(
      {"params": q}, **m.inputs(batch), mutable=["sparsity"]))(p)[1]["sparsity"]))
  want, got = run(plain, params), run(scanned, stack_layers(params, plain))
  assert list(got) == list(want)
  for layer in want:
    assert got[layer].pre_pos_count == want[layer].pre_pos_count, layer
    # The same float32 values, perhaps summed in another order by the scanned loop body: a float32
    # sum of n <= 80 * 256 terms moves by about eps * sqrt(n) of the sum of |h|; we bound the
    # error with the number of |h| we know, the positive sum.
    for key in ("pre_sum", "pre_pos_sum"):
      scale = want[layer].pre_pos_sum * 2 + abs(want[layer].pre_sum)
      assert abs(getattr(got[layer], key) - getattr(want[layer], key)) <= 1e-4 * scale, layer
  assert (sorted(sparsity.metrics_from_stats(got, "train"))
          == sorted(sparsity.metrics_from_stats(want, "train")))


# -------------------------------------------------------------------------------- FLOPs
def test_forward_flops_by_hand():
  model = build_model(cfg(), T5_INFO)
  f = flops.forward_flops(model, T5_INFO)
  d, ff = 64, 256
  assert list(f.mlp) == ["encoder/layer_00", "encoder/layer_01", "decoder/layer_00",
                         "decoder/layer_01"]
  # One example: 20 encoder positions and 6 decoder positions, 2 FLOPs per multiply-add.
  assert f.mlp["encoder/layer_01"] == flops.MlpLayerFlops(wi=2 * 20 * d * ff, wo=2 * 20 * ff * d)
  assert f.mlp["decoder/layer_00"] == flops.MlpLayerFlops(wi=2 * 6 * d * ff, wo=2 * 6 * ff * d)
  assert f.total == flops.t5(model.sizes, model.module.vocab_size, 1, 20, 6).forward
  assert 8 * f.total == flops.train_step(model, T5_INFO, 8).forward
  two = flops.forward_flops(build_model(cfg("mlp", mlp_dim=64), FLAT_INFO), FLAT_INFO)
  assert two.mlp == {"mlp/layer_00": flops.MlpLayerFlops(wi=2 * 32 * 64, wo=2 * 64 * 10)}
  assert two.total == 2 * 32 * 64 + 2 * 64 * 10


@pytest.mark.parametrize("name,scan", [("t5", False), ("t5", True), ("vit", False),
                                       ("vit", True), ("mixer", False), ("mixer", True),
                                       ("mlp", False)])
def test_flops_layers_are_the_stats_layers(name, scan):
  """Every model names its MLP layers in forward_flops as flatten_stats does (else the model-wide
  fractions would be left out)."""
  info = INFOS[name]
  model = build_model(cfg(name, scan_layers=scan), info)
  batch = dummy_batch(model, info, 2)
  shapes = jax.eval_shape(lambda: model.module.init_with_output(
      jax.random.PRNGKey(0), **model.inputs(batch))[1]["sparsity"])
  stats = sparsity.flatten_stats(jax.tree.map(lambda a: np.ones(a.shape, a.dtype), shapes))
  f = flops.forward_flops(model, info)
  assert sorted(f.mlp, key=sparsity.summary.layer_sort_key) == list(stats)
  m = sparsity.metrics_from_stats(stats, "train", f)
  assert "sparsity/train/model_flops_skippable_frac" in m


def test_skippable_fractions_by_hand():
  stats = {"s/layer_00": sparsity.LayerStats(fire=np.array([10, 0, 5, 5]), tokens=10),  # 50% zero
           "s/layer_01": sparsity.LayerStats(fire=np.array([10, 10, 10, 0]), tokens=10)}  # 25%
  info = flops.ForwardFlops(total=2000, mlp={"s/layer_00": flops.MlpLayerFlops(100, 300),
                                             "s/layer_01": flops.MlpLayerFlops(200, 200)})
  m = sparsity.metrics_from_stats(stats, "eval", flops_info=info)
  # Skippable: 0.5 * 300 = 150 and 0.25 * 200 = 50 wo FLOPs; wi never.
  assert m["sparsity/eval/s/layer_00/mlp_flops_skippable_frac"] == pytest.approx(150 / 400)
  assert m["sparsity/eval/s/layer_01/mlp_flops_skippable_frac"] == pytest.approx(50 / 400)
  assert m["sparsity/eval/mlp_flops_skippable_frac"] == pytest.approx(200 / 800)
  assert m["sparsity/eval/model_flops_skippable_frac"] == pytest.approx(200 / 2000)
  # The old call, without FLOPs: no FLOP metrics; a layer without statistics: no totals.
  assert not any("flops" in k for k in sparsity.metrics_from_stats(stats, "eval"))
  part = sparsity.metrics_from_stats({"s/layer_00": stats["s/layer_00"]}, "eval", info)
  assert "sparsity/eval/s/layer_00/mlp_flops_skippable_frac" in part
  assert "sparsity/eval/mlp_flops_skippable_frac" not in part


@pytest.mark.parametrize("topk", [None, 8])
def test_skippable_fractions_equal_numpy(topk):
  """T5 with padding: the zero entries of act(h) (after top-k), over real tokens, each skipping
  d_model multiply-adds of wo, against the forward pass's FLOPs."""
  batch = padded_t5_batch()
  model = build_model(cfg(topk=topk), T5_INFO)
  inputs = model.inputs(batch)
  params = nn.meta.unbox(model.module.init(jax.random.PRNGKey(1), **inputs)["params"])
  tree, inter = apply_capturing_wi(model, params, **inputs)
  info = flops.forward_flops(model, T5_INFO)
  m = sparsity.metrics_from_stats(sparsity.flatten_stats(tree), "eval", info)
  masks = t5_masks(batch)
  d, ff = 64, 256
  skip_total = mlp_total = 0.0
  for stack, length in (("encoder", 20), ("decoder", 6)):
    for name in ("layer_00", "layer_01"):
      h = np.asarray(inter[stack][name]["mlp"]["wi"]["__call__"][0], np.float64)
      a = np.maximum(h, 0.0)
      if topk:
        a = numpy_topk(a, topk)
      real = masks[stack]
      zero_frac = (a[real] == 0).mean()
      # Per example: `length` positions, each with zero_frac * ff zero activations, each skipping
      # d multiply-adds (2 FLOPs each) of wo; the MLP does 2 * length * (d*ff + ff*d).
      skip = zero_frac * ff * length * 2 * d
      mlp = 2 * length * 2 * d * ff
      assert m[f"sparsity/eval/{stack}/{name}/mlp_flops_skippable_frac"] == pytest.approx(
          skip / mlp, rel=1e-12)
      skip_total += skip
      mlp_total += mlp
  assert m["sparsity/eval/mlp_flops_skippable_frac"] == pytest.approx(skip_total / mlp_total,
                                                                      rel=1e-12)
  assert m["sparsity/eval/model_flops_skippable_frac"] == pytest.approx(
      skip_total / flops.t5(model.sizes, model.module.vocab_size, 1, 20, 6).forward, rel=1e-12)
  if topk:  # at most k of 256 nonzero: nearly all of wo is skippable
    assert m["sparsity/eval/mlp_flops_skippable_frac"] >= (1 - topk / ff) / 2 - 1e-12


@pytest.fixture
def _in_repo(repo_root, monkeypatch):
  monkeypatch.chdir(repo_root)


@pytest.mark.parametrize("enabled", [True, False])
def test_setup_passes_flops_to_the_train_and_eval_metrics(_in_repo, enabled):
  config = config_lib.load_config("configs/t5_offline.py:runlocal",
                                  [f"config.sparsity.enabled={enabled}"])
  setup = steps_lib.build_setup(config, jax.devices()[:1])
  if not enabled:
    assert setup.flops_info is None
    return
  assert setup.flops_info == flops.forward_flops(setup.model, setup.info)
  steps = steps_lib.Steps(setup)
  batch = dummy_batch(setup.model, setup.info, config.batch_size)
  rng = np.random.default_rng(0)
  for k in batch:
    batch[k] = rng.integers(2, 100, batch[k].shape).astype(np.int32)
  with steps.context():
    state = steps.init(jax.random.PRNGKey(0))
    params = jax.device_get(state["params"])  # the train step donates the state
    _, window = steps.train_step(state, steps.zero_window(),
                                 steps_lib.to_global(batch, setup.batch_sharding))
  window = jax.device_get(window)
  m = steps_lib.window_metrics(window, setup.schedule, 1, flops_info=setup.flops_info)
  stats = sparsity.flatten_stats(window["sparsity"])
  assert m == {**steps_lib.window_metrics(window, setup.schedule, 1),
               **sparsity.flops_skippable_metrics(stats, "train", setup.flops_info)}
  assert 0 < m["sparsity/train/model_flops_skippable_frac"] < m[
      "sparsity/train/mlp_flops_skippable_frac"] < 0.5
  assert "sparsity/train/decoder/layer_00/preact_pos_mean" in m
  with steps.context():
    params = jax.device_put(params, setup.state_shardings["params"])
  values, eval_stats = evaluate.evaluate_with_stats(steps, params, config)
  assert values["sparsity/eval/model_flops_skippable_frac"] == sparsity.flops_skippable_metrics(
      eval_stats, "eval", setup.flops_info)["sparsity/eval/model_flops_skippable_frac"]
