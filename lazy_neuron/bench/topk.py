"""`lazy-neuron bench topk`: Top-k mask kernels vs a copy floor, lax.top_k, approx_max_k, torch.topk.

    lazy-neuron bench topk --out=topk.json                   # full grid (meant for a GPU)
    lazy-neuron bench topk --quick                           # seconds, any machine
    python -m lazy_neuron.bench.topk --D=3072 --k=128 --dtypes=bfloat16

Times are milliseconds per call (median of repeats, each repeat averaging several back-to-back calls,
after a warm-up). Rows: T tokens of N(0, 1) data (`--data=relu` for post-ReLU rows;
`--data=relu_fused` times `topk_mask(x, k, relu=True)` on the N(0, 1) rows: the MLP block's ReLU +
Top-k in one pass, checked against the reference on relu(x)).
  copy      read + write of x (jnp negation): the HBM floor
  fwd       topk_mask forward (our kernel for the platform, or --backend)
  bwd       the custom-VJP backward alone: where(mask rebuilt from x, t, cut; g, 0)
  lax       lax.top_k values -> k-th value threshold -> where (not tie-exact; the usual recipe)
  approx    same with lax.approx_max_k
  torch     torch.topk + scatter into zeros (when torch with CUDA is installed)
  exact     our output is bit-identical to topk_mask_reference (lax.top_k on integer keys)
Imports only jax, numpy (and optionally torch): it runs on machines without the training stack.
"""
from __future__ import annotations

import json
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np


def _time_jax(fn, *args, min_total_s=0.15, repeats=3):
  out = fn(*args)
  jax.block_until_ready(out)
  t0 = time.perf_counter()
  jax.block_until_ready(fn(*args))
  once = max(time.perf_counter() - t0, 1e-6)
  n = int(max(3, min(200, min_total_s / once)))
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    for _ in range(n):
      out = fn(*args)
    jax.block_until_ready(out)
    times.append((time.perf_counter() - t0) / n * 1e3)
  return statistics.median(times)


def _time_torch(fn, torch, min_total_s=0.15, repeats=3):
  fn()
  torch.cuda.synchronize()
  t0 = time.perf_counter()
  fn()
  torch.cuda.synchronize()
  once = max(time.perf_counter() - t0, 1e-6)
  n = int(max(3, min(200, min_total_s / once)))
  times = []
  for _ in range(repeats):
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(n):
      fn()
    end.record()
    torch.cuda.synchronize()
    times.append(start.elapsed_time(end) / n)
  return statistics.median(times)


def _torch():
  try:
    import torch
    return torch if torch.cuda.is_available() else None
  except Exception:  # noqa: BLE001 - optional
    return None


def _bits_equal(a, b):
  a, b = np.asarray(a), np.asarray(b)
  w = np.uint16 if a.dtype.itemsize == 2 else np.uint32
  return bool(np.array_equal(a.view(w), b.view(w)))


