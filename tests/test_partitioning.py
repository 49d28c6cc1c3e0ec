"""Sharding: rule sets, golden PartitionSpecs (T5-Base, ViT-B/16), plan checks and their errors.

Golden files: tests/golden/<model>_<rules>.json hold {parameter path: PartitionSpec} on the mesh
data=2, fsdp=2, model=2 (8 fake devices; shapes from jax.eval_shape, no parameters are made).
After an intended change, rewrite them with
  LAZY_NEURON_UPDATE_GOLDEN=1 python -m pytest tests/test_partitioning.py -k golden
and review the diff.
"""
import io
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lazy_neuron import partitioning, train
from lazy_neuron.data.datainfo import DataInfo
from lazy_neuron.errors import UserError

GOLDEN_DIR = os.path.join(os.path.dirname(__file__), "golden")
UPDATE = os.environ.get("LAZY_NEURON_UPDATE_GOLDEN") == "1"
MESH_8 = "config.mesh=[('data', 2), ('fsdp', 2), ('model', 2)]"

T5_BASE = ("configs/t5_offline.py:variant=base",
           DataInfo(task="span_corruption", vocab_size=32100, inputs_length=512,
                    targets_length=114, num_sentinels=100))
VIT_B16 = ("configs/vit_digits.py:variant=B/16",
           DataInfo(task="classification", num_classes=1000, image_shape=(224, 224, 3)))
MODELS = {"t5_base": T5_BASE, "vit_b16": VIT_B16}
RULES = ("data_parallel", "fsdp", "tensor_parallel")


@pytest.fixture(autouse=True)
def _chdir_repo(repo_root, monkeypatch):
  monkeypatch.chdir(repo_root)


def _setup(model, *overrides, devices=None, limit=None):
  spec, info = MODELS[model]
  config = train.load_config(spec, list(overrides))
  if limit is not None:  # an optional key: configs need not declare it
    with config.unlocked():
      config.sharding_replicated_limit_bytes = limit
  return train.build_setup(config, jax.devices() if devices is None else devices, info=info)


def _specs(tree, shardings):
  return partitioning.plan_specs(tree, shardings)


# ------------------------------------------------------------------------------------ golden files
@pytest.mark.parametrize("rules", RULES)
@pytest.mark.parametrize("model", sorted(MODELS))
def test_golden_partition_specs(model, rules):
  s = _setup(model, MESH_8, f"config.sharding_rules={rules}")
  got = _specs(s.abstract_state["params"], s.state_shardings["params"])
  path = os.path.join(GOLDEN_DIR, f"{model}_{rules}.json")
  if UPDATE:
    os.makedirs(GOLDEN_DIR, exist_ok=True)
    with open(path, "w") as f:
      json.dump(got, f, indent=1, sort_keys=True)
      f.write("\n")
  with open(path) as f:
    want = json.load(f)
  assert sorted(got) == sorted(want), "parameters differ from the golden file"
  diff = {k: (want[k], got[k]) for k in want if want[k] != got[k]}
  assert not diff, f"PartitionSpecs differ from {path} (want, got): {diff}"


def test_golden_rule_sets_shard_what_they_promise():
  """Spot checks that make the golden files' meaning explicit."""
  read = lambda name: json.load(open(os.path.join(GOLDEN_DIR, f"{name}.json")))
  for model in MODELS:
    assert set(read(f"{model}_data_parallel").values()) <= {
        "P()", "P(None,)", "P(None, None)", "P(None, None, None)", "P(None, None, None, None)"}
  fsdp = read("t5_base_fsdp")
  assert fsdp["shared_embedding/embedding"] == "P(None, 'fsdp')"
  assert fsdp["encoder/layer_00/mlp/wi/kernel"] == "P('fsdp', None)"
  assert fsdp["encoder/layer_00/attention/query_kernel"] == "P('fsdp', None, None)"
  tp = read("t5_base_tensor_parallel")
  assert tp["shared_embedding/embedding"] == "P('model', 'fsdp')"
  assert tp["decoder/layer_00/mlp/wo/kernel"] == "P('model', 'fsdp')"
  assert tp["encoder/layer_00/attention/out_kernel"] == "P('model', None, 'fsdp')"  # kv unsharded
  vit = read("vit_b16_fsdp")
  assert vit["embedding/kernel"] == "P(None, None, None, 'fsdp')"
  assert vit["pos_embedding"] == "P(None, None, 'fsdp')"
  assert read("vit_b16_tensor_parallel")["vit/layer_00/mlp/wi/kernel"] == "P('fsdp', 'model')"


