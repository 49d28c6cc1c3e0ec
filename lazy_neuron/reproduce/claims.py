"""The paper's claims, the experiments each needs, and the rule that judges each from its runs.

A rule reads only the runs' own metrics (`results.Run`: metrics.jsonl, config.json) and returns
(verdict, rule text, evidence). The rule text is the test in words, with its margins, exactly as
applied; `lazy-neuron reproduce` prints it next to the verdict. Every rule is strict in the same
way: "supported" needs every run to show the effect by the stated margin, "not supported" needs a
run to show the opposite, and anything else — a missing run or metric, too few evaluations, runs too
short for sparsity to emerge — is "inconclusive", with the reason in the evidence.

Only numpy is imported here (no jax), so the rules are cheap to test on hand-made metrics.
The vision claims (C2, C6 on Fashion-MNIST, C11-C13) live in vision_claims.py and join the
registry at the end of this module.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import pathlib
from typing import Callable, Mapping, Optional, Sequence

import numpy as np

from lazy_neuron.results import Run

SUPPORTED, REFUTED, INCONCLUSIVE = "supported", "not supported", "inconclusive"
VERDICTS = (SUPPORTED, REFUTED, INCONCLUSIVE)
SCALES = ("smoke", "cpu", "gpu")

# Margins shared by the rules (fractions of the activation map, not percent).
INIT_BAND = (0.45, 0.55)      # "near 50%" at step 0: a ReLU of symmetric pre-activations
INIT_REFUTE = (0.40, 0.60)    # a start outside this is clearly not "near 50%"
DROP = 0.05                   # "became sparser": fell by more than 5 points from step 0
ORDER_MARGIN = 0.01           # "sparser than": lower by more than 1 point
TRAIN_EVAL_SAME = 0.03        # train and eval "about equal": within 3 points
TRAIN_EVAL_DIFFERENT = 0.10   # clearly different: more than 10 points apart
MIN_STEPS = 100              # a run shorter than this decides nothing: too short for sparsity
LEARNED = 0.10                # a run "learned": its eval loss fell by at least 10% from step 0
TOPK_SAME = 1.02              # Top-k "matches": eval loss within 2% of the dense run's
TOPK_WORSE = 1.05             # clearly worse: more than 5% higher

MEAN_NZ = "sparsity/{split}/mean/nonzero_frac"

# Each rule in words (printed with its verdict) lives in rules.json as a template filled from the
# constants of this module, so the margins are written once, here, and the words cannot disagree
# with the code.
_RULE_TEXTS = json.loads(pathlib.Path(__file__).with_name("rules.json").read_text())


def _rule_text(key: str) -> str:
  return _RULE_TEXTS[key].format(**globals(), HALF_DROP=DROP / 2)

Verdict = tuple[str, str, dict]
Judge = Callable[[Mapping[str, Run]], Verdict]


@dataclasses.dataclass(frozen=True)
class Experiment:
  """One run: its folder name under DIR/runs/, its config spec (path relative to the repository
  root, with args) and `--config.k=v` style overrides."""
  name: str
  spec: str
  overrides: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Claim:
  id: str
  text: str
  paper: str
  experiments: Callable[[str], list[Experiment]]  # scale -> the runs this claim needs
  judge: Judge


# ================================================================================================
# Reading metrics
# ================================================================================================
def _series(run: Run, name: str) -> tuple[np.ndarray, np.ndarray]:
  return run.series(name, dropna=True)


def _start_final(run: Run, name: str, from_zero: bool = True
                 ) -> Optional[tuple[int, float, int, float]]:
  """(first step, value, last step, value) of a metric; None unless it was logged at two steps, the
  first of them step 0 when `from_zero` (a start and an end are both needed to speak of a change).
  Train metrics are window means first logged at log_every_steps, so they pass from_zero=False."""
  steps, values = _series(run, name)
  if len(steps) < 2 or (from_zero and steps[0] != 0):
    return None
  return int(steps[0]), float(values[0]), int(steps[-1]), float(values[-1])


def _r(x: float) -> float:
  return round(float(x), 4)


def _missing(runs: Mapping[str, Run], names: Sequence[str]) -> list[str]:
  return [n for n in names if n not in runs]


def _layer_mean(run: Run, metric: str, split: str = "eval") -> tuple[np.ndarray, np.ndarray]:
  """(steps, mean over layers) of a per-layer metric `sparsity/<split>/<layer>/<metric>`, using the
  logged `mean/<metric>` when there is one; steps where some layer lacks it are dropped."""
  mean = _series(run, f"sparsity/{split}/mean/{metric}")
  if len(mean[0]):
    return mean
  prefix, suffix = f"sparsity/{split}/", f"/{metric}"
  layers = [n[len(prefix):-len(suffix)] for n in run.names(prefix) if n.endswith(suffix)]
  per_layer = [dict(zip(*_series(run, f"{prefix}{layer}{suffix}"))) for layer in layers]
  per_layer = [p for p in per_layer if p]
  if not per_layer:
    return np.zeros(0, np.int64), np.zeros(0)
  steps = sorted(set.intersection(*(set(p) for p in per_layer)))
  return (np.array(steps, np.int64),
          np.array([np.mean([p[s] for p in per_layer]) for s in steps], np.float64))


def sparsified(run: Run, split: str = "eval") -> tuple[str, dict]:
  """Whether one run's activation maps became sparser: "yes" when the final mean nonzero is below
  the start by more than DROP, "no" when it is not below the start at all, "undecided" in between
  or without a start and a later value. The start is step 0 on eval data, the first logged window
  on train data."""
  name = MEAN_NZ.format(split=split)
  sf = _start_final(run, name, from_zero=split == "eval")
  if sf is None:
    return "undecided", {"reason": f"{name} not logged at a start and a later step"}
  first, start, last, final = sf
  ev = {"start_nonzero": _r(start), "final_nonzero": _r(final), "final_step": last}
  if first:
    ev["start_step"] = first
  if final < start - DROP:
    return "yes", ev
  if final >= start:
    return "no", ev
  return "undecided", ev


def _combine(statuses: Mapping[str, str], why_inconclusive: str) -> tuple[str, Optional[str]]:
  """All runs "yes" -> supported; any "no" -> not supported; else inconclusive."""
  if statuses and all(s == "yes" for s in statuses.values()):
    return SUPPORTED, None
  if any(s == "no" for s in statuses.values()):
    return REFUTED, None
  return INCONCLUSIVE, why_inconclusive


def _verdict(verdict: str, rule: str, evidence: dict, reason: Optional[str] = None) -> Verdict:
  if verdict == INCONCLUSIVE and reason:
    evidence = {**evidence, "reason": reason}
  return verdict, rule, evidence


def _decide(bad: bool, ok: bool, rule: str, evidence: dict, reason: str) -> Verdict:
  """The verdict of a rule's two conditions: refuted wins over supported; neither is inconclusive."""
  if bad:
    return _verdict(REFUTED, rule, evidence)
  if ok:
    return _verdict(SUPPORTED, rule, evidence)
  return _verdict(INCONCLUSIVE, rule, evidence, reason)


