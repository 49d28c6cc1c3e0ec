"""The vision claims: C2 (ViT sparsity), C6 (MLP-Mixer's token- and channel-mixing MLPs, with the
2-layer MLP), C11 (label noise), C12 (corrupted inputs), C13 (calibration), on Fashion-MNIST.

Registered into `claims.CLAIMS` (claims.py imports this module at its end); the rule texts are
templates in rules.json filled from the constants below, as for the other claims.

C12 and C13 read each run's corrupted evaluation, DIR/runs/<name>/eval_corrupted_<step>.json (what
`lazy-neuron eval --corruptions` writes). When it is missing, judging makes it first: the run's final
checkpoint evaluated on the corruptions and first N test images that the run's config names under
`corruption_eval` (configs/paper/vit_fmnist.py sets them per scale); a later judging reads the file.
The rules themselves read only metrics (numpy).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
from typing import Mapping, Optional

import numpy as np

from lazy_neuron.reproduce import claims as base
from lazy_neuron.reproduce.claims import (INCONCLUSIVE, REFUTED, SUPPORTED, Claim, Experiment,
                                          Verdict, _checked, _decide, _r, _verdict)
from lazy_neuron.results import Run

# Margins (fractions, not percent).
DROP = base.DROP              # "became sparser": fell by more than 5 points from step 0
ACC_MARGIN = 0.01             # accuracies "higher"/"lower": by more than 1 point
CLEAN_SAME = 0.01             # "equal clean accuracy": within 1 point
ECE_MARGIN = 0.005            # ECE "lower"/"higher": by more than half a point
LEARNED_ACC = 0.5             # a clean dense run "learned": final eval accuracy >= 50% (chance 10%)

# Runs per scale: Top-k's two k values (C11-C13) and the label-noise levels (C11).
TOPK_KS = {"smoke": (16,), "cpu": (16, 64), "gpu": (32, 128)}
NOISES = {"smoke": (0.0, 0.4), "cpu": (0.0, 0.2, 0.4), "gpu": (0.0, 0.2, 0.4)}

ACC, NZ = "eval/accuracy", "sparsity/{split}/mean/nonzero_frac"



def _text(key: str) -> str:
  """rules.json's template `key` filled from this module's constants (as claims.py does)."""
  return base._RULE_TEXTS[key].format(**globals())


C2_RULE = _text("C2")
C6_RULE = _text("C6_VISION")
C11_RULE = _text("C11")
C12_RULE = _text("C12")
C13_RULE = _text("C13")


# ================================================================================================
# Experiments
# ================================================================================================
def vit_name(topk: int = 0, noise: float = 0.0) -> str:
  return "vit_fmnist" + (f"_topk{topk}" if topk else "") + (f"_noise{noise:g}" if noise else "")


def vit(scale: str, topk: int = 0, noise: float = 0.0) -> Experiment:
  return Experiment(vit_name(topk, noise),
                    f"configs/paper/vit_fmnist.py:scale={scale},topk={topk},label_noise={noise}")


def _c2(scale):
  return [vit(scale)]


def _c6(scale):
  return [Experiment("mixer_fmnist", f"configs/paper/mixer_fmnist.py:scale={scale}"),
          Experiment("mlp_digits", f"configs/paper/mlp.py:scale={scale},data=digits")]


def _c11(scale):
  return [vit(scale, k, p) for p in NOISES[scale] for k in (0, *TOPK_KS[scale])]


def _clean_runs(scale):
  return [vit(scale, k) for k in (0, *TOPK_KS[scale])]


# ================================================================================================
# Rules
# ================================================================================================
def _start_final(run: Run, name: str) -> Optional[tuple[float, float]]:
  sf = base._start_final(run, name)
  return None if sf is None else (sf[1], sf[3])


@_checked(C2_RULE)
def judge_c2(runs: Mapping[str, Run]) -> Verdict:
  """Every dense ViT: the eval maps sparsify; evidence: per-layer, first layer, train vs eval,
  dead/lazy/live."""
  evidence, statuses = {}, {}
  for name, run, status, ev in base._each_sparsified(runs, evidence):
    statuses[name] = status
    layers = run.layers("eval")
    finals = {layer: _r(run.final(f"sparsity/eval/{layer}/nonzero_frac")) for layer in layers}
    ev.update(final_layer_nonzero=finals, first_layer=layers[0] if layers else None,
              final_train_nonzero=_r(run.final(NZ.format(split="train"))),
              final_eval_accuracy=_r(run.final(ACC)))
    for what in ("dead_frac", "lazy_frac", "live_frac"):
      ev[f"final_{what}"] = _r(run.final(f"sparsity/eval/mean/{what}"))
  verdict, why = base._combine(statuses, f"the eval mean nonzero fell by {DROP} or less, or lacks "
                                         "a step-0 and later value")
  return _verdict(verdict, C2_RULE, evidence, why)


def _group_fall(run: Run, word: str) -> tuple[str, dict]:
  """`sparsified` for the mean over the layers whose name contains `word` (Mixer: token/channel)."""
  layers = [layer for layer in run.layers("eval") if word in layer.rsplit("/", 1)[-1]]
  pairs = [_start_final(run, f"sparsity/eval/{layer}/nonzero_frac") for layer in layers]
  if not layers or None in pairs:
    return "undecided", {"reason": f"no {word} layers with a step-0 and later eval value"}
  start, final = (float(np.mean(v)) for v in zip(*pairs))
  ev = {"layers": len(layers), "start_nonzero": _r(start), "final_nonzero": _r(final),
        "final_layer_nonzero": {layer: _r(p[1]) for layer, p in zip(layers, pairs)},
        "final_train_nonzero": _r(np.mean([run.final(f"sparsity/train/{layer}/nonzero_frac")
                                           for layer in layers]))}
  return ("yes" if final < start - DROP else "no" if final >= start else "undecided"), ev


@_checked(C6_RULE)
def judge_c6(runs: Mapping[str, Run]) -> Verdict:
  statuses, evidence = {}, {}
  for name, run in sorted(runs.items()):
    if run.cfg("model.name") == "mixer":
      for word in ("token", "channel"):
        statuses[f"{name}/{word}"], evidence[f"{name}/{word}"] = _group_fall(run, word)
    else:
      statuses[name], evidence[name] = base.sparsified(run)
  verdict, why = base._combine(statuses, f"some MLP group fell by {DROP} or less, or lacks a start "
                                         "or end")
  return _verdict(verdict, C6_RULE, evidence, why)


def _by_model(runs: Mapping[str, Run]) -> dict[float, dict[int, tuple[str, Run]]]:
  """{label noise: {topk (0 = dense): (name, run)}} from each run's config."""
  out: dict = {}
  for name, run in sorted(runs.items()):
    noise = float(run.cfg("data.label_noise", 0.0) or 0.0)
    out.setdefault(noise, {})[int(run.cfg("model.topk") or 0)] = (name, run)
  return out


