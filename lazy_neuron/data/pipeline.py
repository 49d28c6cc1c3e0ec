"""Deterministic, checkpointable batch pipelines on grain `MapDataset`s.

Every source is index-based: a batch is a pure function of the *global example indices* it holds (and
of the record each index maps to), so the stream depends only on the seed, and an iterator restored
from `get_state()` yields exactly the batches the original would have yielded next.

Train: `range(N).shuffle(seed).repeat()` (reshuffled every epoch) paired with the global example index,
sliced `[process_index::process_count]` (disjoint shards that together cover the stream), batched,
then one vectorised numpy function per batch. Eval: the N held-out examples padded to a whole number
of global batches; padded rows are zeros with `mask == 0`.
"""
from __future__ import annotations

import math
import os
from typing import Any, Callable

import numpy as np

from lazy_neuron import checks
from lazy_neuron.errors import UserError

STATE_VERSION = 1
_INFINITE = 2**62  # the number of examples of an "infinite" generated source

# --- counter-based random numbers --------------------------------------------------------------------
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix(x: np.ndarray) -> np.ndarray:
  """splitmix64's finaliser (vectorised, wrapping uint64 arithmetic)."""
  x = x + _GOLDEN
  x = (x ^ (x >> np.uint64(30))) * _M1
  x = (x ^ (x >> np.uint64(27))) * _M2
  return x ^ (x >> np.uint64(31))


def random_bits(seed: int, stream: int, index: np.ndarray, size: int) -> np.ndarray:
  """uint64 [len(index), size] random bits that depend only on (seed, stream, index, position)."""
  with np.errstate(over="ignore"):
    key = _mix(np.uint64(seed % 2**64) ^ _mix(np.uint64(stream % 2**64)))
    row = _mix(key ^ np.asarray(index, dtype=np.uint64).reshape(-1))
    return _mix(row[:, None] ^ _mix(np.arange(size, dtype=np.uint64))[None, :])


def random_uniform(seed: int, stream: int, index: np.ndarray, size: int) -> np.ndarray:
  """float64 uniform in [0, 1), shape [len(index), size]."""
  return (random_bits(seed, stream, index, size) >> np.uint64(11)).astype(np.float64) * 2.0**-53


def random_normal(seed: int, stream: int, index: np.ndarray, size: int) -> np.ndarray:
  """float64 standard normal (Box-Muller), shape [len(index), size]."""
  half = (size + 1) // 2
  u = random_uniform(seed, stream, index, 2 * half)
  u1, u2 = 1.0 - u[:, :half], u[:, half:]  # u1 in (0, 1]
  r = np.sqrt(-2.0 * np.log(u1))
  z = np.concatenate([r * np.cos(2 * np.pi * u2), r * np.sin(2 * np.pi * u2)], axis=1)
  return z[:, :size]


