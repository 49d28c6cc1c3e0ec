"""The `lazy-neuron` entry point: `lazy-neuron <command> [flags]`.

Each command lives in its own module with a `main(argv)`; `python -m lazy_neuron.<module>` is the
same program.
"""
from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "train": ("lazy_neuron.train", "train a config: --config=configs/<exp>.py[:args] --workdir=DIR"),
    "eval": ("lazy_neuron.evaluate", "evaluate a workdir's latest checkpoint"),
    "report": ("lazy_neuron.report", "figures + index.html from one or more workdirs"),
    "bench": ("lazy_neuron.bench", "benchmarks: JSON + a table"),
    "tokenizer": ("lazy_neuron.data.tokenizer", "train a sentencepiece model: --corpus FILES --vocab-size N"),
    "convert": ("lazy_neuron.data.convert", "a TFDS dataset prepared as TFRecord -> ArrayRecord"),
}


def _usage() -> str:
  lines = ["usage: lazy-neuron <command> [flags]", "", "commands:"]
  lines += [f"  {name:<10} {doc}" for name, (_, doc) in COMMANDS.items()]
  return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
  argv = list(sys.argv if argv is None else argv)
  if len(argv) < 2 or argv[1] in ("-h", "--help", "help"):
    print(_usage())
    return 0 if len(argv) >= 2 else 2
  name = argv[1]
  if name not in COMMANDS:
    print(f"lazy-neuron: unknown command {name!r}; valid: {', '.join(COMMANDS)}", file=sys.stderr)
    return 2
  module = importlib.import_module(COMMANDS[name][0])
  return module.main([f"lazy-neuron {name}"] + argv[2:]) or 0


if __name__ == "__main__":
  sys.exit(main())
