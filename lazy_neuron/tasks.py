"""Losses and metric sums for the two tasks: seq2seq (T5 span corruption) and classification.

Everything returns *sums* (and weights) so that metrics add up exactly over steps, eval batches
and data-parallel shards; host code divides.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

ECE_BINS = 15  # equal-width confidence bins (Guo et al. 2017), as the paper's calibration metric


def sums(task: str, logits: jax.Array, batch: dict, calibration: bool = False) -> dict:
  if task == "seq2seq":
    targets = batch["decoder_target_tokens"]
    weights = batch["decoder_loss_weights"].astype(jnp.float32)
    if "mask" in batch:
      weights = weights * batch["mask"][:, None].astype(jnp.float32)
    labels = targets
  else:
    labels = batch["label"]
    weights = batch.get("mask", jnp.ones(labels.shape, jnp.float32)).astype(jnp.float32)
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
  out = {"loss_sum": jnp.sum(ce * weights), "weight_sum": jnp.sum(weights),
         "correct_sum": jnp.sum(correct * weights)}
  if calibration and task == "classification":
    conf = jnp.max(jax.nn.softmax(logits, -1), -1)
    bins = jnp.clip((conf * ECE_BINS).astype(jnp.int32), 0, ECE_BINS - 1)
    onehot = jax.nn.one_hot(bins, ECE_BINS) * weights[:, None]
    out["ece_count"] = onehot.sum(0)
    out["ece_conf"] = (onehot * conf[:, None]).sum(0)
    out["ece_correct"] = (onehot * correct[:, None]).sum(0)
  return out


def loss(s: dict) -> jax.Array:
  return s["loss_sum"] / jnp.maximum(s["weight_sum"], 1e-9)


def finalize(s: dict, prefix: str) -> dict[str, float]:
  """Host-side: metric sums -> named metrics (loss, accuracy, ece)."""
  s = {k: np.asarray(v, np.float64) for k, v in s.items()}
  w = max(float(s["weight_sum"]), 1e-9)
  out = {f"{prefix}/loss": float(s["loss_sum"]) / w, f"{prefix}/accuracy": float(s["correct_sum"]) / w}
  if "ece_count" in s:
    out[f"{prefix}/ece"] = ece(s)
  return out


def ece(s: dict) -> float:
  """Host-side: expected calibration error from the per-bin sums `ece_count/conf/correct`."""
  n = np.asarray(s["ece_count"], np.float64)
  gap = np.abs(np.asarray(s["ece_correct"], np.float64) - np.asarray(s["ece_conf"], np.float64))
  return float(gap.sum() / max(n.sum(), 1e-9))  # |sum acc - sum conf| per bin, over all examples