C9_MLP = "sparsity/eval/mlp_flops_skippable_frac"
C9_MODEL = "sparsity/eval/model_flops_skippable_frac"
C1_RULE = _rule_text("C1")
C3_RULE = _rule_text("C3")
C4_RULE = _rule_text("C4")
C5_RULE = _rule_text("C5")
C8_RULE = _rule_text("C8")
C9_RULE = _rule_text("C9")
C10_RULE = _rule_text("C10")
C14_RULE = _rule_text("C14")


def _checked(rule: str) -> Callable[[Judge], Judge]:
  """A judge that first refuses to decide on no runs at all (`_need`)."""
  def wrap(judge: Judge) -> Judge:
    @functools.wraps(judge)
    def checked(runs: Mapping[str, Run]) -> Verdict:
      return _need(runs, rule) or judge(runs)
    return checked
  return wrap


def _need(runs: Mapping[str, Run], rule: str) -> Optional[Verdict]:
  """An inconclusive verdict when no run was given (a rule never decides on nothing)."""
  if not runs:
    return _verdict(INCONCLUSIVE, rule, {}, "no runs with metrics")
  return None


def _each_sparsified(runs: Mapping[str, Run], evidence: dict, split: str = "eval"):
  """(name, run, `sparsified` status, its evidence) per run, in name order; records the evidence."""
  for name, run in sorted(runs.items()):
    status, ev = sparsified(run, split)
    evidence[name] = ev
    yield name, run, status, ev


