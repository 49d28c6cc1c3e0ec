"""`lazy-neuron eval --workdir=DIR [--config=...] [--config.k=v] [--corruptions=SPEC]`: evaluate a
workdir's latest checkpoint (accuracy, loss, calibration for classifiers, and activation sparsity on
eval data).

Without --config the workdir's own config.json is used. Results are printed and written to
DIR/eval_<step>.json (and DIR/sparsity/step_<step>.npz); metrics.jsonl is left as training wrote it.
`evaluate(...)` is also the trainer's periodic evaluation.

`--corruptions=all|common|extra|NAME[,NAME...][:SEV|:LO-HI]` (image classifiers) evaluates on the
clean eval split and on it corrupted on the fly (lazy_neuron/corruptions.py: ImageNet-C's
corruptions, severities 1..5, deterministic per example) and writes, instead of eval_<step>.json and
the sparsity file, DIR/eval_corrupted_<step>.json: the clean metrics,
`eval_corrupted/<name>/<severity>/{accuracy,ece,nll,nonzero_frac}`, their means over corruptions per
severity (`eval_corrupted/mean/<severity>/...`) and over every corrupted pair
(`eval_corrupted/mean/...`), and `reliability`: the 15 confidence bins (count, confidence sum, correct
sum) of the clean and of every corrupted evaluation, for reliability diagrams.
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
  result, stats, _ = _evaluate(steps, params, config)
  return result, stats


def _evaluate(steps: steps_lib.Steps, params, config, eval_transform=None):
  """(metrics, sparsity statistics or None, ECE bin sums or {}) on the eval split, its batches
  passed through `eval_transform` (see `data.build`) when given."""
  with _eval_iterator(config, eval_transform=eval_transform) as it:
    outs = list(_eval_outputs(steps, params, it))
  return _summary(steps, jax.device_get(outs))  # one sync, after the last batch


def _evaluate_each(steps: steps_lib.Steps, params, config, transforms) -> list:
  """`_evaluate`'s triple for each of `transforms` (None: the clean eval split), all read through
  ONE pipeline (`data.build(eval_transforms=...)`: one pool of threads / worker processes), each
  pass's outputs fetched when its last batch is in."""
  results, outs = [], []
  with _eval_iterator(config, eval_transforms=transforms) as it:
    per_pass = len(it) // len(transforms)
    for out in _eval_outputs(steps, params, it):
      outs.append(out)
      if len(outs) == per_pass:
        results.append(_summary(steps, jax.device_get(outs)))
        outs = []
  return results


def _eval_iterator(config, **transforms) -> data.DataIterator:
  return data.build(config.data, split="eval", batch_size=config.get("eval_batch_size")
                    or config.batch_size, seed=config.seed, process_index=jax.process_index(),
                    process_count=jax.process_count(), **transforms)


def _eval_outputs(steps: steps_lib.Steps, params, it):
  """The eval step's (device) outputs of every batch of `it`, in order."""
  with steps.context():
    for batch in it:
      out = steps.eval_step(params, steps_lib.to_global(batch, steps.s.batch_sharding))
      if steps.sync_each_step:
        jax.block_until_ready(out)
      yield out


def _summary(steps: steps_lib.Steps, outs: list):
  """The fetched outputs of one pass over the eval split -> `_evaluate`'s triple."""
  if not outs:
    return {}, None, {}
  merged = [_batch_metrics(out) for out in outs]
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
    result.update(sparsity.metrics_from_stats(stats, "eval", steps.s.flops_info))
  return result, stats, total["ece"]


# ================================================================================================
# Corrupted inputs
# ================================================================================================
IMAGE_SOURCES = ("digits", "fashion_mnist", "tfds")
NONZERO = "sparsity/eval/mean/nonzero_frac"


def check_corruptible(config, workdir: str) -> None:
  """UserError unless `config` is an image classifier (corruptions act on images)."""
  name = config.data.get("name")
  if name not in IMAGE_SOURCES:
    raise UserError(f"--corruptions needs an image classifier, but {workdir!r} trains on "
                    f"data.name={name!r}; corruptions apply to data.name one of "
                    f"{', '.join(IMAGE_SOURCES)}")


def _bins(ece_sums: dict) -> dict:
  return {k[len("ece_"):]: np.asarray(v, np.float64).round(6).tolist() for k, v in ece_sums.items()}