# --- iterators ----------------------------------------------------------------------------------------
class DataIterator:
  """An iterator of batches (dict[str, np.ndarray] of fixed shapes) with checkpointable state.

  Attributes:
    element_spec: {key: (shape, dtype)} of this process's batches.
    num_batches: the number of batches (eval), or None (train: infinite).
  """

  def __init__(self, dataset, *, fingerprint: dict[str, Any], element_spec, num_batches=None,
               num_threads: int = 1, prefetch: int = 4, num_workers: int = 0):
    import grain

    self._dataset = dataset
    self._fingerprint = fingerprint
    self.element_spec = element_spec
    self.num_batches = num_batches
    num_workers = usable_cores() if num_workers == -1 else int(num_workers)
    if num_threads > 0 and prefetch > 0 and not num_workers:
      # A buffer smaller than the thread count would leave threads idle (grain warns).
      options = grain.ReadOptions(num_threads=num_threads,
                                  prefetch_buffer_size=max(prefetch, num_threads))
    else:
      options = grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)
    if not isinstance(dataset, grain.IterDataset):  # an IterDataset already: packed text
      dataset = dataset.to_iter_dataset(options)
    if num_workers:
      # Worker w computes batches w, w + W, ...; grain interleaves them back in order, so the stream
      # (and the state) does not depend on the number of workers.
      from absl import flags

      if not flags.FLAGS.is_parsed():  # grain reads absl flags in its workers
        flags.FLAGS.mark_as_parsed()
      # Two batches per worker at least: one being handed over while the next is computed.
      dataset = dataset.mp_prefetch(grain.MultiprocessingOptions(
          num_workers=num_workers, per_worker_buffer_size=max(2, -(-prefetch // num_workers))))
    self._iterator = iter(dataset)
    self._one_pass = bool(fingerprint.get("one_pass")) and fingerprint.get("split") == "train"

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    try:
      return next(self._iterator)
    except StopIteration:
      if self._one_pass:
        raise UserError(f"data.one_pass: the training data of {self._fingerprint.get('name')!r} is "
                        "exhausted (every example was used once); lower total_steps or unset "
                        "data.one_pass") from None
      raise

  def close(self) -> None:
    """Stops grain's threads / worker processes and frees their shared memory (idempotent)."""
    close = getattr(self._iterator, "close", None)
    if close is not None:
      close()

  def __enter__(self):
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  def __len__(self) -> int:
    if self.num_batches is None:
      raise TypeError("a train iterator is infinite")
    return self.num_batches

  def get_state(self) -> dict[str, Any]:
    """A JSON-serialisable dict; `set_state` on a fresh iterator resumes exactly here."""
    return {"version": STATE_VERSION, "fingerprint": dict(self._fingerprint),
            "grain": self._iterator.get_state()}

  def set_state(self, state: dict[str, Any]) -> None:
    if not isinstance(state, dict) or state.get("version") != STATE_VERSION or "grain" not in state:
      raise UserError(f"data iterator state {str(state)[:200]!r} is not a lazy_neuron data state "
                      f"(version {STATE_VERSION})")
    saved = state.get("fingerprint", {})
    diff = {k: (saved.get(k), v) for k, v in self._fingerprint.items() if saved.get(k) != v}
    if diff:
      what = ", ".join(f"{k}: saved {a!r}, now {b!r}" for k, (a, b) in sorted(diff.items()))
      raise UserError(f"data iterator state does not match this data pipeline ({what}); resume with "
                      "the data config, seed, batch size and process count the state was saved with")
    self._iterator.set_state(state["grain"])


def usable_cores() -> int:
  """CPU cores this process may run on (its affinity mask; a container's limit on some hosts)."""
  try:
    return max(1, len(os.sched_getaffinity(0)))
  except AttributeError:  # not Linux
    return max(1, os.cpu_count() or 1)


def check_batch(batch_size: int, process_index: int, process_count: int) -> int:
  batch_size = checks.integer("batch_size", batch_size, min=1)
  process_count = checks.integer("process_count", process_count, min=1)
  checks.integer("process_index", process_index, min=0, max=process_count - 1)
  if batch_size % process_count:
    raise checks.fail("batch_size", batch_size, f"it is not divisible by the process count "
                                                f"{process_count}; use a multiple of {process_count}")
  return batch_size // process_count


def train_dataset(num_records: int | None, make_batch: Callable[[np.ndarray, np.ndarray], dict],
                  *, seed: int, per_process: int, process_index: int, process_count: int,
                  one_pass: bool = False):
  """Infinite: batches of `make_batch(global_indices, record_indices)`.

  With `num_records=None` the source is generated (never repeats): record index == global index.
  `one_pass`: every record once (shuffled), then the dataset ends (`num_records // batch` batches).
  """
  import grain

  if num_records is None:
    ds = grain.MapDataset.range(_INFINITE).map(lambda i: (np.int64(i), np.int64(i)))
  else:
    ds = grain.MapDataset.range(num_records).shuffle(seed=seed % 2**32)
    if not one_pass:
      ds = ds.repeat()
    ds = ds.map_with_index(lambda i, r: (np.int64(i), np.int64(r)))
  ds = ds[process_index::process_count]
  ds = ds.batch(per_process, drop_remainder=True)
  return ds.map(lambda ir: make_batch(np.asarray(ir[0]), np.asarray(ir[1])))


def eval_dataset(num_examples: int, make_batch, *, per_process: int, process_index: int,
                 process_count: int):
  """Finite: every example exactly once, padded to whole global batches; adds "mask".

  `make_batch` is one function `(global_indices, record_indices) -> batch`, or a sequence of them:
  then the eval set is read once per function, function-major in one dataset (batches
  [j * num_batches, (j + 1) * num_batches) are function j's), so one iterator (one pool of threads
  or worker processes) serves every pass. Returns (dataset, num_batches of one pass).
  """
  import grain

  global_batch = per_process * process_count
  num_batches = max(1, math.ceil(num_examples / global_batch))

  def padded(indices, make=make_batch):
    indices = np.asarray(indices, dtype=np.int64)
    real = indices < num_examples
    safe = np.where(real, indices, 0)
    batch = make(safe, safe)
    out = {}
    for key, value in batch.items():
      value = np.array(value)  # a copy we may zero
      value[~real] = 0
      out[key] = value
    out["mask"] = real.astype(np.float32)
    return out

  ds = grain.MapDataset.range(num_batches * global_batch)[process_index::process_count]
  ds = ds.batch(per_process, drop_remainder=True)
  if callable(make_batch):
    return ds.map(padded), num_batches
  makers = tuple(make_batch)
  # Pass-major over (function, batch): element k is batch k % num_batches of pass k // num_batches,
  # read by random access into the index batches `ds`.
  def pass_batch(k):
    j, b = divmod(int(k), num_batches)
    return padded(ds[b], makers[j])

  return grain.MapDataset.range(len(makers) * num_batches).map(pass_batch), num_batches


def spec_of(batch: dict[str, np.ndarray]) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
  return {k: (tuple(v.shape), v.dtype) for k, v in batch.items()}
