"""`lazy-neuron reproduce [--claims=C1,C5,...] [--scale=smoke|cpu|gpu] --out=DIR`.

Order of work, so that bad input costs nothing: flags -> claim ids and scale -> --out writable ->
every experiment's config loads and validates -> DIR holds nothing of another scale (summary.json,
runs/<name>/config.json) -> only then the runs, one by one, in this process
(`train.train_and_evaluate` into DIR/runs/<name>/; a finished run is skipped without building
anything, an interrupted one resumes from its checkpoint) -> judging (claims.py) -> DIR/summary.json,
DIR/reproduction.md, DIR/figures/*.png.

summary.json keeps the entries of claims not judged this time (same scale), so
`--claims=C1` then `--claims=C5` into one DIR ends with both.

`--print-commands` does the checks, then prints one `lazy-neuron train` command per unfinished run
(the same config, overrides and workdir the command would use) and writes nothing: run them side by
side (several on one GPU, or on several machines sharing DIR), then run `reproduce` again, which
skips the finished runs and judges.
"""
from __future__ import annotations

import json
import os
import sys
from typing import Optional, Sequence

from lazy_neuron import checks, errors, flags, outpaths
from lazy_neuron.errors import UserError
from lazy_neuron.reproduce import claims as claims_lib
from lazy_neuron.reproduce.claims import CLAIMS, SCALES, Experiment

# Config specs in claims.py are relative to the repository root, so the command works from any
# folder (a relative path would otherwise depend on the caller's cwd).
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_SCALE = "cpu"


def parse_flags(argv: Sequence[str]):
  p = flags.parser(argv[0], "Run the paper's experiments and judge each claim from the runs' "
                            "own metrics.")
  p.add_argument("--claims", default=",".join(CLAIMS),
                 help=f"comma-separated claim ids (default: all: {','.join(CLAIMS)})")
  p.add_argument("--scale", default=DEFAULT_SCALE, help="smoke | cpu | gpu (default cpu)")
  p.add_argument("--out", required=True, help="output folder; rerun with it to resume")
  p.add_argument("--print-commands", "--print_commands", action="store_true",
                 help="print a `lazy-neuron train` command per unfinished run and stop (nothing "
                 "is written): run them in parallel, then rerun without this flag to judge")
  p.add_argument("--judge-only", "--judge_only", action="store_true",
                 help="train nothing: judge the runs DIR holds as they are (runs trained "
                 "elsewhere and copied back without their checkpoints); a claim whose runs are "
                 "missing or short is inconclusive")
  ns, _ = flags.parse(p, argv[1:])
  if ns.print_commands and ns.judge_only:
    raise checks.fail("--judge-only", True, "it excludes --print-commands; give one of them")
  claim_ids = []
  for cid in checks.string("--claims", ns.claims).split(","):
    cid = cid.strip().upper()
    if cid not in CLAIMS:
      raise checks.fail("--claims", ns.claims,
                        f"{cid or '(empty)'} is not a claim id; choose from {', '.join(CLAIMS)}")
    if cid not in claim_ids:
      claim_ids.append(cid)
  checks.choice("--scale", ns.scale, SCALES)
  out = outpaths.folder("--out", ns.out)
  return claim_ids, ns.scale, out, ns.print_commands, ns.judge_only


# ================================================================================================
# Checks of DIR before any work
# ================================================================================================
def _spec_path(spec: str) -> str:
  path, sep, args = spec.partition(":")
  return os.path.join(ROOT, path) + sep + args


def load_configs(experiments: Sequence[Experiment]) -> dict:
  from lazy_neuron import config_lib
  return {e.name: config_lib.load_config(_spec_path(e.spec), e.overrides) for e in experiments}


def _config_json(config) -> dict:
  from lazy_neuron import config_lib
  return json.loads(config_lib.to_json(config))


def _scale_of(name: str, saved: dict) -> Optional[str]:
  """Which scale's config of experiment `name` a saved config.json is, if any."""
  from lazy_neuron import train
  for scale in SCALES:
    for cid in CLAIMS:
      for e in CLAIMS[cid].experiments(scale):
        if e.name == name and not train._diff_keys(saved, _config_json(load_configs([e])[name])):
          return scale
  return None


