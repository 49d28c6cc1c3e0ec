"""`model.scan_layers`: a scanned stack computes what the unrolled one does, with the same parameters
(converted by `models.stack_layers`), the same per-layer sparsity counts and metric names, under
remat, in the jitted train step and sharded; the setting's validation and default."""
import re
import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from lazy_neuron import config_lib, sparsity, steps as steps_lib
from lazy_neuron.errors import UserError
from lazy_neuron.models import (LAYERS, build_model, dummy_batch, stack_layers, to_layout,
                                unstack_layers)
from lazy_neuron.models.stacking import init_params

INFOS = {"t5": types.SimpleNamespace(task="span_corruption", vocab_size=300, inputs_length=24,
                                     targets_length=8),
         "vit": types.SimpleNamespace(task="classification", num_classes=10,
                                      image_shape=(16, 16, 1)),
         "mixer": types.SimpleNamespace(task="classification", num_classes=10,
                                        image_shape=(16, 16, 1))}
# The layer names every tiny model reports, scanned or not (T5 tiny: 2 + 2 layers; ViT and Mixer
# tiny: depth 4).
LAYER_NAMES = {
    "t5": ["encoder/layer_00", "encoder/layer_01", "decoder/layer_00", "decoder/layer_01"],
    "vit": [f"vit/layer_{i:02d}" for i in range(4)],
    "mixer": [f"mixer/{kind}_{i:02d}" for i in range(4) for kind in ("token", "channel")],
}
EPS32 = float(np.finfo(np.float32).eps)
# Scanned and unrolled layers run the same float32 ops on the same values; only XLA's fusion of a
# loop body versus straight-line code may reorder a reduction. The widest reduction of a tiny model
# is d_ff = 1024 terms; a reordered float32 sum of n terms moves by about eps * sqrt(n) of its
# magnitude, so values compare to 16 * eps * sqrt(1024) ~ 6e-5 relative (16: headroom for the
# several layers and reductions in a row, and the backward pass).
RTOL = 16 * EPS32 * np.sqrt(1024)


def _cfg(name, **kw):
  return ml_collections.ConfigDict(dict(
      name=name, variant="tiny", activation="relu", activation_threshold=0.0, topk=None,
      topk_backend="auto", dtype="float32", **kw))


def _batch(model, info):
  batch = dummy_batch(model, info, 4)
  rng = np.random.default_rng(0)
  if model.task == "seq2seq":
    for k in ("encoder_input_tokens", "decoder_input_tokens", "decoder_target_tokens"):
      batch[k] = rng.integers(2, 300, batch[k].shape).astype(np.int32)
    batch["decoder_target_tokens"][:, -2:] = 0  # padding: must not be counted, scanned or not
  else:
    batch["image"] = rng.normal(size=batch["image"].shape).astype(np.float32)
  return batch


def _pair(name, **kw):
  """(unrolled model, scanned model, batch, unrolled params with a random classifier head)."""
  info = INFOS[name]
  plain = build_model(_cfg(name, scan_layers=False, **kw), info)
  scanned = build_model(_cfg(name, scan_layers=True, **kw), info)
  batch = _batch(plain, info)
  params = nn.meta.unbox(plain.module.init(jax.random.PRNGKey(0), **plain.inputs(batch))["params"])
  # The classifier heads start at zero (the loss would not see the layers); make them random.
  params = jax.tree_util.tree_map_with_path(
      lambda path, p: (jax.random.normal(jax.random.PRNGKey(2), p.shape, p.dtype)
                       if "head" in jax.tree_util.keystr(path) else p), params)
  return plain, scanned, batch, params


def _run(model, params, batch):
  """(loss, {layer: LayerStats}): a cross-entropy-like scalar of the logits and the stats."""
  logits, state = jax.jit(lambda p: model.module.apply(
      {"params": p}, **model.inputs(batch), mutable=["sparsity"]))(params)
  loss = jnp.mean(jax.nn.logsumexp(logits, axis=-1))
  return float(loss), sparsity.flatten_stats(jax.device_get(state["sparsity"]))


def _assert_same_stats(want, got):
  assert list(got) == list(want)  # the same layer names, in the same order
  for layer in want:
    # Counts of nonzero activations: integers, equal exactly (the same float32 pre-activations).
    np.testing.assert_array_equal(got[layer].fire, want[layer].fire, err_msg=layer)
    assert got[layer].tokens == want[layer].tokens, layer


