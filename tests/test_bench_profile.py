"""`bench train --profile`: op classes from kernel / HLO op names, and a real trace read back."""
import jax
import jax.numpy as jnp
import pytest

from lazy_neuron.bench import profile


# kernel name, HLO op name -> class (names as XLA, cuBLAS, cuDNN and our kernels spell them)
CASES = """
    sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64 command_buffer_3 -> matmul
    nvjet_hsh_256x128_64x4_2x1_v_bz_coopA_TNN cublas-gemm.12 -> matmul
    sm90_xmma_fprop_implicit_gemm cudnn-conv-bias-activation.3 -> matmul
    cudnn_generated_fort_native_sdpa_sm90_knob_7 custom-call.4 -> attention
    topk_mask_fwd custom-call.9 -> top-k
    input_reduce_fusion_12 command_buffer_1 -> reduction
    loop_multiply_fusion_3 command_buffer_1 -> elementwise
    transpose_fusion copy.4 -> copy
    some_kernel while.2 -> other
"""


@pytest.mark.parametrize("case", CASES.strip().splitlines())
def test_op_class(case):
  kernel, hlo_op, _, want = case.split()
  assert profile.op_class(kernel, hlo_op) == want


def test_profile_steps_reads_its_trace(tmp_path):
  f = jax.jit(lambda x: jnp.tanh(x @ x).sum(0))
  x = jnp.ones((64, 64))
  f(x).block_until_ready()
  prof = profile.profile_steps(lambda n: [f(x).block_until_ready() for _ in range(n)], 2,
                               str(tmp_path))
  assert prof["steps_traced"] == 2 and prof["device_ms_per_step"] > 0
  assert abs(sum(prof["classes"].values()) - prof["device_ms_per_step"]) < 1e-6
  assert prof["top_kernels"] and (tmp_path / "plugins").is_dir()