def run_one(t, d, k, dtype, *, backend, baselines, data, torch, check):
  from lazy_neuron.kernels import topk as topk_lib
  from lazy_neuron.kernels.topk import keys as keys_lib

  x = jax.random.normal(jax.random.key(d * 1000 + k), (t, d), jnp.float32)
  if data == "relu":
    x = jax.nn.relu(x)
  x = x.astype(dtype)
  g = jax.random.normal(jax.random.key(1), (t, d), dtype)
  rec = dict(T=t, D=d, k=k, dtype=jnp.dtype(dtype).name, data=data, backend=backend)
  copy = jax.jit(lambda a: -a)
  rec["copy_ms"] = _time_jax(copy, x)
  relu = data == "relu_fused"
  fwd = jax.jit(lambda a: topk_lib.topk_mask(a, k, backend=backend, relu=relu))
  rec["fwd_ms"] = _time_jax(fwd, x)
  thr = jax.jit(lambda a: topk_lib.topk_threshold(a, k, backend=backend))
  tt, cut = thr(x)
  if relu:  # the backward's mask is y > 0 (kernels/topk/__init__.py)
    bwd = jax.jit(lambda y_, g_: jnp.where(y_ > 0, g_, 0).astype(g_.dtype))
    rec["bwd_ms"] = _time_jax(bwd, fwd(x), g)
  else:
    bwd = jax.jit(lambda a, t_, c_, g_: jnp.where(keys_lib.keep_mask(a, t_, c_), g_, 0)
                  .astype(g_.dtype))
    rec["bwd_ms"] = _time_jax(bwd, x, tt, cut, g)
  if check:
    ref = jax.jit(lambda a: topk_lib.topk_mask_reference(jax.nn.relu(a) if relu else a, k))
    rec["exact"] = _bits_equal(fwd(x), ref(x))
  if "lax" in baselines:
    lax_mask = jax.jit(lambda a: jnp.where(a >= jax.lax.top_k(a, k)[0][..., -1:], a, 0))
    rec["lax_ms"] = _time_jax(lax_mask, x, min_total_s=0.05, repeats=2)
  if "approx" in baselines:
    ap_mask = jax.jit(lambda a: jnp.where(a >= jax.lax.approx_max_k(a, k)[0][..., -1:], a, 0))
    rec["approx_ms"] = _time_jax(ap_mask, x, min_total_s=0.05, repeats=2)
  if "torch" in baselines and torch is not None:
    tdt = {"bfloat16": torch.bfloat16, "float32": torch.float32}.get(rec["dtype"])
    if tdt is not None:
      xt = torch.randn(t, d, device="cuda", dtype=torch.float32)
      if data == "relu":
        xt = torch.relu(xt)
      xt = xt.to(tdt)

      def tk():
        v, i = torch.topk(xt, k, dim=-1)
        return torch.zeros_like(xt).scatter_(-1, i, v)
      rec["torch_ms"] = _time_torch(tk, torch, min_total_s=0.05, repeats=2)
  return rec


def sweep(t, d, k, dtype, configs):
  """Times pallas_gpu.forward under several launch configs (GPU tuning aid)."""
  from lazy_neuron.kernels.topk import pallas_gpu
  x = jax.random.normal(jax.random.key(0), (t, d), jnp.float32).astype(dtype)
  out = []
  for cfg in configs:
    f = jax.jit(lambda a, cfg=cfg: pallas_gpu.forward(a, k, **cfg)[0])
    try:
      ms = _time_jax(f, x)
    except Exception as e:  # noqa: BLE001 - report and go on
      ms = None
      cfg = dict(cfg, error=f"{type(e).__name__}: {str(e).splitlines()[0][:200]}")
    out.append(dict(cfg, D=d, k=k, dtype=jnp.dtype(dtype).name, fwd_ms=ms))
    print(f"  sweep {jnp.dtype(dtype).name} D={d} k={k} {cfg}: {ms}", flush=True)
  return out


def _tune_candidates(d):
  if d >= 8192:
    return [dict(num_warps=w, chunk=c, reload_x=True) for w in (4, 8, 16) for c in (2048, 4096)]
  chunks = (1024, 2048) if d > 1024 else (1024,)
  warps = (1, 2, 4) if d > 2048 else (1, 2)  # 4 warps won at D = 4096 (second H200 sweep)
  return [dict(num_warps=w, chunk=c, bracket=b, reload_x=False)
          for w in warps for c in chunks for b in ("minmax", "full")]


def _fmt(v):
  if v is None:
    return "-"
  if isinstance(v, bool):
    return "yes" if v else "NO"
  return f"{v:.3f}" if isinstance(v, float) else str(v)


# The full grid (meant for a GPU) and --quick's (seconds on a CPU): defaults of the flags not given.
FULL = dict(T=65536, D="1024,3072,4096,16384", k="16,64,128,512", dtypes="bfloat16,float32")
QUICK = dict(T=2048, D="1024", k="16,128", dtypes="float32")


