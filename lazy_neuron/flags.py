"""Flag parsing shared by every command: argparse, one-line errors, `--config.KEY=VALUE` overrides.

Every `lazy-neuron <command>` builds its flags with `parser(...)` and reads them with `parse(...)`:
`--flag value` and `--flag=value` both work, abbreviations and unknown flags are refused, a flag
given twice is refused (argparse would silently keep the last), and every mistake is one
`UserError` line naming the flag and `--help` (exit 2), instead of argparse's usage block.

Why argparse and not absl + `ml_collections.config_flags` (the big_vision convention): absl's
FLAGS is one process-wide registry, so several subcommands (and tests or notebooks that call
`main()` repeatedly) would share and re-define one namespace, and absl/config_flags report errors
as multi-line usage text. The override syntax is the same as config_flags' (`--config=path:arg
--config.key=value`), typed from the config's current values by `config_lib.apply_overrides`.
"""
from __future__ import annotations

import argparse
from typing import Optional, Sequence

from lazy_neuron.errors import UserError


class ArgumentParser(argparse.ArgumentParser):
  """argparse with one-line errors (UserError) and no abbreviations."""

  def __init__(self, *args, **kwargs):
    kwargs.setdefault("allow_abbrev", False)
    super().__init__(*args, **kwargs)

  def error(self, message: str):  # argparse's usage block + exit(2) -> one line, exit 2
    raise UserError(f"{message}; see {self.prog} --help")


def parser(prog: str, description: str = "", **kwargs) -> ArgumentParser:
  return ArgumentParser(prog=prog, description=description,
                        formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs)


def _flag_name(arg: str) -> Optional[str]:
  if not arg.startswith("--") or arg == "--":
    return None
  return arg[2:].partition("=")[0]


def _check_repeats(p: argparse.ArgumentParser, args: Sequence[str]) -> None:
  """A flag given twice is an error (argparse keeps the last one silently); `append` flags and
  `--config.KEY` overrides of different keys may repeat."""
  repeatable = {opt for a in p._actions if isinstance(a, argparse._AppendAction)
                for opt in a.option_strings}
  seen: set[str] = set()
  for arg in args:
    name = _flag_name(arg)
    if name is None or f"--{name}" in repeatable:
      continue
    # Two spellings of one flag (--batch-size / --batch_size) count as the same flag.
    key = name.replace("-", "_")
    if key in seen:
      raise UserError(f"flag --{name} is given twice; give it once (see {p.prog} --help)")
    seen.add(key)


def parse(p: argparse.ArgumentParser, argv: Sequence[str], *,
          config_overrides: bool = False) -> tuple[argparse.Namespace, list[str]]:
  """Parses `argv` (without the program name). Returns (namespace, overrides).

  With `config_overrides`, `--config.a.b=v` and `--config.a.b v` are collected as "config.a.b=v"
  strings for `config_lib.apply_overrides`; without, they are unknown flags like any other.
  """
  args = list(argv)
  _check_repeats(p, args)
  overrides: list[str] = []
  rest: list[str] = []
  i = 0
  while i < len(args):
    name = _flag_name(args[i])
    if config_overrides and name is not None and name.startswith("config."):
      _, sep, value = args[i][2:].partition("=")
      if not sep:
        if i + 1 >= len(args):
          raise UserError(f"flag --{name} needs a value: --{name}=VALUE")
        value, i = args[i + 1], i + 1
      overrides.append(f"{name}={value}")
    else:
      rest.append(args[i])
    i += 1
  return p.parse_args(rest), overrides
