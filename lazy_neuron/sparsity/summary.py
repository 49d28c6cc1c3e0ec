"""Host-side summaries of the sparsity collection.

The collection is a tree whose leaves are dicts {fire [d_ff], tokens [], nonzero []}, placed at the
MLP block's module path. The layer name of a block is its path with a trailing `mlp` dropped:
`encoder/layer_00/mlp` -> `encoder/layer_00`, `mixer/token_03` -> `mixer/token_03`. These names are
the `<layer>` of the metric names `sparsity/<split>/<layer>/nonzero_frac`; `short_layer` is their
short form in the progress line and the report's figures (`enc0`, `dec11`, `tok3`, `L3`).

A scanned stack (`model.scan_layers`) sows under one module named `layers` (`SCANNED`), each
statistic with a leading layer axis; `flatten_stats` unstacks it into the unrolled names:
`encoder/layers/mlp` [L, d_ff] -> `encoder/layer_00`, `encoder/layer_01`, ...; `mixer/layers/token`
-> `mixer/token_00`, ... (`unrolled_layer_name`).
"""
from __future__ import annotations

import dataclasses
import io
import os
from typing import Any, Mapping

import numpy as np

from lazy_neuron import fileio

# The module name of a scanned layer stack (models/stacking.py): its statistics are stacked.
SCANNED = "layers"

# A neuron is "lazy" when it fires on fewer than this fraction of tokens (but is not dead).
LAZY_FIRING_RATE = 0.01


@dataclasses.dataclass
class LayerStats:
  fire: np.ndarray   # int64 [d_ff]: tokens on which each neuron was nonzero
  tokens: int        # real tokens measured

  @property
  def d_ff(self) -> int:
    return int(self.fire.shape[0])

  @property
  def nonzero_frac(self) -> float:
    """Fraction of activation-map entries that are nonzero, over real tokens."""
    if self.tokens == 0:
      return float("nan")
    return float(self.fire.sum(dtype=np.float64) / (float(self.tokens) * self.d_ff))

  @property
  def firing_rate(self) -> np.ndarray:
    """Per-neuron firing frequency in [0, 1]."""
    return self.fire.astype(np.float64) / max(self.tokens, 1)

  @property
  def dead_frac(self) -> float:
    """Neurons that never fired on the measured tokens."""
    return float(np.mean(self.fire == 0))

  @property
  def lazy_frac(self) -> float:
    """Neurons that fire, but on fewer than LAZY_FIRING_RATE of the tokens."""
    rate = self.firing_rate
    return float(np.mean((self.fire > 0) & (rate < LAZY_FIRING_RATE)))


def unrolled_layer_name(scanned: str, index: int) -> str:
  """The unrolled name of layer `index` of a module below a scanned stack's `layers`: '' (the
  layer itself) -> `layer_03`; `token` -> `token_03`; `token_norm` -> `token_03_norm`."""
  if not scanned:
    return f"layer_{index:02d}"
  kind, _, rest = scanned.partition("_")
  return f"{kind}_{index:02d}" + (f"_{rest}" if rest else "")


def _walk(tree: Mapping[str, Any], prefix: tuple[str, ...], out: dict[str, dict]) -> None:
  if "fire" in tree and "tokens" in tree:
    parts = prefix[:-1] if prefix and prefix[-1] == "mlp" else prefix
    if SCANNED not in parts:
      out["/".join(parts)] = tree
      return
    k = parts.index(SCANNED)
    scope, rest = parts[:k], parts[k + 1:]
    stacked = {key: _leaf(tree[key]) for key in ("fire", "tokens")}
    for i in range(stacked["tokens"].shape[0]):  # the leading layer axis
      name = scope + (unrolled_layer_name(rest[0] if rest else "", i),) + rest[1:]
      out["/".join(name)] = {key: value[i] for key, value in stacked.items()}
    return
  for key in sorted(tree):
    value = tree[key]
    if isinstance(value, Mapping):
      _walk(value, prefix + (str(key),), out)


