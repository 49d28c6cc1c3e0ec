"""A text corpus from the installed Python standard library's docstrings (offline, always present).

Module, class and function docstrings are extracted with `ast` (never imported), in a deterministic
order (sorted paths, source order within a file), skipping site-packages, tests and other noise. Each
module goes to `train` or `eval` by a hash of its relative path (`eval_fraction`, default 2%). Plain text
files can replace the stdlib (`data.corpus_files`): each file is one document, split by path hash too.
`data.corpus_files` may also name folders (every file below, recursively) and tar archives (`.tar`,
`.tar.gz`, `.tgz`: every regular member), read in sorted order of their relative names and split by
a hash of that relative name, so an archive and the folder it unpacks to give the same documents
and the same split on any machine (`lazy_neuron/data/debian_docs.py` builds such an archive).
"""
from __future__ import annotations

import ast
import glob
import hashlib
import json
import os
import sys
import sysconfig
import tarfile
import warnings
from typing import Iterator

from lazy_neuron.data import cache
from lazy_neuron.errors import UserError

EXTRACTOR_VERSION = 1
SKIP_DIRS = frozenset({
    "site-packages", "dist-packages", "test", "tests", "idle_test", "idlelib", "lib2to3", "turtledemo",
    "__pycache__", "ensurepip", "lib-dynload",
})


def stdlib_root(configured: str | None = None) -> str:
  return os.path.abspath(configured or sysconfig.get_paths()["stdlib"])


def _docstrings(tree: ast.AST):
  """Docstrings in source order (depth first)."""
  if isinstance(tree, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
    doc = ast.get_docstring(tree, clean=True)
    if doc and doc.strip():
      yield doc.strip()
  for child in ast.iter_child_nodes(tree):
    if isinstance(child, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) or (
        isinstance(child, (ast.If, ast.Try)) ):
      yield from _docstrings(child)


def _stdlib_files(root: str) -> list[str]:
  files = []
  for dirpath, dirnames, filenames in os.walk(root):
    dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS and not d.startswith("config-"))
    files += [os.path.join(dirpath, f) for f in sorted(filenames) if f.endswith(".py")]
  return files


ARCHIVES = (".tar", ".tar.gz", ".tgz")


def is_archive(path: str) -> bool:
  return path.endswith(ARCHIVES)


def corpus_files(pattern_list: str, what: str = "data.corpus_files") -> list[str]:
  """Expands a comma-separated list of files, folders, tar archives and glob patterns; UserError
  for one that matches nothing, a folder without files or an archive that is not a tar file."""
  files = []
  for pattern in [p.strip() for p in str(pattern_list).split(",") if p.strip()]:
    matches = sorted(glob.glob(os.path.expanduser(pattern), recursive=True))
    # a folder counts when named itself (not when a glob such as **/* also walks over it)
    matches = [m for m in matches if os.path.isfile(m) or (os.path.isdir(m) and m.rstrip("/") ==
                                                           os.path.expanduser(pattern).rstrip("/"))]
    if not matches:
      raise UserError(f"{what}: {pattern!r} matches no file; give existing text files, folders, "
                      ".tar/.tar.gz archives or glob patterns, comma-separated")
    for m in matches:
      if os.path.isdir(m) and not _folder_files(m):
        raise UserError(f"{what}: folder {m!r} holds no file; give a folder of text files")
      if is_archive(m) and not tarfile.is_tarfile(m):
        raise UserError(f"{what}: {m!r} is not a tar archive; give a .tar/.tar.gz of text files")
    files += [os.path.abspath(m) for m in matches]
  return files


def _folder_files(folder: str) -> list[str]:
  """Every file below `folder`, as sorted relative '/'-separated names."""
  out = []
  for dirpath, dirnames, filenames in os.walk(folder):
    dirnames.sort()
    out += [os.path.relpath(os.path.join(dirpath, f), folder).replace(os.sep, "/")
            for f in filenames]
  return sorted(out)