@pytest.mark.parametrize("name", sorted(INFOS))
def test_scanned_model_matches_unrolled_with_converted_params(name):
  plain, scanned, batch, params = _pair(name)
  stacked = stack_layers(params, plain)
  for scope in {"t5": ("encoder", "decoder"), "vit": ("vit",), "mixer": ("mixer",)}[name]:
    assert LAYERS in stacked[scope], sorted(stacked[scope])
    assert not any(re.search(r"_\d\d", k) for k in stacked[scope]), sorted(stacked[scope])
  loss, stats = _run(plain, params, batch)
  loss_s, stats_s = _run(scanned, stacked, batch)
  np.testing.assert_allclose(loss_s, loss, rtol=RTOL)
  assert list(stats) == LAYER_NAMES[name]
  _assert_same_stats(stats, stats_s)
  assert stats["encoder/layer_00" if name == "t5" else LAYER_NAMES[name][0]].tokens > 0
  # The metric names are the same: the unrolled run's keys.
  assert (sorted(sparsity.metrics_from_stats(stats_s, "train"))
          == sorted(sparsity.metrics_from_stats(stats, "train")))
  # The conversion is lossless both ways, and scanned init params run unrolled too.
  back = unstack_layers(stacked, plain)
  assert jax.tree.structure(back) == jax.tree.structure(params)
  for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  own = nn.meta.unbox(scanned.module.init(jax.random.PRNGKey(1), **scanned.inputs(batch))["params"])
  loss_own, stats_own = _run(scanned, own, batch)
  loss_back, stats_back = _run(plain, to_layout(own, plain), batch)
  np.testing.assert_allclose(loss_back, loss_own, rtol=RTOL)
  _assert_same_stats(stats_own, stats_back)


@pytest.mark.parametrize("name", sorted(INFOS))
def test_unrolled_init_through_the_scanned_stack_draws_the_same_distributions(name):
  """`init_params` (what the train state's init runs) initialises an unrolled model through its
  scanned twin: the same tree, shapes and dtypes as the unrolled module's own init, every leaf
  from the same distribution (mean and standard deviation within sampling error), constant
  initialisers (zeros, ones) exactly, and each layer its own draw."""
  plain, _, batch, own = _pair(name)  # the module's own init, with a random classifier head
  got = jax.jit(lambda rng: init_params(plain, {"params": rng, "dropout": rng},
                                        plain.inputs(batch)))(jax.random.PRNGKey(0))
  assert jax.tree.structure(got) == jax.tree.structure(own)
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(own)):
    assert a.shape == b.shape and a.dtype == b.dtype, path
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if "head" in jax.tree_util.keystr(path):  # constant-initialised, made random in `own`
      assert a.std() == 0, path
      continue
    if b.std() == 0:  # a constant initialiser
      np.testing.assert_array_equal(a, b, err_msg=str(path))
      continue
    n = b.size
    # Sampling error of a standard deviation ~ sd / sqrt(2n), of a mean ~ sd / sqrt(n); 6 of each
    # (a false alarm < 1e-8 per leaf), plus a 10% margin for leaves too small to say much.
    assert abs(a.std() / b.std() - 1) < 6 / np.sqrt(2 * n) + 0.1 * (n < 400), path
    assert abs(a.mean() - b.mean()) < 6 * b.std() / np.sqrt(n) + 0.1 * b.std() * (n < 400), path
  layers = [v for k, v in got[{"t5": "encoder", "vit": "vit", "mixer": "mixer"}[name]].items()
            if re.fullmatch(r"(layer|channel)_\d\d", k)]
  assert len(layers) >= 2
  first, second = (np.concatenate([np.ravel(x) for x in jax.tree.leaves(l)]) for l in layers[:2])
  assert not np.array_equal(first, second)


def test_scanned_parameters_carry_a_leading_layers_axis():
  _, scanned, batch, _ = _pair("t5")
  boxed = scanned.module.init(jax.random.PRNGKey(0), **scanned.inputs(batch))["params"]
  specs = nn.get_partition_spec(boxed)
  assert specs["encoder"][LAYERS]["mlp"]["wi"]["kernel"] == jax.sharding.PartitionSpec(
      "layers", "embed", "mlp")
  shapes = jax.tree.map(lambda x: x.shape, nn.meta.unbox(boxed))
  assert shapes["decoder"][LAYERS]["mlp"]["wo"]["kernel"] == (2, 1024, 128)
  # The relative position bias is the stack's, shared by its layers: not stacked.
  assert shapes["encoder"]["relpos_bias"]["rel_embedding"] == (4, 32)


