"""Mesh from config, logical axis rules, shardings.

config.mesh: [(axis name, size), ...], one size may be -1 (= the remaining devices), e.g.
  [("data", -1), ("model", 1)]                  data parallel
  [("data", 1), ("fsdp", -1), ("model", 1)]     fully sharded data parallel
  [("data", -1), ("model", 4)]                  data + tensor parallel
config.sharding_rules: the name of a rule set in RULE_SETS, or an explicit list of
  (logical axis, mesh axis | [mesh axes] | None) pairs. Logical axes: batch, length, embed, mlp,
  heads, kv, vocab, classes, relpos_buckets, layers (the leading axis of a scanned stack's
  parameters, `model.scan_layers`).

At start the trainer checks the plan (`check_plan`: one-line UserErrors for clashing rules,
dimensions the mesh does not divide, large parameters left replicated against the rules), prints
it (`format_plan`) and writes it to DIR/sharding_plan.txt. tests/golden/ pins the PartitionSpecs of
T5-Base and ViT-B/16 under each rule set (LAZY_NEURON_UPDATE_GOLDEN=1 rewrites them).
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from lazy_neuron import checks
from lazy_neuron.errors import UserError

LOGICAL_AXES = ("batch", "length", "embed", "mlp", "heads", "kv", "vocab", "classes",
                "relpos_buckets", "layers")

# Mesh axes named in a rule but absent from the mesh (or of size 1) are dropped, so one rule set
# serves meshes with or without an fsdp / model axis. Rules apply in order; a mesh axis already used
# by an earlier dimension of the same array is skipped (Flax), which is how activations
# [batch, length, embed] keep batch on (data, fsdp) while parameters put embed on fsdp.
# Never sharded by these sets: kv (head_dim: sharding it would split every attention dot product;
# heads are the tensor-parallel axis), length (no sequence parallelism), classes and
# relpos_buckets (small), the conv stem's patch dimensions (logical None), and layers: a scanned
# stack slices its parameters along it layer by layer, so every device needs every layer's slice
# (sharding it would be pipeline parallelism, which nn.scan does not do).
RULE_SETS: dict[str, list[tuple[str, Any]]] = {
    # Parameters replicated; the batch split over every data-like axis.
    "data_parallel": [("batch", ("data", "fsdp")), ("layers", None)],
    # ZeRO-3 style: every parameter with an embed dimension (all matrices, embeddings, the ViT/Mixer
    # stem, norms) sharded along it over fsdp; the batch over data and fsdp.
    "fsdp": [("batch", ("data", "fsdp")), ("embed", "fsdp"), ("layers", None)],
    # Megatron-style tensor parallel on the model axis (MLP hidden, attention heads, vocabulary),
    # plus embed over fsdp where the mesh has an fsdp axis.
    "tensor_parallel": [("batch", ("data", "fsdp")), ("mlp", "model"), ("heads", "model"),
                        ("vocab", "model"), ("embed", "fsdp"), ("layers", None)],
}


def make_mesh(mesh_spec: Sequence[Sequence[Any]], devices: Sequence[Any] | None = None) -> Mesh:
  devices = list(jax.devices() if devices is None else devices)
  names, sizes = [], []
  for entry in mesh_spec:
    if (len(entry) != 2 or not isinstance(entry[0], str) or isinstance(entry[1], bool)
        or not isinstance(entry[1], int)):
      raise checks.fail("config.mesh entry", tuple(entry),
                        "use (axis name, size), e.g. [('data', -1), ('model', 1)]")
    names.append(entry[0])
    sizes.append(entry[1])
  spec = list(map(tuple, mesh_spec))
  if len(set(names)) != len(names):
    raise checks.fail("config.mesh", spec, "it repeats an axis name; name each axis once")
  if sizes.count(-1) > 1:
    raise checks.fail("config.mesh", spec, "at most one size may be -1")
  known = int(np.prod([s for s in sizes if s != -1])) if sizes else 1
  if any(s == 0 or s < -1 for s in sizes) or (-1 in sizes and len(devices) % known):
    raise checks.fail("config.mesh", spec, f"it does not fit {len(devices)} devices; sizes must be "
                                           f"positive (one may be -1) and divide the device count")
  sizes = [len(devices) // known if s == -1 else s for s in sizes]
  if int(np.prod(sizes)) != len(devices):
    raise checks.fail("config.mesh", spec, f"it needs {int(np.prod(sizes))} devices but "
                                           f"{len(devices)} are present; make the sizes multiply to "
                                           f"{len(devices)} or use -1 for one axis")
  grid = np.asarray(devices, dtype=object).reshape(sizes)
  return Mesh(grid, tuple(names), axis_types=(AxisType.Auto,) * len(names))


def parse_rules(rules_spec: Any) -> Any:
  """A rule-set name, or a list of pairs; a string holding a list (as `--config.sharding_rules=
  "[('batch', 'data'), ('embed', 'fsdp')]"` gives) is parsed into one."""
  if isinstance(rules_spec, str) and rules_spec.strip()[:1] in ("[", "("):
    import ast
    try:
      return list(ast.literal_eval(rules_spec.strip()))
    except (ValueError, SyntaxError, TypeError):
      raise checks.fail("config.sharding_rules", rules_spec, "give a list of (logical axis, mesh "
                        "axis) pairs, e.g. [('batch', 'data'), ('embed', 'fsdp')]") from None
  return rules_spec


def resolve_rules(rules_spec: Any, mesh: Mesh) -> tuple[tuple[str, Any], ...]:
  """Config rules -> Flax logical axis rules restricted to the mesh's axes; checks conflicts."""
  rules_spec = parse_rules(rules_spec)
  if isinstance(rules_spec, str):
    if rules_spec not in RULE_SETS:
      raise checks.fail("config.sharding_rules", rules_spec, f"choose one of {', '.join(RULE_SETS)} "
                        "or give a list of (logical axis, mesh axis) pairs")
    rules_spec = RULE_SETS[rules_spec]
  if not isinstance(rules_spec, (list, tuple)):
    raise checks.fail("config.sharding_rules", rules_spec, f"choose one of {', '.join(RULE_SETS)} "
                      "or give a list of (logical axis, mesh axis) pairs")
  given, out, seen = list(rules_spec), [], {}
  for entry in rules_spec:
    if not isinstance(entry, (tuple, list)) or len(entry) != 2:
      raise checks.fail("config.sharding_rules entry", entry, "use a (logical axis, mesh axis) pair")
    logical, target = entry
    if logical not in LOGICAL_AXES:
      raise checks.fail("config.sharding_rules entry", tuple(entry), f"unknown logical axis "
                        f"{logical!r}; choose one of {', '.join(LOGICAL_AXES)}")
    if not (target is None or isinstance(target, (str, tuple, list))):
      raise checks.fail("config.sharding_rules entry", tuple(entry),
                        "the mesh axis must be a name, a list of names or None")
    axes = (target,) if isinstance(target, str) or target is None else tuple(target)
    for a in axes:
      if a is not None and not isinstance(a, str):
        raise checks.fail("config.sharding_rules entry", tuple(entry),
                          f"mesh axis {a!r} for {logical!r} is not a name")
    kept = tuple(a for a in axes if a is not None and a in mesh.axis_names
                 and mesh.shape[a] > 1) or None
    if kept is not None and len(kept) == 1:
      kept = kept[0]
    if logical in seen and seen[logical] != kept:
      raise checks.fail("config.sharding_rules", given, f"it maps logical axis {logical!r} twice: "
                        f"to {seen[logical]!r} and to {kept!r}; map each logical axis once")
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


