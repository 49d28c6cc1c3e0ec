"""Checks of the paths a command will write, made before it does any work.

Every command that writes (`report --out`, `bench --out/--dir`, `tokenizer --out`, `convert
--out_dir`) calls these right after parsing its flags, so a bad output path is one
`lazy-neuron: error: ...` line and exit code 2 with nothing written, instead of a traceback after
minutes of work. Messages have the one shape of `lazy_neuron.checks`.

Local paths are checked for real: the nearest existing folder on the way must be a folder (not a
file) in which this process can create a file (probed with an unnamed O_TMPFILE where the OS has it,
so nothing appears in the folder even for a moment). Remote paths (gs://...) are only checked for
"a file where a folder belongs" and the reverse, which costs one metadata call.
"""
from __future__ import annotations

import errno
import os
import tempfile

from lazy_neuron import checks


def _remote(path: str) -> bool:
  return "://" in path


def _exists(path: str):
  """(epath of `path`, whether it exists); a missing gcsfs or an unreachable bucket is a UserError."""
  from lazy_neuron import results  # lazily: gs:// support pulls in gcsfs only when used

  p = results._path(path)
  return p, results.exists(p)


def _nearest_existing(path: str) -> str:
  probe = os.path.abspath(path)
  while not os.path.lexists(probe):
    parent = os.path.dirname(probe)
    if parent == probe:
      break
    probe = parent
  return probe


def _can_create_in(folder: str) -> bool:
  """Whether a file can be created in `folder`: os.access says yes for root even on read-only
  mounts and /proc, so a real (unnamed, immediately closed) temporary file is the only honest probe."""
  if not os.access(folder, os.W_OK | os.X_OK):
    return False
  try:
    with tempfile.TemporaryFile(dir=folder):
      return True
  except OSError:
    return False


def _check_parent(name: str, path: str, what: str) -> None:
  """The folder `path` goes into (made where missing) must be creatable and writable."""
  try:
    os.stat(path)
  except OSError as e:  # a name the filesystem refuses fails here, not after the work
    if e.errno in (errno.ENAMETOOLONG, errno.EINVAL):
      raise checks.fail(name, path, f"the filesystem refuses this name ({e.strerror}); "
                                    "give a shorter path") from None
  except ValueError:  # an embedded NUL byte
    raise checks.fail(name, path, "it holds a NUL character; give a plain path") from None
  base = _nearest_existing(os.path.dirname(os.path.abspath(path)))
  if not os.path.isdir(base):
    raise checks.fail(name, path, f"{base} is a file, so no {what} can be made below it; "
                                  "give a path in a writable folder")
  if not _can_create_in(base):
    raise checks.fail(name, path, f"{base} is not writable; give a path in a writable folder")


def folder(name: str, path: object) -> str:
  """An output folder: missing (it will be made) or an existing folder this process can write."""
  path = checks.string(name, path)
  if _remote(path):
    p, exists = _exists(path)
    if exists and not p.is_dir():
      raise checks.fail(name, path, "it is an existing file; give a folder")
    return path
  local = os.path.expanduser(path)
  if os.path.lexists(local) and not os.path.isdir(local):
    raise checks.fail(name, path, "it is an existing file; give a folder (missing folders are made)")
  if os.path.isdir(local):
    if not _can_create_in(local):
      raise checks.fail(name, path, "the folder is not writable; give a writable folder")
    return path
  _check_parent(name, local, "folder")
  return path


def file(name: str, path: object, *, overwrite: bool = True, why: str = "") -> str:
  """An output file: not a folder; its folder writable (missing folders are made). With
  `overwrite=False`, an existing file is refused (`why` says what overwriting would break)."""
  path = checks.string(name, path)
  if _remote(path):
    p, exists = _exists(path)
    if exists and p.is_dir():
      raise checks.fail(name, path, "it is a folder; give a file path")
    if not overwrite and exists:
      raise checks.fail(name, path, f"it exists{why}; remove it first or give another path")
    return path
  local = os.path.expanduser(path)
  if os.path.isdir(local):
    raise checks.fail(name, path, "it is a folder; give a file path")
  if path.endswith(os.sep):
    raise checks.fail(name, path, "it ends in a path separator; give a file path")
  if os.path.lexists(local):
    if not overwrite:
      raise checks.fail(name, path, f"it exists{why}; remove it first or give another path")
    if not os.access(local, os.W_OK) or not _can_create_in(os.path.dirname(os.path.abspath(local))):
      raise checks.fail(name, path, "it cannot be replaced (not writable); give another path")
    return path
  _check_parent(name, local, "file")
  return path