def _accuracy_curve(run: Run) -> dict:
  steps, acc = run.series(ACC, dropna=True)
  if not len(steps):
    return {}
  return {"best_accuracy": _r(acc.max()), "best_step": int(steps[int(np.argmax(acc))]),
          "final_accuracy": _r(acc[-1]), "dip_from_best": _r(acc.max() - acc[-1]),
          "final_train_accuracy_on_noisy_labels": _r(run.final("train/accuracy"))}


def _dense_learned(grid: dict, evidence: dict) -> Optional[str]:
  """Why nothing can be decided (no clean dense run, or it did not learn), or None."""
  dense = grid.get(0.0, {}).get(0)
  if dense is None:
    return "no dense run without label noise"
  acc = dense[1].final(ACC)
  evidence["clean_dense_final_accuracy"] = _r(acc) if math.isfinite(acc) else None
  if not acc >= LEARNED_ACC:
    return f"the clean dense run's final eval accuracy is below {LEARNED_ACC}"
  return None


@_checked(C11_RULE)
def judge_c11(runs: Mapping[str, Run]) -> Verdict:
  grid, evidence = _by_model(runs), {}
  for noise, models in sorted(grid.items()):
    for topk, (name, run) in sorted(models.items()):
      evidence[name] = {"label_noise": noise, "topk": topk, **_accuracy_curve(run)}
  why = _dense_learned(grid, evidence)
  ok, bad, compared = why is None, False, 0
  for noise, models in sorted(grid.items()):
    if noise == 0 or 0 not in models:
      continue
    dense_acc = models[0][1].final(ACC)
    for topk, (name, run) in models.items():
      if topk:
        gain = run.final(ACC) - dense_acc
        evidence[name]["final_accuracy_minus_dense"] = _r(gain) if math.isfinite(gain) else None
        ok &= gain > ACC_MARGIN
        bad |= gain < -ACC_MARGIN
        compared += 1
  if why is not None:
    return _verdict(INCONCLUSIVE, C11_RULE, evidence, why)
  if not compared:
    return _verdict(INCONCLUSIVE, C11_RULE, evidence, "no Top-k and dense runs at a noise level > 0")
  return _decide(bad, ok, C11_RULE, evidence, f"some Top-k run is within {ACC_MARGIN} of dense")