def logical_shardings(abstract_boxed: Any, mesh: Mesh, rules,
                      small_bytes: int = 0) -> Any:
  """NamedShardings for a tree of (possibly LogicallyPartitioned-boxed) abstract values.

  Flax maps the logical names by the rules in order; a mesh axis already taken by an earlier
  dimension is skipped, so a spec never repeats a mesh axis. A dimension that its mesh axes do not
  divide is left unsharded when the array is smaller than `small_bytes` (cheap to replicate; the
  plan lists it under "unsharded: not divisible"); larger ones keep the spec and `check_plan`
  refuses them with a message naming the parameter, the dimension and the mesh axis.
  """
  specs = nn.get_partition_spec(abstract_boxed)
  shardings = nn.logical_to_mesh_sharding(specs, mesh, rules)
  if not small_bytes:
    return shardings
  values = _values(abstract_boxed)

  def fit(leaf, sh):
    if not isinstance(sh, NamedSharding) or not hasattr(leaf, "shape"):
      return sh
    if _nbytes(leaf) >= small_bytes or not _indivisible(leaf.shape, sh.spec, mesh):
      return sh
    spec = list(sh.spec) + [None] * (len(leaf.shape) - len(sh.spec))
    for i, (n, axes) in enumerate(zip(leaf.shape, spec)):
      if axes is not None and n % _axes_size(axes, mesh):
        spec[i] = None
    return NamedSharding(mesh, P(*spec))

  return jax.tree.map(fit, values, shardings,
                      is_leaf=lambda x: isinstance(x, jax.ShapeDtypeStruct))


