"""Host-side summaries of the sparsity collection.

The collection is a tree whose leaves are dicts {fire [d_ff], tokens [], nonzero [], pre_sum [],
pre_pos_sum [], pre_pos_count []} (models/mlp.py says what each sums), placed at the MLP block's
module path. The layer name of a block is its path with a trailing `mlp` dropped:
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
from typing import Any, Mapping, Optional

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
  # Sums of the pre-activations h = wi(x) over the same tokens (None: not in the collection, e.g.
  # a window checkpointed before they were sown).
  pre_sum: Optional[float] = None        # sum of h
  pre_pos_sum: Optional[float] = None    # sum of max(h, 0)
  pre_pos_count: Optional[float] = None  # entries with h > 0
  # {threshold t: entries with |a| <= t} (models/mlp.py `below_<t>`; empty unless the model's
  # magnitude_thresholds are set, as for imported non-ReLU checkpoints).
  below: dict[float, float] = dataclasses.field(default_factory=dict)

  def frac_abs_le(self, t: float) -> float:
    """Fraction of activation-map entries with |a| <= t (over real tokens): what a magnitude
    threshold t would zero (CATS / TEAL)."""
    return float(self.below[t] / self.entries) if self.tokens else float("nan")

  @property
  def d_ff(self) -> int:
    return int(self.fire.shape[0])

  @property
  def entries(self) -> float:
    """Activation-map entries measured: real tokens x d_ff."""
    return float(self.tokens) * self.d_ff

  @property
  def nonzero_frac(self) -> float:
    """Fraction of activation-map entries that are nonzero, over real tokens."""
    if self.tokens == 0:
      return float("nan")
    return float(self.fire.sum(dtype=np.float64) / self.entries)

  @property
  def firing_rate(self) -> np.ndarray:
    """Per-neuron firing frequency in [0, 1]."""
    return self.fire.astype(np.float64) / max(self.tokens, 1)

  @property
  def dead_frac(self) -> float:
    """Neurons that never fired on the measured tokens."""
    return float(np.mean(self.fire == 0))

  @property
  def live_frac(self) -> float:
    """Neurons that fired at least once on the measured tokens (1 - dead_frac)."""
    return float(np.mean(self.fire > 0))

  @property
  def live_nonzero_frac(self) -> float:
    """The nonzero fraction among live neurons only: sum(fire) / (tokens x live neurons). Dead
    neurons contribute nothing to sum(fire), so this is nonzero_frac / live_frac: the sparsity that
    is left once dead neurons are set aside. NaN when no neuron is live (or no token measured)."""
    live = int(np.count_nonzero(self.fire))
    if self.tokens == 0 or live == 0:
      return float("nan")
    return float(self.fire.sum(dtype=np.float64) / (float(self.tokens) * live))

  @property
  def lazy_frac(self) -> float:
    """Neurons that fire, but on fewer than LAZY_FIRING_RATE of the tokens."""
    rate = self.firing_rate
    return float(np.mean((self.fire > 0) & (rate < LAZY_FIRING_RATE)))

  @property
  def preact_mean(self) -> float:
    """Mean pre-activation over all measured entries."""
    return _ratio(self.pre_sum, self.entries)

  @property
  def preact_pos_frac(self) -> float:
    """Fraction of measured entries with a positive pre-activation."""
    return _ratio(self.pre_pos_count, self.entries)

  @property
  def preact_pos_mean(self) -> float:
    """Mean of the positive pre-activations (over those entries only)."""
    return _ratio(self.pre_pos_sum, self.pre_pos_count)


def _ratio(num: Optional[float], den: Optional[float]) -> float:
  if num is None or den is None or not den:
    return float("nan")
  return float(num) / float(den)


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
    stacked = {key: _leaf(tree[key]) for key in tree if key in _KEYS or key.startswith(_BELOW)}
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


# The leaves LayerStats reads (`nonzero` is sum(fire), recomputed exactly on the host).
_KEYS = ("fire", "tokens", "pre_sum", "pre_pos_sum", "pre_pos_count")
_BELOW = "below_"  # + the threshold: counts of |a| <= threshold


def flatten_stats(tree: Mapping[str, Any]) -> dict[str, LayerStats]:
  """{layer name: LayerStats} from a (host) sparsity collection, ordered by layer name."""
  found: dict[str, dict] = {}
  _walk(tree, (), found)
  # The pre-activation sums stay float32 until here (in-graph over a train window, on the host over
  # eval batches: a few hundred float32 adds, ~1e-5 relative at most); absent in older windows.
  pre = lambda d, k: float(np.asarray(_leaf(d[k]), np.float64)) if k in d else None
  return {name: LayerStats(fire=_leaf(d["fire"]).astype(np.int64), tokens=int(_leaf(d["tokens"])),
                           pre_sum=pre(d, "pre_sum"), pre_pos_sum=pre(d, "pre_pos_sum"),
                           pre_pos_count=pre(d, "pre_pos_count"),
                           below={float(k[len(_BELOW):]): float(np.asarray(_leaf(v), np.float64))
                                  for k, v in d.items() if k.startswith(_BELOW)})
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


# Per-layer metrics: name -> LayerStats property. Each is also averaged over layers
# (`sparsity/<split>/mean/<name>`, over the layers where it is defined).
_LAYER_METRICS = ("nonzero_frac", "dead_frac", "lazy_frac", "live_frac", "live_nonzero_frac")
_PREACT_METRICS = ("preact_mean", "preact_pos_frac", "preact_pos_mean")
# Means that stay as they always were: NaN as soon as one layer's value is (no tokens measured).
_MEAN_OVER_ALL = ("nonzero_frac", "dead_frac", "lazy_frac")


def metrics_from_stats(stats: Mapping[str, LayerStats], split: str,
                       flops_info: Any = None) -> dict[str, float]:
  """The sparsity metrics of one split: `sparsity/<split>/<layer>/<metric>` for the metrics of
  `_LAYER_METRICS` (and `_PREACT_METRICS` where the pre-activation sums were sown, and
  `frac_abs_le_<t>` per magnitude threshold t where those counts were sown), and their means over
  layers, `sparsity/<split>/mean/<metric>`.

  With `flops_info` (`flops.ForwardFlops` of the model: its MLP layers' FLOPs and its forward
  FLOPs per example), also the FLOPs that the measured zeros make skippable
  (`flops_skippable_metrics`).
  """
  out: dict[str, float] = {}
  values: dict[str, list[float]] = {}
  for layer, s in stats.items():
    names = _LAYER_METRICS + (_PREACT_METRICS if s.pre_sum is not None else ())
    for name in names:
      value = getattr(s, name)
      out[f"sparsity/{split}/{layer}/{name}"] = value
      values.setdefault(name, []).append(value)
    for t in sorted(s.below):
      name = f"frac_abs_le_{t:g}"
      out[f"sparsity/{split}/{layer}/{name}"] = value = s.frac_abs_le(t)
      values.setdefault(name, []).append(value)
  for name, vals in values.items():
    if name not in _MEAN_OVER_ALL:  # skip the layers where it is undefined (e.g. all neurons dead)
      vals = [v for v in vals if not np.isnan(v)] or [float("nan")]
    out[f"sparsity/{split}/mean/{name}"] = float(np.mean(vals))
  if flops_info is not None:
    out.update(flops_skippable_metrics(stats, split, flops_info))
  return out


def flops_skippable_metrics(stats: Mapping[str, LayerStats], split: str,
                            flops_info: Any) -> dict[str, float]:
  """The fraction of FLOPs that the measured zeros of the activation map make skippable.

  The rule: a zero activation a[t, j] (at or below the probe threshold; after top-k when top-k is
  on) multiplies row j of `wo`, so it skips the d_out multiply-adds of that row for token t; `wi`
  computes the pre-activation before it is known to be zero, so nothing of it is skippable. Per
  layer the skippable FLOPs are therefore (1 - nonzero_frac) x the layer's `wo` FLOPs (`wo` is
  2 x rows x d_ff x d_out, split evenly over the rows' d_ff activations).

  All FLOPs are those of one forward pass (inference, `flops.forward_flops`), counted at the
  configured shapes: the zero fraction measured on real tokens stands for every position. The
  probe sits before dropout, so dropout's zeros are not counted.

    <layer>/mlp_flops_skippable_frac   skippable / (wi + wo) FLOPs of that layer
    mlp_flops_skippable_frac           sum over layers of skippable / sum of all MLP FLOPs
    model_flops_skippable_frac         sum over layers of skippable / the forward pass's FLOPs

  Layers of `flops_info` without statistics (none when the collection is the model's) leave the
  two totals out rather than understate them.
  """
  out: dict[str, float] = {}
  skippable = mlp = 0.0
  complete = True
  for layer, f in flops_info.mlp.items():
    s = stats.get(layer)
    if s is None or s.tokens == 0:
      complete = False
      continue
    skip = (1.0 - s.nonzero_frac) * f.wo
    out[f"sparsity/{split}/{layer}/mlp_flops_skippable_frac"] = skip / (f.wi + f.wo)
    skippable += skip
    mlp += f.wi + f.wo
  if complete and mlp:
    out[f"sparsity/{split}/mlp_flops_skippable_frac"] = skippable / mlp
    out[f"sparsity/{split}/model_flops_skippable_frac"] = skippable / flops_info.total
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
