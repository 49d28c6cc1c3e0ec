"""MLP-Mixer (ReLU) on scikit-learn's digits, offline: token-mixing and channel-mixing MLPs measured.

  lazy-neuron train --config=configs/mixer_digits.py --workdir=/tmp/ln/mixer_digits
  lazy-neuron train --config=configs/mixer_digits.py:runlocal --workdir=/tmp/ln/mixer_smoke

Expect: eval accuracy ~0.9 in a few hundred steps; like the ViT on this easy task, the maps stay
near 40-50% nonzero. Metric layers: mixer/token_NN and mixer/channel_NN.

Args: runlocal, steps=N, topk=K, variant=tiny|S/16|B/16|L/16, image_size=S.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

from common import base_config, shrink_for_runlocal, size_overrides  # noqa: E402

from lazy_neuron import data  # noqa: E402
from lazy_neuron.config_lib import parse_arg  # noqa: E402


def get_config(arg=None):
  arg = parse_arg(arg, runlocal=False, steps=600, topk=0, variant="tiny", image_size=16)
  c = base_config(
      model=dict(name="mixer", variant=arg.variant, topk=arg.topk or None,
                 **size_overrides("mixer")),
      data=data.get_data_config("digits", image_size=arg.image_size),
      optimizer=dict(name="adamw", learning_rate=1e-3, warmup_steps=50, schedule="cosine",
                     weight_decay=1e-4, grad_clip_norm=1.0),
      total_steps=arg.steps, batch_size=64)
  c.eval_every_steps = 200
  c.checkpoint_every_steps = 300
  if arg.runlocal:
    shrink_for_runlocal(c, steps=4, batch=16)
    c.model.depth = 2
  return c
