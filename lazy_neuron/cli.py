"""The `lazy-neuron` entry point: `lazy-neuron <command> [flags]`.

Each command lives in its own module with a `main(argv)`; `python -m lazy_neuron.<module>` is the
same program. `dispatch` is the one subcommand dispatcher (`lazy-neuron bench <name>` uses it too).
"""
from __future__ import annotations

import importlib
import sys
from typing import Mapping, Sequence

COMMANDS = {
    "train": ("lazy_neuron.train", "train a config: --config=configs/<exp>.py[:args] --workdir=DIR"),
    "import": ("lazy_neuron.import_cmd", "a pretrained checkpoint (HF T5/ViT, T5X, timm, big_vision) -> a workdir: --src=PATH --workdir=DIR"),
    "eval": ("lazy_neuron.evaluate", "evaluate a workdir's latest checkpoint; --corruptions=all: on corrupted images"),
    "report": ("lazy_neuron.report", "figures + index.html from one or more workdirs"),
    "reproduce": ("lazy_neuron.reproduce", "run the paper's experiments, judge each claim: --out=DIR"),
    "bench": ("lazy_neuron.bench", "benchmarks: JSON + a table"),
    "tokenizer": ("lazy_neuron.data.tokenizer", "train a sentencepiece model: --corpus FILES --vocab-size N"),
    "convert": ("lazy_neuron.data.convert", "a TFDS dataset prepared as TFRecord -> ArrayRecord"),
}


def prog_name(argv: Sequence[str], default: str) -> str:
  """The program name for usage and error lines: argv[0] as the dispatcher passes it
  ("lazy-neuron report"), or `default` when run as `python -m lazy_neuron.<module>` (a .py path)."""
  if argv and argv[0] and not argv[0].endswith(".py"):
    return argv[0]
  return default


def dispatch(argv: Sequence[str], commands: Mapping[str, tuple[str, str]], *, prog: str,
             what: str = "command") -> int:
  """`prog <name> [flags]` -> `main([f"{prog} <name>", *flags])` of the module `commands[name][0]`.

  `--help` (or `help`) lists `commands` with their one-line docs and returns 0; a missing or unknown
  name is one `lazy-neuron: error: ...` line and exit code 2, like every other usage error.
  """
  from lazy_neuron import checks, errors
  from lazy_neuron.errors import UserError

  argv = list(argv)
  if len(argv) >= 2 and argv[1] in ("-h", "--help", "help"):
    print(f"usage: {prog} <{what}> [flags]\n\n{what}s:")
    width = max(len(name) for name in commands) + 2
    for name, (_, doc) in commands.items():
      print(f"  {name:<{width}} {doc}")
    return 0
  valid = f"choose one of {', '.join(commands)} (see {prog} --help)"
  if len(argv) < 2:
    return errors.report(UserError(f"no {what} given; {valid}"))
  name = argv[1]
  if name not in commands:
    return errors.report(checks.fail(what, name, valid))
  module = importlib.import_module(commands[name][0])
  return module.main([f"{prog} {name}"] + argv[2:]) or 0


def main(argv: list[str] | None = None) -> int:
  return dispatch(sys.argv if argv is None else argv, COMMANDS, prog="lazy-neuron")


if __name__ == "__main__":
  sys.exit(main())
