"""T5X checkpoints (the original T5 / T5 v1.1 releases, and anything trained with t5x's
`t5.network`) -> lazy_neuron's T5.

A T5X checkpoint is a folder `checkpoint_<step>/` with a msgpack file `checkpoint` holding
{"version": N, "optimizer": {"target": <parameters>, "state": {"step", "param_states"}}}. Each
parameter is either an array stored in the msgpack itself (small, unpartitioned ones) or a
TensorStore spec (a dict with "driver": "zarr" and a "kvstore" whose path, relative to the
checkpoint folder, names a zarr array folder such as `target.encoder.layers_0.mlp.wi.kernel/`).
Only "target" is read (the optimizer's state is ignored). The msgpack is decoded with flax's
`msgpack_restore`, the zarr arrays are opened with tensorstore (an orbax dependency) and read
region by region: a device's shard reads only its own slice of a kernel.

Parameter names (t5x's `t5.network`, relative to "target"): `token_embedder/embedding`,
`{encoder,decoder}/relpos_bias/rel_embedding` [heads, 32], `encoder/encoder_norm/scale`,
`decoder/decoder_norm/scale`, `encoder/layers_<i>/{pre_attention_layer_norm, attention,
pre_mlp_layer_norm, mlp}`, `decoder/layers_<i>/{pre_self_attention_layer_norm, self_attention,
pre_cross_attention_layer_norm, encoder_decoder_attention, pre_mlp_layer_norm, mlp}`, attention
`{query,key,value}/kernel` [d, heads*head_dim] and `out/kernel` [heads*head_dim, d], MLP
`wi/kernel` (v1.0, ReLU) or `wi_0/kernel` + `wi_1/kernel` (v1.1, gated GELU) and `wo/kernel`,
and for v1.1 (no `logits_via_embedding`) `decoder/logits_dense/kernel` [d, vocab]. Without
logits_dense the output is the shared embedding's, scaled by d**-0.5 (t5x's
`logits_via_embedding`), as in Hugging Face's v1.0.

The activation is not stored in the checkpoint: `mlp_activations` is read from a `config.gin`
next to the checkpoint (or in the folder above, where t5x writes it) when there is one, else it is
t5x's default for the layout: ReLU for `wi`, ('gelu', 'linear') for `wi_0`/`wi_1` (flax's
`nn.gelu`, the tanh approximation).
"""
from __future__ import annotations

import os
import re
from typing import Any, Optional

import numpy as np

from lazy_neuron.errors import UserError
from lazy_neuron.pretrained import tensors as T
from lazy_neuron.pretrained.common import Converted, count_indices, shape_of, unsupported
from lazy_neuron.pretrained.t5 import VOCAB_MULTIPLE, layer_leaves, t5_model

CHECKPOINT = "checkpoint"
# t5x's activation names (its `layers._convert_to_activation_function`) -> lazy_neuron's.
ACTIVATIONS = {"relu": "relu", "gelu": "gelu_tanh", "silu": "silu", "swish": "silu"}
# Where t5x keeps our T5 sub-layers, under `<stack>/layers_<i>/`.
T5X_PARTS = {"pre_attention_norm": "pre_attention_layer_norm", "attention": "attention",
             "pre_self_attention_norm": "pre_self_attention_layer_norm",
             "self_attention": "self_attention",
             "pre_cross_attention_norm": "pre_cross_attention_layer_norm",
             "cross_attention": "encoder_decoder_attention",
             "pre_mlp_norm": "pre_mlp_layer_norm", "mlp": "mlp"}


def find(path: str) -> Optional[str]:
  """The checkpoint folder of `path` when it is a T5X checkpoint: the folder holding a
  `checkpoint` file, that file itself, or a t5x model folder (its latest `checkpoint_<step>`)."""
  if os.path.basename(path) == CHECKPOINT and os.path.isfile(path):
    return os.path.dirname(path) or "."
  if not os.path.isdir(path):
    return None
  if os.path.isfile(os.path.join(path, CHECKPOINT)):
    return path
  steps = [(int(m.group(1)), n) for n in os.listdir(path)
           for m in [re.fullmatch(r"checkpoint_(\d+)", n)]
           if m and os.path.isfile(os.path.join(path, n, CHECKPOINT))]
  return os.path.join(path, max(steps)[1]) if steps else None


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
  """{"a/b/c": leaf}; a TensorStore spec (a dict with a "driver") is a leaf."""
  if isinstance(tree, dict) and "driver" not in tree:
    out = {}
    for k, v in tree.items():
      out.update(_flatten(v, f"{prefix}{k}/"))
    return out
  return {prefix.rstrip("/"): tree}


