"""The on-disk cache of derived data (corpus, tokenizer, token streams, TFDS data dir).

Location: `data.cache_dir`, else `$LAZY_NEURON_CACHE`, else `~/.cache/lazy_neuron`. Every file is
written atomically (temporary file in the same folder, then `os.replace`), and expensive artefacts are
built under an exclusive file lock, so concurrent processes or a killed run never leave a corrupt cache.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
from typing import Any, Callable, Iterator

from lazy_neuron import fileio

try:
  import fcntl
except ImportError:  # pragma: no cover - non-POSIX
  fcntl = None


def cache_dir(configured: str | None = None) -> str:
  path = configured or os.environ.get("LAZY_NEURON_CACHE") or os.path.join(
      os.path.expanduser("~"), ".cache", "lazy_neuron")
  return os.path.abspath(os.path.expanduser(path))


def fingerprint(obj: Any, length: int = 16) -> str:
  """A short stable hash of a JSON-serialisable object."""
  blob = json.dumps(obj, sort_keys=True, default=str).encode()
  return hashlib.sha256(blob).hexdigest()[:length]


@contextlib.contextmanager
def locked(path: str) -> Iterator[None]:
  """An exclusive inter-process lock on `path + '.lock'` (a no-op where fcntl is missing)."""
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  if fcntl is None:  # pragma: no cover
    yield
    return
  with open(path + ".lock", "a") as f:
    fcntl.flock(f.fileno(), fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def cached(path: str, build: Callable[[str], None]) -> str:
  """Returns `path`, first building it with `build(tmp_path)` under a lock if it does not exist."""
  if os.path.exists(path):
    return path
  with locked(path):
    if not os.path.exists(path):  # another process may have built it while we waited
      fileio.write_local_atomic(path, build)
  return path