@pytest.mark.parametrize("name", sorted(INFOS))
def test_remat_with_scan_rematerialises_and_keeps_values(name):
  plain, scanned, batch, params = _pair(name)
  _, remat, _, _ = _pair(name, remat=True)
  stacked = stack_layers(params, plain)

  def loss(model, p):
    logits = model.module.apply({"params": p}, **model.inputs(batch))
    return jnp.mean(jax.nn.logsumexp(logits, axis=-1))

  grads, text = {}, {}
  for key, model in (("scan", scanned), ("remat", remat)):
    fn = jax.grad(lambda p, m=model: loss(m, p))
    text[key] = str(jax.make_jaxpr(fn)(stacked))
    grads[key] = jax.jit(fn)(stacked)
  # nn.remat puts the layer in a jax.checkpoint: a remat primitive (`remat2` in jax 0.10,
  # `checkpoint` in others) in the gradient's jaxpr.
  remats = {k: len(re.findall(r"\b(?:remat\w*|checkpoint)\[", v)) for k, v in text.items()}
  assert remats["scan"] == 0 and remats["remat"] >= 1, remats
  # Relative to the largest gradient: a gradient that cancels to ~0 (a bias before a norm) keeps
  # the rounding noise of the terms that cancelled, not a fraction of its own size.
  scale = max(float(np.max(np.abs(g))) for g in jax.tree.leaves(grads["scan"]))
  for a, b in zip(jax.tree.leaves(grads["scan"]), jax.tree.leaves(grads["remat"])):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=0, atol=RTOL * scale)


# --------------------------------------------------------------------------- the train step
T5_LOCAL = "configs/t5_offline.py:runlocal"
# lr 1, no momentum or clipping: params_after = params - grad, so the gradients compare directly.
PLAIN_SGD = ["config.optimizer.name=sgd", "config.optimizer.momentum=0.0",
             "config.optimizer.learning_rate=1.0", "config.optimizer.schedule=constant",
             "config.optimizer.warmup_steps=0", "config.optimizer.grad_clip_norm=0.0"]


@pytest.fixture(autouse=True)
def _chdir_repo(repo_root, monkeypatch):
  monkeypatch.chdir(repo_root)


def _one_step(scan, devices, state=None, *overrides):
  """(state before, state after, host window) of one train step of the runlocal tiny T5."""
  config = config_lib.load_config(T5_LOCAL, [*PLAIN_SGD, f"config.model.scan_layers={scan}",
                                             *overrides])
  setup = steps_lib.build_setup(config, devices)
  steps = steps_lib.Steps(setup)
  batch = _batch(setup.model, setup.info)
  batch = {k: np.resize(v, (config.batch_size, *v.shape[1:])) for k, v in batch.items()}
  with steps.context():
    if state is None:
      state = jax.device_get(steps.init(jax.random.PRNGKey(0)))
    before = to_layout(state, setup.model)
    on_device = jax.device_put(before, setup.state_shardings)
    after, window = steps.train_step(on_device, steps.zero_window(),
                                     steps_lib.to_global(batch, setup.batch_sharding))
    jax.block_until_ready(after)
  return before, after, jax.device_get(window)


