"""Layer stacks compiled once: `model.scan_layers`, and the conversion of parameter trees between
the two layouts.

Unrolled (`scan_layers=False`), a stack holds one module per layer, `encoder/layer_00`,
`encoder/layer_01`, ... (Mixer: `mixer/token_00`, `mixer/token_00_norm`, `mixer/channel_00`, ...),
and XLA compiles every layer separately. Scanned (`scan_layers=True`), the stack holds one module
named `layers` (`LAYERS`) applied by `nn.scan`: XLA compiles one layer, and every parameter under
`layers` has a leading axis of size num_layers with the logical axis name `layers` (never sharded
by the rule sets). The sparsity statistics under `layers` get the same leading axis;
`sparsity.flatten_stats` unstacks it into the unrolled layer names, so the metrics, the firing
npz and the report read the same either way.

`scan_layers=None` (the default) means unrolled: on one H200 the unrolled steps measured faster
(T5-Base 214 vs 320 ms, ViT-B/16 91 vs 129 ms, bf16) and compiled within a minute (32 s and 14 s);
scanning compiles in seconds whatever the depth (docs/performance.md). The 2-layer MLP has one hidden
layer: nothing to scan.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Mapping

import flax.linen as nn
import jax
import numpy as np

from lazy_neuron import checks
from lazy_neuron.models.common import check_scan_layers
from lazy_neuron.models.mlp import SPARSITY
from lazy_neuron.sparsity.summary import SCANNED as LAYERS, unrolled_layer_name

# LAYERS ("layers", defined with the statistics' reader, sparsity/summary.py) is the scanned
# module's name and the logical axis name of the leading axis of its stacked parameters.

# model name -> (its layer stacks, how layer i of a stack is named when unrolled):
#   "module": one module per layer, `layer_{i:02d}`; scanned, its children sit under `layers`.
#   "prefix": several modules per layer, `<kind>_{i:02d}[_<rest>]` (Mixer: token_03,
#             token_03_norm, channel_03, channel_03_norm); scanned, `layers/<kind>[_<rest>]`.
STACKS: dict[str, tuple[tuple[str, ...], str]] = {
    "t5": (("encoder", "decoder"), "module"),
    "vit": (("vit",), "module"),
    "mixer": (("mixer",), "prefix"),
    "mlp": ((), "module"),
}
_UNROLLED = re.compile(r"^(?P<kind>[a-z]+)_(?P<index>\d{2,})(?P<rest>(_\w+)?)$")


def resolve_scan_layers(value: Any, model_name: str, variant: str) -> bool:
  """config.model.scan_layers (True, False or None = False) -> whether the model scans."""
  check_scan_layers(value)
  can_scan = bool(STACKS[model_name][0])
  if value and not can_scan:
    raise checks.fail("model.scan_layers", value, f"model.name={model_name!r} has a single layer, "
                      "nothing to scan; use false or None")
  # None: unrolled. Measured on one H200 (bf16, docs/performance.md), scanning cut T5-Base's compile
  # from 32 s to 6 s but made its step 50% slower (320 vs 214 ms) and ViT-B/16's 42% slower, with
  # more memory: the faster step wins by default, and scan_layers=True is there for deep models
  # whose unrolled compile is too slow.
  return bool(value)


def layer_stack(layer_cls: type, *, length: int, remat: bool, deterministic_argnum: int,
                num_broadcast: int) -> type:
  """`layer_cls` scanned `length` times: a module class taking (x, *broadcast, deterministic) and
  returning (x, None), like `layer_cls` itself.

  Every argument after x is the same for every layer (masks, the stack's position bias, the
  encoder output, `deterministic`): broadcast, not sliced. Parameters and sparsity statistics get a
  leading layer axis; each layer draws its own init and dropout keys. `num_broadcast` counts the
  arguments after x, `deterministic` included. With `remat`, each layer is rematerialised as in the
  unrolled stack (`deterministic_argnum` counts `self` as 0).
  """
  body = layer_cls
  if remat:
    # prevent_cse=False: inside a scan the loop already keeps XLA from merging the recomputation
    # with the forward pass, and the barriers would only cost (flax's advice for remat in scan).
    body = nn.remat(body, static_argnums=(deterministic_argnum,), prevent_cse=False)
  return nn.scan(body, variable_axes={"params": 0, SPARSITY: 0},
                 split_rngs={"params": True, "dropout": True},
                 in_axes=(nn.broadcast,) * num_broadcast, length=length,
                 metadata_params={nn.PARTITION_NAME: LAYERS})


def apply_scanned(layer_cls: type, cfg: Any, mlp: Any, dtype: Any, length: int, x: Any,
                  *args: Any) -> Any:
  """Runs `length` layers of `layer_cls(cfg, mlp, dtype)` as one scanned submodule `layers` of the
  calling (compact) module; `args` are the layer's arguments after x, `deterministic` last."""
  stack = layer_stack(layer_cls, length=length, remat=cfg.remat,
                      deterministic_argnum=len(args) + 1,  # `self` is argument 0, x argument 1
                      num_broadcast=len(args))
  x, _ = stack(cfg, mlp, dtype, name=LAYERS)(x, *args)
  return x


