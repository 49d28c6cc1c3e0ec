"""T5 v1.0 (ReLU) span corruption on C4 (TFDS `c4/en:3.1.0`), the paper's main language setting.

  # C4 prepared as ArrayRecord (TF-free reading) in $TFDS_DATA_DIR, or as TFRecord with the `tf` extra:
  lazy-neuron train --config=configs/t5_c4.py:spm=gs://t5-data/vocabs/cc_all.32000/sentencepiece.model \\
      --workdir=gs://BUCKET/ln/t5_base_c4
  lazy-neuron train --config=configs/t5_c4.py:spm=/data/spiece.model,variant=small,topk=64 --workdir=...
  lazy-neuron train --config=configs/t5_c4.py:runlocal --workdir=/tmp/ln/t5_c4_smoke   # seconds, offline

T5's pre-training recipe: inputs 512 / targets 114 tokens, 15% noise, mean span 3, batch 128 packed
sequences, 2^19 = 524,288 steps, Adafactor with T5's inverse-square-root schedule (`schedule="rsqrt"`:
lr 1e-2 held constant for the first 10k steps, then 1e-2 * sqrt(10k / step); this config used
cosine decay until the rsqrt schedule was fixed to accept integer steps). `spm` is T5's
standard vocabulary (32,000 pieces; + 100 sentinels = 32,100 ids, `DataInfo.model_vocab_size` 32,128)
or a model made by `lazy-neuron tokenizer --corpus FILES --vocab-size N --out M`. The full run is
days on one GPU (a PyTorch reference step time is in docs/experiments.md). Expected, from the paper
(docs/paper.md): the MLP activation maps of T5-Base fall to 3.0% nonzero; `topk=K` is the
Top-k T5; `random_inputs` (uniform random tokens) and `one_pass` are the data ablations.

`runlocal` falls back to the offline docstrings corpus (bytes, or `spm`'s model if given; 32-token
inputs, 6 steps of batch 8 of a tiny T5, seconds); `steps`, `variant`, `batch` given with it win.

Args: runlocal, spm=PATH, steps=N, variant=tiny|small|base|large|3b|11b, topk=K, random_inputs,
one_pass, dataset=NAME[:VERSION], data_dir=DIR, batch=B.
"""
from lazy_neuron import data, experiment
from lazy_neuron.config_lib import parse_arg


def get_config(arg=None):
  arg = parse_arg(arg, runlocal=False, spm="", steps=2**19, variant="base", topk=0,
                  random_inputs=False, one_pass=False, dataset="c4/en:3.1.0", data_dir="", batch=128,
                  runlocal_defaults=dict(steps=6, variant="tiny", batch=8),
                  runlocal_excludes=("dataset", "data_dir"))
  if arg.runlocal:
    d = data.get_data_config("docstrings", tokenizer=arg.spm or "bytes", inputs_length=32,
                             eval_examples=16, max_corpus_bytes=2_000_000,
                             random_inputs=arg.random_inputs,
                             one_pass=arg.one_pass)
  else:
    d = data.get_data_config("c4", dataset=arg.dataset, data_dir=arg.data_dir or None,
                             tokenizer=arg.spm or None, inputs_length=512, eval_examples=1024,
                             random_inputs=arg.random_inputs, one_pass=arg.one_pass, num_threads=8)
  c = experiment.base_config(
      model=experiment.model("t5", variant=arg.variant, topk=arg.topk),
      data=d,
      optimizer=dict(name="adafactor", learning_rate=1e-2, warmup_steps=10_000, schedule="rsqrt",
                     weight_decay=0.0, grad_clip_norm=1.0),
      total_steps=arg.steps, batch_size=arg.batch, log_every_steps=100, eval_every_steps=5000,
      checkpoint_every_steps=5000)
  if arg.runlocal:
    experiment.shrink_for_runlocal(c, steps=arg.steps, batch=arg.batch, eval_every=3, warmup=2)
  return c
