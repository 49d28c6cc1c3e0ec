"""User-facing errors: one line naming the bad value and what is valid; exit code 2."""
from __future__ import annotations


class UserError(ValueError):
  """Bad input from the user (config, flags, data, checkpoints).

  The CLI prints `lazy-neuron: error: <message>` on one line and exits with code 2, before any work
  starts and before anything is written into the workdir. Messages must name the bad value and what
  would be valid, e.g. "model.activation='rleu' is not valid; choose one of relu, gelu, relu2, silu".
  """

  def __init__(self, message: str):
    super().__init__(" ".join(str(message).split()))  # always one line


EXIT_USAGE = 2


def report(e: UserError) -> int:
  """Prints the CLI's one error line for `e` to stderr; returns the exit code (2)."""
  import sys

  print(f"lazy-neuron: error: {e}", file=sys.stderr)
  return EXIT_USAGE
