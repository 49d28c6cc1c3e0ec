"""Optimizers and learning-rate schedules from config.optimizer."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import optax

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
      raise UserError(f"unknown optimizer key {k!r}; valid: {', '.join(sorted(c))}")
    c[k] = v
  return c


def validate(opt, total_steps: int) -> None:
  if opt.name not in OPTIMIZERS:
    raise UserError(f"optimizer.name={opt.name!r} is not valid; choose one of {', '.join(OPTIMIZERS)}")
  if opt.schedule not in SCHEDULES:
    raise UserError(f"optimizer.schedule={opt.schedule!r} is not valid; choose one of "
                    f"{', '.join(SCHEDULES)}")
  if not opt.learning_rate > 0:
    raise UserError(f"optimizer.learning_rate={opt.learning_rate} is not valid; use a value > 0")
  if opt.warmup_steps < 0 or (opt.schedule != "rsqrt" and opt.warmup_steps > total_steps):
    raise UserError(f"optimizer.warmup_steps={opt.warmup_steps} is not valid; use 0..total_steps "
                    f"({total_steps})")
  if opt.weight_decay < 0:
    raise UserError(f"optimizer.weight_decay={opt.weight_decay} is not valid; use a value >= 0")


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


def _decay_mask(params):
  # No weight decay on norms, biases and embeddings of position; decay matrices only.
  return jax.tree_util.tree_map(lambda x: getattr(x, "ndim", 0) >= 2, params)


def make_optimizer(opt, total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
  sched = schedule(opt, total_steps)
  if opt.name == "adamw":
    tx = optax.adamw(sched, b1=opt.b1, b2=opt.b2, eps=opt.eps, weight_decay=opt.weight_decay,
                     mask=_decay_mask)
  elif opt.name == "adafactor":
    tx = optax.adafactor(sched, decay_rate=opt.decay_rate,
                         clipping_threshold=opt.clipping_threshold,
                         multiply_by_parameter_scale=opt.multiply_by_parameter_scale,
                         weight_decay_rate=opt.weight_decay or None)
  else:
    tx = optax.chain(optax.add_decayed_weights(opt.weight_decay, mask=_decay_mask),
                     optax.sgd(sched, momentum=opt.momentum or None))
  if opt.grad_clip_norm:
    tx = optax.chain(optax.clip_by_global_norm(opt.grad_clip_norm), tx)
  return tx, sched