def check_out(out: str, scale: str, configs: dict) -> None:
  """DIR may be new or hold this scale's results; another scale's are refused (mixing them would
  judge a claim on runs of two sizes). Reads only."""
  from lazy_neuron import train, workdir as workdir_lib
  from etils import epath
  summary = os.path.join(out, "summary.json")
  if os.path.lexists(summary):
    try:
      old = json.loads(open(summary, "rb").read().decode("utf-8"))
      old_scale = old.get("scale") if isinstance(old, dict) else None
    except (OSError, ValueError):
      raise checks.fail("--out", out, f"{summary} is not a readable summary.json; move it away or "
                                      "give another --out") from None
    if old_scale != scale:
      raise checks.fail("--out", out, f"it holds results of scale {old_scale!r}; give another "
                                      f"--out, or --scale={old_scale} to resume it")
  for name, config in configs.items():
    workdir = os.path.join(out, "runs", name)
    saved = os.path.join(workdir, "config.json")
    if os.path.lexists(saved):
      old = workdir_lib.read_config_json(epath.Path(saved))
      if train._diff_keys(old, _config_json(config)):
        other = _scale_of(name, old)
        what = f"a run of scale {other!r}" if other else "a run of another config"
        hint = f", or --scale={other} to resume it" if other else ""
        raise checks.fail("--out", out, f"runs/{name} holds {what}; give another --out{hint}")
    train.check_workdir(workdir, config)  # paths of the right kind and writable


# ================================================================================================
# Runs
# ================================================================================================
def finished(workdir: str, config) -> bool:
  """A run is finished when it checkpointed its last step (what `train` calls "nothing to do"), or
  when its metrics reach the last step: a run copied back without its checkpoints (trained on
  another machine) is not trained again, which would replace those metrics."""
  if os.path.isdir(os.path.join(workdir, "checkpoints", str(config.total_steps))):
    return True
  return _last_logged_step(workdir) == config.total_steps


def _last_logged_step(workdir: str) -> Optional[int]:
  """The step of metrics.jsonl's last row (None without one)."""
  from etils import epath
  path = epath.Path(workdir) / "metrics.jsonl"
  try:
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    return int(json.loads(lines[-1])["step"]) if lines else None
  except (OSError, ValueError, KeyError, TypeError):
    return None


def train_commands(out: str, experiments: Sequence[Experiment], configs: dict) -> list[str]:
  """The `lazy-neuron train` command of every unfinished run (what run_experiments would do)."""
  import shlex
  return [shlex.join(["lazy-neuron", "train", f"--config={_spec_path(e.spec)}",
                      f"--workdir={os.path.join(out, 'runs', e.name)}",
                      *[f"--{o}" for o in e.overrides]])
          for e in experiments
          if not finished(os.path.join(out, "runs", e.name), configs[e.name])]


def run_experiments(out: str, configs: dict, stream) -> bool:
  """Trains each unfinished run; returns False when one stopped early (SIGTERM/SIGINT)."""
  from lazy_neuron import train
  for i, (name, config) in enumerate(configs.items(), 1):
    workdir = os.path.join(out, "runs", name)
    if finished(workdir, config):
      print(f"[{i}/{len(configs)}] runs/{name}: finished (step {config.total_steps}), skipped",
            file=stream, flush=True)
      continue
    print(f"[{i}/{len(configs)}] runs/{name}: training to step {config.total_steps}",
          file=stream, flush=True)
    try:
      train.train_and_evaluate(config, workdir, stream=stream)
    except train.TrainingDivergedError as e:  # judged on what it logged; the rules say so
      print(f"runs/{name}: diverged ({e.message()}); judging on its logged metrics",
            file=stream, flush=True)
      continue
    if not finished(workdir, config):
      print(f"runs/{name}: stopped before step {config.total_steps}; rerun the same command to "
            "resume", file=stream, flush=True)
      return False
  return True


# ================================================================================================
# Judging and writing
# ================================================================================================
def _load(out: str, names: Sequence[str]) -> dict:
  from lazy_neuron import results
  runs = {}
  for name in names:
    try:
      runs[name] = results.load_run(os.path.join(out, "runs", name), name=name)
    except UserError:  # no metrics (e.g. it diverged at once): the claim's rule sees it missing
      pass
  return runs


def _figures(out: str, cid: str, runs: dict) -> list[str]:
  """The claim's figures (reproduce/figures.py), with runs/t5 as the baseline of ablations."""
  from lazy_neuron.reproduce import figures
  return figures.write_claim_figures(out, cid, runs, figures.load_baseline(out).get(
      figures.BASELINE))


def judge(out: str, claim_ids: Sequence[str], scale: str, draw: bool = True) -> list[dict]:
  entries = []
  for cid in claim_ids:
    claim = CLAIMS[cid]
    names = [e.name for e in claim.experiments(scale)]
    runs = _load(out, names)
    verdict, rule, evidence = claim.judge(runs)
    missing = [n for n in names if n not in runs]
    if missing and verdict != claims_lib.INCONCLUSIVE:  # a rule never decides on absent runs
      verdict, evidence = claims_lib.INCONCLUSIVE, {**evidence, "reason": f"runs without "
                                                    f"metrics: {', '.join(missing)}"}
    entries.append({"id": cid, "claim": claim.text, "verdict": verdict, "rule": rule,
                    "evidence": evidence, "paper": claim.paper,
                    "runs": [f"runs/{n}" for n in names],
                    "figures": _figures(out, cid, runs) if draw else []})
  return entries


