"""`lazy-neuron bench input`: input-pipeline throughput, images/s decoded from JPEG ArrayRecord files.

  lazy-neuron bench input --make-records=4096 --dir=/tmp/ln_bench_input --workers=0,8,16 --out=input.json

`--make-records=N` writes N synthetic photographs-like JPEGs (random sizes 256..500 px, smooth colour
fields + shapes + grain, quality 90; ~ImageNet's bytes per image) as a small TFDS ArrayRecord dataset
`bench_jpeg` in `--dir` (reused if it already holds N). Then it runs the real training pipeline
(`data.name="tfds"`: ArrayRecord read, JPEG decode with PIL draft, inception crop, flip, resize to
`--image-size`, normalise to float32, batch `--batch-size`) with grain worker processes
(`--workers`, a comma list; 0 = `--threads` threads in this process) and reports images/s after
`--warmup` batches. Also a one-core decode-only rate (with and without JPEG draft) to extrapolate.

Needs only numpy, PIL, grain, array_record and tensorflow_datasets (not ml_collections, not jax).
"""
from __future__ import annotations

import io
import json
import os
import platform
import shutil
import sys
import time
from typing import Optional, Sequence

import numpy as np


def hardware() -> dict:
  model = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          model = line.split(":", 1)[1].strip()
          break
  except OSError:
    pass
  from lazy_neuron.data.pipeline import usable_cores

  return {"cpu_model": model, "cpu_count": os.cpu_count(), "cpus_usable": usable_cores(),
          "python": sys.version.split()[0], "platform": platform.platform()}


def synthetic_jpeg(rng: np.random.Generator, min_side: int, max_side: int, quality: int) -> bytes:
  """A photo-like JPEG: a smooth random colour field, a few shapes, sensor-like grain."""
  from PIL import Image, ImageDraw, ImageFilter

  w, h = (int(v) for v in rng.integers(min_side, max_side + 1, size=2))
  base = rng.integers(0, 256, size=(int(rng.integers(3, 9)), int(rng.integers(3, 9)), 3), dtype=np.uint8)
  img = Image.fromarray(base).resize((w, h), Image.BICUBIC)
  draw = ImageDraw.Draw(img)
  for _ in range(int(rng.integers(3, 12))):
    x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
    x1, y1 = x0 + int(rng.integers(10, w // 2 + 11)), y0 + int(rng.integers(10, h // 2 + 11))
    colour = tuple(int(c) for c in rng.integers(0, 256, 3))
    (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=colour)
  img = img.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0.5, 2.0))))
  x = np.asarray(img, np.int16) + rng.normal(0, 30, size=(h, w, 3)).astype(np.int16)
  buf = io.BytesIO()
  Image.fromarray(np.clip(x, 0, 255).astype(np.uint8)).save(buf, format="JPEG", quality=quality)
  return buf.getvalue()


# Upper bound of a synthetic JPEG's bytes (the mean is ~110 kB), for the free-space check.
JPEG_BYTES = 200_000


def records_dir(root: str, n: int) -> str:
  """Where `make_records(root, n)` writes (and finds an earlier copy)."""
  return os.path.join(os.path.abspath(os.path.expanduser(root)), f"v2-n{n}")


def make_records(root: str, n: int, *, min_side=256, max_side=500, quality=90, seed=0) -> str:
  """Writes `bench_jpeg` (N train + 64 test JPEGs, 1000 classes) as ArrayRecord under `root`."""
  import tensorflow_datasets as tfds
  from concurrent.futures import ThreadPoolExecutor

  class BenchJpeg(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
          "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
          "label": tfds.features.ClassLabel(num_classes=1000)}))

    def _split_generators(self, dl_manager):
      return {"train": self._generate_examples(n, 0), "test": self._generate_examples(64, 1)}

    def _generate_examples(self, count, stream):
      def one(i):
        return synthetic_jpeg(np.random.default_rng([seed, stream, i]), min_side, max_side, quality)

      with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        for start in range(0, count, 256):
          ids = range(start, min(count, start + 256))
          for i, jpeg in zip(ids, pool.map(one, ids)):
            yield i, {"image": jpeg, "label": i % 1000}

  data_dir = records_dir(root, n)
  builder = BenchJpeg(data_dir=data_dir, file_format="array_record")
  if not os.path.exists(os.path.join(os.fspath(builder.data_dir), "dataset_info.json")):
    tfds.display_progress_bar(False)
    builder.download_and_prepare()
  return data_dir


def _pipeline_config(data_dir, image_size, threads, workers, image_dtype="float32"):
  return {"name": "tfds", "dataset": "bench_jpeg", "data_dir": data_dir, "image_size": image_size,
          "num_threads": threads, "num_workers": workers, "prefetch": max(4, 2 * workers),
          "augment": "inception_crop", "image_dtype": image_dtype}