def _parse_flags(argv):
  from lazy_neuron import checks, cli, flags, outpaths
  from lazy_neuron.bench import int_list
  from lazy_neuron.kernels import topk as topk_lib

  p = flags.parser(cli.prog_name(argv, "lazy-neuron bench topk"), __doc__.splitlines()[0])
  p.add_argument("--out", default=None, help="write results JSON here")
  p.add_argument("--T", type=int, default=None, help=f"rows (tokens) per call (default {FULL['T']})")
  p.add_argument("--D", default=None, help=f"comma list of row widths (default {FULL['D']})")
  p.add_argument("--k", default=None, help=f"comma list of k (default {FULL['k']})")
  p.add_argument("--dtypes", default=None,
                 help=f"comma list of bfloat16, float16, float32 (default {FULL['dtypes']})")
  p.add_argument("--backend", default="auto")
  p.add_argument("--baselines", default="lax,approx,torch",
                 help="comma list of lax, approx, torch (empty for none)")
  p.add_argument("--data", default="normal", choices=["normal", "relu", "relu_fused"])
  p.add_argument("--no-check", action="store_true", help="skip the exactness check")
  p.add_argument("--sweep", action="store_true", help="also sweep Triton launch configs")
  p.add_argument("--tune", action="store_true",
                 help="per (D, dtype): time Triton launch configs at k=128, use the best")
  p.add_argument("--quick", action="store_true",
                 help=f"tiny grid, seconds on a CPU: defaults {QUICK} for the flags not given")
  p.add_argument("--hardware", default=None, help="hardware name recorded in the JSON")
  a, _ = flags.parse(p, argv[1:])
  # --quick changes the defaults only: a value given on the command line is kept.
  for key, value in (QUICK if a.quick else FULL).items():
    if getattr(a, key) is None:
      setattr(a, key, value)
  checks.integer("--T", a.T, min=1)
  a.D, a.k = (int_list("--D", a.D, min=1, example="1024,3072"),
              int_list("--k", a.k, min=1, example="16,128"))
  if min(a.k) > max(a.D):
    raise checks.fail("--k", ",".join(map(str, a.k)),
                      f"every k is larger than every row width --D={','.join(map(str, a.D))}; "
                      "use k <= D")
  a.skipped = [(k, d) for d in a.D for k in a.k if k > d]
  a.dtypes = [d.strip() for d in a.dtypes.split(",")]
  for dtype in a.dtypes:
    checks.choice("--dtypes", dtype, ("bfloat16", "float16", "float32"))
  a.baselines = [b for b in a.baselines.split(",") if b]
  for b in a.baselines:
    checks.choice("--baselines", b, ("lax", "approx", "torch"))
  a.backend = topk_lib.resolve_backend(checks.choice("--backend", a.backend, topk_lib.BACKENDS))
  if a.hardware is not None:
    checks.string("--hardware", a.hardware)
  if a.out is not None:
    outpaths.file("--out", a.out)
  _check_memory(a)
  return a


def _check_memory(a) -> None:
  """The largest row block must fit the device: x, g, the output and temporaries, ~8 copies."""
  from lazy_neuron import checks

  dev = jax.devices()[0]
  limit = None
  try:
    limit = (dev.memory_stats() or {}).get("bytes_limit")
  except Exception:  # noqa: BLE001 - CPU and some backends have no memory stats
    pass
  if limit is None and dev.platform == "cpu":
    limit = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
  need = 8 * a.T * max(a.D) * 4
  if limit and need > limit:
    raise checks.fail("--T", a.T, f"--T x --D={max(a.D)} needs about {need / 2**30:.1f} GiB, more "
                                  f"than the {limit / 2**30:.1f} GiB of {dev.device_kind}; use a "
                                  "smaller --T or --D")


def main(argv=None) -> int:
  from lazy_neuron.bench import run_command
  return run_command(_parse_flags, _run, argv)