def _leaf(x) -> np.ndarray:
  # Flax sow may wrap values in a tuple when no reduce_fn is given; ours always reduces.
  if isinstance(x, (tuple, list)):
    return np.sum([np.asarray(v) for v in x], axis=0)
  return np.asarray(x)


def flatten_stats(tree: Mapping[str, Any]) -> dict[str, LayerStats]:
  """{layer name: LayerStats} from a (host) sparsity collection, ordered by layer name."""
  found: dict[str, dict] = {}
  _walk(tree, (), found)
  return {name: LayerStats(fire=_leaf(d["fire"]).astype(np.int64), tokens=int(_leaf(d["tokens"])))
          for name, d in sorted(found.items(), key=lambda kv: layer_sort_key(kv[0]))}


def layer_sort_key(layer: str) -> tuple:
  """Encoder before decoder, then by layer index (mixer: token before channel of one block)."""
  scope, _, name = layer.rpartition("/")
  rank = {"encoder": 0, "decoder": 1}.get(scope.split("/")[0], 2)
  digits = "".join(ch for ch in name if ch.isdigit())
  return (rank, scope, int(digits) if digits else -1, 0 if name.startswith("token") else 1, name)


def short_layer(layer: str) -> str:
  """encoder/layer_00 -> enc0, decoder/layer_11 -> dec11, mixer/token_03 -> tok3,
  mixer/channel_03 -> ch3, vit/layer_03 (any other scope) -> L3."""
  scope, _, name = layer.rpartition("/")
  idx = "".join(ch for ch in name if ch.isdigit()).lstrip("0") or "0"
  for prefix, short in (("token", "tok"), ("channel", "ch")):
    if name.startswith(prefix):
      return short + idx
  return {"encoder": "enc", "decoder": "dec"}.get(scope.split("/")[0], "L") + idx


def metrics_from_stats(stats: Mapping[str, LayerStats], split: str) -> dict[str, float]:
  """The sparsity metrics of one split: `sparsity/<split>/<layer>/{nonzero,dead,lazy}_frac` and
  their means over layers, `sparsity/<split>/mean/...`."""
  out: dict[str, float] = {}
  fracs, dead, lazy = [], [], []
  for layer, s in stats.items():
    out[f"sparsity/{split}/{layer}/nonzero_frac"] = s.nonzero_frac
    out[f"sparsity/{split}/{layer}/dead_frac"] = s.dead_frac
    out[f"sparsity/{split}/{layer}/lazy_frac"] = s.lazy_frac
    fracs.append(s.nonzero_frac)
    dead.append(s.dead_frac)
    lazy.append(s.lazy_frac)
  if fracs:
    out[f"sparsity/{split}/mean/nonzero_frac"] = float(np.mean(fracs))
    out[f"sparsity/{split}/mean/dead_frac"] = float(np.mean(dead))
    out[f"sparsity/{split}/mean/lazy_frac"] = float(np.mean(lazy))
  return out


def save_npz(directory: str, step: int, stats: Mapping[str, LayerStats]) -> str:
  """Writes DIR/sparsity/step_<N>.npz: one [d_ff] firing-frequency array per layer (key = layer
  name), plus `<layer>:tokens`. Written atomically (tmp + rename); works for gs:// via etils."""
  arrays: dict[str, np.ndarray] = {}
  for layer, s in stats.items():
    arrays[layer] = s.firing_rate.astype(np.float32)
    arrays[f"{layer}:tokens"] = np.asarray(s.tokens, np.int64)
  buf = io.BytesIO()
  np.savez_compressed(buf, **arrays)
  path = _join(directory, "sparsity", f"step_{step}.npz")
  fileio.write_atomic(path, buf.getvalue())
  return path


def load_npz(path: str) -> dict[str, np.ndarray]:
  """{layer: firing frequencies [d_ff]} from a step_<N>.npz (token counts dropped)."""
  from etils import epath
  with epath.Path(path).open("rb") as f:
    data = np.load(io.BytesIO(f.read()))
    return {k: data[k] for k in data.files if not k.endswith(":tokens")}


def _join(*parts: str) -> str:
  from etils import epath
  return os.fspath(epath.Path(parts[0]).joinpath(*parts[1:]))
