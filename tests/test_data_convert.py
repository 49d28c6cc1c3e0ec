"""`lazy-neuron convert`: TFDS TFRecord -> ArrayRecord, with TFRecord files written here (no TF needed)
and, where TensorFlow is installed, with files TFDS itself prepared as TFRecord."""
from __future__ import annotations

import importlib.util
import io
import json
import os

import numpy as np
import pytest

from PIL import Image

from lazy_neuron import data
from lazy_neuron.data import convert
from lazy_neuron.errors import UserError

tfds = pytest.importorskip("tensorflow_datasets")
HAS_TF = importlib.util.find_spec("tensorflow") is not None


class TinyImages(tfds.core.GeneratorBasedBuilder):
  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=(None, None, 3)),
        "label": tfds.features.ClassLabel(names=["a", "b", "c"])}))

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples(30), "test": self._generate_examples(7)}

  def _generate_examples(self, n):
    rng = np.random.default_rng(n)
    for i in range(n):  # PNG bytes: encoding arrays would need TensorFlow
      buf = io.BytesIO()
      Image.fromarray(rng.integers(0, 256, (12 + i % 5, 10, 3), dtype=np.uint8)).save(buf, "PNG")
      yield i, {"image": buf.getvalue(), "label": i % 3}


def _examples(data_dir, split):
  """(serialized record, label) in order: conversion must copy every record byte for byte."""
  src = tfds.data_source("tiny_images", split=split, data_dir=data_dir,
                         decoders={"image": tfds.decode.SkipDecoding()})
  return [(bytes(src[i]["image"]), int(src[i]["label"])) for i in range(len(src))]


@pytest.fixture(scope="module")
def array_record_dir(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("tiny_images_ar"))
  TinyImages(data_dir=root, file_format="array_record").download_and_prepare()
  return root


@pytest.fixture(scope="module")
def tfrecord_dir(array_record_dir, tmp_path_factory):
  """The same dataset as TFDS would store it in TFRecord: shards re-framed, metadata says tfrecord."""
  from array_record.python.array_record_module import ArrayRecordReader

  root = tmp_path_factory.mktemp("tiny_images_tfr")
  src = os.path.join(array_record_dir, "tiny_images", "1.0.0")
  dst = root / "tiny_images" / "1.0.0"
  dst.mkdir(parents=True)
  for name in os.listdir(src):
    path = os.path.join(src, name)
    if ".array_record-" in name:
      reader = ArrayRecordReader(path)
      records = reader.read_all()
      reader.close()
      convert.write_tfrecords(str(dst / name.replace(".array_record-", ".tfrecord-")), records)
    elif name == "dataset_info.json":
      meta = json.load(open(path))
      meta["fileFormat"] = "tfrecord"
      (dst / name).write_text(json.dumps(meta))
    else:
      (dst / name).write_bytes(open(path, "rb").read())
  return str(root)


def test_tfrecord_image_dataset_says_how_to_convert(tfrecord_dir):
  cfg = data.get_data_config("tfds", dataset="tiny_images", data_dir=tfrecord_dir, image_size=8)
  with pytest.raises(UserError, match=r"prepared as TFRecord .* `lazy-neuron convert --dataset=tiny_images "
                     rf"--data_dir={tfrecord_dir} --out_dir=NEW_DIR`") as e:
    data.info(cfg)
  assert "\n" not in str(e.value)


def test_missing_data_dir_is_named():
  cfg = data.get_data_config("tfds", dataset="cifar100", data_dir="/no/such/tfds_dir", image_size=8)
  with pytest.raises(UserError, match=r"data.data_dir='/no/such/tfds_dir' does not exist \(data.dataset='cifar100'\)"):
    data.info(cfg)


