"""FLOPs of a training step counted from the architecture, and MFU against a device's peak.

Counted: every matrix multiplication of the model, at 2 FLOPs per multiply-add, with the batch's
actual shapes: attention projections, the score (Q K^T) and mixing (A V) products of every attention
(T5 encoder self, decoder self and cross attention; ViT self attention), the MLP's wi and wo, the
patch-embedding convolution (a matmul over p*p*C inputs per patch), the classifier head, and T5's
output projection onto the (padded) vocabulary through the shared embedding (or, untied, T5
v1.1's own output matrix: the same size). A gated MLP (T5 v1.1 / Flan-T5 / mT5: wo(act(wi_0 x) *
wi_1 x)) counts both input matmuls, wi_0 and wi_1.

Not counted: element-wise work (norms, softmax, activations, biases, residual adds, the optimizer),
embedding lookups (gathers) and the top-k selection. They are a few percent of a transformer step;
XLA's own estimate (`compiled.cost_analysis()`) counts them, which is why it is a little higher.

Decoder self attention is counted over the full Lt x Lt score matrix: the causal mask is applied
to dense matmuls (nothing is skipped), on our side and on the PyTorch peers' alike.

Forward + backward: the backward of a matmul y = x W is two matmuls of the forward's size, dL/dW =
x^T dL/dy and dL/dx = dL/dy W^T, so a matmul costs 3x its forward FLOPs per step. A matmul fed by
the data (the patch embedding, the 2-layer MLP's first layer) needs no dL/dx: JAX does not
differentiate the inputs, so it costs 2x. Attention's Q K^T and A V take a gradient for both
operands: 3x.

Model FLOPs vs hardware FLOPs: with `model.remat` the backward recomputes each layer's forward
first; that extra forward is counted separately (`remat`) and is not part of the model FLOPs. MFU
(model FLOPs utilisation) = model FLOPs per step / step time / the device's dense bf16 peak: the
fraction of the chip's peak that does useful model arithmetic, comparable across frameworks that
compute the same model (PaLM, Chowdhery et al. 2022, appendix B).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Optional


@dataclasses.dataclass(frozen=True)
class Matmul:
  """One kind of matmul of a model: forward FLOPs for the whole batch, times `count` (layers)."""
  name: str
  flops: int              # forward FLOPs of one occurrence, whole batch
  count: int = 1          # occurrences per forward pass (layers)
  input_grad: bool = True  # the backward computes dL/dinput too (False: fed by the data)
  in_layer: bool = True   # inside a layer that `model.remat` recomputes


@dataclasses.dataclass(frozen=True)
class StepFlops:
  """FLOPs of one training step (global batch), counted from the architecture."""
  matmuls: tuple[Matmul, ...]
  remat: bool = False

  @property
  def forward(self) -> int:
    return sum(m.flops * m.count for m in self.matmuls)

  @property
  def backward(self) -> int:
    return sum(m.flops * m.count * (2 if m.input_grad else 1) for m in self.matmuls)

  @property
  def recompute(self) -> int:
    """The extra forward of the rematerialised layers (hardware FLOPs only)."""
    return sum(m.flops * m.count for m in self.matmuls if m.in_layer) if self.remat else 0

  @property
  def model(self) -> int:
    """Model FLOPs per step: forward + backward (what MFU uses)."""
    return self.forward + self.backward

  @property
  def hardware(self) -> int:
    return self.model + self.recompute

  def breakdown(self) -> dict[str, int]:
    """Forward FLOPs by matmul name (all layers together)."""
    return {m.name: m.flops * m.count for m in self.matmuls}

  def to_json(self) -> dict:
    return {"flops_per_step": self.model, "forward_flops": self.forward,
            "backward_flops": self.backward, "remat_flops": self.recompute,
            "hardware_flops_per_step": self.hardware}


def _dense(name: str, rows: int, d_in: int, d_out: int, **kw) -> Matmul:
  return Matmul(name, 2 * rows * d_in * d_out, **kw)


def _attention(name: str, b: int, lq: int, lk: int, d_model: int, heads: int, head_dim: int,
               count: int) -> list[Matmul]:
  inner = heads * head_dim
  return [_dense(f"{name}/query", b * lq, d_model, inner, count=count),
          _dense(f"{name}/key_value", b * lk, d_model, 2 * inner, count=count),
          Matmul(f"{name}/scores", 2 * b * heads * lq * lk * head_dim, count),   # Q K^T
          Matmul(f"{name}/mix", 2 * b * heads * lq * lk * head_dim, count),      # A V
          _dense(f"{name}/out", b * lq, inner, d_model, count=count)]


def _mlp(name: str, rows: int, d: int, d_ff: int, count: int,
         gated: bool = False) -> list[Matmul]:
  wi = ("wi_0", "wi_1") if gated else ("wi",)
  return [*(_dense(f"{name}/{w}", rows, d, d_ff, count=count) for w in wi),
          _dense(f"{name}/wo", rows, d_ff, d, count=count)]


def t5(sizes: dict, vocab: int, batch: int, inputs_length: int, targets_length: int) -> StepFlops:
  b, li, lt = batch, inputs_length, targets_length
  d, h, dk, f = sizes["emb_dim"], sizes["num_heads"], sizes["head_dim"], sizes["mlp_dim"]
  ne, nd = sizes["num_encoder_layers"], sizes["num_decoder_layers"]
  gated = bool(sizes.get("mlp_gated"))
  mm = [*_attention("encoder/attention", b, li, li, d, h, dk, ne),
        *_mlp("encoder/mlp", b * li, d, f, ne, gated),
        *_attention("decoder/self_attention", b, lt, lt, d, h, dk, nd),  # full Lt x Lt
        *_attention("decoder/cross_attention", b, lt, li, d, h, dk, nd),
        *_mlp("decoder/mlp", b * lt, d, f, nd, gated),
        _dense("logits", b * lt, d, vocab, in_layer=False)]  # tied: the shared embedding
  return StepFlops(tuple(mm), bool(sizes.get("remat")))


def vit(sizes: dict, num_classes: int, batch: int, image_shape: tuple[int, ...]) -> StepFlops:
  b, (hh, ww, c), p = batch, image_shape, sizes["patch_size"]
  d, depth, f, heads = sizes["width"], sizes["depth"], sizes["mlp_dim"], sizes["num_heads"]
  patches = (hh // p) * (ww // p)
  n = patches + (1 if sizes.get("pool", "token") == "token" else 0)
  mm = [_dense("patch_embedding", b * patches, p * p * c, d, input_grad=False, in_layer=False),
        *_attention("attention", b, n, n, d, heads, d // heads, depth),
        *_mlp("mlp", b * n, d, f, depth),
        _dense("head", b, d, num_classes, in_layer=False)]
  return StepFlops(tuple(mm), bool(sizes.get("remat")))


def mixer(sizes: dict, num_classes: int, batch: int, image_shape: tuple[int, ...]) -> StepFlops:
  b, (hh, ww, c), p = batch, image_shape, sizes["patch_size"]
  d, depth = sizes["width"], sizes["depth"]
  n = (hh // p) * (ww // p)
  mm = [_dense("stem", b * n, p * p * c, d, input_grad=False, in_layer=False),
        *_mlp("token_mlp", b * d, n, sizes["tokens_mlp_dim"], depth),    # rows: (example, channel)
        *_mlp("channel_mlp", b * n, d, sizes["channels_mlp_dim"], depth),
        _dense("head", b, d, num_classes, in_layer=False)]
  return StepFlops(tuple(mm), bool(sizes.get("remat")))


def two_layer(sizes: dict, num_classes: int, batch: int,
              image_shape: tuple[int, ...]) -> StepFlops:
  d_in, f = math.prod(image_shape), sizes["mlp_dim"]
  mm = [_dense("mlp/wi", batch, d_in, f, input_grad=False),
        _dense("mlp/wo", batch, f, num_classes)]
  return StepFlops(tuple(mm), bool(sizes.get("remat")))


def train_step(model, info, batch_size: int) -> StepFlops:
  """FLOPs of one training step of a built `models.Model` on batches described by `info`."""
  if model.name == "t5":
    return t5(model.sizes, model.module.vocab_size, batch_size, info.inputs_length,
              info.targets_length)
  fn = {"vit": vit, "mixer": mixer, "mlp": two_layer}[model.name]
  return fn(model.sizes, model.module.num_classes, batch_size, tuple(info.image_shape))



@dataclasses.dataclass(frozen=True)
class MlpLayerFlops:
  """Forward FLOPs of one MLP block's matmuls, per example: `wi` is the input side (wi_0 + wi_1
  of a gated block), `wo` the output projection (the only part the activation map's zeros skip)."""
  wi: int
  wo: int


@dataclasses.dataclass(frozen=True)
class ForwardFlops:
  """Forward-pass FLOPs per example, for `sparsity.metrics_from_stats(..., flops_info=)`: every
  MLP layer's, keyed by the sparsity layer name, and the whole model's (`StepFlops.forward`)."""
  total: int
  mlp: dict[str, MlpLayerFlops]


# model name -> {MLP matmul prefix in `train_step`'s matmuls: sparsity layer name of layer i}.
_MLP_LAYER_NAMES = {
    "t5": {"encoder/mlp": "encoder/layer_{:02d}", "decoder/mlp": "decoder/layer_{:02d}"},
    "vit": {"mlp": "vit/layer_{:02d}"},
    "mixer": {"token_mlp": "mixer/token_{:02d}", "channel_mlp": "mixer/channel_{:02d}"},
    "mlp": {"mlp": "mlp/layer_{:02d}"},
}


def forward_flops(model, info) -> ForwardFlops:
  """Forward FLOPs per example of a built `models.Model` on batches described by `info` (the same
  count as `train_step`, at batch size 1: every counted matmul is linear in the batch)."""
  step = train_step(model, info, 1)
  by_name = {m.name: m for m in step.matmuls}
  mlp: dict[str, MlpLayerFlops] = {}
  for prefix, layer in _MLP_LAYER_NAMES[model.name].items():
    wo = by_name[f"{prefix}/wo"]
    wi = sum(by_name[n].flops for n in (f"{prefix}/wi", f"{prefix}/wi_0", f"{prefix}/wi_1")
             if n in by_name)
    for i in range(wo.count):
      mlp[layer.format(i)] = MlpLayerFlops(wi, wo.flops)
  return ForwardFlops(step.forward, mlp)

# Dense (no structured sparsity) bf16 matmul peaks, TFLOP/s, from the vendors' spec sheets:
# (substrings of the lower-cased device kind that must all match, peak, source).
# H100 PCIe / NVL have lower clocks and peaks than SXM and are left out (MFU omitted for them).
PEAKS: tuple[tuple[tuple[str, ...], float, str], ...] = (
    (("h200",), 989.4, "NVIDIA H200 spec sheet (same tensor cores as H100 SXM)"),
    (("h100", "hbm3"), 989.4, "NVIDIA H100 SXM spec sheet"),
    (("h100", "sxm"), 989.4, "NVIDIA H100 SXM spec sheet"),
    (("a100",), 312.0, "NVIDIA A100 spec sheet"),
    (("tpu v5 lite",), 197.0, "Google Cloud TPU v5e spec"),
    (("tpu v5e",), 197.0, "Google Cloud TPU v5e spec"),
    (("tpu v5",), 459.0, "Google Cloud TPU v5p spec"),
    (("tpu v6 lite",), 918.0, "Google Cloud TPU v6e (Trillium) spec"),
    (("tpu v6e",), 918.0, "Google Cloud TPU v6e (Trillium) spec"),
    (("tpu v4",), 275.0, "Google Cloud TPU v4 spec"),
)


def peak_tflops(device_kind: str) -> tuple[Optional[float], str]:
  """(dense bf16 peak TFLOP/s or None, where the number comes from / why there is none)."""
  kind = (device_kind or "").lower()
  if kind == "cpu" or kind.startswith("cpu"):
    return None, "no peak for CPUs: MFU omitted"
  for keys, peak, source in PEAKS:
    if all(k in kind for k in keys):
      return peak, f"{peak} TFLOP/s dense bf16 ({source})"
  return None, f"no known peak for device kind {device_kind!r}: MFU omitted"


def mfu(model_flops: float, step_s: float, num_devices: int,
        device_kind: str) -> tuple[Optional[float], float, str]:
  """(MFU or None, achieved TFLOP/s per device, note on the peak) for one step of the global batch
  on `num_devices` devices of `device_kind`."""
  tflops = model_flops / step_s / num_devices / 1e12
  peak, note = peak_tflops(device_kind)
  return (None if peak is None else tflops / peak), tflops, note