# ================================================================================================
# Rules
# ================================================================================================
@_checked(C1_RULE)
def judge_c1(runs: Mapping[str, Run]) -> Verdict:
  evidence, ok, bad = {}, True, False
  for name, run, status, ev in _each_sparsified(runs, evidence):
    if "start_nonzero" not in ev:
      ok = False
      continue
    start = ev["start_nonzero"]
    in_band = INIT_BAND[0] <= start <= INIT_BAND[1]
    bad |= status == "no" or not INIT_REFUTE[0] <= start <= INIT_REFUTE[1]
    ok &= in_band and status == "yes"
  return _decide(bad, ok, C1_RULE, evidence,
                 f"some run fell by {DROP} or less, or has no step-0 and later evaluation")


def _stack(layer: str) -> str:
  return layer.rsplit("/", 1)[0] if "/" in layer else ""


@_checked(C3_RULE)
def judge_c3(runs: Mapping[str, Run]) -> Verdict:
  evidence, ok, bad = {}, True, False
  for name, run in sorted(runs.items()):
    layers = run.layers("eval")
    finals, ev = {}, {}
    for layer in layers:
      sf = _start_final(run, f"sparsity/eval/{layer}/nonzero_frac")
      if sf is None:
        ok = False
        continue
      _, start, _, final = sf
      finals[layer] = final
      ev[layer] = {"start": _r(start), "final": _r(final)}
      ok &= final < start - DROP
      bad |= final >= start
    if not layers:
      ok = False
      ev["reason"] = "no per-layer eval nonzero_frac logged"
    stacks: dict[str, list[str]] = {}
    for layer in finals:  # run.layers keeps depth order, so a stack's first entry is its first layer
      stacks.setdefault(_stack(layer), []).append(layer)
    for members in stacks.values():
      first, rest = members[0], members[1:]
      ok &= all(finals[first] > finals[m] for m in rest)
      bad |= any(finals[m] > finals[first] + ORDER_MARGIN for m in rest)
    evidence[name] = ev
  return _decide(bad, ok, C3_RULE, evidence,
                 f"some layer fell by {DROP} or less, or a first layer is not strictly densest")


@_checked(C4_RULE)
def judge_c4(runs: Mapping[str, Run]) -> Verdict:
  evidence, ok, bad = {}, True, False
  for name, run, status, ev in _each_sparsified(runs, evidence):
    train = run.final(MEAN_NZ.format(split="train"))
    if not math.isfinite(train) or "final_nonzero" not in ev:
      ok = False
      continue
    gap = abs(train - ev["final_nonzero"])
    ev.update(final_train_nonzero=_r(train), train_eval_gap=_r(gap))
    ok &= status == "yes" and gap <= TRAIN_EVAL_SAME
    bad |= gap > TRAIN_EVAL_DIFFERENT
  return _decide(bad, ok, C4_RULE, evidence,
                 "some run did not become sparse, or its train/eval gap is between the margins")


def _depth_width(run: Run) -> tuple[Optional[int], Optional[int]]:
  enc, dec = run.cfg("model.num_encoder_layers"), run.cfg("model.num_decoder_layers")
  depth = run.cfg("model.depth")
  if enc is not None or dec is not None:
    depth = (enc or 0) + (dec or 0)
  return depth, run.cfg("model.mlp_dim")


@_checked(C5_RULE)
def judge_c5(runs: Mapping[str, Run]) -> Verdict:
  grid: dict[tuple[int, int], float] = {}
  evidence: dict = {}
  all_sparse = True
  for name, run in sorted(runs.items()):
    depth, width = _depth_width(run)
    status, ev = sparsified(run)
    ev.update(depth=depth, width=width)
    evidence[name] = ev
    all_sparse &= status == "yes"
    if depth is None or width is None or "final_nonzero" not in ev:
      return _verdict(INCONCLUSIVE, C5_RULE, evidence, f"{name}: no depth/width or eval sparsity")
    grid[(depth, width)] = ev["final_nonzero"]
  depths = sorted({d for d, _ in grid})
  widths = sorted({w for _, w in grid})
  pairs = []  # (smaller model, larger model) along one axis, the other held fixed
  for d in depths:
    ws = [w for w in widths if (d, w) in grid]
    pairs += [((d, a), (d, b)) for a, b in zip(ws, ws[1:])]
  for w in widths:
    ds = [d for d in depths if (d, w) in grid]
    pairs += [((a, w), (b, w)) for a, b in zip(ds, ds[1:])]
  if len(depths) < 2 or len(widths) < 2:
    return _verdict(INCONCLUSIVE, C5_RULE, evidence, "needs at least two depths and two widths")
  diffs = {f"{s}->{l}": _r(grid[s] - grid[l]) for s, l in pairs}  # > 0: the larger is sparser
  evidence["sparser_by"] = diffs
  if not all_sparse:
    return _verdict(INCONCLUSIVE, C5_RULE, evidence, f"some run fell by {DROP} or less")
  if all(grid[s] - grid[l] > ORDER_MARGIN for s, l in pairs):
    return _verdict(SUPPORTED, C5_RULE, evidence)
  if any(grid[l] - grid[s] > ORDER_MARGIN for s, l in pairs):
    return _verdict(REFUTED, C5_RULE, evidence)
  return _verdict(INCONCLUSIVE, C5_RULE, evidence, f"some difference within {ORDER_MARGIN}")