@pytest.mark.parametrize("model", sorted(MODELS))
@pytest.mark.parametrize("mesh", ["[('data', 8)]", "[('fsdp', 8)]", "[('data', 2), ('fsdp', 4)]",
                                  "[('data', 4), ('model', 2)]", "[('fsdp', 4), ('model', 2)]"])
def test_every_rule_set_gives_valid_specs_on_several_meshes(model, mesh):
  for rules in RULES:
    if rules != "data_parallel" and not any(
        a in mesh for a in partitioning._named_targets(rules).get("embed", ()) +
        partitioning._named_targets(rules).get("mlp", ())):
      continue  # no mesh axis to shard parameters over: refused, see test_fsdp_rules_without_...
    s = _setup(model, f"config.mesh={mesh}", f"config.sharding_rules={rules}")
    params, shardings = s.abstract_state["params"], s.state_shardings["params"]
    for leaf, sh in zip(jax.tree.leaves(params),
                        jax.tree.leaves(shardings, is_leaf=lambda x: hasattr(x, "spec"))):
      sh.shard_shape(leaf.shape)  # raises for a spec jax cannot lay out
      axes = [a for part in sh.spec if part is not None
              for a in ((part,) if isinstance(part, str) else part)]
      assert len(axes) == len(set(axes)), (rules, sh.spec)


def test_optimizer_state_shardings_follow_params():
  s = _setup("t5_base", MESH_8, "config.sharding_rules=tensor_parallel")
  flat = {jax.tree_util.keystr(p): sh for p, sh in jax.tree_util.tree_flatten_with_path(
      s.state_shardings["opt_state"], is_leaf=lambda x: hasattr(x, "spec"))[0]}
  mu = [sh for k, sh in flat.items() if "mu" in k and "shared_embedding" in k]
  nu = [sh for k, sh in flat.items() if "nu" in k and "mlp" in k and "wi" in k]
  assert mu and all(str(sh.spec) == "P('model', 'fsdp')" for sh in mu)
  assert nu and all(str(sh.spec) == "P('fsdp', 'model')" for sh in nu)
  counts = [sh for k, sh in flat.items() if "count" in k]
  assert counts and all(str(sh.spec) == "P()" for sh in counts)


def test_adafactor_factored_moments_are_replicated():
  s = _setup("vit_b16", MESH_8, "config.sharding_rules=fsdp", "config.optimizer.name=adafactor")
  opt, shardings = s.abstract_state["opt_state"], s.state_shardings["opt_state"]
  pairs = list(zip(jax.tree_util.tree_flatten_with_path(opt)[0],
                   jax.tree.leaves(shardings, is_leaf=lambda x: hasattr(x, "spec"))))
  wi = "vit/layer_00/mlp/wi/kernel"
  factored = [(p, leaf, sh) for (p, leaf), sh in pairs
              if "layer_00" in jax.tree_util.keystr(p) and "'wi'" in jax.tree_util.keystr(p)
              and "kernel" in jax.tree_util.keystr(p)]
  assert factored, wi
  for p, leaf, sh in factored:
    if leaf.shape == (768, 3072):
      assert str(sh.spec) == "P('fsdp', None)", jax.tree_util.keystr(p)
    else:  # row / column factors: replicated
      assert str(sh.spec) == "P()", (jax.tree_util.keystr(p), leaf.shape)


# ---------------------------------------------------------------------------------- plan and bytes
def test_plan_bytes_per_device_add_up():
  one = _setup("vit_b16", "config.mesh=[('data', 1)]", devices=jax.devices()[:1])
  rows1, total1 = partitioning.sharding_plan(one.abstract_state["params"],
                                             one.state_shardings["params"])
  s = _setup("vit_b16", "config.mesh=[('fsdp', 8)]", "config.sharding_rules=fsdp")
  rows8, total8 = partitioning.sharding_plan(s.abstract_state["params"],
                                             s.state_shardings["params"])
  assert total1 == 4 * 86_566_888 == sum(r[3] for r in rows1)
  assert total8 == sum(r[3] for r in rows8)
  by_name = {r[0]: r for r in rows8}
  for name, shape, _, nbytes in rows1:
    if nbytes >= 2**20:  # big matrices: exactly 1/8 per device
      assert by_name[name][3] * 8 == nbytes, name
  assert total1 / 8 <= total8 < total1 / 8 * 1.01
  text = partitioning.format_plan(rows8, total8, s.mesh, s.rules, top=5)
  lines = text.splitlines()
  assert len(lines) == 2 + 5 + 2 and "195 smaller arrays" in lines[-2]
  assert lines[2].split()[0] == "vit/layer_00/mlp/wi/kernel"  # largest first (ties: in order)
  # Replicated: only biases without an embed axis (heads x kv, classes), 0.2 MiB.
  assert f"{total8:,} bytes" in lines[-1] and "of which 0.2 MiB replicated" in lines[-1]