def evaluate_corrupted(steps: steps_lib.Steps, params, config, plan) -> dict:
  """Clean and corrupted evaluation of `params` for `plan` [(corruption, severity)]: the metrics
  described in the module doc, plus "reliability" (the ECE bins of each evaluation)."""
  from lazy_neuron import corruptions

  out, reliability = {}, {}
  # One pipeline for the clean pass and every (corruption, severity) pass: starting one per pass
  # would start its threads or worker processes again each time.
  transforms = [None] + [corruptions.batch_transform(name, severity) for name, severity in plan]
  (clean, _, bins), *passes = _evaluate_each(steps, params, config, transforms)
  out.update(clean)
  reliability["clean"] = _bins(bins)
  per_severity: dict = {}
  for (name, severity), (result, _, bins) in zip(plan, passes):
    values = {"accuracy": result["eval/accuracy"], "nll": result["eval/loss"],
              "ece": result.get("eval/ece", float("nan")),
              "nonzero_frac": result.get(NONZERO, float("nan"))}
    for metric, value in values.items():
      out[f"eval_corrupted/{name}/{severity}/{metric}"] = value
      per_severity.setdefault(severity, {}).setdefault(metric, []).append(value)
    reliability[f"{name}/{severity}"] = _bins(bins)
  every: dict = {}
  for severity, metrics in sorted(per_severity.items()):
    for metric, values in metrics.items():
      out[f"eval_corrupted/mean/{severity}/{metric}"] = float(np.mean(values))
      if severity > 0:
        every.setdefault(metric, []).extend(values)
  out.update({f"eval_corrupted/mean/{m}": float(np.mean(v)) for m, v in every.items()})
  return {**out, "reliability": reliability}


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


def run(config, workdir: str, stream=None, corruptions=None) -> dict[str, float]:
  """Evaluates the newest usable checkpoint of `workdir`; writes DIR/eval_<step>.json and
  DIR/sparsity/step_<step>.npz (and DIR/eval_corrupted_<step>.json for a `corruptions` plan
  [(name, severity)]), and nothing at all when it fails."""
  stream = sys.stdout if stream is None else stream  # looked up now: tests capture sys.stdout
  if corruptions:
    check_corruptible(config, workdir)
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
  workdir_lib.check_paths(workdir, files=(f"eval_{step}.json", f"sparsity/step_{step}.npz")
                          + ((f"eval_corrupted_{step}.json",) if corruptions else ()))
  if corruptions:
    return _run_corrupted(steps, state["params"], config, step, workdir, corruptions, stream)
  results = evaluate(steps, state["params"], config, step, workdir)
  if jax.process_index() == 0:
    write_results(epath.Path(workdir) / f"eval_{step}.json", step, results, stream)
    print(f"evaluated checkpoint {step} of {workdir}", file=stream, flush=True)
  return results


def write_results(path, step: int, results: dict, stream, shown=lambda key: True) -> None:
  """{"step": step, **results} as JSON at `path` (atomically), and the `shown` keys printed as a
  table on `stream` (the eval command's and the import command's output)."""
  fileio.write_atomic(path, json.dumps({"step": step, **results}, indent=1, sort_keys=True))
  for key in sorted(filter(shown, results)):
    print(f"{key:<48} {results[key]:.6g}", file=stream)


def _run_corrupted(steps, params, config, step, workdir, plan, stream) -> dict:
  results = evaluate_corrupted(steps, params, config, plan)
  if jax.process_index() == 0:
    write_results(epath.Path(workdir) / f"eval_corrupted_{step}.json", step, results, stream,
                  lambda key: key.startswith(("eval/", "eval_corrupted/mean/")))
    print(f"evaluated checkpoint {step} of {workdir} on {len(plan)} corrupted eval sets: "
          f"eval_corrupted_{step}.json", file=stream, flush=True)
  return results


def main(argv: Optional[Sequence[str]] = None) -> int:
  argv = list(sys.argv if argv is None else argv)
  p = flags.parser(argv[0], __doc__.split("\n\n")[0])
  p.add_argument("--workdir", required=True, help="a training workdir (with checkpoints)")
  p.add_argument("--config", default=None,
                 help="configs/<exp>.py[:args]; default: the workdir's config.json")
  p.add_argument("--corruptions", default=None,
                 help="all | common | extra | NAME[,NAME...][:SEV|:LO-HI]: also evaluate on "
                      "corrupted eval images (ImageNet-C's corruptions, severities 1..5)")
  try:
    ns, overrides = flags.parse(p, argv[1:], config_overrides=True)
    plan = None
    if ns.corruptions is not None:
      from lazy_neuron import corruptions
      plan = corruptions.parse(ns.corruptions)
    if ns.config is None:
      if overrides:
        raise UserError("--config.KEY overrides need --config=configs/<exp>.py")
      config = _config_from_workdir(ns.workdir)
    else:
      config = config_lib.load_config(ns.config, overrides)
    run(config, ns.workdir, corruptions=plan)
  except UserError as e:
    return errors.report(e)
  return 0


if __name__ == "__main__":
  sys.exit(main())
