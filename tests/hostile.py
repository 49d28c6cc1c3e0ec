"""Helpers for hostile-input tests: run a command's `main(argv)` in this process and check the error
contract — exit code 2, exactly one stderr line with the command's prefix, and no file created,
changed or removed in the folders it was pointed at.

  snap = hostile.snapshot(tmp_path)
  line = hostile.refuses(train.main, ["lazy-neuron train", "--config=...", ...], capsys, snap)
  assert "batch_size" in line
"""
from __future__ import annotations

import hashlib
import os
from typing import Callable, Optional, Sequence

PREFIX = "lazy-neuron: error: "


class Snapshot(dict):
  """path -> (kind, sha256 of the bytes for files), for everything below `roots`."""
  roots: tuple[str, ...] = ()


def snapshot(*roots: os.PathLike) -> Snapshot:
  """Every file and folder below `roots` (a root that does not exist is recorded as missing)."""
  out = Snapshot()
  out.roots = tuple(os.fspath(r) for r in roots)
  for root in roots:
    root = os.fspath(root)
    if not os.path.lexists(root):
      out[root] = ("missing", "")
      continue
    if not os.path.isdir(root):
      out[root] = ("file", _digest(root))
      continue
    out[root] = ("dir", "")
    for folder, dirs, files in os.walk(root):
      for d in dirs:
        out[os.path.join(folder, d)] = ("dir", "")
      for f in files:
        path = os.path.join(folder, f)
        out[path] = ("file", _digest(path)) if not os.path.islink(path) else ("link", "")
  return out


def _digest(path: str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()


def changes(before: dict, after: dict) -> list[str]:
  """Human-readable differences between two snapshots (empty when nothing changed)."""
  diffs = [f"created {p}" for p in sorted(set(after) - set(before))]
  diffs += [f"removed {p}" for p in sorted(set(before) - set(after))]
  diffs += [f"changed {p}" for p in sorted(set(before) & set(after)) if before[p] != after[p]]
  return diffs


def refuses(main: Callable[[Sequence[str]], Optional[int]], argv: Sequence[str], capsys,
            snap: Optional[Snapshot] = None, *, prefix: str = PREFIX, code: int = 2) -> str:
  """Runs `main(argv)`, asserts the one-line error contract, returns the error line.

  `snap` (from `snapshot(...)` before the call): the same roots must be byte-identical after it.
  """
  capsys.readouterr()  # drop what earlier calls printed
  try:
    rc = main(list(argv))
  except SystemExit as e:  # argparse's --help path, or a command that exits itself
    rc = e.code
  captured = capsys.readouterr()
  lines = captured.err.splitlines()
  assert rc == code, f"exit {rc} (want {code}) for {list(argv)}; stderr:\n{captured.err}"
  assert len(lines) == 1 and lines[0].startswith(prefix), (
      f"want exactly one stderr line starting {prefix!r} for {list(argv)}; got:\n{captured.err}")
  if snap is not None:
    diff = changes(snap, snapshot(*snap.roots))
    assert not diff, f"{list(argv)} changed the filesystem: {diff[:10]}"
  return lines[0]
