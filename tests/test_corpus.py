"""data.corpus_files with folders and tar archives: the same documents and split wherever the
corpus lies and whichever form it takes; bad folders/archives refused before any work."""
from __future__ import annotations

import io
import os
import tarfile

import pytest

from lazy_neuron import data
from lazy_neuron.data import config, docstrings
from lazy_neuron.errors import UserError

FILES = {f"pkg{p}/doc_{i:03d}.rst": f"Document {p}.{i}\n" + "text " * (i + 1) for p in "ab"
         for i in range(40)}


def _folder(root):
  for name, text in FILES.items():
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
  return root


def _archive(path, names):
  with tarfile.open(path, "w:gz") as tar:
    for name in names:  # archive order is not sorted order
      raw = FILES[name].encode()
      info = tarfile.TarInfo(name)
      info.size = len(raw)
      tar.addfile(info, io.BytesIO(raw))
  return path


def _load(tmp_path, corpus_files):
  cfg = config.validate(data.get_data_config("docstrings", corpus_files=corpus_files,
                                             tokenizer="bytes", eval_fraction=0.2,
                                             cache_dir=str(tmp_path / "cache")))
  return docstrings.load(cfg)


def test_folder_and_archive_give_the_same_documents_and_split(tmp_path):
  folder = _folder(tmp_path / "here" / "corpus")
  moved = _folder(tmp_path / "elsewhere" / "c")
  archive = _archive(tmp_path / "corpus.tar.gz", list(reversed(FILES)))
  got = [_load(tmp_path, str(p)) for p in (folder, moved, archive)]
  assert got[0] == got[1] == got[2]
  # split by a hash of the relative name: this split, in sorted order
  want = {"train": [], "eval": []}
  for name in sorted(FILES):
    want["eval" if docstrings._is_eval(name, 0.2) else "train"].append(FILES[name])
  assert got[0] == want and 0 < len(want["eval"]) < len(FILES) // 2


def test_read_documents_names(tmp_path):
  archive = _archive(tmp_path / "c.tgz", ["pkgb/doc_001.rst", "pkga/doc_002.rst"])
  assert [n for n, _ in docstrings.read_documents([str(archive)])] == [
      "pkga/doc_002.rst", "pkgb/doc_001.rst"]


def test_bad_corpus_refused(tmp_path):
  (tmp_path / "empty").mkdir()
  with pytest.raises(UserError, match="holds no file"):
    docstrings.corpus_files(str(tmp_path / "empty"))
  (tmp_path / "fake.tar.gz").write_bytes(b"not a tar")
  with pytest.raises(UserError, match="is not a tar archive"):
    config.validate(data.get_data_config("docstrings", corpus_files=str(tmp_path / "fake.tar.gz")))


@pytest.mark.parametrize("recipe", ["adamw", "t5", "t5_spm32k"])
def test_c1_gpu_recipes_load_and_validate(tmp_path, recipe, repo_root):
  """The T5-Base recipes of configs/paper/t5.py on a given corpus (their 3-step CPU runs with a
  tiny model are a manual check: docs/data.md)."""
  from lazy_neuron import config_lib
  archive = _archive(tmp_path / "c.tar.gz", list(FILES))
  spm = tmp_path / "s.model"
  spm.write_bytes(b"")  # validation only checks that the model file exists
  c = config_lib.load_config(os.path.join(repo_root, "configs", "paper", "t5.py") +
                             f":scale=gpu,recipe={recipe},corpus={archive},spm={spm}", ())
  config.validate(c.data)
  assert (c.model.variant, c.batch_size, c.data.inputs_length) == ("base", 128, 512)
  assert c.optimizer.schedule in ("constant", "rsqrt")  # never decays to 0
  assert c.data.tokenizer == (str(spm) if recipe == "t5_spm32k" else "bytes")
  with pytest.raises(UserError, match="add scale=gpu"):
    config_lib.load_config(os.path.join(repo_root, "configs", "paper", "t5.py") +
                           f":scale=cpu,recipe={recipe}", ())