class T5XFile(T.TensorFile):
  """The "target" parameters of a T5X checkpoint folder, named as in t5x ("encoder/layers_0/...").
  Arrays stored in the msgpack are sliced in memory; TensorStore-backed ones are read region by
  region from their zarr folders."""

  def __init__(self, directory: str):
    super().__init__(directory)
    from flax import serialization
    path = os.path.join(directory, CHECKPOINT)
    with open(path, "rb") as f:
      raw = f.read()
    if raw.startswith(b"model_checkpoint_path"):
      raise UserError(f"{path!r} is a TensorFlow (Mesh TensorFlow) checkpoint index, not a T5X "
                      f"checkpoint; use the T5X or Hugging Face release of the model")
    try:
      contents = serialization.msgpack_restore(raw)
      target = contents["optimizer"]["target"]
    except Exception as e:  # noqa: BLE001 - msgpack / structure errors of a foreign file
      raise UserError(f"{path!r} is not a T5X checkpoint (msgpack with optimizer/target; "
                      f"{type(e).__name__}); download it again") from None
    self.version = int(contents.get("version", 0))
    self._leaves = _flatten(target)
    self._stores: dict[str, Any] = {}
    self.names = sorted(self._leaves)

  def _store(self, name: str):
    """The opened TensorStore of a spec leaf (local copy of the checkpoint: a "gcs" or "gfile"
    kvstore is read from the same relative path under the checkpoint folder, as t5x does)."""
    if name not in self._stores:
      import tensorstore as ts
      spec = self._leaves[name]
      spec = spec.get("base", spec) if spec.get("driver") == "cast" else spec
      kvstore = spec.get("kvstore") or {}
      rel = kvstore.get("path", spec.get("path")) if isinstance(kvstore, dict) else None
      rel = str(rel or "").rstrip("/")
      folder = os.path.join(self.path, rel)
      if not rel or not os.path.isdir(folder):
        raise UserError(f"T5X checkpoint {self.path!r} is incomplete: parameter {name!r} is "
                        f"stored in {rel!r}, which is missing; copy the whole checkpoint folder")
      try:
        self._stores[name] = ts.open({"driver": spec.get("driver", "zarr"),
                                      "kvstore": {"driver": "file", "path": folder}},
                                     open=True, read=True).result()
      except Exception as e:  # noqa: BLE001 - tensorstore reports every failure as ValueError
        raise UserError(f"T5X checkpoint {self.path!r}: {rel!r} is not a readable zarr array "
                        f"({str(e).splitlines()[0][:120]}); copy it again") from None
    return self._stores[name]

  def shape(self, name: str) -> tuple[int, ...]:
    leaf = self._leaves[name]
    return tuple(np.shape(leaf)) if not isinstance(leaf, dict) else tuple(self._store(name).shape)

  def read(self, name: str, bounds: list[tuple[int, int]]) -> np.ndarray:
    index = tuple(slice(a, b) for a, b in bounds)
    leaf = self._leaves[name]
    if not isinstance(leaf, dict):
      return np.asarray(leaf)[index]
    out = self._store(name)[index].read().result()
    if self.version < 3 and out.dtype == np.uint16:  # versions < 3 stored bfloat16 as uint16
      import ml_dtypes
      out = out.view(ml_dtypes.bfloat16)
    return np.asarray(out, np.float32)


def _gin_activation(directory: str) -> Optional[str]:
  """The first of `mlp_activations` in a config.gin next to the checkpoint or one folder up."""
  for folder in (directory, os.path.dirname(os.path.abspath(directory))):
    path = os.path.join(folder, "config.gin")
    if os.path.isfile(path):
      with open(path, encoding="utf-8", errors="replace") as f:
        m = re.search(r"mlp_activations\s*=\s*[\(\[]\s*['\"]([\w-]+)['\"]", f.read())
      if m:
        return m.group(1)
  return None