def corrupted_metrics(run: Run) -> dict:
  """The run's eval_corrupted_<step>.json for its last checkpoint ({} when there is none)."""
  path = os.path.join(run.workdir, f"eval_corrupted_{run.last_step}.json")
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    return json.load(f)


def _clean_vs_corrupted(runs: Mapping[str, Run], rule: str, compare) -> Verdict:
  """C12/C13: every Top-k run (no label noise) against the dense one, by `compare(dense, topk, ev)`
  -> ("yes" | "no" | "undecided", reason or None)."""
  grid = {k: v for k, v in _by_model(runs).get(0.0, {}).items()}
  evidence: dict = {}
  metrics = {topk: corrupted_metrics(run) for topk, (_, run) in grid.items()}
  for topk, (name, _) in grid.items():
    m = metrics[topk]
    evidence[name] = {k: _r(m[k]) for k in ("eval/accuracy", "eval/ece", "eval/loss",
                                            "eval_corrupted/mean/accuracy", "eval_corrupted/mean/ece",
                                            "eval_corrupted/mean/nll",
                                            "eval_corrupted/mean/nonzero_frac",
                                            NZ.format(split="eval")) if k in m}
  if 0 not in grid or len(grid) < 2:
    return _verdict(INCONCLUSIVE, rule, evidence, "needs the dense run and a Top-k run")
  missing = [grid[k][0] for k, m in metrics.items() if "eval_corrupted/mean/accuracy" not in m]
  if missing:
    return _verdict(INCONCLUSIVE, rule, evidence, f"no corrupted evaluation of {', '.join(missing)}")
  statuses, reasons = {}, []
  for topk, (name, _) in grid.items():
    if topk:
      statuses[name], reason = compare(metrics[0], metrics[topk], evidence[name])
      reasons += [f"{name}: {reason}"] if reason else []
  verdict, why = base._combine(statuses, "; ".join(reasons) or "a difference within the margin")
  return _verdict(verdict, rule, evidence, why)


def _c12_compare(dense: dict, topk: dict, ev: dict):
  clean_gap = topk["eval/accuracy"] - dense["eval/accuracy"]
  gain = topk["eval_corrupted/mean/accuracy"] - dense["eval_corrupted/mean/accuracy"]
  ev.update(clean_accuracy_minus_dense=_r(clean_gap), corrupted_accuracy_minus_dense=_r(gain))
  if abs(clean_gap) > CLEAN_SAME:
    return "undecided", f"clean accuracy differs from dense's by more than {CLEAN_SAME}"
  return ("yes" if gain > ACC_MARGIN else "no" if gain < -ACC_MARGIN else "undecided"), None


