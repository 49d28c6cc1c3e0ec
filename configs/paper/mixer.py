"""Paper reproduction: MLP-Mixer (ReLU) on scikit-learn's digits, for C6 (other architectures).

  lazy-neuron train --config=configs/paper/mixer.py:scale=smoke --workdir=/tmp/ln/paper_mixer

Scales: smoke 6 steps of a 2-block tiny Mixer (seconds); cpu 600 steps of the tiny Mixer
(configs/mixer_digits.py's settings); gpu 20k steps of the tiny Mixer at batch 256 (planned ~10
minutes on an H200; not yet measured). On digits the maps may stay near 50% (docs/paper.md): the
verdict then says so; ImageNet is the vision issue's business.

Args: scale=smoke|cpu|gpu.
"""
from lazy_neuron import checks, data, experiment
from lazy_neuron.config_lib import parse_arg

# scale -> (steps, batch, eval_every)
SCALES = {"smoke": (6, 16, 3), "cpu": (600, 64, 100), "gpu": (20_000, 256, 1000)}


def get_config(arg=None):
  arg = parse_arg(arg, scale="cpu")
  checks.choice("arg scale", arg.scale, SCALES)
  steps, batch, eval_every = SCALES[arg.scale]
  c = experiment.base_config(
      model=experiment.model("mixer", variant="tiny", topk=0),
      data=data.get_data_config("digits", image_size=16),
      optimizer=experiment.vision_optimizer(warmup_steps=min(50, steps // 3)),
      total_steps=steps, batch_size=batch, log_every_steps=min(50, eval_every),
      eval_every_steps=eval_every, checkpoint_every_steps=eval_every)
  if arg.scale == "smoke":
    c.model.depth = 2
    c.log_every_steps = 2
  return c
