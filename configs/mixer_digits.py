"""MLP-Mixer (ReLU) on scikit-learn's digits, offline: token-mixing and channel-mixing MLPs measured.

  lazy-neuron train --config=configs/mixer_digits.py --workdir=/tmp/ln/mixer_digits
  lazy-neuron train --config=configs/mixer_digits.py:runlocal --workdir=/tmp/ln/mixer_smoke

Expect: eval accuracy around 0.9 in a few hundred steps; like the ViT on this easy task, the maps
stay near 50% nonzero (docs/experiments.md). Metric layers: mixer/token_NN and mixer/channel_NN.

Args: runlocal, steps=N, topk=K, variant=tiny|S/16|B/16|L/16, image_size=S.
"""
from lazy_neuron import data, experiment
from lazy_neuron.config_lib import parse_arg


def get_config(arg=None):
  arg = parse_arg(arg, runlocal=False, steps=600, topk=0, variant="tiny", image_size=16,
                  runlocal_defaults=dict(steps=4))
  c = experiment.base_config(
      model=experiment.model("mixer", variant=arg.variant, topk=arg.topk),
      data=data.get_data_config("digits", image_size=arg.image_size),
      optimizer=experiment.vision_optimizer(warmup_steps=50),
      total_steps=arg.steps, batch_size=64, checkpoint_every_steps=300)
  if arg.runlocal:
    experiment.shrink_for_runlocal(c, steps=arg.steps, batch=16, depth=2)
  return c