def _run(a, argv) -> int:
  del argv  # the flags are in `a`
  from lazy_neuron import fileio
  from lazy_neuron.kernels import topk as topk_lib
  backend = a.backend  # resolved: the name of the implementation that runs
  dev = jax.devices()[0]
  torch = _torch() if "torch" in a.baselines else None
  meta = dict(hardware=a.hardware or getattr(dev, "device_kind", str(dev)),
              platform=dev.platform, jax=jax.__version__, backend=backend, T=a.T,
              torch=getattr(torch, "__version__", None), time=time.strftime("%Y-%m-%d %H:%M:%S"))
  print(f"# topk bench on {meta['hardware']} (jax {jax.__version__}, backend {backend})", flush=True)
  results = []
  cols = ["dtype", "D", "k", "copy_ms", "fwd_ms", "bwd_ms", "lax_ms", "approx_ms", "torch_ms",
          "exact"]
  print(" ".join(f"{c:>9}" for c in cols), flush=True)
  if a.skipped:
    print(f"# skipped k > D: {', '.join(f'k={k} D={d}' for k, d in a.skipped)}", flush=True)
  tuned = []
  for dtype in a.dtypes:
    for d in a.D:
      if a.tune and dev.platform == "gpu" and backend == "pallas_gpu":
        from lazy_neuron.kernels.topk import pallas_gpu
        res = sweep(a.T, d, min(128, d), jnp.dtype(dtype), _tune_candidates(d))
        best = min((r for r in res if r["fwd_ms"] is not None), key=lambda r: r["fwd_ms"])
        cfg = {c: best[c] for c in ("num_warps", "chunk", "bracket", "reload_x") if c in best}
        pallas_gpu.TUNED[(d, jnp.dtype(dtype).name)] = cfg
        tuned.append(dict(D=d, dtype=jnp.dtype(dtype).name, config=cfg, all=res))
        print(f"# tuned D={d} {dtype}: {cfg} {best['fwd_ms']:.3f} ms", flush=True)
      for k in a.k:
        if k > d:
          continue
        rec = run_one(a.T, d, k, jnp.dtype(dtype), backend=backend, baselines=a.baselines,
                      data=a.data, torch=torch, check=not a.no_check)
        results.append(rec)
        print(" ".join(f"{_fmt(rec.get(c)):>9}" for c in cols), flush=True)
        if a.out:  # incremental (and atomic), so a run cut short still leaves its rows
          fileio.write_atomic(a.out, json.dumps(dict(meta=meta, results=results, tuned=tuned),
                                                indent=1))
  out = dict(meta=meta, results=results, tuned=tuned)
  if a.sweep and dev.platform == "gpu":
    cfgs = []
    for rows in (1, 2, 4):
      for nw in (2, 4, 8):
        cfgs.append(dict(rows=rows, num_warps=nw))
    cfgs += [dict(rows=1, num_warps=4, chunk=2048), dict(rows=1, num_warps=4, reload_x=True),
             dict(rows=1, num_warps=4, n_interp=4), dict(rows=1, num_warps=4, n_interp=12)]
    out["sweep"] = []
    for dtype in ("bfloat16", "float32"):
      out["sweep"] += sweep(a.T, 3072, 128, jnp.dtype(dtype), cfgs)
  if dev.platform == "cpu":  # the auto choice on CPU: jnp path vs interpret mode
    x = jax.random.normal(jax.random.key(0), (256, 1024), jnp.float32)
    out["cpu_choice"] = {
        b: _time_jax(jax.jit(lambda v, b=b: topk_lib.topk_mask(v, 64, backend=b)), x)
        for b in ("jnp", "interpret_gpu", "reference")}
    print(f"# CPU [256, 1024] f32 k=64 ms: {out['cpu_choice']}", flush=True)
  if a.out:
    fileio.write_atomic(a.out, json.dumps(out, indent=1))
    print(f"# wrote {a.out}", flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
