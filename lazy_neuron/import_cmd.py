"""`lazy-neuron import --src=PATH --workdir=DIR [--config=configs/<exp>.py[:args]] [--config.k=v]`:
a pretrained checkpoint (Hugging Face T5 / ViT, T5X, timm ViT, big_vision ViT .npz) -> a workdir.

Writes DIR/config.json (the config's data, optimizer and mesh with the checkpoint's model),
DIR/config.py (a config file returning it, for `lazy-neuron train --config=DIR/config.py`),
DIR/sharding_plan.txt, DIR/pretrained.json (where it came from), the checkpoint at step 0 and,
unless --no-eval, the step-0 evaluation (metrics.jsonl, sparsity/step_0.npz) that
`lazy-neuron report` plots. Then:

  lazy-neuron eval --workdir=DIR                     # sparsity of the pretrained model
  lazy-neuron train --config=DIR/config.py --workdir=DIR --config.total_steps=N   # fine-tune
  lazy-neuron report --workdir=DIR --out=DIR/report

Every tensor is read from disk straight into its shard on the config's mesh
(`jax.make_array_from_callback`): no host buffer or device holds the whole model. Fine-tuning with
Top-k: import into its own workdir with --config.model.topk=K. A ViT whose classes differ from the
data's gets a zero-initialised head for the data's classes (the MLP activations, and so the
sparsity, do not depend on the head). Every check runs before anything is written.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath

from lazy_neuron import checkpointing, checks, config_lib, data, errors, evaluate, fileio, flags
from lazy_neuron import metrics, partitioning, pretrained, sparsity
from lazy_neuron import steps as steps_lib
from lazy_neuron import workdir as workdir_lib
from lazy_neuron.errors import UserError
from lazy_neuron.pretrained import tensors

CONFIG_PY = '''"""The config `lazy-neuron import` wrote (config.json next to this file), for
`lazy-neuron train --config=<this file> --workdir=<this folder>`."""
import json
import os

import ml_collections


def get_config(arg=None):
  with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "config.json")) as f:
    return ml_collections.ConfigDict(json.load(f))
'''
IMPORT_FILES = workdir_lib.TRAIN_FILES + ("config.py", "pretrained.json", "eval_0.json")


def build_config(conv, spec: Optional[str], overrides: Sequence[str]):
  """--config (or the default for the checkpoint's kind) with the checkpoint's model block, then
  the --config.k=v overrides; validated."""
  config = pretrained.default_config(conv) if spec is None else config_lib.load_config_file(spec)
  pretrained.apply_model(config, conv)
  config_lib.apply_overrides(config, overrides)
  config_lib.validate_config(config)
  info = data.info(config.data)
  if conv.task == "seq2seq":
    if info.task not in ("seq2seq", "span_corruption"):
      raise UserError(f"the checkpoint is a T5 (seq2seq) model, but data.name={config.data.name!r}"
                      f" gives {info.task} data; use a text config (e.g. configs/t5_c4.py)")
    if info.vocab_size > conv.source_vocab_size:
      raise checks.fail("data vocabulary", info.vocab_size, f"the checkpoint's vocabulary has "
                        f"{conv.source_vocab_size} ids; use its tokenizer (or one as small)")
  else:
    if info.task != "classification":
      raise UserError(f"the checkpoint is a ViT classifier, but data.name={config.data.name!r} "
                      f"gives {info.task} data; use an image config")
    want = (conv.image_size, conv.image_size, conv.channels)
    if tuple(info.image_shape) != want:
      raise UserError(f"data image shape {tuple(info.image_shape)} does not fit the checkpoint's "
                      f"{want} images (its position embeddings); use --config.data.image_size="
                      f"{conv.image_size} (and {conv.channels} channels)")
  return config, info


def _replace_head(conv, num_classes: int) -> bool:
  """A zero head for the data's classes (big_vision's fine-tuning convention)."""
  if conv.task != "classification" or conv.num_classes == num_classes:
    return False
  d = conv.model["width"]
  conv.leaves["head/kernel"] = tensors.zeros((d, num_classes), "new head")
  conv.leaves["head/bias"] = tensors.zeros((num_classes,), "new head")
  return True


def run(src: str, workdir: str, spec: Optional[str] = None, overrides: Sequence[str] = (),
        do_eval: bool = True, stream=None) -> dict:
  stream = sys.stdout if stream is None else stream
  conv = pretrained.convert(src)
  config, info = build_config(conv, spec, overrides)
  workdir_lib.check_paths(workdir, files=IMPORT_FILES + ("sparsity/step_0.npz",),
                          dirs=workdir_lib.TRAIN_DIRS, create=True)
  wd = epath.Path(workdir)
  if (wd / "checkpoints").exists() or (wd / "config.json").exists():
    raise UserError(f"--workdir={workdir!r} already holds a run; import into a new --workdir")
  new_head = _replace_head(conv, info.num_classes) if conv.task == "classification" else False
  setup = steps_lib.build_setup(config, info=info)
  steps = steps_lib.Steps(setup)
  with steps.context():
    params = tensors.materialize(conv.leaves, setup.abstract_state["params"],
                                 setup.state_shardings["params"], setup.model, src)
    opt_state = jax.jit(setup.tx.init, out_shardings=setup.state_shardings["opt_state"])(params)
    state = {"step": jax.device_put(jnp.zeros((), jnp.int32), setup.state_shardings["step"]),
             "params": params, "opt_state": opt_state}
  values, stats = (evaluate.evaluate_with_stats(steps, params, config) if do_eval
                   else ({}, None))
  it = data.build(config.data, split="train", batch_size=config.batch_size, seed=config.seed,
                  process_index=jax.process_index(), process_count=jax.process_count())
  with it:
    data_state = it.get_state()
  # ---------------------------------------------------------------- everything checked: write
  is_main = jax.process_index() == 0
  plan = partitioning.format_plan(
      *partitioning.sharding_plan(params, setup.state_shardings["params"]), setup.mesh,
      setup.rules) + "\n"
  source = {"src": os.path.abspath(src), "kind": conv.kind, "new_head": new_head,
            "model": dict(conv.model)}
  if is_main:
    wd.mkdir(parents=True, exist_ok=True)
    fileio.write_atomic(wd / "config.json", config_lib.to_json(config))
    fileio.write_atomic(wd / "config.py", CONFIG_PY)
    fileio.write_atomic(wd / "sharding_plan.txt", plan)
    fileio.write_atomic(wd / "pretrained.json", json.dumps(source, indent=1, sort_keys=True))
  ckpt = checkpointing.Checkpointer(workdir, every_steps=1)
  try:
    ckpt.save(0, state, data_state, steps.zero_window(), force=True)
  finally:
    ckpt.close()
  if is_main and values:
    writers = metrics.make_writers(workdir, config.get("tensorboard", True))
    writers[0].resume(-1)
    for w in writers:
      w.write(0, values)
    sparsity.save_npz(workdir, 0, stats)
    evaluate.write_results(wd / "eval_0.json", 0, values, stream,
                           lambda key: "/mean/" in key or key.startswith("eval/"))
  if is_main:
    head = " with a new zero head for the data's classes" if new_head else ""
    print(f"imported {conv.kind} {src} ({config.model.name}, "
          f"{sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params)):,} parameters){head} "
          f"into {workdir}", file=stream, flush=True)
  return values


def _parser(prog: str) -> argparse.ArgumentParser:
  p = flags.parser(prog, __doc__.split("\n\n")[0])
  p.add_argument("--src", required=True, help="checkpoint folder or .npz")
  p.add_argument("--config", default=None,
                 help="configs/<exp>.py[:args] for data, optimizer and mesh; default: offline "
                      "docstrings (T5) or digits (ViT)")
  p.add_argument("--workdir", required=True, help="a new workdir")
  p.add_argument("--eval", action=argparse.BooleanOptionalAction, default=True,
                 help="evaluate step 0 (metrics.jsonl for `lazy-neuron report`)")
  return p


def main(argv: Optional[Sequence[str]] = None) -> int:
  argv = list(sys.argv if argv is None else argv)
  try:
    ns, overrides = flags.parse(_parser(argv[0]), argv[1:], config_overrides=True)
    checks.string("--src", ns.src)
    checks.string("--workdir", ns.workdir)
    run(ns.src, ns.workdir, ns.config, overrides, ns.eval)
  except UserError as e:
    return errors.report(e)
  return 0


if __name__ == "__main__":
  sys.exit(main())
