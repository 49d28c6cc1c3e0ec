"""Fused attention alone, forward + backward, at T5-Base's shapes: what T5's relative-position bias costs.

`jax.nn.dot_product_attention` on [batch, length, heads, head_dim] bf16 inputs, timed as the training
step uses it (the gradient of sum(output * a fixed cotangent) with respect to q, k, v and, where
it is trained, the bias). One row per case:

  enc_nobias         encoder self-attention without a bias (ViT's kind of call)
  enc_bias_nograd    with a [1, heads, L, L] bias that gets no gradient
  enc_bias_grad      with the bias and its gradient (T5's encoder)
  dec_self_bias_grad decoder self-attention, causal, with the bias and its gradient (T5's decoder)
  dec_cross          decoder-to-encoder attention, no bias

each with and without per-row sequence lengths (how the models pass padding to the fused kernel).
Comparing enc_bias_grad with enc_bias_nograd says what the bias *gradient* costs; with enc_nobias,
what the bias *input* costs. The models' T5 layers make these exact calls (lazy_neuron/models/common.py).

    lazy-neuron bench attention --out=attention.json            # on a GPU: cuDNN's kernels
    lazy-neuron bench attention --implementation=xla --batch=2 --enc-len=64 --dec-len=16   # CPU
"""
from __future__ import annotations

import sys
import time

import jax
import jax.numpy as jnp

CASES = [  # name, query length, key length, bias ("grad" / "nograd" / None), causal
    ("enc_nobias", "enc", "enc", None, False),
    ("enc_bias_nograd", "enc", "enc", "nograd", False),
    ("enc_bias_grad", "enc", "enc", "grad", False),
    ("dec_self_bias_grad", "dec", "dec", "grad", True),
    ("dec_cross", "dec", "enc", None, False),
]


def _parse_flags(argv):
  from lazy_neuron import checks, cli, flags
  from lazy_neuron.bench import train as bench_train
  from lazy_neuron.models.common import cudnn_attention_applies

  p = flags.parser(cli.prog_name(argv, "lazy-neuron bench attention"), __doc__.splitlines()[0])
  p.add_argument("--batch", type=int, default=128)
  p.add_argument("--heads", type=int, default=12)
  p.add_argument("--head-dim", "--head_dim", type=int, default=64)
  p.add_argument("--enc-len", "--enc_len", type=int, default=512)
  p.add_argument("--dec-len", "--dec_len", type=int, default=114)
  p.add_argument("--implementation", default="auto",
                 help="cudnn | xla | auto (cuDNN where it can run, else XLA)")
  p.add_argument("--steps", type=int, default=20, help="timed calls per case (after 3 warm-up)")
  p.add_argument("--out", default=None, help="write results JSON here")
  a, _ = flags.parse(p, argv[1:])
  for name in ("batch", "heads", "head_dim", "enc_len", "dec_len", "steps"):
    checks.integer("--" + name.replace("_", "-"), getattr(a, name), min=1)
  checks.choice("--implementation", a.implementation, ("auto", "cudnn", "xla"))
  why_not = cudnn_attention_applies(jnp.bfloat16, a.head_dim, dropout=False)
  if a.implementation == "cudnn" and why_not:
    raise checks.fail("--implementation", "cudnn", f"{why_not}; use xla or auto")
  if a.implementation == "auto":
    a.implementation = "xla" if why_not else "cudnn"
  bench_train.check_out("--out", a.out)
  return a


def _time(fn, args, steps: int) -> float:
  """Mean wall ms of a call, after its compilation and 3 warm-up calls, ending in a device sync."""
  jax.block_until_ready(fn(*args))
  for _ in range(3):
    out = fn(*args)
  jax.block_until_ready(out)
  t0 = time.perf_counter()
  for _ in range(steps):
    out = fn(*args)
  jax.block_until_ready(out)
  return (time.perf_counter() - t0) / steps * 1e3


def run_case(a, name: str, q_len: int, k_len: int, bias_mode, causal: bool, lengths: bool) -> dict:
  keys = jax.random.split(jax.random.PRNGKey(0), 5)
  shape = lambda n: (a.batch, n, a.heads, a.head_dim)
  q = jax.random.normal(keys[0], shape(q_len), jnp.bfloat16)
  k = jax.random.normal(keys[1], shape(k_len), jnp.bfloat16)
  v = jax.random.normal(keys[2], shape(k_len), jnp.bfloat16)
  cot = jax.random.normal(keys[3], shape(q_len), jnp.float32)
  bias = (jax.random.normal(keys[4], (1, a.heads, q_len, k_len), jnp.bfloat16)
          if bias_mode else None)
  q_lens = jnp.full((a.batch,), q_len, jnp.int32) if lengths else None
  k_lens = jnp.full((a.batch,), k_len, jnp.int32) if lengths else None

  def loss(q, k, v, b):
    if b is not None and bias_mode == "nograd":
      b = jax.lax.stop_gradient(b)
    out = jax.nn.dot_product_attention(q, k, v, bias=b, is_causal=causal,
                                       query_seq_lengths=q_lens, key_value_seq_lengths=k_lens,
                                       implementation=a.implementation)
    return jnp.sum(out.astype(jnp.float32) * cot)

  wrt = (0, 1, 2, 3) if bias_mode == "grad" else (0, 1, 2)
  fwd_bwd = _time(jax.jit(jax.grad(loss, argnums=wrt)), (q, k, v, bias), a.steps)
  fwd = _time(jax.jit(loss), (q, k, v, bias), a.steps)
  return {"case": name, "q_len": q_len, "k_len": k_len, "bias": bias_mode, "causal": causal,
          "lengths": lengths, "fwd_ms": round(fwd, 4), "fwd_bwd_ms": round(fwd_bwd, 4)}


def main(argv=None) -> int:
  from lazy_neuron.bench import run_command
  return run_command(_parse_flags, _run, argv)


def _run(a, argv) -> int:
  from lazy_neuron.bench import train as bench_train

  lens = {"enc": a.enc_len, "dec": a.dec_len}
  env = bench_train.environment()
  print(f"# fused attention, forward + backward, on {env['hardware']['device_kind']} "
        f"(implementation {a.implementation}; batch {a.batch}, {a.heads} heads of {a.head_dim}, "
        f"encoder {a.enc_len} / decoder {a.dec_len} positions)", flush=True)
  print(f"{'case':<20} {'lengths':>7} {'fwd ms':>9} {'fwd+bwd ms':>11}", flush=True)
  rows = []
  for lengths in (False, True):
    for name, q, k, bias_mode, causal in CASES:
      row = run_case(a, name, lens[q], lens[k], bias_mode, causal, lengths)
      rows.append(row)
      print(f"{name:<20} {'yes' if lengths else 'no':>7} {row['fwd_ms']:>9.3f} "
            f"{row['fwd_bwd_ms']:>11.3f}", flush=True)
  if a.out:
    bench_train.write_json(a.out, {
        "command": " ".join(["lazy-neuron bench attention", *argv[1:]]),
        "implementation": a.implementation, "batch": a.batch, "heads": a.heads,
        "head_dim": a.head_dim, "enc_len": a.enc_len, "dec_len": a.dec_len, "steps": a.steps,
        "rows": rows, **env, "time": time.strftime("%Y-%m-%d %H:%M:%S")})
    print(f"wrote {a.out}", flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
