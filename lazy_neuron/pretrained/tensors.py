"""Reading checkpoint tensors lazily, region by region, into lazy_neuron's parameter layout.

A converted checkpoint is a dict {parameter path: Leaf}. A Leaf knows its (lazy_neuron) shape and
reads any rectangular region of itself from the source file: `jax.make_array_from_callback` asks
each device for its shard's region only, so a sharded model is read straight into its sharding and
no host buffer or device ever holds the whole model (`materialize`). Safetensors files are memory
mapped and sliced (`safe_open(...).get_slice`); a torch Linear weight [out, in] becomes a Flax
kernel [in, out] (optionally with the out or in axis split into (heads, head_dim)) by reading the
transposed region, so a shard of a 65536-wide MLP reads only its columns.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable, Mapping, Optional, Sequence

import jax
import numpy as np

from lazy_neuron.errors import UserError

Index = tuple[slice, ...]


def _norm(index: Index, shape: Sequence[int]) -> list[tuple[int, int]]:
  out = []
  for sl, n in zip(tuple(index) + (slice(None),) * (len(shape) - len(index)), shape):
    start, stop, step = sl.indices(n)
    if step != 1:
      raise ValueError(f"strided shard index {sl} is not supported")
    out.append((start, stop))
  return out


@dataclasses.dataclass
class Leaf:
  """One parameter: its shape and `read(bounds) -> np.ndarray` for [(start, stop)] per axis."""
  shape: tuple[int, ...]
  read: Callable[[list[tuple[int, int]]], np.ndarray]
  source: str  # the source tensor name(s), for messages

  def region(self, index: Index) -> np.ndarray:
    return np.asarray(self.read(_norm(index, self.shape)), np.float32)

  def full(self) -> np.ndarray:
    return self.region(tuple(slice(None) for _ in self.shape))


class TensorFile:
  """Named tensors of a checkpoint: `.shape(name)`, `.read(name, bounds)`, `.names`."""

  def __init__(self, path: str):
    self.path = path
    self.names: list[str] = []

  def shape(self, name: str) -> tuple[int, ...]:
    raise NotImplementedError

  def read(self, name: str, bounds: list[tuple[int, int]]) -> np.ndarray:
    raise NotImplementedError

  def has(self, name: str) -> bool:
    return name in self._set

  @property
  def _set(self) -> set:
    if not hasattr(self, "_names_set"):
      self._names_set = set(self.names)
    return self._names_set


class SafetensorsFiles(TensorFile):
  """model.safetensors, or the shards listed by model.safetensors.index.json."""

  def __init__(self, directory: str, files: Sequence[str]):
    super().__init__(directory)
    from safetensors import safe_open
    self._where: dict[str, str] = {}
    self._open: dict[str, Any] = {}
    for f in files:
      path = os.path.join(directory, f)
      if not os.path.isfile(path):
        raise UserError(f"checkpoint {directory!r} is incomplete: its index lists {f!r}, which is "
                        f"missing; download every shard")
      try:
        handle = safe_open(path, framework="numpy")
      except Exception as e:  # noqa: BLE001 - safetensors raises its own error types
        raise UserError(f"{path!r} is not a readable safetensors file ({type(e).__name__}); "
                        f"download it again") from None
      self._open[path] = handle
      for name in handle.keys():
        self._where[name] = path
    self.names = sorted(self._where)

  def shape(self, name: str) -> tuple[int, ...]:
    return tuple(self._open[self._where[name]].get_slice(name).get_shape())

  def read(self, name: str, bounds: list[tuple[int, int]]) -> np.ndarray:
    sl = self._open[self._where[name]].get_slice(name)
    index = tuple(slice(a, b) for a, b in bounds)
    if sl.get_dtype() in ("BF16", "F8_E4M3", "F8_E5M2"):
      # numpy has no bfloat16: read this region through the flax backend (ml_dtypes), as float32.
      from safetensors import safe_open
      with safe_open(self._where[name], framework="flax") as f:
        return np.asarray(jax.device_get(f.get_slice(name)[index]), np.float32)
    return sl[index]


class NpzFile(TensorFile):
  """A big_vision / vision_transformer .npz: {"a/b/c": array}. Read per array (npz is a zip)."""

  def __init__(self, path: str):
    super().__init__(path)
    try:
      self._npz = np.load(path, allow_pickle=False)
      self.names = sorted(self._npz.files)
    except Exception as e:  # noqa: BLE001 - zip / pickle / format errors
      raise UserError(f"{path!r} is not a readable .npz checkpoint ({type(e).__name__}); "
                      f"download it again") from None
    self._cache: dict[str, np.ndarray] = {}

  def _get(self, name: str) -> np.ndarray:
    if name not in self._cache:
      self._cache = {name: self._npz[name]}  # one array at a time
    return self._cache[name]

  def shape(self, name: str) -> tuple[int, ...]:
    return tuple(self._get(name).shape)

  def read(self, name: str, bounds: list[tuple[int, int]]) -> np.ndarray:
    return self._get(name)[tuple(slice(a, b) for a, b in bounds)]


def read_json(path: str) -> dict:
  try:
    with open(path, encoding="utf-8") as f:
      data = json.load(f)
  except (OSError, ValueError) as e:
    raise UserError(f"{path!r} is not a readable JSON file ({type(e).__name__})") from None
  if not isinstance(data, dict):
    raise UserError(f"{path!r} holds a JSON {type(data).__name__}, not an object")
  return data


# ------------------------------------------------------------------------------------- converters
def expect(f: TensorFile, name: str, shape: Sequence[int], what: str) -> None:
  """A tensor that must exist with `shape` (derived from the other weights and config.json)."""
  if not f.has(name):
    raise UserError(f"checkpoint {f.path!r} is incomplete: it has no tensor {name!r} ({what}); "
                    f"download the whole checkpoint")
  got = f.shape(name)
  if got != tuple(shape):
    raise UserError(f"checkpoint {f.path!r}: tensor {name!r} has shape {got}, but the other "
                    f"weights and config.json give {tuple(shape)} ({what}); the files contradict "
                    f"each other")


def copy(f: TensorFile, name: str, shape: Sequence[int], what: str = "") -> Leaf:
  """The tensor as it is (reshaped to `shape`, same number of elements: read whole, it is small
  when a reshape is needed: norms, biases, position embeddings)."""
  src = f.shape(name) if f.has(name) else None
  if src is not None and int(np.prod(src)) == int(np.prod(shape)) and src != tuple(shape):
    return Leaf(tuple(shape), lambda b: f.read(name, [(0, n) for n in src]).reshape(shape)[
        tuple(slice(x, y) for x, y in b)], name)
  expect(f, name, shape, what)
  return Leaf(tuple(shape), lambda b: f.read(name, b), name)


def linear(f: TensorFile, name: str, d_in: int, d_out: int, *, rows: tuple[int, int] = None,
           split_out: Optional[int] = None, split_in: Optional[int] = None,
           what: str = "", stored: str = "torch") -> Leaf:
  """A Linear weight as a Flax kernel [in, out], [in, heads, out/heads] (`split_out=heads`) or
  [heads, in/heads, out] (`split_in=heads`). `stored="torch"`: the weight is [out, in] (`rows` =
  (offset, count) of a fused [3*out, in] weight); `stored="flax"`: a 2-D kernel [in, out] already
  (T5X stores its attention kernels with the heads joined). Reads only the region asked for."""
  off, count = rows if rows is not None else (0, d_out)
  if rows is None:
    expect(f, name, (d_out, d_in) if stored == "torch" else (d_in, d_out), what)
  if split_out:
    shape = (d_in, split_out, d_out // split_out)
  elif split_in:
    shape = (split_in, d_in // split_in, d_out)
  else:
    shape = (d_in, d_out)

  def kernel(outs: tuple[int, int], ins: tuple[int, int]) -> np.ndarray:  # region as [in, out]
    if stored == "torch":
      return f.read(name, [(off + outs[0], off + outs[1]), ins]).T
    return f.read(name, [ins, outs])

  def read(b):
    if split_out:
      (i0, i1), (h0, h1), (k0, k1) = b
      hd = d_out // split_out
      return kernel((h0 * hd, h1 * hd), (i0, i1)).reshape(i1 - i0, h1 - h0, hd)[:, :, k0:k1]
    if split_in:
      (h0, h1), (k0, k1), (o0, o1) = b
      hd = d_in // split_in
      return kernel((o0, o1), (h0 * hd, h1 * hd)).reshape(h1 - h0, hd, o1 - o0)[:, k0:k1, :]
    return kernel(*b[::-1])

  return Leaf(shape, read, name)


def vector(f: TensorFile, name: str, n: int, *, rows: tuple[int, int] = None,
           split: Optional[int] = None, what: str = "") -> Leaf:
  """A bias [n] (or rows of a fused [3n] bias), optionally as [heads, n/heads]."""
  off = rows[0] if rows is not None else 0
  if rows is None:
    expect(f, name, (n,), what)
  if split:
    hd = n // split
    return Leaf((split, hd), lambda b: f.read(name, [(off + b[0][0] * hd, off + b[0][1] * hd)])
                .reshape(-1, hd)[:, b[1][0]:b[1][1]], name)
  return Leaf((n,), lambda b: f.read(name, [(off + b[0][0], off + b[0][1])]), name)


def zeros(shape: Sequence[int], why: str) -> Leaf:
  return Leaf(tuple(shape), lambda b: np.zeros([y - x for x, y in b], np.float32), why)


def computed(shape: Sequence[int], fn: Callable[[], np.ndarray], source: str) -> Leaf:
  """A small parameter computed from whole source tensors (e.g. class token + its position)."""
  return Leaf(tuple(shape), lambda b: fn()[tuple(slice(x, y) for x, y in b)], source)


def padded_rows(f: TensorFile, name: str, shape: Sequence[int], rows: int, axis: int = 0) -> Leaf:
  """An embedding [rows, d] stored with its first `rows` rows (or, `axis=1`, an output kernel
  [d, rows] with its first `rows` columns); the rest (vocabulary padding to a multiple of 128)
  are zeros."""

  def read(b):
    out = np.zeros([y - x for x, y in b], np.float32)
    lo, hi = b[axis]
    if lo < rows:
      src = list(b)
      src[axis] = (lo, min(hi, rows))
      where = [slice(None)] * len(b)
      where[axis] = slice(0, min(hi, rows) - lo)
      out[tuple(where)] = f.read(name, src)
    return out

  return Leaf(tuple(shape), read, name)


def transposed(leaf: Leaf) -> Leaf:
  """A 2-D leaf transposed (the untied T5 output matrix: [vocab, d] stored, [d, vocab] used)."""
  return Leaf(leaf.shape[::-1], lambda b: leaf.read(b[::-1]).T, leaf.source)


def stacked(leaves: Sequence[Leaf]) -> Leaf:
  """Per-layer leaves as one [layers, ...] leaf (model.scan_layers)."""
  first = leaves[0]
  return Leaf((len(leaves),) + first.shape,
              lambda b: np.stack([leaves[i].read(b[1:]) for i in range(*b[0])]), first.source)


# ------------------------------------------------------------------------------------ placement
def nest(flat: Mapping[str, Any]) -> dict:
  out: dict = {}
  for path, value in flat.items():
    node = out
    *scopes, last = path.split("/")
    for s in scopes:
      node = node.setdefault(s, {})
    node[last] = value
  return out


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  out = {}
  for k, v in tree.items():
    if isinstance(v, Mapping):
      out.update(flatten(v, f"{prefix}{k}/"))
    else:
      out[f"{prefix}{k}"] = v
  return out


def materialize(leaves: Mapping[str, Leaf], abstract: Any, shardings: Any, model: Any,
                where: str) -> Any:
  """The parameter tree of `abstract` (the model's, unrolled or scanned) filled from `leaves`
  (unrolled paths), each array built shard by shard in `shardings`. A parameter the checkpoint
  does not provide, or one it provides with another shape, is a UserError naming both."""
  from lazy_neuron.models import stacking
  # Stacking a tree of path strings gives, per scanned parameter, the array of its layers' paths.
  paths = nest({p: p for p in leaves})
  if model.sizes.get("scan_layers"):
    paths = stacking.stack_layers(paths, model)
  want = flatten(jax.tree.map(lambda a: a, abstract))
  have = flatten(paths)
  missing = sorted(set(want) - set(have))
  extra = sorted(set(have) - set(want))
  if missing or extra:
    raise UserError(f"checkpoint {where!r} does not fit the model built from its config: "
                    f"missing {missing[:3]}, unexpected {extra[:3]}")
  sh_flat = flatten(shardings) if shardings is not None else None
  out = {}
  for path, a in want.items():
    src = have[path]
    leaf = leaves[src] if isinstance(src, str) else stacked([leaves[str(p)] for p in src])
    if tuple(leaf.shape) != tuple(a.shape):
      raise UserError(f"checkpoint {where!r}: parameter {path!r} (from {leaf.source!r}) has shape "
                      f"{tuple(leaf.shape)} but the model needs {tuple(a.shape)}")
    if sh_flat is None:
      out[path] = jax.numpy.asarray(leaf.full().astype(a.dtype))
    else:
      out[path] = jax.make_array_from_callback(
          tuple(a.shape), sh_flat[path], lambda idx, leaf=leaf, dt=a.dtype: leaf.region(idx).astype(dt))
  return nest(out)