def apply_stack(layer_cls: type, cfg: Any, mlp: Any, dtype: Any, length: int, x: Any,
                *args: Any) -> Any:
  """`length` layers of `layer_cls(cfg, mlp, dtype)` on x: scanned (`cfg.scan_layers`) or unrolled
  as submodules `layer_00`, `layer_01`, ... (each rematerialised with `cfg.remat`)."""
  if cfg.scan_layers:
    return apply_scanned(layer_cls, cfg, mlp, dtype, length, x, *args)
  if cfg.remat:  # `self` is argument 0, x argument 1; `deterministic` (the last) is static
    layer_cls = nn.remat(layer_cls, static_argnums=(len(args) + 1,))
  for i in range(length):
    x, _ = layer_cls(cfg, mlp, dtype, name=f"layer_{i:02d}")(x, *args)
  return x


def init_params(model: Any, rngs: Any, inputs: Mapping[str, Any]) -> Any:
  """The parameters `model.module.init(rngs, **inputs)` would give in `model`'s layout, unboxed.

  An unrolled stack is initialised as the scanned one and unstacked: traced in a jitted function,
  one layer's initialisers instead of every layer's. On one H200 that cut T5-Base's
  initialisation from 92 s of XLA compilation to 6 s (every layer's threefry draws, inlined,
  made a 22-million-character HLO module). Each layer still draws its own values, from the same
  distributions; they are not the values an unrolled init with the same seed drew before.
  """
  module = model.module
  cfg = getattr(module, "cfg", None)
  if cfg is None or cfg.scan_layers or not STACKS[model.name][0]:
    return nn.meta.unbox(module.init(rngs, **inputs)["params"])
  scanned = module.clone(cfg=dataclasses.replace(cfg, scan_layers=True))
  return unstack_layers(nn.meta.unbox(scanned.init(rngs, **inputs)["params"]), model)


# --------------------------------------------------------------------------- layout conversion
def _stack_scope(scope: Mapping[str, Any], mode: str, where: str) -> dict:
  """One stack's subtree, unrolled -> scanned."""
  per_layer: dict[int, dict[str, Any]] = {}
  out: dict[str, Any] = {}
  for name, value in scope.items():
    m = _UNROLLED.match(name)
    if m is None or (mode == "module" and (m["kind"] != "layer" or m["rest"])):
      out[name] = value
      continue
    i = int(m["index"])
    if mode == "module":
      per_layer[i] = value
    else:
      per_layer.setdefault(i, {})[m["kind"] + m["rest"]] = value
  if not per_layer:
    return dict(scope)
  indices = sorted(per_layer)
  if indices != list(range(len(indices))):
    raise ValueError(f"{where}: layers {indices} are not numbered 0..{len(indices) - 1}")
  first = jax.tree.structure(per_layer[0])
  for i in indices:
    if jax.tree.structure(per_layer[i]) != first:
      raise ValueError(f"{where}: layer {i} has other parameters than layer 0")
  xp = jax.numpy if any(isinstance(x, jax.Array) for x in jax.tree.leaves(per_layer[0])) else np
  out[LAYERS] = jax.tree.map(lambda *xs: xp.stack(xs), *(per_layer[i] for i in indices))
  return out


def _unstack_scope(scope: Mapping[str, Any], mode: str, where: str) -> dict:
  """One stack's subtree, scanned -> unrolled."""
  if LAYERS not in scope:
    return dict(scope)
  stacked = scope[LAYERS]
  lengths = {x.shape[0] for x in jax.tree.leaves(stacked)}
  if len(lengths) != 1:
    raise ValueError(f"{where}/{LAYERS}: leading axes of different sizes {sorted(lengths)}")
  out = {k: v for k, v in scope.items() if k != LAYERS}
  for i in range(lengths.pop()):
    layer = jax.tree.map(lambda x, i=i: x[i], stacked)
    if mode == "module":
      out[unrolled_layer_name("", i)] = layer
    else:
      for child, value in layer.items():
        out[unrolled_layer_name(child, i)] = value
  return out


def _convert(tree: Any, model_name: str, stack: bool) -> Any:
  scopes, mode = STACKS[model_name]
  convert = _stack_scope if stack else _unstack_scope

  def walk(node, path):
    if isinstance(node, Mapping):
      return {k: (convert(v, mode, "/".join(path + (k,))) if k in scopes and isinstance(v, Mapping)
                  else walk(v, path + (k,)))
              for k, v in node.items()}
    if isinstance(node, tuple) and hasattr(node, "_fields"):  # optax states are namedtuples
      return type(node)(*(walk(v, path + (f,)) for f, v in zip(node._fields, node)))
    if isinstance(node, (list, tuple)):
      return type(node)(walk(v, path + (str(i),)) for i, v in enumerate(node))
    return node

  return walk(tree, ())


def stack_layers(tree: Any, model: Any) -> Any:
  """A parameter tree (or any tree holding parameter-shaped subtrees, e.g. an Adam state's mu/nu)
  of the unrolled layout -> the scanned layout of `model` (a `Model` or a model name): each
  stack's `layer_00`, `layer_01`, ... become `layers` with a leading layer axis. Trees already
  scanned are returned as they are. Leaves are stacked with jnp for jax arrays, np otherwise."""
  return _convert(tree, getattr(model, "name", model), stack=True)


def unstack_layers(tree: Any, model: Any) -> Any:
  """The inverse of `stack_layers`: scanned layout -> unrolled (`layers[i]` -> `layer_{i:02d}`)."""
  return _convert(tree, getattr(model, "name", model), stack=False)


def to_layout(tree: Any, model: Any) -> Any:
  """`tree` (either layout) in the layout `model` (a `Model`) was built with."""
  if model.sizes.get("scan_layers"):
    return stack_layers(tree, model)
  return unstack_layers(tree, model)