def time_pipeline(data_dir, *, image_size, batch_size, threads, workers, warmup, batches,
                  image_dtype="float32") -> dict:
  from lazy_neuron import data

  cfg = _pipeline_config(data_dir, image_size, threads, workers, image_dtype)
  start = time.perf_counter()
  it = data.build(cfg, split="train", batch_size=batch_size, seed=0)
  for _ in range(warmup):
    batch = next(it)
  first = time.perf_counter() - start
  t0 = time.perf_counter()
  for _ in range(batches):
    batch = next(it)
  dt = time.perf_counter() - t0
  assert batch["image"].shape == (batch_size, image_size, image_size, 3)
  it.close()
  return {"workers": workers, "threads": threads if not workers else 0, "batch_size": batch_size,
          "image_dtype": image_dtype,
          "batches": batches, "seconds": dt, "images_per_s": batches * batch_size / dt,
          "startup_s": first}


def time_decode(data_dir, *, image_size, count, draft: bool) -> dict:
  """One core: read + decode + inception crop + flip + resize + normalise, no pipeline."""
  from lazy_neuron.data import images
  from lazy_neuron.data.images import TfdsImageSource
  from lazy_neuron.data.config import validate

  src = TfdsImageSource(validate(_pipeline_config(data_dir, image_size, 0, 0)))
  raw = [src.source("train")[i]["image"] for i in range(count)]
  saved = images._draft
  if not draft:
    images._draft = lambda img, h, w, nw, nh: (1.0, 1.0)
  try:
    t0 = time.perf_counter()
    for start in range(0, count, 64):
      images.preprocess(raw[start:start + 64], image_size, train=True, augment="inception_crop",
                        channels=3, index=np.arange(start, min(count, start + 64)))
    dt = time.perf_counter() - t0
  finally:
    images._draft = saved
  return {"draft": draft, "images": count, "seconds": dt, "images_per_s_per_core": count / dt,
          "mean_jpeg_bytes": float(np.mean([len(r) for r in raw])),
          "mean_pixels": float(np.mean([_pixels(r) for r in raw[:64]]))}


def _pixels(jpeg) -> int:
  from PIL import Image

  img = Image.open(io.BytesIO(jpeg if isinstance(jpeg, bytes) else bytes(jpeg)))
  return img.size[0] * img.size[1]


def _parse_flags(argv: list[str]):
  from lazy_neuron import checks, cli, flags, outpaths
  from lazy_neuron.bench import int_list

  p = flags.parser(cli.prog_name(argv, "lazy-neuron bench input"), __doc__.split("\n\n")[0])
  p.add_argument("--make-records", "--make_records", type=int, default=2048,
                 help="JPEG records to write (reused when --dir already holds this many)")
  p.add_argument("--dir", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "ln_bench_input"))
  p.add_argument("--workers", default=None,
                 help="comma list of grain worker counts (default: 0,<cpus>); 0 = threads in-process, "
                 "-1 = one per usable core")
  p.add_argument("--threads", type=int, default=None, help="threads when workers=0 (default: cpus)")
  p.add_argument("--batch-size", "--batch_size", type=int, default=256)
  p.add_argument("--image-size", "--image_size", type=int, default=224)
  p.add_argument("--batches", type=int, default=None, help="timed batches (default: ~2 epochs' worth, <= 40)")
  p.add_argument("--warmup", type=int, default=2)
  p.add_argument("--decode-images", "--decode_images", type=int, default=256,
                 help="images for the one-core decode measurement (0: skip)")
  p.add_argument("--image-dtype", "--image_dtype", default="float32", choices=("float32", "uint8"),
                 help="batch dtype: float32 (normalised on the host) or uint8 (normalised by the model)")
  p.add_argument("--out", default="bench_input.json")
  args, _ = flags.parse(p, argv[1:])
  cpus = os.cpu_count() or 1
  checks.integer("--make-records", args.make_records, min=1)
  checks.integer("--batch-size", args.batch_size, min=1)
  checks.integer("--image-size", args.image_size, min=1)
  # More than 4 threads or processes per core only thrash (and each worker is a process).
  checks.integer("--threads", args.threads, min=1, max=4 * cpus, none_ok=True)
  checks.integer("--batches", args.batches, min=1, none_ok=True)
  checks.integer("--warmup", args.warmup, min=0)
  checks.integer("--decode-images", args.decode_images, min=0)
  if args.make_records < args.batch_size:
    raise checks.fail("--make-records", args.make_records,
                      f"use at least --batch-size={args.batch_size} records")
  if args.workers is not None:
    args.workers = int_list("--workers", args.workers, min=-1, example="0,8,16")
    for w in args.workers:
      checks.integer("--workers", w, min=-1, max=4 * cpus)
  batch_bytes = args.batch_size * args.image_size ** 2 * 3 * (4 if args.image_dtype == "float32" else 1)
  memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
  if batch_bytes > memory // 4:  # prefetched batches sit in memory several at a time
    raise checks.fail("--image-size", args.image_size,
                      f"one batch of {args.batch_size} would take {batch_bytes / 2**30:.1f} GiB, more "
                      f"than a quarter of this machine's {memory / 2**30:.1f} GiB; use a smaller "
                      "--image-size or --batch-size")
  # Every path written, checked before the records are made (minutes of work).
  outpaths.file("--out", args.out)
  if "://" in args.dir:  # array_record and the JPEG writer write local files only
    raise checks.fail("--dir", args.dir, "use a local folder")
  outpaths.folder("--dir", args.dir)
  if not os.path.exists(os.path.join(records_dir(args.dir, args.make_records), "bench_jpeg")):
    need = args.make_records * JPEG_BYTES
    free = shutil.disk_usage(_existing(args.dir)).free
    if need > free:
      raise checks.fail("--make-records", args.make_records,
                        f"about {need / 2**30:.1f} GiB of JPEGs would not fit the {free / 2**30:.1f} "
                        f"GiB free in --dir={args.dir}; use fewer records or another --dir")
  return args