def _all_sparsify_rule(what: str, split: str) -> str:
  start = ("its step-0 value" if split == "eval" else
           "its first logged value (the first logging window)")
  return (f"For every run ({what}), the final {split} mean nonzero fraction is below {start} by "
          f"more than {DROP} -> supported. Some run ends at or above its start -> not supported. "
          "Otherwise (a smaller fall, or no start and later value) -> inconclusive.")


def _judge_all_sparsify(rule: str, split: str) -> Judge:
  def judge(runs: Mapping[str, Run]) -> Verdict:
    if (v := _need(runs, rule)):
      return v
    statuses, evidence = {}, {}
    for name, run in sorted(runs.items()):
      statuses[name], evidence[name] = sparsified(run, split)
    verdict, why = _combine(statuses, f"some run fell by {DROP} or less, or lacks a start or end")
    return _verdict(verdict, rule, evidence, why)
  return judge


C6_RULE = _all_sparsify_rule("MLP-Mixer on digits, 2-layer MLP on digits", "eval")
# Train data: the random data itself (eval splits keep their real inputs and labels).
C7_RULE = _all_sparsify_rule("2-layer MLP on fresh Gaussian inputs with random labels at every "
                             "step; T5 on uniform random tokens", "train")

judge_c6 = _judge_all_sparsify(C6_RULE, "eval")
judge_c7 = _judge_all_sparsify(C7_RULE, "train")


@_checked(C8_RULE)
def judge_c8(runs: Mapping[str, Run]) -> Verdict:
  evidence, ok, bad = {}, True, False
  for name, run, status, ev in _each_sparsified(runs, evidence):
    steps, live = _layer_mean(run, "live_nonzero_frac")
    if len(steps) < 2 or steps[0] != 0:
      return _verdict(INCONCLUSIVE, C8_RULE, evidence,
                      "metric sparsity/eval/<layer>/live_nonzero_frac not recorded at step 0 "
                      f"and later in {name}")
    ev.update(start_live_nonzero=_r(live[0]), final_live_nonzero=_r(live[-1]),
              final_dead_frac=_r(run.final("sparsity/eval/mean/dead_frac")))
    ok &= status == "yes" and live[-1] < live[0] - DROP
    bad |= live[-1] >= live[0]
  return _decide(bad, ok, C8_RULE, evidence, f"some live-neuron fall is {DROP} or less")


@_checked(C9_RULE)
def judge_c9(runs: Mapping[str, Run]) -> Verdict:
  evidence, ok, bad = {}, True, False
  for name, run in sorted(runs.items()):
    mlp, model = _start_final(run, C9_MLP), _start_final(run, C9_MODEL)
    if mlp is None or model is None:
      missing = C9_MLP if mlp is None else C9_MODEL
      return _verdict(INCONCLUSIVE, C9_RULE, evidence,
                      f"metric {missing} not recorded at step 0 and later in {name}")
    evidence[name] = {"start_mlp_skippable": _r(mlp[1]), "final_mlp_skippable": _r(mlp[3]),
                      "start_model_skippable": _r(model[1]),
                      "final_model_skippable": _r(model[3])}
    ok &= mlp[3] > mlp[1] + DROP / 2 and model[3] > model[1]
    bad |= mlp[3] <= mlp[1]
  return _decide(bad, ok, C9_RULE, evidence, f"some gain is {DROP / 2} or less")