def test_scanned_train_step_matches_unrolled():
  before, after, window = _one_step(False, jax.devices()[:1])
  _, after_s, window_s = _one_step(True, jax.devices()[:1], state=before)
  assert LAYERS in after_s["params"]["encoder"] and "layer_00" in after["params"]["encoder"]
  for key in window["sums"]:
    np.testing.assert_allclose(window_s["sums"][key], window["sums"][key], rtol=RTOL, err_msg=key)
  _assert_same_stats(sparsity.flatten_stats(window["sparsity"]),
                     sparsity.flatten_stats(window_s["sparsity"]))
  m, m_s = (steps_lib.window_metrics(w, lambda s: 1.0, 1) for w in (window, window_s))
  assert sorted(m) == sorted(m_s) and "sparsity/train/decoder/layer_03/nonzero_frac" in m
  # The gradients (params before - after, lr 1) agree, layer by layer.
  got = jax.device_get(unstack_layers(after_s["params"], "t5"))
  flat = lambda t: jax.tree_util.tree_flatten_with_path(t)[0]
  for (path, p0), (_, p1), (_, q1) in zip(flat(before["params"]), flat(after["params"]),
                                          flat(got), strict=True):
    g, g_s = np.asarray(p0, np.float64) - p1, np.asarray(p0, np.float64) - q1
    # Each side carries 1 ulp of max|params| from its float32 update besides the reordering.
    atol = RTOL * float(np.max(np.abs(g))) + 4 * EPS32 * float(np.max(np.abs(p0)))
    np.testing.assert_allclose(g_s, g, rtol=0, atol=atol, err_msg=jax.tree_util.keystr(path))


def test_sharded_scanned_step_runs_with_the_layers_axis_unsharded():
  assert len(jax.devices()) == 8
  _, after, window = _one_step(True, jax.devices(), None, "config.sharding_rules=fsdp",
                               "config.mesh=[('data', 2), ('fsdp', 4)]")
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(window["sums"])) and window["steps"]
  stacked = jax.tree_util.tree_flatten_with_path(after["params"]["encoder"][LAYERS])[0]
  assert stacked
  for path, x in stacked:
    spec = tuple(x.sharding.spec)
    assert x.shape[0] == 2 and (not spec or spec[0] is None), (jax.tree_util.keystr(path), spec)
  sharded = [x for _, x in stacked if "fsdp" in str(x.sharding.spec)]
  assert sharded, "fsdp shards the stacked matrices along embed"
  wi = after["params"]["encoder"][LAYERS]["mlp"]["wi"]["kernel"]  # [layers, embed, mlp]
  assert tuple(wi.sharding.spec) == (None, "fsdp", None)


# ------------------------------------------------------------------ setting and default
@pytest.mark.parametrize("name,variant,want", [
    ("t5", "tiny", False), ("t5", "small", False), ("t5", "base", False), ("vit", "tiny", False),
    ("vit", "B/16", False), ("mixer", "S/16", False), ("mlp", "base", False), ("mlp", "tiny", False)])
def test_default_is_unrolled_for_every_size(name, variant, want):
  info = INFOS.get(name, types.SimpleNamespace(task="classification", num_classes=10,
                                               image_shape=(64,)))
  if variant != "tiny" and name in ("vit", "mixer"):
    info = types.SimpleNamespace(task="classification", num_classes=10, image_shape=(32, 32, 3))
  cfg = _cfg(name, scan_layers=None)
  cfg.variant = variant
  assert build_model(cfg, info).sizes["scan_layers"] is want


@pytest.mark.parametrize("name,value,message", [
    ("t5", "yes", "model.scan_layers='yes' is not valid; use true, false or None (= false)"),
    ("vit", 1, "model.scan_layers=1 is not valid; use true, false or None (= false)"),
    ("mlp", True, "model.scan_layers=True is not valid; model.name='mlp' has a single layer"),
])
def test_bad_scan_layers_is_a_one_line_error(name, value, message):
  info = INFOS.get(name, types.SimpleNamespace(task="classification", num_classes=10,
                                               image_shape=(64,)))
  with pytest.raises(UserError) as e:
    build_model(_cfg(name, scan_layers=value), info)
  assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_a_whole_train_state_converts_between_layouts():
  """What a restore of a checkpoint of the other layout needs: the (AdamW) train state of one
  layout -> the other's tree and shapes, both ways, also abstractly (under jax.eval_shape)."""
  states = {}
  for scan in (False, True):
    config = config_lib.load_config(T5_LOCAL, [f"config.model.scan_layers={scan}"])
    assert config.optimizer.name == "adamw"
    states[scan] = steps_lib.build_setup(config, jax.devices()[:1]).abstract_state
  for scan, convert in ((True, stack_layers), (False, unstack_layers)):
    got = jax.eval_shape(lambda t, f=convert: f(t, "t5"), states[not scan])
    want = states[scan]
    assert jax.tree.structure(got) == jax.tree.structure(want)
    assert [x.shape for x in jax.tree.leaves(got)] == [x.shape for x in jax.tree.leaves(want)]
