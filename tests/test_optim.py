"""lazy_neuron.optim: every optimizer key is checked (one-line messages), and weight decay reaches
exactly the weight matrices of T5, ViT and Mixer."""
import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from lazy_neuron import optim
from lazy_neuron.errors import UserError
from lazy_neuron.models import build_model, dummy_batch


@pytest.mark.parametrize("key, value, message", [
    ("name", "adamm", "optimizer.name='adamm' is not valid; choose one of adamw, adafactor, sgd"),
    ("schedule", "exp", "optimizer.schedule='exp' is not valid; choose one of constant, cosine"),
    ("learning_rate", 0.0, "optimizer.learning_rate=0.0 is not valid; use a finite number > 0.0"),
    ("learning_rate", float("nan"), "optimizer.learning_rate=nan is not valid"),
    ("learning_rate", "1e-3", "optimizer.learning_rate='1e-3' is not valid"),
    ("warmup_steps", -1, "optimizer.warmup_steps=-1 is not valid; use an integer >= 0 and <= 100"),
    ("warmup_steps", 101, "optimizer.warmup_steps=101 is not valid; use an integer >= 0 and <= 100"),
    ("warmup_steps", 1.5, "optimizer.warmup_steps=1.5 is not valid; use an integer"),
    ("end_lr_frac", 1.5, "optimizer.end_lr_frac=1.5 is not valid; use a finite number >= 0.0 and <= 1.0"),
    ("end_lr_frac", -0.1, "optimizer.end_lr_frac=-0.1 is not valid"),
    ("b1", 1.0, "optimizer.b1=1.0 is not valid; use a finite number >= 0 and < 1"),
    ("b1", -0.5, "optimizer.b1=-0.5 is not valid; use a finite number >= 0 and < 1"),
    ("b2", 1, "optimizer.b2=1 is not valid; use a finite number >= 0 and < 1"),
    ("b2", True, "optimizer.b2=True is not valid"),
    ("eps", 0.0, "optimizer.eps=0.0 is not valid; use a finite number > 0.0"),
    ("weight_decay", -1e-4, "optimizer.weight_decay=-0.0001 is not valid; use a finite number >= 0.0"),
    ("grad_clip_norm", -1.0, "optimizer.grad_clip_norm=-1.0 is not valid; use a finite number >= 0.0 or None"),
    ("momentum", 1.0, "optimizer.momentum=1.0 is not valid; use a finite number >= 0 and < 1 or None"),
    ("decay_rate", 0.0, "optimizer.decay_rate=0.0 is not valid; use a finite number > 0.0 and <= 1.0"),
    ("decay_rate", 1.2, "optimizer.decay_rate=1.2 is not valid"),
    ("clipping_threshold", 0.0, "optimizer.clipping_threshold=0.0 is not valid; use a finite number > 0.0 or None"),
    ("multiply_by_parameter_scale", 1, "optimizer.multiply_by_parameter_scale=1 is not valid; use true or false"),
])
def test_bad_values_are_refused_with_one_line(key, value, message):
  opt = ml_collections.ConfigDict({**optim.default_config().to_dict(), key: value})  # any type
  with pytest.raises(UserError) as e:
    optim.validate(opt, 100)
  assert str(e.value).startswith(message)
  assert "\n" not in str(e.value)


@pytest.mark.parametrize("overrides", [
    {}, dict(name="sgd", momentum=None, grad_clip_norm=None), dict(name="sgd", momentum=0.0),
    dict(name="adafactor", clipping_threshold=None, decay_rate=1.0), dict(grad_clip_norm=0),
    dict(schedule="rsqrt", warmup_steps=10_000), dict(warmup_steps=100, end_lr_frac=1),
    dict(b1=0.0, b2=0.0, learning_rate=1, weight_decay=0),
])
def test_good_values_pass(overrides):
  optim.validate(optim.default_config(**overrides), 100)


def test_total_steps_and_unknown_keys():
  with pytest.raises(UserError, match=r"^total_steps=0 is not valid; use an integer >= 1"):
    optim.validate(optim.default_config(), 0)
  with pytest.raises(UserError, match=r"^optimizer.lr=0.1 is not valid; it is not an optimizer key; "
                                      r"use one of b1, b2, "):
    optim.default_config(lr=0.1)
  opt = optim.default_config()
  with opt.unlocked():
    opt.lr = 0.1
  with pytest.raises(UserError, match=r"^optimizer.lr=0.1 is not valid"):
    optim.validate(opt, 100)


