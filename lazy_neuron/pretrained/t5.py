"""Hugging Face T5 (`T5ForConditionalGeneration`, `MT5ForConditionalGeneration`) -> lazy_neuron's T5.

v1.0 (ReLU MLP `wi`, decoder output scaled by d_model**-0.5 before the tied embedding) and
v1.1 / Flan-T5 / mT5 (gated-GELU MLP `wi_0`, `wi_1`; no output scaling; its own `lm_head`). Sizes
come from the weights (vocabulary, d_model, d_ff, heads from the relative-bias table, layer counts
from the block indices); config.json must agree with them and supplies the activation and whether
the output is scaled.
"""
from __future__ import annotations

import re
from typing import Callable

from lazy_neuron.errors import UserError
from lazy_neuron.pretrained import tensors as T
from lazy_neuron.pretrained.common import (Converted, check_config_sizes, count_indices, shape_of,
                                           unsupported)

# Hugging Face's `dense_act_fn` -> lazy_neuron's activation name.
ACTIVATIONS = {"relu": "relu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh",
               "gelu": "gelu", "silu": "silu", "swish": "silu"}
VOCAB_MULTIPLE = 128
# The sub-layers of lazy_neuron's T5 layers, in order, with what each is (norm / attention / mlp).
PARTS = {"encoder": (("pre_attention_norm", "norm"), ("attention", "attention"),
                     ("pre_mlp_norm", "norm"), ("mlp", "mlp")),
         "decoder": (("pre_self_attention_norm", "norm"), ("self_attention", "attention"),
                     ("pre_cross_attention_norm", "norm"), ("cross_attention", "attention"),
                     ("pre_mlp_norm", "norm"), ("mlp", "mlp"))}
# ... and where Hugging Face keeps them, under `<stack>.block.<i>.layer.` ({m}: the MLP's index,
# 1 in the encoder, 2 in the decoder).
HF_PARTS = {"pre_attention_norm": "0.layer_norm", "attention": "0.SelfAttention",
            "pre_self_attention_norm": "0.layer_norm", "self_attention": "0.SelfAttention",
            "pre_cross_attention_norm": "1.layer_norm", "cross_attention": "1.EncDecAttention",
            "pre_mlp_norm": "{m}.layer_norm", "mlp": "{m}.DenseReluDense"}


def layer_leaves(n_enc: int, n_dec: int, source: Callable[[str, int, str], str],
                 **build: Callable[[str, str], None]) -> None:
  """Calls build[kind](our prefix, source prefix) for every sub-layer of every layer, where
  `source(stack, i, part)` names the checkpoint's prefix of our `part` of layer i."""
  for stack, n in (("encoder", n_enc), ("decoder", n_dec)):
    for i in range(n):
      for part, kind in PARTS[stack]:
        build[kind](f"{stack}/layer_{i:02d}/{part}", source(stack, i, part))


def t5_model(d: int, heads: int, head_dim: int, d_ff: int, n_enc: int, n_dec: int, gated: bool,
             scaled: bool, vocab: int, activation: str) -> dict:
  """config.model of a converted T5 (vocab: padded)."""
  return dict(name="t5", variant="tiny", emb_dim=d, num_heads=heads, head_dim=head_dim,
              mlp_dim=d_ff, num_encoder_layers=n_enc, num_decoder_layers=n_dec, mlp_gated=gated,
              logits_via_embedding=scaled, vocab_size=vocab, activation=activation)


