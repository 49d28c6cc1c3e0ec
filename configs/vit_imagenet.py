"""ViT (ReLU MLP) on ImageNet-1k (TFDS `imagenet2012`), the paper's vision setting, with its ablations.

  tfds build imagenet2012 --file_format=array_record --data_dir=$TFDS_DATA_DIR --manual_dir=DIR_WITH_TARS
  lazy-neuron train --config=configs/vit_imagenet.py --workdir=gs://BUCKET/ln/vit_b16_i1k   # TPU pod / GPUs
  lazy-neuron train --config=configs/vit_imagenet.py:variant=S/16,label_noise=0.5 --workdir=...
  lazy-neuron train --config=configs/vit_imagenet.py:runlocal --workdir=/tmp/ln/vit_i1k_smoke  # seconds, offline

The full run is big_vision's ImageNet-1k-from-scratch recipe without mixup/RandAugment (inception
crop + flip, batch 1024, 90 epochs = 112,590 steps, AdamW lr 1e-3, weight decay 1e-4, 10k warmup,
cosine): 115M images, about half a day for ViT-B/16 on one recent GPU (measured step rate and input
rate, with their hardware: docs/experiments.md and docs/data.md). The paper reports 6.3% nonzero
MLP activations for a ViT-B/16 trained on ImageNet-21k (docs/paper.md); `label_noise=p`,
`random_labels`, `random_inputs` and `one_pass` are its data ablations, `topk=K` its Top-k ViT.
The input pipeline runs one grain worker process per usable core by default (`workers=-1`) and
ships uint8 pixels that the model normalises on the device (`data.image_dtype="uint8"`), so that it
keeps up with a B/16 step; check that on your machine with `lazy-neuron bench input` and
`lazy-neuron bench train --input=pipeline`.

`runlocal` trains 4 steps of a 2-layer tiny ViT on scikit-learn's digits (offline, seconds) with the
same data switches, so every argument is exercised without ImageNet.

Args: runlocal, steps=N, variant=S/16|B/16|L/16|H/14|tiny, topk=K, label_noise=P, random_labels,
random_inputs, one_pass, dataset=NAME (any TFDS image dataset, e.g. imagenet2012, cifar100),
data_dir=DIR, batch=B, workers=W (grain worker processes; -1: one per usable core, 0: 8 threads in
the training process), pool=token|gap.
"""
from lazy_neuron import data, experiment
from lazy_neuron.config_lib import parse_arg

IMAGENET_TRAIN = 1_281_167


def get_config(arg=None):
  arg = parse_arg(arg, runlocal=False, steps=0, variant="B/16", topk=0, label_noise=0.0,
                  random_labels=False, random_inputs=False, one_pass=False, dataset="imagenet2012",
                  data_dir="", batch=1024, workers=-1, pool="token",
                  runlocal_defaults=dict(steps=4, variant="tiny", batch=16),
                  runlocal_excludes=("dataset", "data_dir", "workers"))
  switches = dict(label_noise=arg.label_noise, random_labels=arg.random_labels,
                  random_inputs=arg.random_inputs, one_pass=arg.one_pass)
  if arg.runlocal:
    d = data.get_data_config("digits", image_size=16, channels=3, **switches)
  else:
    d = data.get_data_config(
        "tfds", dataset=arg.dataset, data_dir=arg.data_dir or None, image_size=224,
        train_split="train", eval_split="validation" if arg.dataset == "imagenet2012" else "test",
        augment="inception_crop", num_workers=arg.workers, num_threads=0 if arg.workers else 8,
        prefetch=max(4, 2 * arg.workers), image_dtype="uint8", **switches)
  steps = arg.steps if arg.runlocal else arg.steps or 90 * IMAGENET_TRAIN // arg.batch
  c = experiment.base_config(
      model=experiment.model("vit", variant=arg.variant,
                             topk=arg.topk, pool=arg.pool, head_bias_init=0.0),
      data=d,
      optimizer=experiment.vision_optimizer(warmup_steps=10_000),
      total_steps=steps, batch_size=arg.batch, log_every_steps=100, eval_every_steps=5000,
      checkpoint_every_steps=2000)
  if arg.runlocal:
    experiment.shrink_for_runlocal(c, steps=steps, batch=arg.batch, depth=2, mlp_dim=256)
  return c
