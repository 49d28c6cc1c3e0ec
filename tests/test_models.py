"""Every model and size builds; logical axes on every parameter; init is ~50% nonzero."""
import re
import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from lazy_neuron.errors import UserError
from lazy_neuron.models import MODELS, build_model, dummy_batch
from lazy_neuron.models.common import rms_norm
from lazy_neuron.models.t5 import relative_position_bucket
from lazy_neuron.partitioning import LOGICAL_AXES

TEXT = types.SimpleNamespace(task="span_corruption", vocab_size=32128, inputs_length=16,
                             targets_length=4)
IMAGE224 = types.SimpleNamespace(task="classification", num_classes=1000, image_shape=(224, 224, 3))
IMAGE16 = types.SimpleNamespace(task="classification", num_classes=10, image_shape=(16, 16, 1))
FLAT = types.SimpleNamespace(task="classification", num_classes=10, image_shape=(64,))


def model_cfg(**kw):
  d = dict(name="t5", variant="tiny", activation="relu", activation_threshold=0.0, topk=None,
           topk_backend="auto", dtype="float32")
  d.update(kw)
  return ml_collections.ConfigDict(d)


def count_params(model, info):
  b = dummy_batch(model, info, 1)
  shapes = jax.eval_shape(lambda: model.module.init(jax.random.PRNGKey(0), **model.inputs(b)))
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nn.meta.unbox(shapes["params"])))


# Published parameter counts (T5 v1.0 with the 32128-entry vocabulary; ViT/Mixer at 224, 1000 classes).
@pytest.mark.parametrize("name,variant,info,expected", [
    ("t5", "small", TEXT, 60.5e6), ("t5", "base", TEXT, 222.9e6), ("t5", "large", TEXT, 737.7e6),
    ("t5", "3b", TEXT, 2.85e9), ("t5", "11b", TEXT, 11.3e9),
    ("vit", "S/16", IMAGE224, 22.05e6), ("vit", "B/16", IMAGE224, 86.57e6),
    ("vit", "L/16", IMAGE224, 304.3e6), ("vit", "H/14", IMAGE224, 632.0e6),
    ("mixer", "S/16", IMAGE224, 18.5e6), ("mixer", "B/16", IMAGE224, 59.9e6),
    ("mixer", "L/16", IMAGE224, 208.2e6),
])
def test_every_size_builds_with_published_parameter_count(name, variant, info, expected):
  model = build_model(model_cfg(name=name, variant=variant), info)
  assert count_params(model, info) == pytest.approx(expected, rel=0.02)


def test_every_variant_is_covered():
  tested = {("t5", v) for v in ("small", "base", "large", "3b", "11b")}
  tested |= {("vit", v) for v in ("S/16", "B/16", "L/16", "H/14")}
  tested |= {("mixer", v) for v in ("S/16", "B/16", "L/16")}
  for name, (table, _, _) in MODELS.items():
    for variant in table:
      if variant == "tiny" or name == "mlp":
        continue
      assert (name, variant) in tested


INFOS = {"t5": types.SimpleNamespace(task="span_corruption", vocab_size=300, inputs_length=24,
                                     targets_length=8),
         "vit": IMAGE16, "mixer": IMAGE16, "mlp": FLAT}


def model_with_batch(name, **kw):
  """A model built from model_cfg(name=name, **kw), a random batch of 4, and its init variables."""
  info = INFOS[name]
  model = build_model(model_cfg(name=name, **kw), info)
  batch = dummy_batch(model, info, 4)
  rng = np.random.default_rng(0)
  if name == "t5":
    for k in ("encoder_input_tokens", "decoder_input_tokens", "decoder_target_tokens"):
      batch[k] = rng.integers(2, 300, batch[k].shape).astype(np.int32)
  else:
    batch["image"] = rng.normal(size=batch["image"].shape).astype(np.float32)
  variables = model.module.init(jax.random.PRNGKey(0), **model.inputs(batch))
  return model, batch, variables


@pytest.fixture(scope="module", params=sorted(MODELS))
def tiny(request):
  return (request.param, *model_with_batch(request.param))


def test_tiny_models_run_and_sow_fixed_size_stats(tiny):
  name, model, batch, variables = tiny
  params = nn.meta.unbox(variables["params"])
  out, state = model.module.apply({"params": params}, **model.inputs(batch), mutable=["sparsity"])
  assert np.all(np.isfinite(np.asarray(out)))
  leaves = jax.tree_util.tree_flatten_with_path(state["sparsity"])[0]
  assert leaves
  for path, x in leaves:
    key = jax.tree_util.keystr(path)
    if key.endswith("['fire']"):
      assert x.ndim == 1 and x.dtype == jnp.int32
    else:
      assert x.ndim == 0


