"""Builds the Debian documentation corpus: one reproducible .tar.gz of reST and POD text.

    python -m lazy_neuron.data.debian_docs --out .corpus/debian_docs.tar.gz [--debs DIR]

The text is the documentation source of three Debian packages, about 44 MB in ~3,900 files
(docs/data.md has the numbers): the Linux kernel's reST (`linux-doc-6.1`,
`Documentation/**/*.rst.gz`, decompressed), CPython's reST (`python3.11-doc`,
`html/_sources/**/*.rst.txt`) and Perl's POD (`perl-doc`, `pod/*.pod`). The packages are fetched
with `apt-get download` (no root needed; any Debian/Ubuntu with these packages in its apt sources,
e.g. Debian 12) unless `--debs` names a folder that already holds the three .deb files, and unpacked
with `dpkg-deb -x`.

The archive is deterministic for given .deb files: members sorted by name
(`<package>/<path below its documentation root>`), mtime 0, owner root, mode 0644, gzip header
without a time stamp. `<out>.json`, written beside it, records each package's version and the
sha256 of its .deb, the file count, the text size and the archive's sha256 (also printed). A machine without network takes
the archive itself (about 14 MB): `data.corpus_files=<path of the archive>` reads it directly
(data/docstrings.py: documents in member-name order, split into train/eval by a hash of the member
name).

Written for this project: Debian's own tools (apt-get, dpkg-deb) do the fetching and unpacking;
what is here is only the choice of files and a byte-stable archive, which tarfile's defaults
(current mtimes, owners, gzip time stamp) would not give.
"""
from __future__ import annotations

import argparse
import glob
import gzip
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from typing import Iterator, Optional, Sequence

# package -> (documentation root inside the unpacked package, glob of the text files below it,
# suffix removed from the member name). The .rst.gz files are decompressed.
PACKAGES = {
    "linux-doc-6.1": ("usr/share/doc/linux-doc-6.1/Documentation", "**/*.rst.gz", ".gz"),
    "python3.11-doc": ("usr/share/doc/python3.11/html/_sources", "**/*.rst.txt", ".txt"),
    "perl-doc": ("usr/share/perl/5.36.0/pod", "*.pod", ""),
}


def _sha256(path: str) -> str:
  with open(path, "rb") as f:  # tens of MB at most
    return hashlib.sha256(f.read()).hexdigest()


def download(packages: Sequence[str], folder: str) -> None:
  """apt-get download into `folder` (the current apt sources' version of each package)."""
  subprocess.run(["apt-get", "download", *packages], cwd=folder, check=True)


def find_debs(folder: str) -> dict[str, str]:
  """{package: path of its .deb in `folder`}; SystemExit naming what is missing."""
  out = {}
  for package in PACKAGES:
    found = sorted(glob.glob(os.path.join(folder, f"{package}_*.deb")))
    if len(found) != 1:
      raise SystemExit(f"--debs={folder}: expected one {package}_*.deb, found {len(found)}")
    out[package] = found[0]
  return out


def _deb_version(deb: str) -> str:
  return subprocess.run(["dpkg-deb", "-f", deb, "Version"], check=True, capture_output=True,
                        text=True).stdout.strip()


def documents(debs: dict[str, str], workdir: str) -> Iterator[tuple[str, bytes]]:
  """(member name, text bytes) of every selected file, sorted by member name."""
  found = []
  for package, deb in sorted(debs.items()):
    root_dir = os.path.join(workdir, package)
    subprocess.run(["dpkg-deb", "-x", deb, root_dir], check=True)
    doc_root, pattern, suffix = PACKAGES[package]
    base = os.path.join(root_dir, doc_root)
    for path in glob.glob(os.path.join(base, pattern), recursive=True):
      rel = os.path.relpath(path, base).replace(os.sep, "/")
      found.append((f"{package}/{rel.removesuffix(suffix) if suffix else rel}", path))
  for name, path in sorted(found):
    with open(path, "rb") as f:
      data = f.read()
    yield name, gzip.decompress(data) if path.endswith(".gz") else data


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
  info = tarfile.TarInfo(name)
  info.size, info.mtime, info.mode = len(data), 0, 0o644
  info.uid = info.gid = 0
  info.uname = info.gname = "root"
  tar.addfile(info, io.BytesIO(data))


def build(debs: dict[str, str], out: str) -> dict:
  """Writes the archive to `out` (atomically) and its manifest to `out`.json; returns the manifest."""
  manifest = {"packages": {p: {"deb": os.path.basename(d), "version": _deb_version(d),
                               "sha256": _sha256(d)} for p, d in sorted(debs.items())},
              "selection": {p: list(v) for p, v in PACKAGES.items()}}
  files = text_bytes = 0
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  tmp = out + ".tmp"
  with tempfile.TemporaryDirectory() as workdir, open(tmp, "wb") as raw:
    # mtime=0 and no file name in the gzip header: the same bytes on every build
    with gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=9, mtime=0) as gz:
      with tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
        docs = list(documents(debs, workdir))
        files, text_bytes = len(docs), sum(len(d) for _, d in docs)
        for name, data in docs:
          _add(tar, name, data)
  os.replace(tmp, out)
  manifest.update(files=files, text_bytes=text_bytes, archive=os.path.basename(out),
                  archive_bytes=os.path.getsize(out), archive_sha256=_sha256(out))
  with open(out + ".json", "w") as f:
    f.write(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
  return manifest


def main(argv: Optional[Sequence[str]] = None) -> int:
  p = argparse.ArgumentParser(prog="python -m lazy_neuron.data.debian_docs",
                              description=__doc__.split("\n\n")[0])
  p.add_argument("--out", required=True, help="the .tar.gz to write")
  p.add_argument("--debs", help="a folder holding the three .deb files (default: apt-get download "
                                "them into a temporary folder)")
  args = p.parse_args(argv)
  if not args.out.endswith((".tar.gz", ".tgz")):
    p.error(f"--out={args.out!r} is not valid; give a path ending in .tar.gz")
  with tempfile.TemporaryDirectory() as tmp:
    folder = args.debs
    if folder is None:
      folder = tmp
      download(list(PACKAGES), folder)
    info = build(find_debs(folder), args.out)
  print(json.dumps(info, indent=1, sort_keys=True))
  return 0


if __name__ == "__main__":
  sys.exit(main())