def _values(tree: Any) -> Any:
  """Strips nn.LogicallyPartitioned boxes (nn.meta.unbox would add sharding constraints when called
  under a mesh)."""
  is_box = lambda x: isinstance(x, nn.meta.AxisMetadata)
  return jax.tree.map(lambda x: x.value if is_box(x) else x, tree, is_leaf=is_box)


def _axes_tuple(axes) -> tuple[str, ...]:
  if axes is None:
    return ()
  return (axes,) if isinstance(axes, str) else tuple(axes)


def _axes_size(axes, mesh: Mesh) -> int:
  return int(np.prod([mesh.shape[a] for a in _axes_tuple(axes)] or [1]))


def _indivisible(shape, spec, mesh: Mesh) -> list[tuple[int, int, tuple[str, ...], int]]:
  """[(dim, size, mesh axes, their size)] for the dimensions that `spec` cannot split evenly."""
  out = []
  for i, (n, axes) in enumerate(zip(shape, spec)):
    k = _axes_size(axes, mesh)
    if axes is not None and n % k:
      out.append((i, int(n), _axes_tuple(axes), k))
  return out


def _nbytes(leaf) -> int:
  return int(np.prod(leaf.shape, dtype=np.int64)) * np.dtype(leaf.dtype).itemsize


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
  flat_p = jax.tree_util.tree_flatten_with_path(_values(params))[0]
  flat_s = jax.tree.leaves(shardings, is_leaf=lambda x: isinstance(x, NamedSharding))
  for (path, leaf), sh in zip(flat_p, flat_s):
    shard = sh.shard_shape(leaf.shape)
    nbytes = int(np.prod(shard, dtype=np.int64)) * np.dtype(leaf.dtype).itemsize
    total += nbytes
    rows.append(("/".join(_path_key(path)), tuple(leaf.shape), str(sh.spec), nbytes))
  return rows, total