def test_uint8_images_are_normalised_on_the_device(tiny):
  name, model, batch, variables = tiny
  if "image" not in batch:
    pytest.skip("text model")
  params = nn.meta.unbox(variables["params"])
  pixels = np.random.default_rng(1).integers(0, 256, batch["image"].shape).astype(np.uint8)
  host = pixels.astype(np.float32) * np.float32(2 / 255) - np.float32(1)  # what the host pipeline does
  run = lambda image: model.module.apply({"params": params}, **model.inputs(dict(batch, image=image)))
  # The device may fuse x * 2/255 - 1 into one FMA: inputs differ by <= 1 ulp of 1 (1.2e-7), grown
  # by at most the 64-wide first reduction (64 * 1.2e-7 = 8e-6 absolute on O(1) outputs) to 1e-5.
  np.testing.assert_allclose(np.asarray(run(pixels)), np.asarray(run(host)), rtol=1e-5, atol=1e-5)


def test_every_parameter_has_logical_axes(tiny):
  _, _, _, variables = tiny
  specs = nn.get_partition_spec(variables["params"])
  flat = jax.tree_util.tree_flatten_with_path(
      specs, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))[0]
  shapes = jax.tree.leaves(nn.meta.unbox(variables["params"]))
  assert len(flat) == len(shapes)
  for (path, spec), shape in zip(flat, [s.shape for s in shapes]):
    assert isinstance(spec, jax.sharding.PartitionSpec), jax.tree_util.keystr(path)
    assert len(spec) == len(shape), jax.tree_util.keystr(path)
    assert any(a is not None for a in spec), f"{jax.tree_util.keystr(path)} has no logical axis"
    assert all(a is None or a in LOGICAL_AXES for a in spec)


def test_mlp_hidden_activation_is_constrained_to_logical_axes(tiny):
  """With a rule for `mlp`, the hidden activation's sharding constraint shows up in the jaxpr."""
  name, model, batch, variables = tiny
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("model",),
                           axis_types=(jax.sharding.AxisType.Auto,))
  params = nn.meta.unbox(variables["params"])
  with jax.set_mesh(mesh), nn.logical_axis_rules([("mlp", "model")]):
    jaxpr = jax.make_jaxpr(lambda p: model.module.apply({"params": p}, **model.inputs(batch),
                                                        mutable=["sparsity"]))(params)
  # Only the MLP hidden activation has a logical axis that the rules map to `model`.
  assert re.search(r"spec=P\([^)]*'model'", str(jaxpr)), str(jaxpr)[:2000]


@pytest.mark.parametrize("bad,match", [
    (dict(name="gpt"), "model.name='gpt'"),
    (dict(variant="huge"), "model.variant='huge'"),
    (dict(activation="rleu"), "model.activation='rleu'"),
    (dict(topk=5000), "model.topk=5000"),
    (dict(topk=-1), "model.topk=-1"),
    (dict(dtype="float8"), "model.dtype='float8'"),
])
def test_bad_model_config_is_a_one_line_error(bad, match):
  with pytest.raises(UserError, match=match.replace("(", r"\(")) as e:
    build_model(model_cfg(**bad), INFOS["t5"])
  assert "\n" not in str(e.value)


@pytest.mark.parametrize("bad,match", [
    (dict(dropout_rate=1.0), "model.dropout_rate=1.0"),
    (dict(dropout_rate=2.0), "model.dropout_rate=2.0"),
    (dict(dropout_rate=-0.1), "model.dropout_rate=-0.1"),
    (dict(remat="yes"), "model.remat='yes'"),
    (dict(mlp_dim=0), "model.mlp_dim=0"),
    (dict(num_heads=2.5), "model.num_heads=2.5"),
    (dict(widht=64), "model.widht=64 is not valid; model.name='t5' takes the keys .*emb_dim"),
    (dict(pool="token"), "model.pool='token' is not valid; model.name='t5' takes"),
    (dict(name="vit", pool="max"), "model.pool='max'"),
    (dict(activation_threshold=-1.0), "model.activation_threshold=-1.0"),
    (dict(one_hot_embedding="yes"), "model.one_hot_embedding='yes'"),
])
def test_bad_model_settings_are_a_one_line_error_at_build_time(bad, match):
  info = INFOS[bad.get("name", "t5")]
  with pytest.raises(UserError, match=match) as e:
    build_model(model_cfg(**bad), info)
  assert "\n" not in str(e.value)


