"""Optimizers and learning-rate schedules from config.optimizer."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import optax

from lazy_neuron import checks
from lazy_neuron.errors import UserError

OPTIMIZERS = ("adamw", "adafactor", "sgd")
SCHEDULES = ("constant", "cosine", "linear", "rsqrt")


def default_config(**overrides) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict(dict(
      name="adamw", learning_rate=1e-3, schedule="cosine", warmup_steps=0, end_lr_frac=0.0,
      b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0, grad_clip_norm=1.0, momentum=0.9,
      decay_rate=0.8, clipping_threshold=1.0, multiply_by_parameter_scale=True))
  for k, v in overrides.items():
    if k not in c:
      raise _unknown_key(k, v)
    c[k] = v
  return c


def _unknown_key(key, value) -> UserError:
  return checks.fail(f"optimizer.{key}", value,
                     f"it is not an optimizer key; use one of {', '.join(sorted(default_config()))}")


def validate(opt, total_steps: int) -> None:
  """Raises UserError (one line) for any bad key or value of config.optimizer; cheap.

  Every key is checked whichever optimizer is chosen, so a typo never waits for a later switch.
  """
  total_steps = checks.integer("total_steps", total_steps, min=1, max=checks.MAX_STEPS)
  unknown = sorted(set(opt) - set(default_config()))
  if unknown:
    raise _unknown_key(unknown[0], opt[unknown[0]])
  checks.choice("optimizer.name", opt.name, OPTIMIZERS)
  checks.choice("optimizer.schedule", opt.schedule, SCHEDULES)
  checks.number("optimizer.learning_rate", opt.learning_rate, min=0.0, min_exclusive=True)
  # rsqrt keeps the rate constant for warmup_steps and decays after; it may outlast the run.
  checks.integer("optimizer.warmup_steps", opt.warmup_steps, min=0,
                 max=checks.MAX_STEPS if opt.schedule == "rsqrt" else total_steps)
  checks.number("optimizer.end_lr_frac", opt.end_lr_frac, min=0.0, max=1.0)
  checks.fraction("optimizer.b1", opt.b1)
  checks.fraction("optimizer.b2", opt.b2)
  checks.number("optimizer.eps", opt.eps, min=0.0, min_exclusive=True)
  checks.number("optimizer.weight_decay", opt.weight_decay, min=0.0)
  checks.number("optimizer.grad_clip_norm", opt.grad_clip_norm, min=0.0, none_ok=True)
  checks.fraction("optimizer.momentum", opt.momentum, none_ok=True)
  checks.number("optimizer.decay_rate", opt.decay_rate, min=0.0, max=1.0, min_exclusive=True)
  checks.number("optimizer.clipping_threshold", opt.clipping_threshold, min=0.0,
                min_exclusive=True, none_ok=True)
  checks.boolean("optimizer.multiply_by_parameter_scale", opt.multiply_by_parameter_scale)


def schedule(opt, total_steps: int) -> optax.Schedule:
  lr, warm = float(opt.learning_rate), int(opt.warmup_steps)
  if opt.schedule == "rsqrt":
    # T5: constant lr for `warmup_steps`, then lr * sqrt(warmup / step).
    w = max(warm, 1)
    return lambda step: lr * jnp.sqrt(w / jnp.maximum(jnp.asarray(step, jnp.float32) + 1, w))
  decay_steps = max(total_steps - warm, 1)
  end = lr * float(opt.end_lr_frac)
  if opt.schedule == "constant":
    main = optax.constant_schedule(lr)
  elif opt.schedule == "cosine":
    main = optax.cosine_decay_schedule(lr, decay_steps, alpha=float(opt.end_lr_frac))
  else:
    main = optax.linear_schedule(lr, end, decay_steps)
  if warm == 0:
    return main
  return optax.join_schedules([optax.linear_schedule(0.0, lr, warm), main], [warm])


def decayed(path: tuple[str, ...]) -> bool:
  """Whether weight decay applies to the parameter at `path` (its names, outermost first).

  Only weight matrices are decayed: leaves named `kernel` or `*_kernel` (Dense, Conv, the attention
  projections `query_kernel`...`out_kernel`), as big_vision does. Never decayed: biases, norm
  scales, ViT's position embedding and class token, T5's relative-position table, and T5's
  `shared_embedding`: it is an embedding table (tied with the output projection), and decay would
  pull every row toward zero each step while a row's gradient is nonzero only when its token occurs,
  shrinking rare tokens; T5 itself trained without weight decay.
  """
  return bool(path) and (path[-1] == "kernel" or path[-1].endswith("_kernel"))


def _names(path) -> tuple[str, ...]:
  return tuple(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def decay_mask(params):
  """A tree of bools like `params`: True where `decayed`."""
  return jax.tree_util.tree_map_with_path(lambda path, _: decayed(_names(path)), params)


def make_optimizer(opt, total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
  sched = schedule(opt, total_steps)
  if opt.name == "adamw":
    tx = optax.adamw(sched, b1=opt.b1, b2=opt.b2, eps=opt.eps, weight_decay=opt.weight_decay,
                     mask=decay_mask)
  elif opt.name == "adafactor":
    tx = optax.adafactor(sched, decay_rate=opt.decay_rate,
                         clipping_threshold=opt.clipping_threshold,
                         multiply_by_parameter_scale=opt.multiply_by_parameter_scale,
                         weight_decay_rate=opt.weight_decay or None,
                         weight_decay_mask=decay_mask)
  else:
    tx = optax.chain(optax.add_decayed_weights(opt.weight_decay, mask=decay_mask),
                     optax.sgd(sched, momentum=opt.momentum or None))
  if opt.grad_clip_norm:
    tx = optax.chain(optax.clip_by_global_norm(opt.grad_clip_norm), tx)
  return tx, sched