def _existing(path: str) -> str:
  path = os.path.abspath(os.path.expanduser(path))
  while not os.path.exists(path):
    path = os.path.dirname(path)
  return path


def main(argv: Optional[Sequence[str]] = None) -> int:
  from lazy_neuron import errors
  from lazy_neuron.errors import UserError

  argv = list(sys.argv if argv is None else argv)
  try:
    args = _parse_flags(argv)
  except UserError as e:
    return errors.report(e)
  from absl import flags

  from lazy_neuron import fileio

  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()  # grain's worker processes read absl flags
  hw = hardware()
  cpus = hw["cpus_usable"] or 1
  workers = [cpus if w == -1 else w for w in (args.workers or [0, cpus])]
  threads = args.threads or cpus
  t0 = time.perf_counter()
  data_dir = make_records(args.dir, args.make_records)
  made = time.perf_counter() - t0
  print(f"records: {args.make_records} JPEGs in {data_dir} ({made:.1f}s)")
  batches = args.batches or max(4, min(40, 2 * args.make_records // args.batch_size))
  result = {"hardware": hw, "records": args.make_records, "data_dir": data_dir,
            "image_size": args.image_size, "batch_size": args.batch_size, "target_images_per_s": 3500,
            "decode": [], "pipeline": []}
  if args.decode_images:
    for draft in (True, False):
      r = time_decode(data_dir, image_size=args.image_size, count=min(args.decode_images, args.make_records),
                      draft=draft)
      result["decode"].append(r)
  for w in workers:
    r = time_pipeline(data_dir, image_size=args.image_size, batch_size=args.batch_size, threads=threads,
                      workers=w, warmup=args.warmup, batches=batches, image_dtype=args.image_dtype)
    r["images_per_s_per_core"] = r["images_per_s"] / min(cpus, max(w, threads if not w else w))
    result["pipeline"].append(r)
  kind = "float32 [-1, 1]" if args.image_dtype == "float32" else "uint8 pixels"
  print(f"\n{hw['cpu_model']}, {cpus} usable cores; batch {args.batch_size}, "
        f"{args.image_size}x{args.image_size}, {kind}")
  if result["decode"]:
    d = result["decode"][0]
    print(f"JPEGs: mean {d['mean_jpeg_bytes'] / 1e3:.0f} kB, {d['mean_pixels'] / 1e3:.0f} kpixels")
    print(f"{'one core, no pipeline':<28} {'img/s':>9}")
    for d in result["decode"]:
      print(f"{'decode+crop+resize' + (' (draft)' if d['draft'] else ' (full)'):<28} "
            f"{d['images_per_s_per_core']:>9.0f}")
  print(f"\n{'pipeline':<28} {'img/s':>9} {'img/s/core':>11} {'s/batch':>8} {'startup s':>10}")
  for r in result["pipeline"]:
    name = f"{r['workers']} workers" if r["workers"] else f"in-process, {threads} threads"
    print(f"{name:<28} {r['images_per_s']:>9.0f} {r['images_per_s_per_core']:>11.0f} "
          f"{r['seconds'] / r['batches']:>8.3f} {r['startup_s']:>10.1f}")
  best = max(r["images_per_s"] for r in result["pipeline"])
  result["best_images_per_s"] = best
  if result["decode"]:
    result["estimate_16_cores"] = 16 * result["decode"][0]["images_per_s_per_core"]
    print(f"\nbest {best:.0f} img/s; one-core decode rate x 16 = {result['estimate_16_cores']:.0f} img/s "
          f"(target 3500)")
  fileio.write_atomic(args.out, json.dumps(result, indent=2))
  print(f"wrote {args.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
