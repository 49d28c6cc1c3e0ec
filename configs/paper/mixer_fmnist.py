"""Paper reproduction: a ReLU MLP-Mixer on Fashion-MNIST, for C6 (the Mixer's token-mixing and
channel-mixing MLPs both sparsify).

  lazy-neuron train --config=configs/paper/mixer_fmnist.py:scale=smoke --workdir=/tmp/ln/mixer_fmnist

Scales (28x28 images; metric layers mixer/token_NN, mixer/channel_NN):
  smoke  6 steps of a 2-block Mixer, 7x7 patches (seconds);
  cpu    1000 steps at batch 64 of a 4-block Mixer, width 64, token MLP 64, channel MLP 512, 7x7
         patches (16 tokens), evaluated on the first 2000 test images;
  gpu    5000 steps at batch 256 of an 8-block Mixer, width 256, token MLP 256, channel MLP 1024,
         4x4 patches (49 tokens), on the whole test split; a 7.0 ms step on one H200 (`bench train`,
         fixed batch), so that the reproduction's runs share the GPUs of one 10-minute job.

Args: scale=smoke|cpu|gpu, topk=K (0 = dense).
"""
from lazy_neuron import checks, data, experiment
from lazy_neuron.config_lib import parse_arg

# scale -> (steps, batch, eval_every, eval_examples, model sizes)
SCALES = {"smoke": (6, 16, 3, 64, dict(depth=2, width=64, patch_size=7)),
          "cpu": (1000, 64, 200, 2000, dict(width=64, patch_size=7)),
          "gpu": (5_000, 256, 1000, None, dict(width=256, depth=8, tokens_mlp_dim=256,
                                                channels_mlp_dim=1024, patch_size=4))}


def get_config(arg=None):
  arg = parse_arg(arg, scale="cpu", topk=0)
  checks.choice("arg scale", arg.scale, SCALES)
  steps, batch, eval_every, eval_examples, sizes = SCALES[arg.scale]
  c = experiment.base_config(
      model=experiment.model("mixer", variant="tiny", topk=arg.topk, **sizes),
      data=data.get_data_config("fashion_mnist", eval_examples=eval_examples),
      optimizer=experiment.vision_optimizer(warmup_steps=min(100, steps // 3)),
      total_steps=steps, batch_size=batch, log_every_steps=min(50, eval_every),
      eval_every_steps=eval_every, checkpoint_every_steps=steps)
  if arg.scale == "smoke":
    c.log_every_steps = 2
  return c
