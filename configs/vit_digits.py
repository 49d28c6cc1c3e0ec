"""ViT (ReLU MLP) on scikit-learn's digits, offline: a vision smoke run.

  lazy-neuron train --config=configs/vit_digits.py --workdir=/tmp/ln/vit_digits      # minutes on a CPU
  lazy-neuron train --config=configs/vit_digits.py:runlocal --workdir=/tmp/ln/vit_smoke

Expect: eval accuracy around 0.9 within a few hundred steps, while the activation maps stay near 50%
nonzero: this task is solved too fast for sparsity to develop (docs/paper.md, "What a small run
shows"; measured output in docs/experiments.md). Use it to check the vision path end to end, not to
show the phenomenon; for that use configs/t5_offline.py or configs/mlp_gaussian.py.

Args: runlocal, steps=N, topk=K, variant=tiny|S/16|B/16|L/16|H/14, image_size=S, pool=token|gap.
"""
from lazy_neuron import data, experiment
from lazy_neuron.config_lib import parse_arg


def get_config(arg=None):
  arg = parse_arg(arg, runlocal=False, steps=600, topk=0, variant="tiny", image_size=16,
                  pool="token",
                  runlocal_defaults=dict(steps=4))
  c = experiment.base_config(
      model=experiment.model("vit", variant=arg.variant, topk=arg.topk, pool=arg.pool,
                             head_bias_init=0.0),
      data=data.get_data_config("digits", image_size=arg.image_size),
      optimizer=experiment.vision_optimizer(warmup_steps=50),
      total_steps=arg.steps, batch_size=64, checkpoint_every_steps=300)
  if arg.runlocal:
    experiment.shrink_for_runlocal(c, steps=arg.steps, batch=16, depth=2, mlp_dim=256)
  return c
