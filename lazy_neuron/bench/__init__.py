"""`lazy-neuron bench <name>`: benchmarks that print a table and write JSON.

Each benchmark is a module `lazy_neuron.bench.<name>` with `main(argv) -> int`.
"""
from __future__ import annotations

import sys

BENCHMARKS = {
    "topk": ("lazy_neuron.bench.topk",
             "Top-k mask kernels vs copy floor, lax.top_k, approx_max_k, torch.topk"),
    "train": ("lazy_neuron.bench.train",
              "training-step throughput of a config (dense vs top-k, sparsity on/off)"),
    "input": ("lazy_neuron.bench.input",
              "input-pipeline throughput (images/s decoded from JPEG records, tokens/s of text)"),
    "attention": ("lazy_neuron.bench.attention",
                  "fused attention fwd+bwd at T5-Base shapes: what the relative-position bias costs"),
    "peers": ("lazy_neuron.bench.peers",
              "lazy_neuron vs timm ViT-B/16 / transformers T5-Base on the same GPU: ratio, MFU"),
}


def int_list(name: str, text: str, *, min: int, example: str) -> list[int]:
  """A comma list of integers from a flag (`--D=1024,3072`), each >= `min`."""
  from lazy_neuron import checks
  try:
    values = [int(v) for v in text.split(",") if v.strip()]
  except ValueError:
    values = []
  if not values or any(v < min for v in values):
    raise checks.fail(name, text, f"use a comma list of integers >= {min}, e.g. {example}")
  return values


def run_command(parse, run, argv: list[str] | None = None) -> int:
  """`run(parse(argv))`; a UserError from parsing (bad flags) is one line and exit code 2."""
  from lazy_neuron import errors
  from lazy_neuron.errors import UserError

  argv = list(sys.argv if argv is None else argv)
  try:
    args = parse(argv)
  except UserError as e:
    return errors.report(e)
  return run(args, argv)


def main(argv: list[str] | None = None) -> int:
  from lazy_neuron import cli

  argv = list(sys.argv if argv is None else argv)
  return cli.dispatch(argv, BENCHMARKS, prog=cli.prog_name(argv, "lazy-neuron bench"),
                      what="benchmark")


if __name__ == "__main__":
  sys.exit(main())
