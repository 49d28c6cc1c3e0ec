"""Paper reproduction: a 2-layer ReLU MLP, on Gaussian inputs with random labels or on digits.

Used by `lazy-neuron reproduce` for C6 (digits: a 2-layer MLP with real labels) and C7 (gaussian:
random inputs, random labels and a fresh example at every step, i.e. never-repeated data).

  lazy-neuron train --config=configs/paper/mlp.py:scale=smoke,data=gaussian --workdir=/tmp/ln/paper_mlp

Scales: smoke 6 steps, width 128 (seconds); cpu 3000 steps, width 2048, batch 128, Adam lr 1e-2
constant (configs/mlp_gaussian.py's settings, about a minute on a CPU); gpu 3000 steps, width 8192,
batch 1024 (a 0.2 ms step on one H200: the input pipeline sets the pace).

Args: scale=smoke|cpu|gpu, data=gaussian|digits, width=D_FF (0 = the scale's default), lr=LR.
"""
from lazy_neuron import checks, data, experiment
from lazy_neuron.config_lib import parse_arg

# scale -> (steps, batch, width, eval_every, eval_examples)
SCALES = {
    "smoke": (6, 16, 128, 3, 32),
    "cpu": (3000, 128, 2048, 500, 1024),
    "gpu": (3_000, 1024, 8192, 1000, 4096),
}


def get_config(arg=None):
  arg = parse_arg(arg, scale="cpu", data="gaussian", width=0, lr=1e-2)
  checks.choice("arg scale", arg.scale, SCALES)
  checks.choice("arg data", arg.data, ("gaussian", "digits"))
  steps, batch, width, eval_every, eval_examples = SCALES[arg.scale]
  width = checks.integer("arg width", arg.width, min=0) or width
  if arg.data == "gaussian":
    data_config = data.get_data_config("gaussian", dim=64, num_classes=10,
                                       eval_examples=eval_examples)
  else:  # the digits eval split is small and fixed: its own size, not eval_examples
    data_config = data.get_data_config("digits", image_size=8)
  c = experiment.base_config(
      model=experiment.model("mlp", variant="base", topk=0, mlp_dim=width),
      data=data_config,
      optimizer=dict(name="adamw", learning_rate=arg.lr, schedule="constant", warmup_steps=0,
                     weight_decay=0.0, grad_clip_norm=0.0),
      total_steps=steps, batch_size=batch, log_every_steps=min(100, eval_every),
      eval_every_steps=eval_every, checkpoint_every_steps=eval_every)
  if arg.scale == "smoke":
    c.log_every_steps = 2
  return c
