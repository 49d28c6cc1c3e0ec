"""`lazy-neuron eval --workdir=DIR [--config=...] [--config.k=v]`: evaluate a workdir's latest
checkpoint (accuracy, loss, calibration for classifiers, and activation sparsity on eval data).

Without --config the workdir's own config.json is used. Results are printed and written to
DIR/eval_<step>.json (and DIR/sparsity/step_<step>.npz); metrics.jsonl is left as training wrote it.
"""
from __future__ import annotations

import json
import sys
from typing import Optional, Sequence

import jax
import ml_collections
from etils import epath

from lazy_neuron import checkpointing, train
from lazy_neuron.errors import UserError
from lazy_neuron import errors


def _config_from_workdir(workdir: str) -> ml_collections.ConfigDict:
  path = epath.Path(workdir) / "config.json"
  if not path.exists():
    raise UserError(f"{workdir!r} has no config.json; pass --config=configs/<exp>.py or train first")
  config = ml_collections.ConfigDict(json.loads(path.read_text()))
  # JSON turns tuples into lists; the mesh and rules accept both.
  config.lock()
  train.validate_config(config)
  return config


def run(config, workdir: str, stream=sys.stdout) -> dict[str, float]:
  setup = train.build_setup(config)
  ckpt = checkpointing.Checkpointer(workdir, every_steps=1)
  if ckpt.latest_step() is None:
    raise UserError(f"{workdir!r} has no checkpoint to evaluate; train first")
  steps = train.Steps(setup)
  abstract = checkpointing.abstract_with_shardings(setup.abstract_state, setup.state_shardings)
  with steps.context():
    # The newest usable checkpoint; unusable ones are reported and left as they are (eval only
    # reads the workdir).
    restored = ckpt.restore_latest(abstract, warn=lambda m: print(m, file=stream, flush=True))
  ckpt.close()
  if restored is None:
    raise UserError(f"{workdir!r} has no usable checkpoint (see the warnings above); train again")
  step, state = restored[0], restored[1]
  sync = setup.mesh.devices.flat[0].platform == "cpu" and setup.mesh.size > 1
  results = train.evaluate(steps, state["params"], config, step, workdir, sync)
  if jax.process_index() == 0:
    (epath.Path(workdir) / f"eval_{step}.json").write_text(
        json.dumps({"step": step, **results}, indent=1, sort_keys=True))
    for key in sorted(results):
      print(f"{key:<48} {results[key]:.6g}", file=stream)
    print(f"evaluated checkpoint {step} of {workdir}", file=stream, flush=True)
  return results


def main(argv: Optional[Sequence[str]] = None) -> int:
  argv = list(sys.argv if argv is None else argv)
  try:
    args = list(argv)
    if not any(a.startswith("--config=") or a == "--config" for a in args[1:]):
      workdir = next((a.split("=", 1)[1] for a in args[1:] if a.startswith("--workdir=")), None)
      if not workdir:
        raise UserError("--workdir is required: lazy-neuron eval --workdir=DIR [--config=...]")
      if any(a.startswith("--config.") for a in args[1:]):
        raise UserError("--config.KEY overrides need --config=configs/<exp>.py")
      config = _config_from_workdir(workdir)
    else:
      flags = train.parse_flags(args)
      workdir = flags.workdir
      config = train.load_config(flags.config, flags.overrides)
    run(config, workdir)
  except UserError as e:
    return errors.report(e)
  return 0


if __name__ == "__main__":
  sys.exit(main())
