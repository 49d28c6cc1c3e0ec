"""Paper reproduction: T5 v1.0 (ReLU) span corruption on the stdlib's docstrings, at one of three scales.

Used by `lazy-neuron reproduce` (lazy_neuron/reproduce/claims.py) for C1, C3, C4, C5, C7 (random
inputs), C8, C9, C10 (Top-k) and C14; runnable on its own too:

  lazy-neuron train --config=configs/paper/t5.py:scale=smoke --workdir=/tmp/ln/paper_t5

Scales (docs/reproduction.md):
  smoke  6 steps of a 2+2-layer, d_model 64 model: seconds; checks the pipeline, decides nothing.
  cpu    400 steps of the tiny T5 (d_model 128, d_ff 1024 by default, bytes, 64-token inputs);
         the settings of configs/t5_offline.py, shortened so that a claim's runs fit ~5 minutes on
         2 CPU cores (an estimate: not yet measured).
  gpu    T5-Small dimensions (d_model 512, 8 heads) for 2000 steps at batch 128 x 128 tokens
         (200 warm-up steps), sized so that the reproduction's text runs share the GPUs of one
         10-minute job (3 layers with d_ff 1024: a 10.5 ms step on one H200, `bench train`).

C1 at T5-Base size on one H200 (`recipe=...`, scale=gpu; not registered in `reproduce` yet): T5-Base
(bf16) on the Debian documentation corpus (`corpus=PATH`, default `.corpus/debian_docs.tar.gz`
in the repository: docs/data.md says how to build it), 512-token inputs, batch 128, evaluations
every 250 steps, one 10-minute job each (planned: a 1000-step AdamW run of these shapes took 333 s;
these settings are not yet timed):
  recipe=adamw      AdamW 1e-3, bytes, 100 linear warm-up steps, then constant (no decay to 0, so
                    sparsity can keep falling), 1500 steps
  recipe=t5         T5's own: Adafactor, lr 1e-2 constant for 100 steps then 1e-2 * sqrt(100 /
                    step) (`schedule="rsqrt"`: never 0), bytes, 1500 steps
  recipe=t5_spm32k  the same with a 32,000-piece sentencepiece model of the corpus (`spm=PATH`,
                    default `.corpus/debian_docs_spm32k.model`, made by `lazy-neuron tokenizer`),
                    1000 steps (more text per example and a 32k softmax: slower steps)

  lazy-neuron train --config=configs/paper/t5.py:scale=gpu,recipe=t5 --workdir=/tmp/ln/c1_t5

Args: scale=smoke|cpu|gpu, layers=L (encoder and decoder layers each; 0 = the scale's default),
width=D_FF (0 = the scale's default), topk=K (0 = dense), random_inputs (uniform random tokens),
recipe=none|adamw|t5|t5_spm32k (gpu only), corpus=PATH, spm=PATH, steps=N (0 = the recipe's).
"""
import os

from lazy_neuron import checks, data, experiment
from lazy_neuron.config_lib import parse_arg

# scale -> (variant, layers, width, steps, batch, inputs_length, eval_every, eval_examples, lr, warmup)
SCALES = {
    "smoke": ("tiny", 2, 128, 6, 8, 32, 3, 16, 3e-3, 2),
    "cpu": ("tiny", 2, 1024, 400, 32, 64, 100, 256, 3e-3, 50),
    "gpu": ("small", 6, 2048, 2_000, 128, 128, 500, 512, 3e-3, 200),
}


# recipe -> (optimizer, tokenizer, steps); C1 at T5-Base size (module docstring)
RECIPES = {
    "adamw": (dict(name="adamw", learning_rate=1e-3, warmup_steps=100, schedule="constant",
                   b2=0.98, weight_decay=0.0, grad_clip_norm=1.0), "bytes", 1500),
    "t5": (dict(name="adafactor", learning_rate=1e-2, warmup_steps=100, schedule="rsqrt",
                weight_decay=0.0, grad_clip_norm=1.0), "bytes", 1500),
    "t5_spm32k": (dict(name="adafactor", learning_rate=1e-2, warmup_steps=100, schedule="rsqrt",
                       weight_decay=0.0, grad_clip_norm=1.0), "spm", 1000),
}
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CORPUS = os.path.join(REPO, ".corpus", "debian_docs.tar.gz")
SPM = os.path.join(REPO, ".corpus", "debian_docs_spm32k.model")


def t5_base_recipe(arg):
  """T5-Base on the Debian corpus with one of RECIPES (C1, one H200 job)."""
  optimizer, tokenizer, steps = RECIPES[arg.recipe]
  steps = checks.integer("arg steps", arg.steps, min=0) or steps
  c = experiment.base_config(
      model=experiment.model("t5", variant="base", topk=arg.topk, dtype="bfloat16"),
      data=data.get_data_config("docstrings", corpus_files=arg.corpus or CORPUS,
                                tokenizer=arg.spm or SPM if tokenizer == "spm" else "bytes",
                                inputs_length=512, eval_examples=512, num_threads=8),
      optimizer=optimizer, total_steps=steps, batch_size=128, log_every_steps=50,
      eval_every_steps=250, checkpoint_every_steps=500)
  return c


def get_config(arg=None):
  arg = parse_arg(arg, scale="cpu", layers=0, width=0, topk=0, random_inputs=False,
                  recipe="none", corpus="", spm="", steps=0)
  checks.choice("arg scale", arg.scale, SCALES)
  checks.choice("arg recipe", arg.recipe, ("none", *RECIPES))
  if arg.recipe != "none":
    if arg.scale != "gpu":
      raise checks.fail("arg recipe", arg.recipe, "it is a gpu-scale run; add scale=gpu")
    return t5_base_recipe(arg)
  variant, layers, width, steps, batch, length, eval_every, eval_examples, lr, warmup = (
      SCALES[arg.scale])
  layers = checks.integer("arg layers", arg.layers, min=0) or layers
  width = checks.integer("arg width", arg.width, min=0) or width
  sizes = dict(num_encoder_layers=layers, num_decoder_layers=layers, mlp_dim=width)
  if arg.scale == "smoke":  # smaller than "tiny": the point is seconds, not a result
    sizes.update(emb_dim=64, num_heads=2, head_dim=32)
  c = experiment.base_config(
      model=experiment.model("t5", variant=variant, topk=arg.topk, **sizes),
      data=data.get_data_config("docstrings", tokenizer="bytes", inputs_length=length,
                                random_inputs=arg.random_inputs),
      optimizer=dict(name="adamw", learning_rate=lr, warmup_steps=warmup, schedule="cosine",
                     b2=0.98, weight_decay=0.0, grad_clip_norm=1.0),
      total_steps=steps, batch_size=batch, log_every_steps=min(50, eval_every),
      eval_every_steps=eval_every, checkpoint_every_steps=eval_every)
  c.data.eval_examples = eval_examples
  if arg.scale == "smoke":
    c.log_every_steps = 2
    c.data.max_corpus_bytes = 2_000_000
  return c