def test_run_prints_the_plan_and_writes_it(tmp_path):
  config = train.load_config("configs/mlp_gaussian.py:runlocal",
                             ["config.mesh=[('data', 2), ('fsdp', 4)]", "config.sharding_rules=fsdp",
                              "config.total_steps=1", "config.eval_every_steps=0",
                              "config.tensorboard=False"])
  out = io.StringIO()
  train.train_and_evaluate(config, str(tmp_path), jax.devices(), stream=out)
  text = out.getvalue()
  assert "mesh {'data': 2, 'fsdp': 4} (8 devices)" in text
  assert "mlp/layer_00/wi/kernel" in text and "P('fsdp', None)" in text
  plan = (tmp_path / "sharding_plan.txt").read_text()
  # wo's output dimension (10 classes) does not divide by 4: small, so left unsharded.
  assert "mlp/layer_00/wo/kernel" in plan and "(128, 10)" in plan
  assert "P(None, None)" in plan and plan.splitlines()[-1].startswith("total: 4 arrays")


# ------------------------------------------------------------------------------------------ errors
def _error(model, *overrides, devices=None, limit=None) -> str:
  with pytest.raises(UserError) as e:
    _setup(model, *overrides, devices=devices, limit=limit)
  msg = str(e.value)
  assert "\n" not in msg
  return msg


def test_conflicting_rules_are_refused():
  msg = _error("t5_base", MESH_8,
               "config.sharding_rules=[('batch', 'data'), ('embed', 'fsdp'), ('embed', 'model')]")
  assert "maps logical axis 'embed' twice" in msg


def test_unknown_logical_axis_in_rules_is_refused():
  msg = _error("t5_base", MESH_8, "config.sharding_rules=[('batch', 'data'), ('hidden', 'model')]")
  assert "unknown logical axis 'hidden'" in msg


def test_two_logical_axes_of_one_parameter_on_one_mesh_axis_are_refused():
  msg = _error("vit_b16", MESH_8,
               "config.sharding_rules=[('batch', 'data'), ('embed', 'model'), ('mlp', 'model')]")
  assert "logical axes 'embed' and 'mlp'" in msg and "mesh axis 'model'" in msg
  assert "parameter vit/layer_00/mlp/wi/kernel [768, 3072]" in msg


def test_mesh_not_matching_the_device_count_is_refused():
  assert "needs 8 devices but 4 are present" in _error(
      "t5_base", MESH_8, devices=jax.devices()[:4])
  assert "does not fit 8 devices" in _error("t5_base", "config.mesh=[('data', -1), ('model', 3)]")


def test_batch_not_divisible_by_the_data_axes_is_refused():
  msg = _error("vit_b16", "config.mesh=[('data', 2), ('fsdp', 4)]", "config.sharding_rules=fsdp",
               "config.batch_size=12")
  assert "batch_size=12 is not divisible by the data-parallel size 8" in msg


def test_large_parameter_not_divisible_by_its_mesh_axis_is_refused():
  # T5-Base has 12 heads: 8-way tensor parallelism cannot split them.
  msg = _error("t5_base", "config.mesh=[('model', 8)]", "config.sharding_rules=tensor_parallel")
  assert "attention/key_kernel [768, 12, 64]" in msg
  assert "dimension 1 ('heads') of size 12 is not divisible by mesh axis 'model' of size 8" in msg
  assert "('heads', None)" in msg


def test_small_indivisible_parameter_is_replicated_along_that_dimension():
  s = _setup("t5_base", "config.mesh=[('model', 8)]",
             "config.sharding_rules=[('batch', None), ('mlp', 'model'), ('heads', None)]")
  specs = _specs(s.abstract_state["params"], s.state_shardings["params"])
  assert specs["encoder/layer_00/mlp/wi/kernel"] == "P(None, 'model')"
  # Above the limit an indivisible dimension is an error instead: the 2-layer MLP's output
  # kernel [128, 10] (10 classes on its 'embed' axis) on 4-way fsdp, with the limit at 1000 bytes.
  config = train.load_config("configs/mlp_gaussian.py:runlocal",
                             ["config.mesh=[('data', 2), ('fsdp', 4)]", "config.sharding_rules=fsdp"])
  s = train.build_setup(config, jax.devices())  # default limit: replicated along it
  assert _specs(s.abstract_state["params"], s.state_shardings["params"])[
      "mlp/layer_00/wo/kernel"] == "P(None, None)"
  with config.unlocked():
    config.sharding_replicated_limit_bytes = 1000
  with pytest.raises(UserError, match=r"parameter mlp/layer_00/wo/kernel \[128, 10\] .*dimension 1 "
                     r"\('embed'\) of size 10 is not divisible by mesh axis 'fsdp' of size 4"):
    train.build_setup(config, jax.devices())


