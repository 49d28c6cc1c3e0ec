"""Atomic file writes, local or remote (gs://): the one helper every writer uses.

A reader (a resumed run, `report`, a notebook) must never see a torn file: the data is written to
`<name>.tmp-<random>` beside the target and renamed over it. On a local filesystem the rename is
atomic; on object stores (gs://) epath's rename is a copy + delete, so a reader sees the old or the
new object, never a partial one.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
import uuid
from typing import Callable, Union

from etils import epath


def write_atomic(path: Union[str, os.PathLike, epath.Path], data: Union[bytes, str]) -> None:
  """Writes `data` (bytes, or str as UTF-8) to `path` atomically, creating its parent folder."""
  p = epath.Path(path)
  p.parent.mkdir(parents=True, exist_ok=True)
  tmp = p.parent / f"{p.name}.tmp-{uuid.uuid4().hex[:8]}"
  try:
    tmp.write_bytes(data.encode() if isinstance(data, str) else data)
    tmp.replace(p)
  except BaseException:
    with contextlib.suppress(Exception):
      tmp.unlink()
    raise


def write_local_atomic(path: str, write: Callable[[str], None]) -> None:
  """Calls `write(tmp_path)` for a writer that needs a real local file name (sentencepiece, numpy),
  then renames the result to `path` atomically."""
  folder = os.path.dirname(path) or "."
  os.makedirs(folder, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
  os.close(fd)
  try:
    write(tmp)
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(OSError):
      os.remove(tmp)
    raise
