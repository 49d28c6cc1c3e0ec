"""Building blocks of the experiment configs in configs/.

Config files are loaded by path (`--config=configs/<exp>.py[:args]`), so what they share lives here,
in the package, and they import it like any other module: `from lazy_neuron import experiment`.
"""
from __future__ import annotations

import ml_collections

from lazy_neuron import optim

_placeholder = ml_collections.config_dict.placeholder


def base_config(*, model: dict, data: ml_collections.ConfigDict, optimizer: dict,
                total_steps: int, batch_size: int, seed: int = 0, log_every_steps: int = 50,
                eval_every_steps: int = 200,
                checkpoint_every_steps: int = 500) -> ml_collections.ConfigDict:
  """The keys every experiment has (the ones `lazy-neuron train` requires), with sane defaults."""
  c = ml_collections.ConfigDict()
  c.seed = seed
  c.total_steps = total_steps
  c.batch_size = batch_size              # global
  c.eval_batch_size = batch_size
  c.log_every_steps = log_every_steps
  c.eval_every_steps = eval_every_steps
  c.checkpoint_every_steps = checkpoint_every_steps
  c.keep_checkpoints = 3                 # keep the last N checkpoints
  c.keep_checkpoint_every_steps = _placeholder(int)  # and every M
  c.tensorboard = True                   # event files when the `tf` extra is installed
  # A step with a non-finite loss, gradient or update: False stops the run with an error (last good
  # checkpoint kept); True keeps the old params/optimizer state and counts train/skipped_updates.
  c.skip_nonfinite_updates = False
  c.model = ml_collections.ConfigDict(dict(
      name="t5", variant="tiny", activation="relu", activation_threshold=0.0,
      topk=_placeholder(int), topk_backend="auto", dtype="float32", dropout_rate=0.0, remat=False,
      # None = unrolled (models/stacking.py). Untyped, so that a bad value reaches the model's
      # check and its one-line message.
      scan_layers=None,
      attention="auto"))  # auto | xla | cudnn (models/common.py)
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
  keys = {
      "t5": dict(emb_dim=int, num_heads=int, head_dim=int, mlp_dim=int, num_encoder_layers=int,
                 num_decoder_layers=int),
      "vit": dict(width=int, depth=int, mlp_dim=int, num_heads=int, patch_size=int),
      "mixer": dict(width=int, depth=int, tokens_mlp_dim=int, channels_mlp_dim=int,
                    patch_size=int),
      "mlp": dict(mlp_dim=int),
  }[name]
  return {k: _placeholder(t) for k, t in keys.items()}


def model(name: str, *, variant: str, topk: int, **keys) -> dict:
  """The model block of a config: `topk=0` means dense; every size key is settable from the CLI
  (T5 also takes `one_hot_embedding`: None = auto, models/t5.py)."""
  extra = {"one_hot_embedding": _placeholder(bool)} if name == "t5" else {}
  return dict(size_overrides(name), **extra, name=name, variant=variant, topk=topk or None, **keys)


def vision_optimizer(warmup_steps: int) -> dict:
  """The optimizer of the image classifiers (big_vision's ViT recipe without its augmentations):
  AdamW, lr 1e-3 with a linear warmup then cosine decay, weight decay 1e-4, gradient clip 1."""
  return dict(name="adamw", learning_rate=1e-3, warmup_steps=warmup_steps, schedule="cosine",
              weight_decay=1e-4, grad_clip_norm=1.0)


def shrink_for_runlocal(c: ml_collections.ConfigDict, *, steps: int, batch: int,
                        eval_every: int | None = None, checkpoint_every: int | None = None,
                        warmup: int = 1, **model_keys) -> None:
  """`runlocal`: a few steps of a tiny batch that still log, evaluate and checkpoint on the way;
  `model_keys` shrink the model too (e.g. depth=2). Values the user can set by a config arg
  (steps, a width) are passed in from the parsed args, whose `runlocal_defaults` (see
  `config_lib.parse_arg`) give way to an explicit arg: runlocal never overrides what was asked."""
  c.total_steps = steps
  c.batch_size = c.eval_batch_size = batch
  c.log_every_steps = 2
  c.eval_every_steps = eval_every or steps
  c.checkpoint_every_steps = checkpoint_every or steps // 2
  c.optimizer.warmup_steps = warmup
  for key, value in model_keys.items():
    c.model[key] = value