def convert(f: T.TensorFile, cfg: dict, where: str) -> Converted:
  act = cfg.get("dense_act_fn") or cfg.get("feed_forward_proj", "relu").split("-")[-1]
  act = {"gelu": "gelu_new"}.get(act, act) if cfg.get("feed_forward_proj") == "gated-gelu" else act
  if act not in ACTIVATIONS:
    raise unsupported(where, f"dense_act_fn={act!r}", f"T5 activations {', '.join(ACTIVATIONS)}")
  for key, value in (("relative_attention_num_buckets", 32), ("relative_attention_max_distance", 128),
                     ("layer_norm_epsilon", 1e-6)):
    if cfg.get(key, value) != value:
      raise unsupported(where, f"{key}={cfg[key]!r}", f"T5 with {key}={value}")
  vocab, d = shape_of(f, "shared.weight", "the shared embedding")
  heads = shape_of(f, "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
                   "the encoder's relative position bias")[1]
  inner = shape_of(f, "encoder.block.0.layer.0.SelfAttention.q.weight", "attention")[0]
  gated = f.has("encoder.block.0.layer.1.DenseReluDense.wi_0.weight")
  wi = "wi_0" if gated else "wi"
  d_ff = shape_of(f, f"encoder.block.0.layer.1.DenseReluDense.{wi}.weight", "MLP")[0]
  n_enc = count_indices(f.names, r"encoder\.block\.(\d+)\.")
  n_dec = count_indices(f.names, r"decoder\.block\.(\d+)\.")
  if gated != bool(cfg.get("is_gated_act", cfg.get("feed_forward_proj", "").startswith("gated"))):
    raise UserError(f"checkpoint {where!r}: config.json feed_forward_proj="
                    f"{cfg.get('feed_forward_proj')!r} contradicts the weights (they have "
                    f"{'wi_0/wi_1' if gated else 'wi'}); the files contradict each other")
  check_config_sizes(where, cfg, {"vocab_size": vocab, "d_model": d, "d_ff": d_ff,
                                  "num_heads": heads, "d_kv": inner // heads, "num_layers": n_enc,
                                  "num_decoder_layers": n_dec})
  hd = inner // heads
  # v1.0 scales the decoder output by d_model**-0.5 and multiplies by the tied embedding; v1.1
  # does neither (transformers >= 5 stores that as scale_decoder_outputs, older ones as
  # tie_word_embeddings=false).
  scaled = cfg.get("scale_decoder_outputs", cfg.get("tie_word_embeddings", True) is not False)
  padded = -(-vocab // VOCAB_MULTIPLE) * VOCAB_MULTIPLE

  leaves = {"shared_embedding/embedding": T.padded_rows(f, "shared.weight", (padded, d), vocab)}
  if not scaled:
    head = "lm_head.weight" if f.has("lm_head.weight") else "shared.weight"
    T.expect(f, head, (vocab, d), "the output projection")
    leaves["logits_dense/kernel"] = T.transposed(T.padded_rows(f, head, (padded, d), vocab))

  def attention(prefix, hf):
    for ours, theirs in (("query", "q"), ("key", "k"), ("value", "v")):
      leaves[f"{prefix}/{ours}_kernel"] = T.linear(f, f"{hf}.{theirs}.weight", d, inner,
                                                   split_out=heads, what="attention")
    leaves[f"{prefix}/out_kernel"] = T.linear(f, f"{hf}.o.weight", inner, d, split_in=heads,
                                              what="attention output")

  def mlp(prefix, hf):
    for name in (("wi_0", "wi_1") if gated else ("wi",)):
      leaves[f"{prefix}/{name}/kernel"] = T.linear(f, f"{hf}.{name}.weight", d, d_ff, what="MLP")
    leaves[f"{prefix}/wo/kernel"] = T.linear(f, f"{hf}.wo.weight", d_ff, d, what="MLP")

  norm = lambda ours, hf: leaves.__setitem__(f"{ours}/scale",
                                             T.copy(f, f"{hf}.weight", (d,), "layer norm"))
  for stack in ("encoder", "decoder"):
    rel = f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
    T.expect(f, rel, (32, heads), "relative position bias")
    leaves[f"{stack}/relpos_bias/rel_embedding"] = T.transposed(T.copy(f, rel, (32, heads)))
    norm(f"{stack}/final_norm", f"{stack}.final_layer_norm")
  layer_leaves(n_enc, n_dec, lambda stack, i, part: f"{stack}.block.{i}.layer."
               + HF_PARTS[part].format(m=1 if stack == "encoder" else 2),
               norm=norm, attention=attention, mlp=mlp)
  known = re.compile(r"^(shared|lm_head|(en|de)coder\.embed_tokens)\.weight$")
  used = {leaf.source for leaf in leaves.values()}
  extra = [n for n in f.names if n not in used and not known.match(n)]
  if extra:
    raise unsupported(where, f"tensors {extra[:3]}", "T5ForConditionalGeneration weights only")
  model = t5_model(d, heads, hd, d_ff, n_enc, n_dec, gated, bool(scaled), padded,
                   ACTIVATIONS[act])
  return Converted(kind="hf_t5", task="seq2seq", model=model, leaves=leaves,
                   source_vocab_size=vocab)
