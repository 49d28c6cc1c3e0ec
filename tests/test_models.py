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


@pytest.fixture(scope="module", params=sorted(MODELS))
def tiny(request):
  name = request.param
  info = INFOS[name]
  model = build_model(model_cfg(name=name), info)
  batch = dummy_batch(model, info, 4)
  rng = np.random.default_rng(0)
  if name == "t5":
    for k in ("encoder_input_tokens", "decoder_input_tokens", "decoder_target_tokens"):
      batch[k] = rng.integers(2, 300, batch[k].shape).astype(np.int32)
  else:
    batch["image"] = rng.normal(size=batch["image"].shape).astype(np.float32)
  variables = model.module.init(jax.random.PRNGKey(0), **model.inputs(batch))
  return name, model, batch, variables


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
