"""`lazy-neuron convert`: a TFDS dataset prepared as TFRecord -> the same dataset as ArrayRecord.

  lazy-neuron convert --dataset=imagenet2012 --data_dir=gs://BUCKET/tfds --out_dir=/data/tfds
  lazy-neuron convert --dataset=cifar100:3.0.2 --data_dir=gs://tfds-data/datasets --out_dir=DIR

`tfds build` writes TFRecord unless told otherwise, and TFDS's public `gs://tfds-data/datasets` bucket
holds TFRecord; the image pipeline needs random access (a global shuffle that depends on the seed only,
grain workers, exact resume), which ArrayRecord gives. Both formats hold the same serialized
`tf.train.Example` per record, so the conversion copies records unchanged, shard by shard, and writes
the dataset's metadata with `fileFormat: array_record`. No TensorFlow and no Apache Beam needed
(`tfds convert_format` needs Beam): TFRecord framing is read here (length, masked CRC32C of the
length checked; the data CRC too when `google-crc32c` is installed). A local output appears atomically
(written under `<version>.incomplete-*`, renamed at the end); a gs:// output is staged shard by shard
on local disk (array_record writes local files only) and becomes visible to TFDS when its
`dataset_info.json` is written, last. An existing output is never overwritten.
Then: `--config.data.data_dir=DST` (or `data_dir=DST` in the config's args).
"""
from __future__ import annotations

import json
import os
import shutil
import struct
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator, Optional, Sequence

from lazy_neuron.errors import UserError
from lazy_neuron import errors

_CRC_TABLE = None


def _crc32c_py(data: bytes) -> int:
  global _CRC_TABLE
  if _CRC_TABLE is None:
    table = []
    for i in range(256):
      c = i
      for _ in range(8):
        c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
      table.append(c)
    _CRC_TABLE = table
  crc = 0xFFFFFFFF
  for b in data:
    crc = _CRC_TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
  return crc ^ 0xFFFFFFFF


def _fast_crc32c():
  try:
    import google_crc32c
    return lambda data: int(google_crc32c.value(data))
  except ImportError:
    return None


def masked_crc(data: bytes, crc_fn=_crc32c_py) -> int:
  crc = crc_fn(data)
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def read_tfrecords(path: str) -> Iterator[bytes]:
  """The records of one TFRecord file; a torn or corrupt file is a UserError naming it."""
  data_crc = _fast_crc32c()
  from etils import epath

  with epath.Path(path).open("rb") as f:
    n = 0
    while True:
      header = f.read(12)
      if not header:
        return
      if len(header) < 12:
        raise UserError(f"{path}: truncated after record {n} (a partial header); the file is corrupt")
      length, length_crc = struct.unpack("<QI", header)
      if masked_crc(header[:8]) != length_crc:
        raise UserError(f"{path}: record {n} has a bad length checksum; the file is corrupt or not TFRecord")
      data = f.read(length)
      footer = f.read(4)
      if len(data) < length or len(footer) < 4:
        raise UserError(f"{path}: truncated in record {n}; the file is corrupt")
      if data_crc is not None and masked_crc(data, data_crc) != struct.unpack("<I", footer)[0]:
        raise UserError(f"{path}: record {n} has a bad data checksum; the file is corrupt")
      n += 1
      yield data


def write_tfrecords(path: str, records) -> None:
  """TFRecord framing with masked CRC32C (tests, and data for tools that read TFRecord)."""
  from etils import epath

  crc = _fast_crc32c() or _crc32c_py
  with epath.Path(path).open("wb") as f:
    for r in records:
      header = struct.pack("<Q", len(r))
      f.write(header + struct.pack("<I", masked_crc(header, crc)) + r
              + struct.pack("<I", masked_crc(r, crc)))


def _builder(dataset: str, data_dir: str):
  import tensorflow_datasets as tfds

  if "://" not in data_dir and not os.path.isdir(data_dir):
    raise UserError(f"--data_dir={data_dir} does not exist; give the TFDS data dir that holds "
                    f"{dataset.split(':')[0]}/<version>/")
  try:
    b = tfds.builder(dataset, data_dir=data_dir)
    info = b.info
    prepared = b.is_prepared()
  except Exception as e:  # noqa: BLE001 - DatasetNotFoundError, unreadable dir, bad version, ...
    raise UserError(f"--dataset={dataset!r} is not readable in --data_dir={data_dir} "
                    f"({type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}); give the "
                    "directory that holds <name>/<version>/dataset_info.json") from None
  if not prepared:
    raise UserError(f"--dataset={dataset!r} is not prepared in --data_dir={data_dir} (no "
                    f"dataset_info.json under {b.data_dir})")
  fmt = getattr(info.file_format, "value", str(info.file_format or "tfrecord"))
  if fmt != "tfrecord":
    raise UserError(f"--dataset={dataset!r} in {data_dir} is stored as {fmt}, not TFRecord; "
                    "nothing to convert" + (" (use it as it is)" if fmt == "array_record" else ""))
  return b


def _convert_shard(src: str, dst: str, staging: Optional[str]) -> int:
  """One TFRecord shard -> one ArrayRecord shard. array_record writes local files only: with
  `staging`, the shard is written there, copied to `dst` (e.g. gs://) and removed."""
  from array_record.python.array_record_module import ArrayRecordWriter
  from etils import epath

  local = os.path.join(staging, os.path.basename(dst)) if staging else dst
  writer = ArrayRecordWriter(local, "group_size:1")  # random access, as TFDS writes it
  n = 0
  try:
    for record in read_tfrecords(src):
      writer.write(record)
      n += 1
  finally:
    writer.close()
  if staging:
    epath.Path(local).copy(epath.Path(dst), overwrite=True)
    os.remove(local)
  return n