def format_plan(rows: Sequence[tuple[str, tuple, str, int]], total: int, mesh: Mesh, rules,
                top: int | None = None) -> str:
  """The sharding plan as a table: one line per parameter (the `top` largest per device when
  given, the rest summed in one line), then the totals."""
  shown = list(rows)
  if top is not None and len(rows) > top:
    shown = sorted(rows, key=lambda r: -r[3])[:top]
  full = sum(int(np.prod(s, dtype=np.int64)) for _, s, _, _ in rows)
  width = max([len("parameter")] + [len(n) for n, _, _, _ in shown])
  lines = [f"mesh {dict(mesh.shape)} ({mesh.size} devices); rules "
           f"{[(a, m) for a, m in rules if m] or 'none (all replicated)'}",
           f"{'parameter':<{width}}  {'shape':<22} {'spec':<32} {'bytes/device':>14}"]
  lines += [f"{n:<{width}}  {str(s):<22} {sp:<32} {b:>14,}" for n, s, sp, b in shown]
  if len(shown) < len(rows):
    rest = [r for r in rows if r not in shown]
    lines.append(f"{f'... {len(rest)} smaller arrays':<{width}}  {'':<22} {'':<32} "
                 f"{sum(r[3] for r in rest):>14,}")
  replicated = sum(b for _, _, sp, b in rows if "'" not in sp)  # no mesh axis named
  lines.append(f"total: {len(rows)} arrays, {full:,} parameters; {total:,} bytes "
               f"({total / 2**20:,.1f} MiB) of parameters per device"
               + (f", of which {replicated / 2**20:,.1f} MiB replicated" if mesh.size > 1 else ""))
  return "\n".join(lines)


def plan_specs(params: Any, shardings: Any) -> dict[str, str]:
  """{parameter path: PartitionSpec as text}: what the golden files pin."""
  return {name: spec for name, _, spec, _ in sharding_plan(params, shardings)[0]}


# ---------------------------------------------------------------------------------- plan checks
DEFAULT_REPLICATED_LIMIT_BYTES = 1 << 20
LIMIT_KEY = "sharding_replicated_limit_bytes"


def replicated_limit_bytes(config: Any) -> int:
  """config.sharding_replicated_limit_bytes (optional; default 1 MiB): parameters at least this large
  must not end up replicated when the rules ask for sharded parameters; smaller ones whose
  dimension the mesh does not divide are replicated along it instead of failing."""
  value = config.get(LIMIT_KEY, None) if hasattr(config, "get") else None
  if value is None:
    return DEFAULT_REPLICATED_LIMIT_BYTES
  return checks.integer(LIMIT_KEY, value, min=0)


def _named_targets(rules_spec: Any) -> dict[str, tuple[str, ...]]:
  """{parameter logical axis: mesh axes the rules name for it} (before restricting to the mesh)."""
  rules_spec = parse_rules(rules_spec)
  spec = RULE_SETS.get(rules_spec, ()) if isinstance(rules_spec, str) else rules_spec
  out: dict[str, tuple[str, ...]] = {}
  for entry in spec or ():
    logical, target = entry
    if logical != "batch":
      axes = tuple(a for a in ((target,) if isinstance(target, str) or target is None
                               else target) if a is not None)
      if axes:
        out[logical] = out.get(logical, ()) + axes
  return out


def _logical_names(params: Any) -> dict[tuple, tuple]:
  """{path: logical axis names} for the boxed (nn.LogicallyPartitioned) leaves of `params`."""
  is_box = lambda x: isinstance(x, nn.meta.AxisMetadata)
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(params, is_leaf=is_box)[0]:
    if isinstance(leaf, nn.LogicallyPartitioned):
      out[_path_key(path)] = tuple(leaf.names)
  return out


def _mib(nbytes: int) -> str:
  return f"{nbytes / 2**20:,.1f} MiB"


