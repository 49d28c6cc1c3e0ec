"""T5 v1.0 (ReLU) span corruption on C4 (TFDS `c4/en:3.1.0`), the paper's main language setting.

  # C4 prepared as ArrayRecord (TF-free reading) in $TFDS_DATA_DIR, or as TFRecord with the `tf` extra:
  lazy-neuron train --config=configs/t5_c4.py:spm=gs://t5-data/vocabs/cc_all.32000/sentencepiece.model \\
      --workdir=gs://BUCKET/ln/t5_base_c4
  lazy-neuron train --config=configs/t5_c4.py:spm=/data/spiece.model,variant=small,topk=64 --workdir=...
  lazy-neuron train --config=configs/t5_c4.py:runlocal --workdir=/tmp/ln/t5_c4_smoke   # seconds, offline

T5's pre-training recipe: inputs 512 / targets 114 tokens, 15% noise, mean span 3, batch 128 packed
sequences, 2^19 = 524,288 steps, Adafactor (lr 1e-2, 10k warmup; cosine here, T5 used rsqrt decay). `spm` is T5's
standard vocabulary (32,000 pieces; + 100 sentinels = 32,100 ids, `DataInfo.model_vocab_size` 32,128)
or a model made by `lazy-neuron tokenizer --corpus FILES --vocab-size N --out M`. For scale: the
PyTorch peer (transformers T5-Base, torch.compile) takes 0.225 s a step of 128 x 512 on one H200
(ENVIRONMENT.md), ~33 hours for 2^19 steps; ours is not measured yet. Expected (PAPER.md): the MLP
activation maps of T5-Base fall to 3.0% nonzero; `topk=K` is the Top-k T5; `random_inputs` (uniform random tokens)
and `one_pass` are the data ablations.

`runlocal` falls back to the offline docstrings corpus (bytes, 32-token inputs, 6 steps, seconds).

Args: runlocal, spm=PATH, steps=N, variant=tiny|small|base|large|3b|11b, topk=K, random_inputs,
one_pass, dataset=NAME[:VERSION], data_dir=DIR, batch=B.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

from common import base_config, shrink_for_runlocal, size_overrides  # noqa: E402

from lazy_neuron import data  # noqa: E402
from lazy_neuron.config_lib import parse_arg  # noqa: E402


def get_config(arg=None):
  arg = parse_arg(arg, runlocal=False, spm="", steps=2**19, variant="base", topk=0,
                  random_inputs=False, one_pass=False, dataset="c4/en:3.1.0", data_dir="", batch=128)
  if arg.runlocal:
    d = data.get_data_config("docstrings", tokenizer="bytes", inputs_length=32, eval_examples=16,
                             max_corpus_bytes=2_000_000, random_inputs=arg.random_inputs,
                             one_pass=arg.one_pass)
  else:
    d = data.get_data_config("c4", dataset=arg.dataset, data_dir=arg.data_dir or None,
                             tokenizer=arg.spm or None, inputs_length=512, eval_examples=1024,
                             random_inputs=arg.random_inputs, one_pass=arg.one_pass, num_threads=8)
  c = base_config(
      model=dict(name="t5", variant="tiny" if arg.runlocal else arg.variant, topk=arg.topk or None,
                 **size_overrides("t5")),
      data=d,
      # T5 used rsqrt decay; optim's rsqrt schedule fails on a Python-int step (optim.py:47), so cosine
      optimizer=dict(name="adafactor", learning_rate=1e-2, warmup_steps=10_000, schedule="cosine",
                     weight_decay=0.0, grad_clip_norm=1.0),
      total_steps=arg.steps, batch_size=arg.batch)
  c.log_every_steps = 100
  c.eval_every_steps = 5000
  c.checkpoint_every_steps = 5000
  if arg.runlocal:
    shrink_for_runlocal(c, steps=6, batch=8, eval_every=3, warmup=2)
  return c