def test_none_means_the_variants_value():
  model = build_model(model_cfg(mlp_dim=None, dropout_rate=None, remat=None), INFOS["t5"])
  assert model.sizes["mlp_dim"] == 1024 and model.sizes["dropout_rate"] == 0.0
  assert model.sizes["remat"] is False


# --- T5 relative position buckets ---------------------------------------------------------------

# Derived on paper from the T5 definition (num_buckets=32, max_distance=128), relative position =
# key - query. Bidirectional: 16 buckets per sign (keys after the query: 16..31), offsets 0..7
# exact, then 8 + floor(8 * log(n/8) / log(128/8)) = 8 + floor(2 log2(n/8)), capped at 15; e.g.
# n=20: 2 log2(2.5) = 2.64 -> 10; n=64: 2 log2(8) = 6 -> 14; n=127: 7.98 -> 15. Unidirectional:
# keys after the query -> 0; offsets 0..15 exact, then 16 + floor(16 * log(n/16) / log(8)); e.g.
# n=20: (16/3) log2(1.25) = 1.72 -> 17; n=64: (16/3) * 2 = 10.67 -> 26; n=127: 15.94 -> 31.
HAND_POSITIONS = [-200, -128, -127, -64, -20, -9, -8, -1, 0, 1, 7, 8, 9, 20, 64, 127, 128, 200]
HAND_BIDIRECTIONAL = [15, 15, 15, 14, 10, 8, 8, 1, 0, 17, 23, 24, 24, 26, 30, 31, 31, 31]
HAND_UNIDIRECTIONAL = [31, 31, 31, 26, 17, 9, 8, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]


def test_one_hot_embedding_is_the_gather_exactly_with_its_gradient():
  """T5's embedding as a one-hot matmul (auto for small vocabularies: a matmul gradient instead
  of a scatter-add) gives the gather's logits (exactly, up to a few eps) and its gradient to float tolerance (the
  scatter and the matmul add a token's cotangents in different orders)."""
  gather, batch, variables = model_with_batch("t5", one_hot_embedding=False)
  one_hot = build_model(model_cfg(name="t5", one_hot_embedding=True), INFOS["t5"])
  # auto (None): this vocabulary (300, padded to 384) is looked up without a gather (the
  # explicit gather model has two more: the encoder's and the decoder's lookups).
  auto = build_model(model_cfg(name="t5"), INFOS["t5"])
  jaxprs = [str(jax.make_jaxpr(lambda p, m=m: m.module.apply(p, **m.inputs(batch)))(variables))
            for m in (auto, gather)]
  assert jaxprs[1].count("gather[") == jaxprs[0].count("gather[") + 2
  params = nn.meta.unbox(variables["params"])
  rng = np.random.default_rng(1)
  tokens = rng.integers(2, 20, batch["encoder_input_tokens"].shape)  # many repeated ids
  batch = dict(batch, encoder_input_tokens=tokens.astype(np.int32))

  def loss(model, p):
    logits = model.module.apply({"params": p}, **model.inputs(batch), mutable=["sparsity"])[0]
    return jnp.sum(jnp.sin(logits)), logits

  (_, want), g_want = jax.value_and_grad(lambda p: loss(gather, p), has_aux=True)(params)
  (_, got), g_got = jax.value_and_grad(lambda p: loss(one_hot, p), has_aux=True)(params)
  # One nonzero term per sum: exact in IEEE arithmetic; a few eps allow for a matmul library in a
  # reduced-precision mode on some CPU.
  eps = float(np.finfo(np.float32).eps)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=4 * eps,
                             atol=4 * eps * float(np.abs(want).max()))
  emb_want = np.asarray(g_want["shared_embedding"]["embedding"])
  emb_got = np.asarray(g_got["shared_embedding"]["embedding"])
  # A row's gradient sums up to 4 * (24 + 8) token cotangents plus the tied output layer's.
  tol = 8 * float(np.finfo(np.float32).eps) * np.sqrt(4 * 32 + 128) * np.abs(emb_want).max()
  np.testing.assert_allclose(emb_got, emb_want, atol=tol, rtol=0)
  assert np.abs(emb_want[2:20]).max() > 0