def test_fsdp_rules_without_an_fsdp_axis_are_refused():
  msg = _error("vit_b16", "config.mesh=[('data', -1), ('model', 1)]", "config.sharding_rules=fsdp")
  assert "shard parameters over mesh axis 'fsdp'" in msg and "replicated on all 8 devices" in msg
  assert "largest: parameter vit/layer_00/mlp/wi/kernel [768, 3072] (9.0 MiB)" in msg
  # One device: nothing to shard over, nothing to refuse.
  _setup("vit_b16", "config.mesh=[('data', 1)]", "config.sharding_rules=fsdp",
         devices=jax.devices()[:1])


def test_explicit_rule_to_a_missing_axis_leaving_a_large_parameter_replicated_is_refused():
  msg = _error("vit_b16", "config.mesh=[('data', 4), ('model', 2)]",
               "config.sharding_rules=[('batch', 'data'), ('mlp', 'model'), ('heads', 'model'), "
               "('embed', 'fsdp')]")
  assert "embedding/kernel [16, 16, 3, 768]" in msg and "replicated on all 8 devices" in msg
  assert "its axis 'embed' over fsdp" in msg
  # The named rule set serves meshes without fsdp: there the stem is replicated by design.
  _setup("vit_b16", "config.mesh=[('data', 4), ('model', 2)]",
         "config.sharding_rules=tensor_parallel")


def test_check_plan_reports_unknown_logical_axes_of_a_model():
  mesh = partitioning.make_mesh([("fsdp", 8)])
  rules = partitioning.resolve_rules("fsdp", mesh)
  boxed = {"w": nn.LogicallyPartitioned(jax.ShapeDtypeStruct((64, 64), jnp.float32),
                                        ("embed", "hidden"))}
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    sh = partitioning.logical_shardings(boxed, mesh, rules)
  config = train.load_config("configs/mlp_gaussian.py:runlocal",
                             ["config.mesh=[('fsdp', 8)]", "config.sharding_rules=fsdp"])
  with pytest.raises(UserError, match="parameter w \\[64, 64\\].*logical axis 'hidden'"):
    partitioning.check_plan(boxed, sh, mesh, config)


def test_bad_limit_is_refused():
  assert "sharding_replicated_limit_bytes=-1 is not valid" in _error("vit_b16", limit=-1)


@pytest.mark.parametrize("call, message", [
    (lambda d: partitioning.make_mesh([("data", "2")], d),
     "config.mesh entry=('data', '2') is not valid; use (axis name, size)"),
    (lambda d: partitioning.make_mesh([("data", True)], d),
     "config.mesh entry=('data', True) is not valid; use (axis name, size)"),
    (lambda d: partitioning.make_mesh([("data", 2), ("data", 4)], d),
     "config.mesh=[('data', 2), ('data', 4)] is not valid; it repeats an axis name"),
    (lambda d: partitioning.make_mesh([("data", -1), ("model", -1)], d),
     "config.mesh=[('data', -1), ('model', -1)] is not valid; at most one size may be -1"),
    (lambda d: partitioning.make_mesh([("data", 0)], d),
     "config.mesh=[('data', 0)] is not valid; it does not fit 8 devices"),
    (lambda d: partitioning.resolve_rules("zero3", partitioning.make_mesh([("data", -1)], d)),
     "config.sharding_rules='zero3' is not valid; choose one of data_parallel, fsdp, tensor_parallel"),
    (lambda d: partitioning.resolve_rules("[('batch',", partitioning.make_mesh([("data", -1)], d)),
     "config.sharding_rules=\"[('batch',\" is not valid; give a list of (logical axis, mesh axis)"),
    (lambda d: partitioning.resolve_rules(3, partitioning.make_mesh([("data", -1)], d)),
     "config.sharding_rules=3 is not valid; choose one of data_parallel"),
    (lambda d: partitioning.resolve_rules([("batch",)], partitioning.make_mesh([("data", -1)], d)),
     "config.sharding_rules entry=('batch',) is not valid; use a (logical axis, mesh axis) pair"),
    (lambda d: partitioning.resolve_rules([("batch", 1)], partitioning.make_mesh([("data", -1)], d)),
     "config.sharding_rules entry=('batch', 1) is not valid; the mesh axis must be a name"),
    (lambda d: partitioning.replicated_limit_bytes({partitioning.LIMIT_KEY: 1.5}),
     "sharding_replicated_limit_bytes=1.5 is not valid; use an integer >= 0"),
])
def test_mesh_and_rule_messages(call, message):
  with pytest.raises(UserError) as e:
    call(jax.devices()[:8])
  assert str(e.value).startswith(message)