@pytest.mark.parametrize("name", ["constant", "cosine", "linear", "rsqrt"])
def test_schedules_take_python_and_array_steps(name):
  sched = optim.schedule(optim.default_config(schedule=name, warmup_steps=10), 100)
  for step in (0, 5, 50, jnp.asarray(50, jnp.int32)):
    assert np.isfinite(float(sched(step))) and float(sched(step)) >= 0


# ------------------------------------------------------------------------------ weight decay

INFOS = {"t5": types.SimpleNamespace(task="span_corruption", vocab_size=300, inputs_length=24,
                                     targets_length=8),
         "vit": types.SimpleNamespace(task="classification", num_classes=10, image_shape=(16, 16, 1)),
         "mixer": types.SimpleNamespace(task="classification", num_classes=10,
                                        image_shape=(16, 16, 1))}


def _params(name):
  cfg = ml_collections.ConfigDict(dict(name=name, variant="tiny", activation="relu",
                                       activation_threshold=0.0, topk=None, topk_backend="auto",
                                       dtype="float32"))
  if name == "t5":
    cfg.num_encoder_layers = cfg.num_decoder_layers = 1
  else:
    cfg.depth = 1
  model = build_model(cfg, INFOS[name])
  batch = dummy_batch(model, INFOS[name], 1)
  abstract = jax.eval_shape(lambda: model.module.init(jax.random.PRNGKey(0), **model.inputs(batch)))
  return nn.meta.unbox(abstract["params"])


def _paths(tree, keep):
  return {"/".join(str(k.key) for k in path)
          for path, v in jax.tree_util.tree_flatten_with_path(tree)[0] if keep(v)}


ATTENTION = {f"{k}_kernel" for k in ("query", "key", "value", "out")}


def test_decayed_parameters():
  t5 = _params("t5")
  assert _paths(optim.decay_mask(t5), bool) == (
      {f"encoder/layer_00/attention/{k}" for k in ATTENTION}
      | {f"decoder/layer_00/{a}/{k}" for a in ("self_attention", "cross_attention") for k in ATTENTION}
      | {f"{s}/layer_00/mlp/{w}/kernel" for s in ("encoder", "decoder") for w in ("wi", "wo")})
  # Not decayed: the tied embedding table, relative-position tables, norm scales.
  assert {"shared_embedding/embedding", "encoder/relpos_bias/rel_embedding",
          "decoder/relpos_bias/rel_embedding", "encoder/final_norm/scale"} <= _paths(
              optim.decay_mask(t5), lambda d: not d)

  vit = _params("vit")
  assert _paths(optim.decay_mask(vit), bool) == (
      {"embedding/kernel", "head/kernel"} | {f"vit/layer_00/attention/{k}" for k in ATTENTION}
      | {"vit/layer_00/mlp/wi/kernel", "vit/layer_00/mlp/wo/kernel"})
  assert {"cls", "pos_embedding", "embedding/bias", "vit/encoder_norm/scale",
          "vit/layer_00/attention/query_bias"} <= _paths(optim.decay_mask(vit), lambda d: not d)

  mixer = _params("mixer")
  assert _paths(optim.decay_mask(mixer), bool) == (
      {"stem/kernel", "head/kernel"}
      | {f"mixer/{b}_00/{w}/kernel" for b in ("token", "channel") for w in ("wi", "wo")})


@pytest.mark.parametrize("name", optim.OPTIMIZERS)
def test_every_optimizer_decays_exactly_the_masked_parameters(name):
  params = {"dense": {"kernel": jnp.ones((4, 3)), "bias": jnp.ones((3,))},
            "pos_embedding": jnp.ones((1, 4, 3)), "norm": {"scale": jnp.ones((3,))}}
  opt = optim.default_config(name=name, weight_decay=0.1, schedule="constant", learning_rate=0.5)
  tx, _ = optim.make_optimizer(opt, 10)
  zero = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zero, tx.init(params), params)
  # With zero gradients the only update is the decay, so non-decayed leaves get exactly 0 (0/(0+eps)
  # and 0 * anything are exact in floating point) and decayed ones a nonzero step.
  moved = _paths(updates, lambda u: bool(jnp.any(u != 0)))
  assert moved == {"dense/kernel"}