def test_relative_position_buckets_match_a_hand_derived_table():
  pos = np.array(HAND_POSITIONS)
  np.testing.assert_array_equal(relative_position_bucket(pos, True, 32, 128), HAND_BIDIRECTIONAL)
  np.testing.assert_array_equal(relative_position_bucket(pos, False, 32, 128), HAND_UNIDIRECTIONAL)


# The buckets of the implementation that matched the released T5 / mesh-tensorflow checkpoints,
# recorded for relative positions -300..300 (max_distance=128) as runs: (first position, bucket),
# each bucket holding until the next run starts.
RELEASED_RUNS = {
    (True, 32): [
        (-300, 15), (-90, 14), (-63, 13), (-45, 12), (-31, 11), (-22, 10), (-15, 9), (-11, 8),
        (-7, 7), (-6, 6), (-5, 5), (-4, 4), (-3, 3), (-2, 2), (-1, 1), (0, 0), (1, 17), (2, 18),
        (3, 19), (4, 20), (5, 21), (6, 22), (7, 23), (8, 24), (12, 25), (16, 26), (23, 27),
        (32, 28), (46, 29), (64, 30), (91, 31)],
    (True, 64): [
        (-300, 31), (-112, 30), (-98, 29), (-86, 28), (-76, 27), (-66, 26), (-58, 25), (-51, 24),
        (-45, 23), (-39, 22), (-34, 21), (-30, 20), (-26, 19), (-23, 18), (-20, 17), (-18, 16),
        (-15, 15), (-14, 14), (-13, 13), (-12, 12), (-11, 11), (-10, 10), (-9, 9), (-8, 8),
        (-7, 7), (-6, 6), (-5, 5), (-4, 4), (-3, 3), (-2, 2), (-1, 1), (0, 0), (1, 33), (2, 34),
        (3, 35), (4, 36), (5, 37), (6, 38), (7, 39), (8, 40), (9, 41), (10, 42), (11, 43),
        (12, 44), (13, 45), (14, 46), (15, 47), (16, 48), (19, 49), (21, 50), (24, 51), (27, 52),
        (31, 53), (35, 54), (40, 55), (46, 56), (52, 57), (59, 58), (67, 59), (77, 60), (87, 61),
        (99, 62), (113, 63)],
    (False, 32): [
        (-300, 31), (-112, 30), (-98, 29), (-86, 28), (-76, 27), (-66, 26), (-58, 25), (-51, 24),
        (-45, 23), (-39, 22), (-34, 21), (-30, 20), (-26, 19), (-23, 18), (-20, 17), (-18, 16),
        (-15, 15), (-14, 14), (-13, 13), (-12, 12), (-11, 11), (-10, 10), (-9, 9), (-8, 8),
        (-7, 7), (-6, 6), (-5, 5), (-4, 4), (-3, 3), (-2, 2), (-1, 1), (0, 0)],
    (False, 64): [
        (-300, 63), (-122, 62), (-117, 61), (-112, 60), (-107, 59), (-103, 58), (-98, 57),
        (-94, 56), (-90, 55), (-86, 54), (-82, 53), (-79, 52), (-76, 51), (-72, 50), (-69, 49),
        (-66, 48), (-63, 47), (-61, 46), (-58, 45), (-56, 44), (-53, 43), (-51, 42), (-49, 41),
        (-47, 40), (-45, 39), (-43, 38), (-41, 37), (-39, 36), (-38, 35), (-36, 34), (-34, 33),
        (-33, 32), (-31, 31), (-30, 30), (-29, 29), (-28, 28), (-27, 27), (-26, 26), (-25, 25),
        (-24, 24), (-23, 23), (-22, 22), (-21, 21), (-20, 20), (-19, 19), (-18, 18), (-17, 17),
        (-16, 16), (-15, 15), (-14, 14), (-13, 13), (-12, 12), (-11, 11), (-10, 10), (-9, 9),
        (-8, 8), (-7, 7), (-6, 6), (-5, 5), (-4, 4), (-3, 3), (-2, 2), (-1, 1), (0, 0)],
}


@pytest.mark.parametrize("bidirectional,num_buckets", sorted(RELEASED_RUNS))
def test_relative_position_buckets_match_the_released_implementation(bidirectional, num_buckets):
  runs = RELEASED_RUNS[(bidirectional, num_buckets)]
  pos = np.arange(-300, 301)
  expected = np.empty_like(pos)
  for (start, bucket), (end, _) in zip(runs, runs[1:] + [(301, None)]):
    expected[(pos >= start) & (pos < end)] = bucket
  got = relative_position_bucket(pos, bidirectional, num_buckets, 128)
  np.testing.assert_array_equal(got, expected)
  assert got.min() >= 0 and got.max() < num_buckets


