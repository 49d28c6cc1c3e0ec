"""`lazy-neuron eval --workdir=DIR [--config=...] [--config.k=v]`: evaluate a workdir's latest
checkpoint (accuracy, loss, calibration for classifiers, and activation sparsity on eval data).

Without --config the workdir's own config.json is used. Results are printed and written to
DIR/eval_<step>.json (and DIR/sparsity/step_<step>.npz); metrics.jsonl is left as training wrote it.
`evaluate(...)` is also the trainer's periodic evaluation.
"""
from __future__ import annotations

import json
import os
import sys
from typing import Any, Optional, Sequence

import jax
import ml_collections
import numpy as np
from clu import metrics as clu_metrics
from etils import epath

from lazy_neuron import checkpointing, config_lib, data, errors, fileio, flags, sparsity
from lazy_neuron import steps as steps_lib
from lazy_neuron import tasks, workdir as workdir_lib
from lazy_neuron.errors import UserError


def _batch_metrics(out: dict) -> dict:
  """One eval batch's fetched outputs -> mergeable metrics (sums in float64: exact over batches)."""
  s = {k: np.asarray(v, np.float64) for k, v in out["sums"].items()}
  average = lambda total: clu_metrics.Average(total=total, count=s["weight_sum"])
  metrics = {"loss": average(s["loss_sum"]), "accuracy": average(s["correct_sum"])}
  # ECE bins and sparsity statistics are sums of trees, which clu.metrics has no metric for.
  metrics["ece"] = {k: v for k, v in s.items() if k.startswith("ece_")}
  metrics["sparsity"] = jax.tree.map(np.asarray, out.get("sparsity") or {})
  return metrics


def _merge(a: dict, b: dict) -> dict:
  return {"loss": a["loss"].merge(b["loss"]), "accuracy": a["accuracy"].merge(b["accuracy"]),
          "ece": jax.tree.map(np.add, a["ece"], b["ece"]),
          "sparsity": jax.tree.map(np.add, a["sparsity"], b["sparsity"])}


def evaluate(steps: steps_lib.Steps, params, config, step: int,
             workdir: Optional[str]) -> dict[str, float]:
  """eval/* and sparsity/eval/* metrics of `params` on the whole eval split; with `workdir` (process
  0), the step's sparsity statistics are saved to DIR/sparsity/step_<step>.npz."""
  result, stats = evaluate_with_stats(steps, params, config)
  if stats is not None and workdir is not None and jax.process_index() == 0:
    sparsity.save_npz(workdir, step, stats)
  return result


def evaluate_with_stats(steps: steps_lib.Steps, params, config) -> tuple[dict[str, float], Any]:
  """`evaluate` without the save: (metrics, flattened sparsity statistics or None)."""
  s = steps.s
  eval_batch = config.get("eval_batch_size") or config.batch_size
  it = data.build(config.data, split="eval", batch_size=eval_batch, seed=config.seed,
                  process_index=jax.process_index(), process_count=jax.process_count())
  outs = []
  with it, steps.context():
    for batch in it:
      out = steps.eval_step(params, steps_lib.to_global(batch, s.batch_sharding))
      if steps.sync_each_step:
        jax.block_until_ready(out)
      outs.append(out)
  if not outs:
    return {}, None
  merged = [_batch_metrics(out) for out in jax.device_get(outs)]  # one sync, after the last batch
  total = merged[0]
  for m in merged[1:]:
    total = _merge(total, m)
  result = {"eval/loss": float(total["loss"].compute()),
            "eval/accuracy": float(total["accuracy"].compute())}
  if total["ece"]:
    result["eval/ece"] = tasks.ece(total["ece"])
  stats = None
  if total["sparsity"]:
    stats = sparsity.flatten_stats(total["sparsity"])
    result.update(sparsity.metrics_from_stats(stats, "eval", s.flops_info))
  return result, stats


def _config_from_workdir(workdir: str) -> ml_collections.ConfigDict:
  path = epath.Path(workdir) / "config.json"
  workdir_lib.check_paths(workdir, reads=("config.json",))
  if not path.exists():
    raise UserError(f"{workdir!r} has no config.json; pass --config=configs/<exp>.py or train first")
  old = workdir_lib.read_config_json(path)
  missing = [k for k in config_lib.REQUIRED_KEYS if k not in old]
  if missing:
    raise UserError(f"{os.fspath(path)!r} is not a lazy-neuron config (it lacks "
                    f"{', '.join(missing)}); pass --config=configs/<exp>.py")
  # JSON turns tuples into lists; the mesh and rules accept both.
  config = ml_collections.ConfigDict(old)
  config.lock()
  config_lib.validate_config(config)
  return config


def run(config, workdir: str, stream=None) -> dict[str, float]:
  """Evaluates the newest usable checkpoint of `workdir`; writes DIR/eval_<step>.json and
  DIR/sparsity/step_<step>.npz, and nothing at all when it fails."""
  stream = sys.stdout if stream is None else stream  # looked up now: tests capture sys.stdout
  # Where the results go is checked before the (long) evaluation, not after it.
  workdir_lib.check_paths(workdir, dirs=("sparsity",), reads=("checkpoints/",))
  setup = steps_lib.build_setup(config)
  ckpt = checkpointing.Checkpointer(workdir, every_steps=1, read_only=True)
  try:
    if ckpt.latest_step() is None:
      raise UserError(f"{workdir!r} has no checkpoint to evaluate; train first")
    steps = steps_lib.Steps(setup)
    abstract = checkpointing.abstract_with_shardings(setup.abstract_state, setup.state_shardings)
    with steps.context():
      # The newest usable checkpoint; unusable ones are reported and left as they are (eval only
      # reads the workdir).
      restored = ckpt.restore_latest(abstract, warn=lambda m: print(m, file=stream, flush=True))
  finally:
    ckpt.close()  # also on an error: Orbax's threads would print their shutdown noise
  if restored is None:
    raise UserError(f"{workdir!r} has no usable checkpoint (see the warnings above); train again")
  step, state = restored[0], restored[1]
  workdir_lib.check_paths(workdir, files=(f"eval_{step}.json", f"sparsity/step_{step}.npz"))
  results = evaluate(steps, state["params"], config, step, workdir)
  if jax.process_index() == 0:
    fileio.write_atomic(epath.Path(workdir) / f"eval_{step}.json",
                        json.dumps({"step": step, **results}, indent=1, sort_keys=True))
    for key in sorted(results):
      print(f"{key:<48} {results[key]:.6g}", file=stream)
    print(f"evaluated checkpoint {step} of {workdir}", file=stream, flush=True)
  return results


def main(argv: Optional[Sequence[str]] = None) -> int:
  argv = list(sys.argv if argv is None else argv)
  p = flags.parser(argv[0], __doc__.split("\n\n")[0])
  p.add_argument("--workdir", required=True, help="a training workdir (with checkpoints)")
  p.add_argument("--config", default=None,
                 help="configs/<exp>.py[:args]; default: the workdir's config.json")
  try:
    ns, overrides = flags.parse(p, argv[1:], config_overrides=True)
    if ns.config is None:
      if overrides:
        raise UserError("--config.KEY overrides need --config=configs/<exp>.py")
      config = _config_from_workdir(ns.workdir)
    else:
      config = config_lib.load_config(ns.config, overrides)
    run(config, ns.workdir)
  except UserError as e:
    return errors.report(e)
  return 0


if __name__ == "__main__":
  sys.exit(main())