def test_convert_copies_every_record_and_the_pipeline_reads_it(array_record_dir, tfrecord_dir, tmp_path,
                                                               capsys):
  out = str(tmp_path / "out")
  rc = convert.main(["lazy-neuron convert", "--dataset=tiny_images", f"--data_dir={tfrecord_dir}",
                     f"--out_dir={out}", "--workers=2"])
  assert rc == 0 and "done: 37 records" in capsys.readouterr().out
  for split in ("train", "test"):
    got, want = _examples(out, split), _examples(array_record_dir, split)
    assert len(got) == len(want) and got == want
  assert not [p for p in os.listdir(os.path.join(out, "tiny_images")) if "incomplete" in p]
  cfg = data.get_data_config("tfds", dataset="tiny_images", data_dir=out, image_size=8)
  assert data.info(cfg).num_classes == 3
  assert next(data.build(cfg, split="train", batch_size=6, seed=0))["image"].shape == (6, 8, 8, 3)
  # Never overwrites; refuses what is not TFRecord; names a dataset it cannot find.
  for args, message in [((tfrecord_dir, out), "already holds a prepared dataset"),
                        ((out, str(tmp_path / "o2")), "stored as array_record, not TFRecord"),
                        ((str(tmp_path / "none"), str(tmp_path / "o3")), "none does not exist"),
                        ((str(tmp_path), str(tmp_path / "o4")), "not prepared in --data_dir")]:
    rc = convert.main(["lazy-neuron convert", "--dataset=tiny_images", f"--data_dir={args[0]}",
                       f"--out_dir={args[1]}"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and message in err and len(err.splitlines()) == 1


def test_remote_style_output_is_staged_locally(array_record_dir, tfrecord_dir, tmp_path):
  # The gs:// code path (shards staged on local disk and copied; dataset_info.json last), here on a
  # local directory: there is no network in CI.
  out = str(tmp_path / "staged")
  convert.convert("tiny_images", tfrecord_dir, out, log=lambda m: None, stage_locally=True)
  got, want = _examples(out, "train"), _examples(array_record_dir, "train")
  assert len(got) == 30 and got == want


def test_corrupt_tfrecord_is_named(tmp_path):
  path = str(tmp_path / "x.tfrecord-00000-of-00001")
  convert.write_tfrecords(path, [b"abc", b"defgh"])
  assert list(convert.read_tfrecords(path)) == [b"abc", b"defgh"]
  raw = open(path, "rb").read()
  open(path, "wb").write(raw[:-3])
  with pytest.raises(UserError, match=r"x.tfrecord-00000-of-00001: truncated in record 1"):
    list(convert.read_tfrecords(path))
  open(path, "wb").write(b"\x05" + raw[1:])
  with pytest.raises(UserError, match="record 0 has a bad length checksum"):
    list(convert.read_tfrecords(path))


def test_crc32c_known_value():
  assert convert._crc32c_py(b"123456789") == 0xE3069283  # the CRC-32C check value


@pytest.mark.skipif(not HAS_TF, reason="TensorFlow (the `tf` extra) not installed")
def test_tensorflow_reads_our_tfrecords_and_tfds_prepared_ones_convert(tmp_path, array_record_dir):
  import tensorflow as tf

  path = str(tmp_path / "y.tfrecord")
  convert.write_tfrecords(path, [b"abc", b"", b"x" * 1000])
  assert [bytes(r) for r in tf.data.TFRecordDataset(path).as_numpy_iterator()] == [b"abc", b"", b"x" * 1000]
  tfr = str(tmp_path / "tfds_tfr")
  TinyImages(data_dir=tfr, file_format="tfrecord").download_and_prepare()
  out = str(tmp_path / "converted")
  convert.convert("tiny_images", tfr, out, log=lambda m: None)
  for split in ("train", "test"):
    got, want = _examples(out, split), _examples(array_record_dir, split)
    assert got == want


def test_unreadable_gcs_array_record_names_the_fixes():
  from lazy_neuron.data import images
  from lazy_neuron.data.config import validate
  src = images.TfdsImageSource(validate(data.get_data_config("tfds", dataset="cifar10",
                                                             data_dir="gs://bucket/tfds")))
  e = src._tfds_error(RuntimeError("open() failed: No such file or directory; opening gs://bucket/x"))
  assert "gs://bucket/tfds" in str(e) and "gcsfuse" in str(e) and "\n" not in str(e)
