"""Checks on a workdir's paths before a command reads or writes any of them.

A run that would die on its first write (a file where `checkpoints/` belongs, a `metrics.jsonl`
that is a folder, a workdir that is a file or unwritable) must fail before it trains or evaluates
anything, with one line naming the path: `check_paths` runs first in `train` and `eval`. Remote
workdirs (gs://...) are not checked here: their permissions are known only when a write is tried.
"""
from __future__ import annotations

import json
import os
from typing import Any, Sequence

from etils import epath

from lazy_neuron.errors import UserError

# What `lazy-neuron train` writes into DIR (README.md, "Workdir").
TRAIN_FILES = ("config.json", "metrics.jsonl", "sharding_plan.txt")
TRAIN_DIRS = ("checkpoints", "checkpoints.unusable", "sparsity")


def _is_remote(workdir: str) -> bool:
  return "://" in workdir


def check_paths(workdir: str, *, files: Sequence[str] = (), dirs: Sequence[str] = (),
                reads: Sequence[str] = (), create: bool = False) -> None:
  """Raises UserError unless `workdir` is a folder (or, with `create`, can be made one) in which
  every name in `files` is a writable file or absent, every name in `dirs` a writable folder or
  absent, and every name in `reads` a readable file (a folder if it ends in "/") or absent.
  Touches nothing."""
  if not workdir:
    raise UserError("--workdir='' is not valid; give a folder path")
  if _is_remote(workdir):
    return
  if not os.path.lexists(workdir) or (os.path.islink(workdir) and not os.path.exists(workdir)):
    if not create:
      raise UserError(f"--workdir={workdir!r} does not exist; pass the --workdir of a "
                      f"`lazy-neuron train` run")
    probe = os.path.abspath(workdir)
    while not os.path.exists(probe) and os.path.dirname(probe) != probe:
      probe = os.path.dirname(probe)
    if not os.path.isdir(probe) or not os.access(probe, os.W_OK | os.X_OK):
      raise UserError(f"--workdir={workdir!r} is not writable ({probe!r} is not a writable "
                      f"directory); choose another --workdir")
    return
  if not os.path.isdir(workdir):
    raise UserError(f"--workdir={workdir!r} is a file, not a folder; choose another --workdir")
  writes = bool(files or dirs)
  if not os.access(workdir, (os.W_OK if writes else 0) | os.R_OK | os.X_OK):
    raise UserError(f"--workdir={workdir!r} is not {'writable' if writes else 'readable'}; "
                    f"fix its permissions or choose another --workdir")
  for name in files:
    path = os.path.join(workdir, name)
    if os.path.isdir(path):
      raise UserError(f"{path!r} is a folder where a file belongs; move it away or use a new "
                      f"--workdir")
    if os.path.lexists(path) and not os.access(path, os.R_OK | os.W_OK):
      raise UserError(f"{path!r} is not writable; fix its permissions or use a new --workdir")
    _check_parent(workdir, name)
  for name in dirs:
    path = os.path.join(workdir, name)
    if os.path.lexists(path) and not os.path.isdir(path):
      raise UserError(f"{path!r} is a file where a folder belongs; move it away or use a new "
                      f"--workdir")
    if os.path.isdir(path) and not os.access(path, os.W_OK | os.X_OK):
      raise UserError(f"{path!r} is not writable; fix its permissions or use a new --workdir")
  for name in reads:
    folder = name.endswith("/")
    path = os.path.join(workdir, name.rstrip("/"))
    if os.path.lexists(path) and os.path.isdir(path) != folder:
      raise UserError(f"{path!r} is a {'file' if folder else 'folder'} where a "
                      f"{'folder' if folder else 'file'} belongs; move it away or use a new "
                      f"--workdir")
    if os.path.lexists(path) and not os.access(path, os.R_OK | (os.X_OK if folder else 0)):
      raise UserError(f"{path!r} is not readable; fix its permissions")


def _check_parent(workdir: str, name: str) -> None:
  """`sparsity/step_4.npz`: its folder must be a folder too."""
  parent = os.path.dirname(name)
  if parent and os.path.lexists(os.path.join(workdir, parent)) and \
      not os.path.isdir(os.path.join(workdir, parent)):
    raise UserError(f"{os.path.join(workdir, parent)!r} is a file where a folder belongs; move "
                    f"it away or use a new --workdir")


def read_config_json(path: epath.Path) -> dict[str, Any]:
  """A workdir's config.json as a dict; anything else (torn, not UTF-8, not an object) is a
  UserError naming the file."""
  try:
    data = json.loads(path.read_bytes().decode("utf-8"))
  except (ValueError, OSError) as e:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
    raise UserError(f"{os.fspath(path)!r} is not a readable JSON config ({type(e).__name__}); "
                    f"move it away or use a new --workdir") from None
  if not isinstance(data, dict):
    raise UserError(f"{os.fspath(path)!r} holds a JSON {type(data).__name__}, not a config object; "
                    f"move it away or use a new --workdir")
  return data