@_checked(C10_RULE)
def judge_c10(runs: Mapping[str, Run]) -> Verdict:
  dense = [n for n, r in sorted(runs.items()) if not r.cfg("model.topk")]
  topk = [n for n, r in sorted(runs.items()) if r.cfg("model.topk")]
  if len(dense) != 1 or not topk:
    return _verdict(INCONCLUSIVE, C10_RULE, {"dense": dense, "topk": topk},
                    "needs exactly one dense run and at least one Top-k run")
  sf = _start_final(runs[dense[0]], "eval/loss")
  if sf is None:
    return _verdict(INCONCLUSIVE, C10_RULE, {}, "the dense run has no eval/loss at step 0 and later")
  _, start, _, dense_loss = sf
  evidence = {dense[0]: {"start_eval_loss": _r(start), "final_eval_loss": _r(dense_loss)}}
  ratios = {}
  for name in topk:
    loss = runs[name].final("eval/loss")
    ratios[name] = loss / dense_loss if math.isfinite(loss) else math.inf
    evidence[name] = {"topk": runs[name].cfg("model.topk"), "final_eval_loss": _r(loss),
                      "loss_ratio_to_dense": _r(ratios[name]) if math.isfinite(ratios[name])
                      else None}
  if not dense_loss <= start * (1 - LEARNED):
    return _verdict(INCONCLUSIVE, C10_RULE, evidence,
                    f"the dense run's eval loss fell by less than {LEARNED:.0%}")
  if any(r > TOPK_WORSE for r in ratios.values()):
    return _verdict(REFUTED, C10_RULE, evidence)
  if all(r <= TOPK_SAME for r in ratios.values()):
    return _verdict(SUPPORTED, C10_RULE, evidence)
  return _verdict(INCONCLUSIVE, C10_RULE, evidence,
                  f"a loss ratio is between {TOPK_SAME} and {TOPK_WORSE}")


@_checked(C14_RULE)
def judge_c14(runs: Mapping[str, Run]) -> Verdict:
  evidence, ok, bad = {}, True, False
  for name, run in sorted(runs.items()):
    got = {}
    for metric in ("preact_mean", "preact_pos_frac"):
      steps, values = _layer_mean(run, metric)
      if len(steps) < 2 or steps[0] != 0:
        return _verdict(INCONCLUSIVE, C14_RULE, evidence,
                        f"metric sparsity/eval/<layer>/{metric} not recorded at step 0 and later "
                        f"in {name}")
      got[metric] = (values[0], values[1], int(steps[1]))
    (m0, m1, step), (p0, p1, _) = got["preact_mean"], got["preact_pos_frac"]
    evidence[name] = {"early_step": step, "preact_mean": [_r(m0), _r(m1)],
                      "preact_pos_frac": [_r(p0), _r(p1)]}
    ok &= m1 < m0 and p1 < p0 - ORDER_MARGIN
    bad |= p1 >= p0
  return _decide(bad, ok, C14_RULE, evidence,
                 f"an early fall is within {ORDER_MARGIN}, or the mean did not fall")


# ================================================================================================
# The length guard, applied to every rule
# ================================================================================================
LENGTH_RULE = _rule_text("LENGTH")


def length_guarded(judge: Judge) -> Judge:
  """`judge`, with its verdict turned into inconclusive when some run is shorter than MIN_STEPS:
  a few steps of noise (a smoke run) must neither support nor refute a claim about training."""
  def guarded(runs: Mapping[str, Run]) -> Verdict:
    verdict, rule, evidence = judge(runs)
    short = {n: r.last_step for n, r in sorted(runs.items()) if r.last_step < MIN_STEPS}
    if short and verdict != INCONCLUSIVE:
      evidence = {**evidence, "rule_verdict_before_length_guard": verdict}
      verdict = INCONCLUSIVE
    if short:
      what = ", ".join(f"{n} ends at step {s}" for n, s in short.items())
      reason = f"runs shorter than {MIN_STEPS} steps ({what})"
      if evidence.get("reason"):  # the rule's own reason (e.g. a metric not recorded) is kept
        reason += f"; {evidence['reason']}"
      evidence = {**evidence, "reason": reason}
    return verdict, rule + LENGTH_RULE, evidence
  guarded.__name__ = guarded.__qualname__ = judge.__name__
  return guarded


# ================================================================================================
# Experiments and the registry
# ================================================================================================
# (depths, widths) of the C5 grid per scale: encoder = decoder layers, d_ff.
C5_GRID = {"smoke": ((1, 2), (64, 128)), "cpu": ((1, 2), (512, 1024)),
           "gpu": ((3, 6), (1024, 2048))}
