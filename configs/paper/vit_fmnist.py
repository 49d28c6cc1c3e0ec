"""Paper reproduction: a ReLU ViT on Fashion-MNIST, for C2 (vision sparsity), C11 (label noise),
C12 (corruptions) and C13 (calibration); dense or Top-k.

  lazy-neuron train --config=configs/paper/vit_fmnist.py:scale=smoke --workdir=/tmp/ln/vit_fmnist
  lazy-neuron train --config=configs/paper/vit_fmnist.py:scale=cpu,topk=64,label_noise=0.4 --workdir=W

Scales (28x28 images):
  smoke  6 steps of a 2-block ViT, width 64, 7x7 patches (seconds);
  cpu    1000 steps at batch 64 of a 4-block ViT, width 64, MLP 512, 7x7 patches (16 tokens + a
         class token; about 11 steps/s on a loaded 2-core CPU, ~1.5 minutes a run): the trend, far
         from converged; evaluated on the first 2000 test images;
  gpu    5000 steps at batch 256 of a 6-block ViT, width 384, MLP 1536, 4x4 patches (49 tokens),
         on the whole test split; a 9.1 ms step on one H200 (`bench train`, fixed batch; 10.8 ms fed
         by the pipeline, 14.5 ms in `train`), so that the reproduction's ten vision runs share the
         GPUs of one 10-minute job.
Fashion-MNIST comes from TFDS or from Debian's dataset-fashion-mnist (docs/vision.md).

Args: scale=smoke|cpu|gpu, topk=K (0 = dense), label_noise=P (symmetric, train labels only),
eval_examples=N (0 = the scale's: smoke 64, cpu 2000, gpu the whole 10k test split).
"""
import ml_collections

from lazy_neuron import checks, data, experiment
from lazy_neuron.config_lib import parse_arg

# scale -> (steps, batch, eval_every, eval_examples, (width, depth, mlp_dim, heads, patch))
SCALES = {"smoke": (6, 16, 3, 64, (64, 2, 128, 2, 7)),
          "cpu": (1000, 64, 200, 2000, (64, 4, 512, 4, 7)),
          "gpu": (5_000, 256, 1000, None, (384, 6, 1536, 6, 4))}

# scale -> the corrupted evaluation of C12/C13: ImageNet-C's 15 corruptions x 5 severities, on the
# first `examples` test images, corrupted by `workers` grain processes (-1: one per core; the
# corruptions run on the host's CPU, ~0.2 s per 28x28 image for all 15 x 5)
CORRUPTION_EVAL = {"smoke": dict(spec="gaussian_noise,contrast:1-5", examples=16, workers=0),
                   "cpu": dict(spec="common", examples=256, workers=0),
                   "gpu": dict(spec="common", examples=2000, workers=-1)}


def get_config(arg=None):
  arg = parse_arg(arg, scale="cpu", topk=0, label_noise=0.0, eval_examples=0)
  checks.choice("arg scale", arg.scale, SCALES)
  steps, batch, eval_every, eval_examples, sizes = SCALES[arg.scale]
  eval_examples = checks.integer("arg eval_examples", arg.eval_examples, min=0) or eval_examples
  c = experiment.base_config(
      model=experiment.model("vit", variant="tiny", topk=arg.topk, pool="token",
                             head_bias_init=0.0),
      data=data.get_data_config("fashion_mnist", label_noise=float(arg.label_noise),
                                eval_examples=eval_examples),
      optimizer=experiment.vision_optimizer(warmup_steps=min(100, steps // 3)),
      total_steps=steps, batch_size=batch, log_every_steps=min(50, eval_every),
      eval_every_steps=eval_every, checkpoint_every_steps=steps)
  c.model.update(dict(zip(("width", "depth", "mlp_dim", "num_heads", "patch_size"), sizes)))
  # Read by `lazy-neuron reproduce` (C12, C13): the corruptions (lazy_neuron/corruptions.py) and the
  # number of test images its corrupted evaluation of the final checkpoint uses.
  c.corruption_eval = ml_collections.ConfigDict(CORRUPTION_EVAL[arg.scale])
  if arg.scale == "smoke":
    c.log_every_steps = 2
  return c
