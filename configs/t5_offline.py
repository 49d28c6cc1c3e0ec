"""T5 v1.0 (ReLU) span corruption on the Python standard library's docstrings, offline.

The main job: a tiny T5 (2+2 layers, d_model 128, d_ff 1024) on a 2-core CPU in about 5 minutes.
The MLP activation maps start at ~50% nonzero in every layer and the mean over layers falls
to <= 30% — the lazy neuron phenomenon, from scratch, on real text.

  lazy-neuron train --config=configs/t5_offline.py --workdir=/tmp/ln/t5_offline
  lazy-neuron train --config=configs/t5_offline.py:runlocal --workdir=/tmp/ln/t5_smoke  # seconds

Args: runlocal (a few steps, for tests), steps=N, topk=K (Top-k T5: keep the K largest
activations per token), tokenizer=spm|bytes, variant=tiny|small|base|large|3b|11b.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

from common import base_config, size_overrides  # noqa: E402

from lazy_neuron import data  # noqa: E402
from lazy_neuron.config_lib import parse_arg  # noqa: E402


def get_config(arg=None):
  arg = parse_arg(arg, runlocal=False, steps=1000, topk=0, tokenizer="spm", variant="tiny")
  c = base_config(
      model=dict(name="t5", variant=arg.variant, topk=arg.topk or None, **size_overrides("t5")),
      data=data.get_data_config("docstrings", tokenizer=arg.tokenizer, inputs_length=128),
      optimizer=dict(name="adamw", learning_rate=3e-3, warmup_steps=100, schedule="cosine",
                     b2=0.98, weight_decay=0.0, grad_clip_norm=1.0),
      total_steps=arg.steps, batch_size=32)
  c.log_every_steps = 50
  c.eval_every_steps = 250
  c.checkpoint_every_steps = 500
  c.data.eval_examples = 256
  if arg.runlocal:
    c.total_steps = 6
    c.batch_size = c.eval_batch_size = 8
    c.log_every_steps = 2
    c.eval_every_steps = 3
    c.checkpoint_every_steps = 3
    c.optimizer.warmup_steps = 2
    c.data.inputs_length = 32
    c.data.eval_examples = 16
    c.data.max_corpus_bytes = 2_000_000
  return c
