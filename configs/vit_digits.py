"""ViT (ReLU MLP) on scikit-learn's digits, offline: a vision smoke run.

  lazy-neuron train --config=configs/vit_digits.py --workdir=/tmp/ln/vit_digits      # ~3 min, 2 CPUs
  lazy-neuron train --config=configs/vit_digits.py:runlocal --workdir=/tmp/ln/vit_smoke

Expect: eval accuracy ~0.9+ within a few hundred steps, but the activation maps stay near 45-50%
nonzero: the task is solved too fast for sparsity to develop (PAPER.md, "what a small run shows").
Use it to check the vision path end to end, not to show the phenomenon; for that use
configs/t5_offline.py or configs/mlp_gaussian.py.

Args: runlocal, steps=N, topk=K, variant=tiny|S/16|B/16|L/16|H/14, image_size=S, pool=token|gap.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

from common import base_config, shrink_for_runlocal, size_overrides  # noqa: E402

from lazy_neuron import data  # noqa: E402
from lazy_neuron.config_lib import parse_arg  # noqa: E402


def get_config(arg=None):
  arg = parse_arg(arg, runlocal=False, steps=600, topk=0, variant="tiny", image_size=16,
                  pool="token")
  c = base_config(
      model=dict(name="vit", variant=arg.variant, topk=arg.topk or None, pool=arg.pool,
                 head_bias_init=0.0, **size_overrides("vit")),
      data=data.get_data_config("digits", image_size=arg.image_size),
      optimizer=dict(name="adamw", learning_rate=1e-3, warmup_steps=50, schedule="cosine",
                     weight_decay=1e-4, grad_clip_norm=1.0),
      total_steps=arg.steps, batch_size=64)
  c.log_every_steps = 50
  c.eval_every_steps = 200
  c.checkpoint_every_steps = 300
  if arg.runlocal:
    shrink_for_runlocal(c, steps=4, batch=16)
    c.model.depth = 2
    c.model.mlp_dim = 256
  return c