def convert(where: str) -> Converted:
  """`where`: a folder `find` accepted."""
  directory = find(where)
  f = T5XFile(directory)
  vocab, d = shape_of(f, "token_embedder/embedding", "the shared embedding")
  heads = shape_of(f, "encoder/relpos_bias/rel_embedding", "the encoder's relative position "
                   "bias")[0]
  inner = shape_of(f, "encoder/layers_0/attention/query/kernel", "attention")[-1]
  gated = f.has("encoder/layers_0/mlp/wi_0/kernel")
  d_ff = shape_of(f, f"encoder/layers_0/mlp/{'wi_0' if gated else 'wi'}/kernel", "MLP")[-1]
  n_enc = count_indices(f.names, r"encoder/layers_(\d+)/")
  n_dec = count_indices(f.names, r"decoder/layers_(\d+)/")
  act = _gin_activation(directory) or ("gelu" if gated else "relu")
  if act not in ACTIVATIONS:
    raise unsupported(where, f"mlp_activations ({act!r}, ...) in its config.gin",
                      f"T5X activations {', '.join(ACTIVATIONS)}")
  if inner % heads:
    raise UserError(f"T5X checkpoint {where!r}: attention width {inner} is not a multiple of the "
                    f"{heads} heads of the relative position bias; the checkpoint is inconsistent")
  hd = inner // heads
  scaled = not f.has("decoder/logits_dense/kernel")  # t5x's logits_via_embedding
  padded = -(-vocab // VOCAB_MULTIPLE) * VOCAB_MULTIPLE
  leaves = {"shared_embedding/embedding": T.padded_rows(f, "token_embedder/embedding",
                                                        (padded, d), vocab)}
  if not scaled:
    T.expect(f, "decoder/logits_dense/kernel", (d, vocab), "the output projection")
    leaves["logits_dense/kernel"] = T.padded_rows(f, "decoder/logits_dense/kernel", (d, padded),
                                                  vocab, axis=1)

  def attention(ours: str, theirs: str) -> None:
    for kind in ("query", "key", "value"):
      leaves[f"{ours}/{kind}_kernel"] = T.linear(f, f"{theirs}/{kind}/kernel", d, inner,
                                                 split_out=heads, what="attention",
                                                 stored="flax")
    leaves[f"{ours}/out_kernel"] = T.linear(f, f"{theirs}/out/kernel", inner, d, split_in=heads,
                                            what="attention output", stored="flax")

  def mlp(ours: str, theirs: str) -> None:
    for name, d_in, d_out in ((("wi_0", d, d_ff), ("wi_1", d, d_ff)) if gated
                              else (("wi", d, d_ff),)) + (("wo", d_ff, d),):
      leaves[f"{ours}/{name}/kernel"] = T.copy(f, f"{theirs}/{name}/kernel", (d_in, d_out), "MLP")

  def norm(ours: str, theirs: str) -> None:
    leaves[f"{ours}/scale"] = T.copy(f, f"{theirs}/scale", (d,), "layer norm")

  for stack in ("encoder", "decoder"):
    leaves[f"{stack}/relpos_bias/rel_embedding"] = T.copy(
        f, f"{stack}/relpos_bias/rel_embedding", (heads, 32), "relative position bias")
    norm(f"{stack}/final_norm", f"{stack}/{stack}_norm")
  layer_leaves(n_enc, n_dec, lambda stack, i, part: f"{stack}/layers_{i}/{T5X_PARTS[part]}",
               norm=norm, attention=attention, mlp=mlp)
  used = {leaf.source for leaf in leaves.values()}
  extra = [n for n in f.names if n not in used]
  if extra:
    raise unsupported(where, f"parameters {['target/' + n for n in extra[:3]]}",
                      "T5X checkpoints of t5x's t5.network (T5 v1.0 / v1.1 layout)")
  model = t5_model(d, heads, hd, d_ff, n_enc, n_dec, gated, scaled, padded, ACTIVATIONS[act])
  return Converted(kind="t5x", task="seq2seq", model=model, leaves=leaves,
                   source_vocab_size=vocab)
