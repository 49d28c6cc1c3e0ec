"""2-layer ReLU MLP (64 -> d_ff -> 10) on i.i.d. Gaussian inputs with random labels, a fresh example
at every step (the paper's "random labels / random inputs / infinite data" ablation).

  lazy-neuron train --config=configs/mlp_gaussian.py --workdir=/tmp/ln/mlp_gaussian   # about a minute on a CPU
  lazy-neuron train --config=configs/mlp_gaussian.py:runlocal --workdir=/tmp/ln/mlp_smoke

Sparsity emerges although the data carries no signal at all: it comes from the optimisation. Expect,
at the default lr=1e-2 (Adam, constant lr), the mean % nonzero to fall from 50% to a few percent,
with many dead and lazy neurons; at lr=1e-3 it falls much less and no neuron dies. The loss stays
near ln(10): there is nothing to learn, yet the activation map turns sparse. Measured output:
docs/experiments.md.

Args: runlocal, steps=N, lr=LR, width=D_FF, topk=K.
"""
from lazy_neuron import data, experiment
from lazy_neuron.config_lib import parse_arg


def get_config(arg=None):
  arg = parse_arg(arg, runlocal=False, steps=3000, lr=1e-2, width=2048, topk=0,
                  runlocal_defaults=dict(steps=4, width=128))
  c = experiment.base_config(
      model=experiment.model("mlp", variant="base", topk=arg.topk, mlp_dim=arg.width),
      data=data.get_data_config("gaussian", dim=64, num_classes=10),
      optimizer=dict(name="adamw", learning_rate=arg.lr, schedule="constant", warmup_steps=0,
                     weight_decay=0.0, grad_clip_norm=0.0),
      total_steps=arg.steps, batch_size=128, log_every_steps=100, eval_every_steps=500,
      checkpoint_every_steps=1000)
  if arg.runlocal:
    experiment.shrink_for_runlocal(c, steps=arg.steps, batch=16, warmup=0)
    c.data.eval_examples = 32
  return c