def _c13_compare(dense: dict, topk: dict, ev: dict):
  clean = topk["eval/ece"] - dense["eval/ece"]
  corrupted = topk["eval_corrupted/mean/ece"] - dense["eval_corrupted/mean/ece"]
  ev.update(clean_ece_minus_dense=_r(clean), corrupted_ece_minus_dense=_r(corrupted))
  if max(clean, corrupted) > ECE_MARGIN:
    return "no", None
  return ("yes" if max(clean, corrupted) < -ECE_MARGIN else "undecided"), None


@_checked(C12_RULE)
def judge_c12(runs: Mapping[str, Run]) -> Verdict:
  return _clean_vs_corrupted(runs, C12_RULE, _c12_compare)


@_checked(C13_RULE)
def judge_c13(runs: Mapping[str, Run]) -> Verdict:
  return _clean_vs_corrupted(runs, C13_RULE, _c13_compare)


# ================================================================================================
# Corrupted evaluation before judging (C12, C13)
# ================================================================================================
def ensure_corrupted_eval(run: Run, stream=None) -> None:
  """Writes the run's eval_corrupted_<step>.json when it is missing, for the corruptions, number of
  test images and pipeline worker processes of its config's `corruption_eval` (nothing when the
  config has none)."""
  plan_cfg = (run.config or {}).get("corruption_eval")
  if not plan_cfg or corrupted_metrics(run):
    return
  from lazy_neuron import corruptions, evaluate

  config = evaluate._config_from_workdir(run.workdir)
  with config.unlocked():
    config.data.eval_examples = int(plan_cfg["examples"])
    config.data.num_workers = int(plan_cfg.get("workers", 0))
  print(f"{run.name}: evaluating step {run.last_step} on corruptions {plan_cfg['spec']!r} "
        f"({plan_cfg['examples']} test images)", file=stream or sys.stdout, flush=True)
  evaluate.run(config, run.workdir, stream=stream, corruptions=corruptions.parse(plan_cfg["spec"]))


def with_corrupted_eval(judge):
  def judge_after_eval(runs: Mapping[str, Run]) -> Verdict:
    for run in runs.values():
      ensure_corrupted_eval(run)
    return judge(runs)
  judge_after_eval.__name__ = judge.__name__
  return judge_after_eval


# ================================================================================================
# Registry
# ================================================================================================
_TOPK = "Top-k (only the k largest activations of each MLP kept)"
CLAIMS = {c.id: c for c in [
    Claim("C2", "ViT's MLP activation maps become sparse.",
          "ViT-B/16 trained on ImageNet-21k has 6.3% nonzero MLP activations; every layer is sparse.",
          _c2, judge_c2),
    Claim("C6", "MLP-Mixer (token- and channel-mixing MLPs) and a 2-layer MLP are sparse too.",
          "The phenomenon is not specific to Transformers: MLP-Mixers and 2-layer MLPs show it.",
          _c6, judge_c6),
    Claim("C11", f"{_TOPK} models are more robust to noisy training labels.",
          "Top-k ViTs trained with label noise reach a higher test accuracy than dense ones.",
          _c11, judge_c11),
    Claim("C12", f"{_TOPK} models are more robust to corrupted inputs.",
          "On ImageNet-C, Top-k ViTs lose less accuracy than dense ViTs of equal clean accuracy.",
          _clean_runs, with_corrupted_eval(judge_c12)),
    Claim("C13", f"{_TOPK} models are better calibrated.",
          "Top-k ViTs have a lower expected calibration error than dense ViTs, on clean and on "
          "corrupted data.", _clean_runs, with_corrupted_eval(judge_c13)),
]}


def register(registry: dict) -> dict:
  """`registry` with the vision claims added (C6 replaced), ordered by claim number, each rule behind
  the length guard like the others."""
  merged = {**registry, **{cid: dataclasses.replace(c, judge=base.length_guarded(c.judge))
                           for cid, c in CLAIMS.items()}}
  return dict(sorted(merged.items(), key=lambda kv: int(kv[0][1:])))