# --- RMSNorm --------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_t5_layer_norm_is_rms_norm_with_an_embed_scale(dtype):
  d = 128
  x = np.random.default_rng(0).normal(2.0, 3.0, size=(2, 5, d)).astype(np.float32)
  norm = rms_norm("pre_mlp_norm", dtype)
  variables = norm.init(jax.random.PRNGKey(0), jnp.asarray(x, dtype))
  assert nn.get_partition_spec(variables)["params"]["scale"] == jax.sharding.PartitionSpec("embed")
  scale = np.random.default_rng(1).uniform(0.5, 1.5, d).astype(np.float32)
  y = norm.apply({"params": {"scale": scale}}, jnp.asarray(x, dtype))
  assert y.dtype == dtype
  # The definition in float64, as the implementation before flax's computed it:
  # x / sqrt(mean(x^2) + 1e-6) * scale.
  xin = np.asarray(jnp.asarray(x, dtype), np.float64)
  ref = xin / np.sqrt(np.mean(xin ** 2, axis=-1, keepdims=True) + 1e-6) * scale
  # float32: the mean of d squares is off by <= d * eps relative (sequential-sum bound), the rsqrt
  # and two products by a few eps more; bfloat16 output: one rounding to 8 bits (eps 2^-8) rules.
  eps = float(jnp.finfo(dtype).eps)
  rtol = (d + 4) * eps if dtype == jnp.float32 else 2 * eps
  np.testing.assert_allclose(np.asarray(y, np.float64), ref, rtol=rtol, atol=0)


# --- remat and dropout, every model ---------------------------------------------------------------

SMALL = {"t5": dict(emb_dim=32, num_heads=2, head_dim=16, mlp_dim=64),
         "vit": dict(width=32, depth=2, mlp_dim=64, num_heads=2),
         "mixer": dict(width=32, depth=2, tokens_mlp_dim=16, channels_mlp_dim=64),
         "mlp": dict(mlp_dim=64)}


def small_model(name, **kw):
  model, batch, variables = model_with_batch(name, **SMALL[name], **kw)
  params = nn.meta.unbox(variables["params"])
  # The classifier heads start at zero (then no input change shows); give them random weights.
  params = jax.tree_util.tree_map_with_path(
      lambda path, p: (jax.random.normal(jax.random.PRNGKey(2), p.shape, p.dtype)
                       if "head" in jax.tree_util.keystr(path) else p), params)
  return model, batch, params


def _loss(model, batch, params, deterministic=True, rng=None):
  logits = model.module.apply({"params": params}, **model.inputs(batch),
                              deterministic=deterministic,
                              rngs={} if rng is None else {"dropout": rng})
  return jnp.mean(jnp.square(logits))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_remat_rematerialises_every_model_and_keeps_its_values(name):
  plain, batch, params = small_model(name)
  remat, _, _ = small_model(name, remat=True)
  barriers = {}
  for key, model in (("plain", plain), ("remat", remat)):
    grad = jax.jit(jax.grad(lambda p, m=model: _loss(m, batch, p)))
    # jax.checkpoint keeps the recomputation apart from the forward pass with optimization barriers.
    barriers[key] = grad.lower(params).as_text().count("optimization_barrier")
  assert barriers["plain"] == 0 and barriers["remat"] > 0, barriers
  # Same computation, the same float32 ops: equal up to a few eps of reordering.
  np.testing.assert_allclose(float(_loss(remat, batch, params)), float(_loss(plain, batch, params)),
                             rtol=1e-6)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_dropout_acts_in_training_only_for_every_model(name):
  plain, batch, params = small_model(name)
  dropped, _, _ = small_model(name, dropout_rate=0.5)
  rng = jax.random.PRNGKey(3)
  base = float(_loss(plain, batch, params))
  # Evaluation (deterministic) runs the very same ops as without dropout: equal to float32 eps.
  np.testing.assert_allclose(float(_loss(dropped, batch, params)), base, rtol=1e-6)
  np.testing.assert_allclose(float(_loss(plain, batch, params, False, rng)), base, rtol=1e-6)
  train = float(_loss(dropped, batch, params, False, rng))
  assert abs(train - base) > 1e-3 * abs(base), (train, base)