def convert(dataset: str, data_dir: str, out_dir: str, *, workers: int = 8,
            log=lambda msg: print(msg, flush=True), stage_locally: Optional[bool] = None) -> str:
  """Writes `out_dir/<name>[/<config>]/<version>` as ArrayRecord; returns that directory.

  Local `out_dir`: written under `<version>.incomplete-*`, renamed at the end; on any failure the
  folders this call made are removed, so a local output is all or nothing. Remote (gs://), where
  directories do not rename atomically: shards are written to a local staging dir one at a time and
  copied into place; `dataset_info.json`, which makes TFDS see the dataset, is written last.
  """
  import tempfile

  from etils import epath

  b = _builder(dataset, data_dir)
  src_dir = epath.Path(b.data_dir)
  root = epath.Path(data_dir)
  rel = os.path.relpath(os.fspath(src_dir), os.fspath(root)) if "://" not in os.fspath(root) else \
      os.fspath(src_dir)[len(os.fspath(root)):].lstrip("/")
  if rel.startswith(".."):
    raise UserError(f"--dataset={dataset!r} resolved to {src_dir}, outside --data_dir={data_dir}")
  dst = epath.Path(out_dir) / rel
  if (dst / "dataset_info.json").exists():
    raise UserError(f"{dst} already holds a prepared dataset; remove it or choose another --out_dir")
  if stage_locally is None:
    stage_locally = "://" in os.fspath(out_dir)
  if stage_locally:
    tmp = dst
    staging = tempfile.mkdtemp(prefix="lazy_neuron_convert_")
  else:
    tmp = dst.parent / f"{dst.name}.incomplete-{uuid.uuid4().hex[:8]}"
    staging = None
  # The highest folder this call creates: on failure it goes, so a local output is all or nothing.
  created = None if stage_locally else _first_missing(os.fspath(tmp))
  tmp.mkdir(parents=True, exist_ok=stage_locally)
  try:
    _convert_all(b, src_dir, tmp, staging, workers, dataset, dst, out_dir, log)
  except BaseException:
    if created is not None:
      shutil.rmtree(created, ignore_errors=True)
    if staging:
      shutil.rmtree(staging, ignore_errors=True)
    raise
  if tmp != dst:
    tmp.rename(dst)
  return os.fspath(dst)


def _first_missing(path: str) -> str:
  path = os.path.abspath(path)
  while not os.path.exists(os.path.dirname(path)):
    path = os.path.dirname(path)
  return path


def _convert_all(b, src_dir, tmp, staging, workers, dataset, dst, out_dir, log) -> None:
  jobs, expected = [], {}
  for split, info in b.info.splits.items():
    paths = [os.fspath(p) for p in info.filepaths]
    for p in paths:
      name = os.path.basename(p)
      if ".tfrecord-" not in name:
        raise UserError(f"{p}: not a TFDS TFRecord shard name (<name>-<split>.tfrecord-NNNNN-of-NNNNN)")
      jobs.append((p, os.fspath(tmp / name.replace(".tfrecord-", ".array_record-", 1)), split))
    expected[split] = int(info.num_examples)
  log(f"converting {dataset} ({len(jobs)} shards, {sum(expected.values()):,} records) from {src_dir} "
      f"to {dst}")
  start = time.time()
  counts: dict[str, int] = {split: 0 for split in expected}
  with ThreadPoolExecutor(max(1, workers)) as pool:  # I/O and C++ writing release the GIL
    for (src, _, split), n in zip(jobs, pool.map(lambda j: _convert_shard(j[0], j[1], staging), jobs)):
      counts[split] += n
  for split, n in counts.items():
    if n != expected[split]:
      raise UserError(f"split {split!r}: read {n} records, dataset_info.json says {expected[split]}; "
                      f"the TFRecord files in {src_dir} are incomplete")
  if staging:
    os.rmdir(staging)
  info_json = None
  for p in src_dir.iterdir():  # metadata: features.json, label files, ...; dataset_info.json last
    if ".tfrecord-" in p.name or p.is_dir():
      continue
    if p.name == "dataset_info.json":
      info_json = json.loads(p.read_text())
    else:
      (tmp / p.name).write_bytes(p.read_bytes())
  info_json["fileFormat"] = "array_record"
  (tmp / "dataset_info.json").write_text(json.dumps(info_json, indent=2))
  log(f"done: {sum(counts.values()):,} records in {time.time() - start:.1f}s; use data_dir={out_dir}")


def main(argv: Optional[Sequence[str]] = None) -> int:
  from lazy_neuron import checks, cli, flags, outpaths

  argv = list(sys.argv if argv is None else argv)
  p = flags.parser(cli.prog_name(argv, "lazy-neuron convert"), __doc__.split("\n\n")[0])
  p.add_argument("--dataset", required=True, help="TFDS name, e.g. imagenet2012 or cifar100:3.0.2")
  p.add_argument("--data_dir", "--data-dir", required=True, help="where it is prepared as TFRecord")
  p.add_argument("--out_dir", "--out-dir", required=True, help="TFDS data dir to write ArrayRecord into")
  p.add_argument("--workers", type=int, default=8, help="shards converted at once")
  try:
    args, _ = flags.parse(p, argv[1:])
    checks.integer("--workers", args.workers, min=1)
    checks.string("--dataset", args.dataset)
    checks.string("--data_dir", args.data_dir)
    outpaths.folder("--out_dir", args.out_dir)  # before the dataset is read or anything written
    convert(args.dataset, args.data_dir, args.out_dir, workers=args.workers)
  except UserError as e:
    return errors.report(e)
  return 0


if __name__ == "__main__":
  sys.exit(main())
