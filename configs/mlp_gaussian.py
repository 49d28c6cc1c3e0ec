"""2-layer ReLU MLP (64 -> d_ff -> 10) on i.i.d. Gaussian inputs with random labels, a fresh example
at every step (the paper's "random labels / random inputs / infinite data" ablation).

  lazy-neuron train --config=configs/mlp_gaussian.py --workdir=/tmp/ln/mlp_gaussian   # ~1 min
  lazy-neuron train --config=configs/mlp_gaussian.py:runlocal --workdir=/tmp/ln/mlp_smoke

Sparsity emerges although the data carries no signal at all: it comes from the optimisation.
Measured (2 CPU cores, 10 s, Adam, constant lr): lr=1e-2 (default) 50% -> 6.8% nonzero at step 1000
-> 1.0% at step 3000, with 22% dead and 48% lazy (< 1% firing) neurons; lr=1e-3: 50% -> 39%, none
dead. Loss stays near ln(10): there is nothing to learn, yet the activation map turns sparse.

Args: runlocal, steps=N, lr=LR, width=D_FF, topk=K.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

from common import base_config, shrink_for_runlocal, size_overrides  # noqa: E402

from lazy_neuron import data  # noqa: E402
from lazy_neuron.config_lib import parse_arg  # noqa: E402


def get_config(arg=None):
  arg = parse_arg(arg, runlocal=False, steps=3000, lr=1e-2, width=2048, topk=0)
  overrides = size_overrides("mlp")
  overrides["mlp_dim"] = arg.width
  c = base_config(
      model=dict(name="mlp", variant="base", topk=arg.topk or None, **overrides),
      data=data.get_data_config("gaussian", dim=64, num_classes=10),
      optimizer=dict(name="adamw", learning_rate=arg.lr, schedule="constant", warmup_steps=0,
                     weight_decay=0.0, grad_clip_norm=0.0),
      total_steps=arg.steps, batch_size=128)
  c.log_every_steps = 100
  c.eval_every_steps = 500
  c.checkpoint_every_steps = 1000
  if arg.runlocal:
    shrink_for_runlocal(c, steps=4, batch=16, warmup=0)
    c.model.mlp_dim = 128
    c.data.eval_examples = 32
  return c