def merge(out: str, scale: str, entries: list[dict]) -> dict:
  """This invocation's entries plus the earlier ones of other claims, in registry order."""
  by_id = {}
  path = os.path.join(out, "summary.json")
  if os.path.exists(path):
    with open(path) as f:
      by_id = {c["id"]: c for c in json.load(f).get("claims", [])}
  by_id.update({e["id"]: e for e in entries})
  order = list(CLAIMS)
  return {"scale": scale, "claims": sorted(by_id.values(), key=lambda c: order.index(c["id"])
                                           if c["id"] in order else len(order))}


def _fmt_evidence(evidence: dict) -> str:
  return json.dumps(evidence, sort_keys=True).replace("|", "\\|")


def render_markdown(summary: dict, out: str) -> str:
  scale = summary["scale"]
  ids = ",".join(c["id"] for c in summary["claims"])
  lines = [f"# Reproduction of *The Lazy Neuron Phenomenon* — scale `{scale}`", "",
           "Each verdict comes from the rule printed next to it, applied to the runs' own "
           "`metrics.jsonl`/`config.json` under `runs/`. A claim its runs do not decide is "
           "*inconclusive*, never *supported*.", "",
           "Command (rerun to resume; finished runs are skipped):", "",
           f"    lazy-neuron reproduce --claims={ids} --scale={scale} --out={out}", "",
           "| claim | verdict | paper |", "|---|---|---|"]
  for c in summary["claims"]:
    lines.append(f"| **{c['id']}** {c['claim']} | **{c['verdict']}** | {c['paper']} |")
  for c in summary["claims"]:
    lines += ["", f"## {c['id']}: {c['claim']}", "", f"**Verdict: {c['verdict']}**", "",
              f"Rule: {c['rule']}", "", f"Paper: {c['paper']}", "",
              f"Evidence: `{_fmt_evidence(c['evidence'])}`", "",
              "Runs: " + ", ".join(f"`{r}`" for r in c["runs"]), ""]
    lines += [f"![{f}]({f})" for f in c["figures"]]
  return "\n".join(lines) + "\n"


def write_outputs(out: str, summary: dict) -> None:
  from lazy_neuron import fileio
  fileio.write_atomic(os.path.join(out, "summary.json"), json.dumps(summary, indent=1) + "\n")
  fileio.write_atomic(os.path.join(out, "reproduction.md"), render_markdown(summary, out))


# ================================================================================================
# Entry point
# ================================================================================================
def reproduce(claim_ids: Sequence[str], scale: str, out: str, stream=None,
              print_commands: bool = False, judge_only: bool = False) -> Optional[dict]:
  """Validates, runs, judges, writes; returns the summary (None when a run was stopped early, or
  with print_commands, which prints the runs' train commands and writes nothing). judge_only
  skips the training: the runs are judged on the metrics they hold."""
  stream = sys.stdout if stream is None else stream
  experiments = claims_lib.experiments_for(claim_ids, scale)
  configs = load_configs(experiments)
  check_out(out, scale, configs)
  if print_commands:
    for line in train_commands(out, experiments, configs):
      print(line, file=stream)
    print(f"# then, to judge: lazy-neuron reproduce --claims={','.join(claim_ids)} "
          f"--scale={scale} --out={out}", file=stream, flush=True)
    return None
  if judge_only:
    missing = [n for n in configs if not os.path.exists(os.path.join(out, "runs", n,
                                                                       "metrics.jsonl"))]
    if missing:
      print(f"--judge-only: no metrics in runs/{', runs/'.join(missing)}; their claims are judged "
            "without them", file=stream, flush=True)
  elif not run_experiments(out, configs, stream):
    return None
  summary = merge(out, scale, judge(out, claim_ids, scale))
  write_outputs(out, summary)
  for c in summary["claims"]:
    print(f"{c['id']:>4}  {c['verdict']:<14} {c['claim']}", file=stream)
  print(f"wrote {os.path.join(out, 'summary.json')} and {os.path.join(out, 'reproduction.md')}",
        file=stream, flush=True)
  return summary


def main(argv: Optional[Sequence[str]] = None) -> int:
  argv = list(sys.argv if argv is None else argv)
  try:
    claim_ids, scale, out, print_commands, judge_only = parse_flags(argv)
    reproduce(claim_ids, scale, out, print_commands=print_commands, judge_only=judge_only)
  except UserError as e:
    return errors.report(e)
  return 0
