"""`lazy-neuron bench <name>`: benchmarks that print a table and write JSON.

Each benchmark is a module `lazy_neuron.bench.<name>` with `main(argv) -> int`.
"""
from __future__ import annotations

import importlib
import sys

BENCHMARKS = {
    "topk": "Top-k mask kernels vs copy floor, lax.top_k, approx_max_k, torch.topk",
    "train": "training-step throughput of a config (dense vs top-k, sparsity on/off)",
    "input": "input-pipeline throughput (images/s decoded from JPEG records, tokens/s of text)",
}


def main(argv: list[str] | None = None) -> int:
  argv = list(sys.argv if argv is None else argv)
  if len(argv) < 2 or argv[1] in ("-h", "--help"):
    print("usage: lazy-neuron bench <name> [flags]\n\nbenchmarks:")
    for name, doc in BENCHMARKS.items():
      print(f"  {name:<8} {doc}")
    return 0 if len(argv) >= 2 else 2
  name = argv[1]
  if name not in BENCHMARKS:
    print(f"lazy-neuron bench: unknown benchmark {name!r}; valid: {', '.join(BENCHMARKS)}",
          file=sys.stderr)
    return 2
  module = importlib.import_module(f"lazy_neuron.bench.{name}")
  return module.main([f"{argv[0]} {name}"] + argv[2:]) or 0


if __name__ == "__main__":
  sys.exit(main())
