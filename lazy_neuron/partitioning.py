"""Mesh from config, logical axis rules, shardings.

config.mesh: [(axis name, size), ...], one size may be -1 (= the remaining devices), e.g.
  [("data", -1), ("model", 1)]                  data parallel
  [("data", 1), ("fsdp", -1), ("model", 1)]     fully sharded data parallel
  [("data", -1), ("model", 4)]                  data + tensor parallel
config.sharding_rules: the name of a rule set in RULE_SETS, or an explicit list of
  (logical axis, mesh axis | [mesh axes] | None) pairs. Logical axes: batch, length, embed, mlp,
  heads, kv, vocab, classes, relpos_buckets.
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from lazy_neuron.errors import UserError

LOGICAL_AXES = ("batch", "length", "embed", "mlp", "heads", "kv", "vocab", "classes",
                "relpos_buckets")

# Mesh axes named in a rule but absent from the mesh are dropped, so one rule set serves meshes
# with or without an fsdp / model axis.
RULE_SETS: dict[str, list[tuple[str, Any]]] = {
    # Replicated parameters, batch split over every data-like axis.
    "data_parallel": [("batch", ("data", "fsdp"))],
    # ZeRO-3 style: parameters sharded over fsdp along embed; batch over data and fsdp.
    "fsdp": [("batch", ("data", "fsdp")), ("embed", "fsdp")],
    # Megatron-style tensor parallel on the model axis, plus fsdp where the mesh has it.
    "tensor_parallel": [("batch", ("data", "fsdp")), ("mlp", "model"), ("heads", "model"),
                        ("vocab", "model"), ("embed", "fsdp")],
}


def make_mesh(mesh_spec: Sequence[Sequence[Any]], devices: Sequence[Any] | None = None) -> Mesh:
  devices = list(jax.devices() if devices is None else devices)
  names, sizes = [], []
  for entry in mesh_spec:
    if len(entry) != 2 or not isinstance(entry[0], str) or not isinstance(entry[1], int):
      raise UserError(f"config.mesh entry {tuple(entry)!r} is not valid; use (axis name, size), "
                      f"e.g. [('data', -1), ('model', 1)]")
    names.append(entry[0])
    sizes.append(entry[1])
  if len(set(names)) != len(names):
    raise UserError(f"config.mesh={list(map(tuple, mesh_spec))} repeats an axis name")
  if sizes.count(-1) > 1:
    raise UserError(f"config.mesh={list(map(tuple, mesh_spec))}: at most one size may be -1")
  known = int(np.prod([s for s in sizes if s != -1])) if sizes else 1
  if any(s == 0 or s < -1 for s in sizes) or (-1 in sizes and len(devices) % known):
    raise UserError(f"config.mesh={list(map(tuple, mesh_spec))} does not fit {len(devices)} "
                    f"devices; sizes must be positive (one may be -1) and divide the device count")
  sizes = [len(devices) // known if s == -1 else s for s in sizes]
  if int(np.prod(sizes)) != len(devices):
    raise UserError(f"config.mesh={list(map(tuple, mesh_spec))} needs {int(np.prod(sizes))} "
                    f"devices but {len(devices)} are present; make the sizes multiply to "
                    f"{len(devices)} or use -1 for one axis")
  grid = np.asarray(devices, dtype=object).reshape(sizes)
  return Mesh(grid, tuple(names), axis_types=(AxisType.Auto,) * len(names))


def resolve_rules(rules_spec: Any, mesh: Mesh) -> tuple[tuple[str, Any], ...]:
  """Config rules -> Flax logical axis rules restricted to the mesh's axes; checks conflicts."""
  if isinstance(rules_spec, str):
    if rules_spec not in RULE_SETS:
      raise UserError(f"config.sharding_rules={rules_spec!r} is not valid; choose one of "
                      f"{', '.join(RULE_SETS)} or give a list of (logical axis, mesh axis) pairs")
    rules_spec = RULE_SETS[rules_spec]
  out, seen = [], {}
  for entry in rules_spec:
    if len(entry) != 2:
      raise UserError(f"config.sharding_rules entry {entry!r} is not a (logical, mesh) pair")
    logical, target = entry
    if logical not in LOGICAL_AXES:
      raise UserError(f"config.sharding_rules: unknown logical axis {logical!r}; valid: "
                      f"{', '.join(LOGICAL_AXES)}")
    axes = (target,) if isinstance(target, str) or target is None else tuple(target)
    for a in axes:
      if a is not None and not isinstance(a, str):
        raise UserError(f"config.sharding_rules: mesh axis {a!r} for {logical!r} is not a name")
    kept = tuple(a for a in axes if a is not None and a in mesh.axis_names
                 and mesh.shape[a] > 1) or None
    if kept is not None and len(kept) == 1:
      kept = kept[0]
    if logical in seen and seen[logical] != kept:
      raise UserError(f"config.sharding_rules maps logical axis {logical!r} twice: to "
                      f"{seen[logical]!r} and to {kept!r}")
    seen[logical] = kept
    out.append((logical, kept))
  for logical in LOGICAL_AXES:
    if logical not in seen:
      out.append((logical, None))
  return tuple(out)