def read_documents(paths: list[str]) -> Iterator[tuple[str, str]]:
  """(split name, text) per document of `corpus_files` paths, in a deterministic order. A plain
  file's split name is its base name and a hash of its path (as it always was); a folder's or an
  archive's files are named by their path relative to it, so the split does not depend on where
  the corpus lies. Bytes that are not UTF-8 become U+FFFD."""
  for path in paths:
    if os.path.isdir(path):
      for rel in _folder_files(path):
        with open(os.path.join(path, rel), encoding="utf-8", errors="replace") as fh:
          yield rel, fh.read()
    elif is_archive(path):
      # Members sorted by name (not archive order), so any archive of the same files reads alike.
      with tarfile.open(path) as tar:
        members = sorted((m for m in tar.getmembers() if m.isfile()), key=lambda m: m.name)
        for m in members:
          yield m.name.removeprefix("./"), tar.extractfile(m).read().decode("utf-8", errors="replace")
    else:
      with open(path, encoding="utf-8", errors="replace") as fh:
        yield os.path.basename(path) + ":" + hashlib.sha256(path.encode()).hexdigest()[:8], fh.read()


def _is_eval(name: str, eval_fraction: float) -> bool:
  h = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little")
  return h % 1_000_000 < eval_fraction * 1_000_000


def _key(cfg) -> dict:
  if cfg["corpus_files"]:
    files = corpus_files(cfg["corpus_files"])
    files = [os.path.join(f, rel) if rel else f
             for f in files for rel in (_folder_files(f) if os.path.isdir(f) else [None])]
    stats = [(f, os.path.getsize(f), int(os.path.getmtime(f))) for f in files]
    return {"kind": "files", "files": stats, "max_bytes": cfg["max_corpus_bytes"],
            "eval_fraction": cfg["eval_fraction"], "v": EXTRACTOR_VERSION}
  root = stdlib_root(cfg["stdlib_path"])
  return {"kind": "stdlib", "root": root, "python": sys.version.split()[0],
          "max_bytes": cfg["max_corpus_bytes"], "eval_fraction": cfg["eval_fraction"],
          "v": EXTRACTOR_VERSION}


def _extract(cfg) -> dict[str, list[str]]:
  """{"train": [doc, ...], "eval": [doc, ...]} in a deterministic order."""
  docs: list[tuple[str, list[str]]] = []  # (unit name, documents)
  limit = cfg["max_corpus_bytes"]
  if cfg["corpus_files"]:
    docs = [(name, [text]) for name, text in read_documents(corpus_files(cfg["corpus_files"]))]
  else:
    root = stdlib_root(cfg["stdlib_path"])
    extracted = 0
    for path in _stdlib_files(root):
      if limit is not None and extracted >= limit:
        break
      try:
        with open(path, "rb") as fh:
          source = fh.read()
        with warnings.catch_warnings():
          warnings.simplefilter("ignore")
          tree = ast.parse(source, filename=path)
      except (SyntaxError, ValueError, UnicodeDecodeError, OSError):
        continue
      found = list(_docstrings(tree))
      if found:
        docs.append((os.path.relpath(path, root).replace(os.sep, "/"), found))
        extracted += sum(len(d.encode()) for d in found)
  out = {"train": [], "eval": []}
  total = 0
  for name, texts in docs:
    if limit is not None and total >= limit:
      break
    split = "eval" if _is_eval(name, cfg["eval_fraction"]) else "train"
    for text in texts:
      if limit is not None:
        text = text.encode()[:max(0, limit - total)].decode("utf-8", errors="ignore")
      total += len(text.encode())
      if text:
        out[split].append(text)
  if not out["eval"] and len(out["train"]) > 1:  # tiny corpora: never leave eval empty
    out["eval"] = [out["train"].pop()]
  return out


def corpus_path(cfg) -> str:
  """Path of the cached corpus (JSON {"key", "train", "eval"}), extracting it on first use."""
  key = _key(cfg)
  path = os.path.join(cache.cache_dir(cfg["cache_dir"]), "corpus", f"docstrings-{cache.fingerprint(key)}.json")

  def build(tmp):
    corpus = _extract(cfg)
    with open(tmp, "w", encoding="utf-8") as f:
      json.dump({"key": key, **corpus}, f)

  return cache.cached(path, build)


def load(cfg) -> dict[str, list[str]]:
  with open(corpus_path(cfg), encoding="utf-8") as f:
    data = json.load(f)
  return {"train": data["train"], "eval": data["eval"]}


def corpus_fingerprint(cfg) -> str:
  return cache.fingerprint(_key(cfg))