def check_plan(params: Any, shardings: Any, mesh: Mesh, config: Any) -> None:
  """Refuses a parameter sharding plan that cannot run or contradicts the config. Raises a one-line
  UserError naming the parameter, for:

  - a logical axis that no rule can name (a model bug);
  - two logical axes of one parameter that the rules map to the same mesh axis;
  - a dimension its mesh axes do not divide (jax refuses uneven shardings), for parameters of at
    least `replicated_limit_bytes(config)` (smaller ones were replicated along it);
  - on a mesh of more than one device, when the rules ask for sharded parameters (fsdp,
    tensor_parallel, an explicit parameter rule): no mesh axis the rules name has size > 1 while
    parameters of at least the limit exist (they would be replicated on every device); and, for an
    explicit rule list, a parameter of at least the limit that ends up replicated because its
    rule's mesh axes are absent from the mesh or of size 1.

  `params` may be boxed (nn.LogicallyPartitioned leaves): only then are the first two checked.
  """
  limit = replicated_limit_bytes(config)
  rules = dict(resolve_rules(config.sharding_rules, mesh))
  effective = {a: _axes_tuple(m) for a, m in rules.items() if a != "batch" and m}
  named = _named_targets(config.sharding_rules)
  explicit = not isinstance(parse_rules(config.sharding_rules), str)
  logical_of = _logical_names(params)
  flat_p = jax.tree_util.tree_flatten_with_path(_values(params))[0]
  flat_s = jax.tree.leaves(shardings, is_leaf=lambda x: isinstance(x, NamedSharding))
  largest = None
  for (path, leaf), sh in zip(flat_p, flat_s):
    name, shape, nbytes = "/".join(_path_key(path)), tuple(leaf.shape), _nbytes(leaf)
    what = f"parameter {name} {list(shape)} ({_mib(nbytes)})"
    logical = logical_of.get(_path_key(path))
    spec = tuple(sh.spec) + (None,) * (len(shape) - len(sh.spec))
    if logical is not None:
      for a in logical:
        if a is not None and a not in LOGICAL_AXES:
          raise UserError(f"{what} has logical axis {a!r}, which no sharding rule can name; "
                          f"valid logical axes: {', '.join(LOGICAL_AXES)}")
      used: dict[str, str] = {}
      for a in logical:
        for m in effective.get(a, ()):
          if m in used and used[m] != a:
            raise UserError(
                f"config.sharding_rules map logical axes {used[m]!r} and {a!r} of {what} "
                f"(axes {list(logical)}) both to mesh axis {m!r}; a mesh axis can shard only one "
                f"dimension of an array: map one of them to another mesh axis or to None")
          used[m] = a
    seen: set[str] = set()
    for axes in spec:
      for m in _axes_tuple(axes):
        if m in seen:
          raise UserError(f"{what}: sharding {sh.spec} uses mesh axis {m!r} twice; map its "
                          f"logical axes to different mesh axes")
        seen.add(m)
    bad = _indivisible(shape, spec, mesh)
    if bad:
      i, n, axes, k = bad[0]
      label = f" ({logical[i]!r})" if logical is not None and logical[i] else ""
      fix = (f"add the rule ({logical[i]!r}, None) to leave it unsharded, or " if label else "")
      raise UserError(
          f"{what}: dimension {i}{label} of size {n} is not divisible by mesh axis "
          f"{' x '.join(repr(a) for a in axes)} of size {k} (mesh {dict(mesh.shape)}); {fix}"
          f"choose mesh sizes that divide {n}")
    replicated = all(a is None for a in spec)
    if replicated and (largest is None or nbytes > largest[1]):
      largest = (what, nbytes, logical)
    if explicit and replicated and mesh.size > 1 and nbytes >= limit and logical is not None:
      for a in logical:
        if a in named and not effective.get(a):
          raise UserError(
              f"{what} would be replicated on all {mesh.size} devices although config."
              f"sharding_rules shard its axis {a!r} over {'/'.join(named[a])}, which mesh "
              f"{dict(mesh.shape)} lacks (or has size 1); give that mesh axis a size > 1, or map "
              f"{a!r} to a mesh axis that has one (or raise {LIMIT_KEY})")
  if mesh.size > 1 and named and not effective and largest is not None and largest[1] >= limit:
    wanted = sorted({m for axes in named.values() for m in axes})
    raise UserError(
        f"config.sharding_rules={parse_rules(config.sharding_rules)!r} shard parameters over "
        f"mesh axis "
        f"{'/'.join(repr(m) for m in wanted)}, but config.mesh {dict(mesh.shape)} has no such axis "
        f"of size > 1, so every parameter would be replicated on all {mesh.size} devices (largest: "
        f"{largest[0]}); add the axis to config.mesh, e.g. [('data', 1), "
        f"('{wanted[0]}', -1)], or use sharding_rules='data_parallel'")