def data_axes(rules: Sequence[tuple[str, Any]]) -> tuple[str, ...]:
  for logical, target in rules:
    if logical == "batch":
      if target is None:
        return ()
      return (target,) if isinstance(target, str) else tuple(target)
  return ()


def batch_sharding(mesh: Mesh, rules) -> NamedSharding:
  axes = data_axes(rules)
  return NamedSharding(mesh, P(axes if axes else None))


def data_parallel_size(mesh: Mesh, rules) -> int:
  return int(np.prod([mesh.shape[a] for a in data_axes(rules)])) if data_axes(rules) else 1


def logical_shardings(abstract_boxed: Any, mesh: Mesh, rules) -> Any:
  """NamedShardings for a tree of (possibly LogicallyPartitioned-boxed) abstract values."""
  specs = nn.get_partition_spec(abstract_boxed)
  return nn.logical_to_mesh_sharding(specs, mesh, rules)


def match_shardings_by_path(abstract: Any, params: Any, param_shardings: Any, mesh: Mesh) -> Any:
  """Shardings for an optimizer state: a leaf whose key path ends with a parameter's path and has
  that parameter's shape takes its sharding; every other leaf (step counts, Adafactor's factored
  moments) is replicated."""
  by_path = {}
  flat_s = jax.tree.leaves(param_shardings, is_leaf=lambda x: isinstance(x, NamedSharding))
  for (path, leaf), sh in zip(jax.tree_util.tree_flatten_with_path(params)[0], flat_s):
    by_path[_path_key(path)] = (tuple(leaf.shape), sh)
  replicated = NamedSharding(mesh, P())

  def pick(path, leaf):
    key = _path_key(path)
    for n in range(len(key)):
      hit = by_path.get(key[n:])
      if hit is not None and hit[0] == tuple(leaf.shape):
        return hit[1]
    return replicated

  return jax.tree_util.tree_map_with_path(pick, abstract)


def _path_key(path) -> tuple:
  out = []
  for p in path:
    for attr in ("key", "name", "idx"):
      if hasattr(p, attr):
        out.append(str(getattr(p, attr)))
        break
  return tuple(out)


def sharding_plan(params: Any, shardings: Any) -> tuple[list[tuple[str, tuple, str, int]], int]:
  """[(name, shape, spec, bytes per device)] and the total bytes per device."""
  rows, total = [], 0
  flat_p = jax.tree_util.tree_flatten_with_path(params)[0]
  flat_s = jax.tree.leaves(shardings, is_leaf=lambda x: isinstance(x, NamedSharding))
  for (path, leaf), sh in zip(flat_p, flat_s):
    shard = sh.shard_shape(leaf.shape)
    nbytes = int(np.prod(shard)) * np.dtype(leaf.dtype).itemsize
    total += nbytes
    rows.append(("/".join(_path_key(path)), tuple(leaf.shape), str(sh.spec), nbytes))
  return rows, total


def check_plan(params: Any, shardings: Any, mesh: Mesh, config: Any) -> None:
  """Refuses plans that contradict the config (e.g. a large parameter left replicated while the
  config asks for sharded parameters). Raises UserError."""
  del params, shardings, mesh, config  # rules to come with the scale-out work (issue 5)
