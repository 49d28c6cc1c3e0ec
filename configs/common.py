"""Pieces shared by the experiment configs (imported by path-loaded config files)."""
from __future__ import annotations

import ml_collections

from lazy_neuron import optim


def base_config(*, model: dict, data: ml_collections.ConfigDict, optimizer: dict,
                total_steps: int, batch_size: int, seed: int = 0) -> ml_collections.ConfigDict:
  """The keys every experiment has (DESIGN.md), with sane defaults."""
  c = ml_collections.ConfigDict()
  c.seed = seed
  c.total_steps = total_steps
  c.batch_size = batch_size              # global
  c.eval_batch_size = batch_size
  c.log_every_steps = 50
  c.eval_every_steps = 200
  c.checkpoint_every_steps = 500
  c.keep_checkpoints = 3                 # keep the last N checkpoints
  c.keep_checkpoint_every_steps = ml_collections.config_dict.placeholder(int)  # and every M
  c.tensorboard = True                   # event files when the `tf` extra is installed
  # A step with a non-finite loss, gradient or update: False stops the run with an error (last good
  # checkpoint kept); True keeps the old params/optimizer state and counts train/skipped_updates.
  c.skip_nonfinite_updates = False
  c.model = ml_collections.ConfigDict(dict(
      name="t5", variant="tiny", activation="relu", activation_threshold=0.0,
      topk=ml_collections.config_dict.placeholder(int), topk_backend="auto", dtype="float32",
      dropout_rate=0.0, remat=False))
  for key, value in model.items():
    c.model[key] = value
  c.data = data
  c.optimizer = optim.default_config(**optimizer)
  c.mesh = [("data", -1), ("model", 1)]
  c.sharding_rules = "data_parallel"
  c.sparsity = ml_collections.ConfigDict(dict(enabled=True))
  return c


def size_overrides(name: str) -> dict:
  """Every architecture-size key of a model, None = the variant's value (settable from the CLI)."""
  ph = ml_collections.config_dict.placeholder
  keys = {
      "t5": dict(emb_dim=int, num_heads=int, head_dim=int, mlp_dim=int, num_encoder_layers=int,
                 num_decoder_layers=int),
      "vit": dict(width=int, depth=int, mlp_dim=int, num_heads=int, patch_size=int),
      "mixer": dict(width=int, depth=int, tokens_mlp_dim=int, channels_mlp_dim=int,
                    patch_size=int),
      "mlp": dict(mlp_dim=int),
  }[name]
  return {k: ph(t) for k, t in keys.items()}


def shrink_for_runlocal(c: ml_collections.ConfigDict, *, steps: int, batch: int,
                        eval_every: int | None = None, checkpoint_every: int | None = None,
                        warmup: int = 1) -> None:
  """`runlocal`: a few steps of a tiny batch that still log, evaluate and checkpoint on the way."""
  c.total_steps = steps
  c.batch_size = c.eval_batch_size = batch
  c.log_every_steps = 2
  c.eval_every_steps = eval_every or steps
  c.checkpoint_every_steps = checkpoint_every or steps // 2
  c.optimizer.warmup_steps = warmup