TOPK = {"smoke": 16, "cpu": 64, "gpu": 128}   # Top-k's k per scale (C10)


def t5(scale: str, name: str = "t5", **args) -> Experiment:
  extra = "".join(f",{k}={v}" if v is not True else f",{k}" for k, v in args.items())
  return Experiment(name, f"configs/paper/t5.py:scale={scale}{extra}")


def _t5_main(scale):
  return [t5(scale)]


def _c5(scale):
  depths, widths = C5_GRID[scale]
  return [t5(scale, f"t5_l{d}_w{w}", layers=d, width=w) for d in depths for w in widths]


def _c6(scale):
  return [Experiment("mixer_digits", f"configs/paper/mixer.py:scale={scale}"),
          Experiment("mlp_digits", f"configs/paper/mlp.py:scale={scale},data=digits")]


def _c7(scale):
  return [Experiment("mlp_gaussian", f"configs/paper/mlp.py:scale={scale},data=gaussian"),
          t5(scale, "t5_random_inputs", random_inputs=True)]


def _c10(scale):
  return [t5(scale), t5(scale, "t5_topk", topk=TOPK[scale])]


# Every rule runs behind the length guard (the rule text says so).
CLAIMS: dict[str, Claim] = {c.id: dataclasses.replace(c, judge=length_guarded(c.judge)) for c in [
    Claim("C1", "MLP activation maps start near 50% nonzero and become sparse during training.",
          "At initialisation about half the ReLU activations are nonzero; after training T5-Base "
          "has 3.0% and ViT-B/16 6.3% nonzero entries.", _t5_main, judge_c1),
    Claim("C3", "Every layer is sparse; the first layer is the densest.",
          "Sparsity holds in every encoder and decoder layer of T5 and every ViT layer; the first "
          "layers are the densest.", _t5_main, judge_c3),
    Claim("C4", "Sparsity on eval data is about the same as on train data.",
          "The activation maps are as sparse on evaluation data as on training data.", _t5_main,
          judge_c4),
    Claim("C5", "Deeper models are sparser; wider models are sparser.",
          "Larger T5 and ViT models (more layers, wider MLPs) have sparser activation maps.", _c5,
          judge_c5),
    Claim("C6", "MLP-Mixer and a 2-layer MLP are sparse too.",
          "The phenomenon is not specific to Transformers: MLP-Mixers and 2-layer MLPs show it.",
          _c6, judge_c6),
    Claim("C7", "Random labels, random inputs and infinite (never repeated) data still give "
                "sparsity.",
          "Sparsity emerges with random labels, with random inputs and with infinite data: it is "
          "not a property of the data.", _c7, judge_c7),
    Claim("C8", "Sparsity is not caused by dead neurons.",
          "Most neurons are alive and fire rarely (lazy), not dead.", _t5_main, judge_c8),
    Claim("C9", "Sparsity means FLOPs that could be skipped.",
          "Only nonzero activations need the second MLP matmul; the MLP is ~60% of a T5-Base "
          "encoder layer's FLOPs, so skipping zeros saves a large part of it.", _t5_main, judge_c9),
    Claim("C10", "Top-k Transformers match dense quality.",
          "Keeping only the k largest activations per token (Top-k T5/ViT) keeps the dense "
          "model's quality.", _c10, judge_c10),
    Claim("C14", "The mechanism starts at initialisation.",
          "Training pushes pre-activations towards negative values from the start of training.",
          _t5_main, judge_c14),
]}


def experiments_for(claim_ids: Sequence[str], scale: str) -> list[Experiment]:
  """The runs the claims need, each once, in claim order (runs shared by claims run once)."""
  out: dict[str, Experiment] = {}
  for cid in claim_ids:
    for e in CLAIMS[cid].experiments(scale):
      if e.name in out and out[e.name] != e:  # two claims may share a run only if it is the same
        raise AssertionError(f"experiment {e.name} defined twice differently")
      out.setdefault(e.name, e)
  return list(out.values())


# The vision claims (vision_claims.py): C2, C11-C13 added, C6 replaced by its Fashion-MNIST version.
from lazy_neuron.reproduce import vision_claims  # noqa: E402 - it uses the helpers above
CLAIMS = vision_claims.register(CLAIMS)
