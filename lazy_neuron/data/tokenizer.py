"""Tokenizers for the text sources, and `lazy-neuron tokenizer` (train a sentencepiece model).

Ids follow T5: pad 0, EOS 1, unk 2; sentinels (`<extra_id_0>`, ...) are the LAST ids of the vocabulary,
`extra_id_0 = vocab_size - 1`, descending. Kinds (`data.tokenizer`):

- `"bytes"`: pad 0, eos 1, unk 2, UTF-8 bytes 3..258, then `data.num_sentinels` sentinels.
- `"spm"`: a sentencepiece model (BPE by default) trained on the training corpus on first use and
  cached; it has `vocab_size - num_sentinels` pieces so that the total is exactly `data.vocab_size`.
- a path to an existing `.model` file (pad 0, eos 1 required); total = pieces + sentinels unless
  `data.vocab_size` asks for more (unused ids are inserted before the sentinels).

Command line:
  lazy-neuron tokenizer --corpus FILES --vocab-size N --out PATH [--model-type bpe|unigram]
FILES are comma-separated paths, folders, .tar/.tar.gz archives or glob patterns of UTF-8 text, or
`stdlib` for the Python standard library's docstrings.
"""
from __future__ import annotations

import hashlib
import io
import os
import re
import sys
import time
from typing import Iterable, Sequence

import numpy as np

from lazy_neuron import fileio
from lazy_neuron.data import cache
from lazy_neuron.errors import UserError
from lazy_neuron import errors

PAD_ID, EOS_ID, UNK_ID = 0, 1, 2
BYTE_OFFSET = 3
BYTE_VOCAB = BYTE_OFFSET + 256  # 259


class ByteTokenizer:
  kind = "bytes"
  base_size = BYTE_VOCAB

  def encode_many(self, texts: Iterable[str]) -> list[np.ndarray]:
    return [np.frombuffer(t.encode("utf-8"), np.uint8).astype(np.int32) + BYTE_OFFSET for t in texts]

  def decode(self, ids: Sequence[int]) -> str:
    data = bytes(int(i) - BYTE_OFFSET for i in ids if BYTE_OFFSET <= int(i) < BYTE_VOCAB)
    return data.decode("utf-8", errors="replace")

  def fingerprint(self) -> str:
    return "bytes-v1"


def model_exists(path: str) -> bool:
  """Whether a sentencepiece model file exists (local path, or a URL such as gs:// via etils.epath)."""
  if "://" in path:
    try:
      from etils import epath
      return epath.Path(path).is_file()
    except Exception:  # no gcsfs, no credentials, ...
      return False
  return os.path.isfile(os.path.expanduser(path))


def _read(path: str) -> bytes:
  if "://" in path:
    from etils import epath
    return epath.Path(path).read_bytes()
  with open(os.path.expanduser(path), "rb") as f:
    return f.read()


class SentencePieceTokenizer:
  kind = "spm"

  def __init__(self, model_path: str):
    import sentencepiece as spm

    self.path = model_path
    self._proto = _read(model_path)
    self._sp = spm.SentencePieceProcessor(model_proto=self._proto)
    self.base_size = int(self._sp.get_piece_size())
    if self._sp.pad_id() != PAD_ID or self._sp.eos_id() != EOS_ID:
      raise UserError(f"sentencepiece model {model_path!r} has pad id {self._sp.pad_id()} and eos id "
                      f"{self._sp.eos_id()}; T5 conventions need pad 0 and eos 1 (train one with "
                      "`lazy-neuron tokenizer`)")

  def encode_many(self, texts: Iterable[str]) -> list[np.ndarray]:
    texts = list(texts)
    out = []
    for start in range(0, len(texts), 1024):
      ids = self._sp.encode(texts[start:start + 1024], num_threads=os.cpu_count() or 1)
      out += [np.asarray(x, np.int32) for x in ids]
    return out

  def decode(self, ids: Sequence[int]) -> str:
    return self._sp.decode([int(i) for i in ids if 2 <= int(i) < self.base_size])

  def fingerprint(self) -> str:
    return "spm-" + hashlib.sha256(self._proto).hexdigest()[:16]


def _training_lines(texts: Iterable[str], max_bytes: int | None, max_line: int = 4000):
  """Non-empty lines (sentencepiece trains on sentences), at most `max_bytes` in total."""
  total = 0
  for text in texts:
    for line in text.splitlines():
      line = line.strip()
      if not line:
        continue
      line = line[:max_line]
      total += len(line.encode())
      if max_bytes is not None and total > max_bytes:
        return
      yield line


def train_sentencepiece(texts: Iterable[str], vocab_size: int, *, model_type: str = "bpe",
                        max_bytes: int | None = 4_000_000, name: str = "--vocab-size") -> bytes:
  """Trains a sentencepiece model (T5 ids: pad 0, eos 1, unk 2, no bos); returns the serialised model."""
  import sentencepiece as spm

  lines = list(_training_lines(texts, max_bytes))
  if not lines:
    raise UserError("the tokenizer corpus is empty; give non-empty UTF-8 text files")
  model = io.BytesIO()
  try:
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=model, vocab_size=int(vocab_size),
        model_type=model_type, pad_id=PAD_ID, eos_id=EOS_ID, unk_id=UNK_ID, bos_id=-1,
        character_coverage=0.9995, byte_fallback=False, hard_vocab_limit=False,
        shuffle_input_sentence=False, input_sentence_size=0, num_threads=os.cpu_count() or 1,
        minloglevel=2)
  except RuntimeError as e:
    text = str(e).splitlines()[-1] if str(e) else repr(e)
    m = re.search(r"smaller than required_chars\. \d+ vs (\d+)", text)
    if m:  # the one failure users cause: fewer pieces than the corpus has characters
      raise UserError(f"{name}={vocab_size} is not valid; this corpus has {m.group(1)} "
                      f"distinct characters and special pieces; use at least {m.group(1)}") from None
    raise UserError(f"sentencepiece training failed for vocab size {vocab_size}: "
                    f"{text.rpartition('] ')[2]}") from None
  return model.getvalue()


def total_vocab_size(cfg, base_size: int) -> int:
  """The vocabulary size the model sees: base pieces, unused padding ids, then the sentinels."""
  needed = base_size + cfg["num_sentinels"]
  if cfg["vocab_size"] is None:
    return needed
  if cfg["vocab_size"] < needed:
    raise UserError(f"data.vocab_size={cfg['vocab_size']} is too small for tokenizer "
                    f"{cfg['tokenizer']!r} ({base_size} ids) plus {cfg['num_sentinels']} sentinels; "
                    f"use at least {needed} or None")
  return int(cfg["vocab_size"])


def spm_cache_path(cfg) -> str:
  from lazy_neuron.data import docstrings

  key = {"corpus": docstrings.corpus_fingerprint(cfg), "pieces": spm_pieces(cfg),
         "type": cfg["spm_model_type"], "max_bytes": cfg["spm_train_bytes"], "v": 1}
  return os.path.join(cache.cache_dir(cfg["cache_dir"]), "tokenizers", f"spm-{cache.fingerprint(key)}.model")


def spm_pieces(cfg) -> int:
  return int(cfg["vocab_size"] if cfg["vocab_size"] is not None else 2048) - int(cfg["num_sentinels"])


def get(cfg):
  """The tokenizer of a (resolved) docstrings data config; trains and caches `spm` on first use."""
  kind = cfg["tokenizer"]
  if kind == "bytes":
    return ByteTokenizer()
  if kind == "spm":
    from lazy_neuron.data import docstrings

    path = spm_cache_path(cfg)
    if not os.path.exists(path):
      def build(tmp):
        corpus = docstrings.load(cfg)
        proto = train_sentencepiece(corpus["train"], spm_pieces(cfg), model_type=cfg["spm_model_type"],
                                    max_bytes=cfg["spm_train_bytes"],
                                    name="data.vocab_size - data.num_sentinels")
        with open(tmp, "wb") as f:
          f.write(proto)
      cache.cached(path, build)
    return SentencePieceTokenizer(path)
  if not model_exists(kind):
    raise UserError(f"data.tokenizer={kind!r}: no such sentencepiece model file; use 'bytes', 'spm' "
                    "or the path of an existing .model file")
  return SentencePieceTokenizer(kind)


# --- command line -------------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
  from lazy_neuron import checks, cli, flags, outpaths
  from lazy_neuron.data import docstrings

  argv = list(sys.argv if argv is None else argv)
  parser = flags.parser(
      cli.prog_name(argv, "lazy-neuron tokenizer"),
      "Train a sentencepiece model (T5 ids: pad 0, eos 1, unk 2, no bos) from text files.")
  parser.add_argument("--corpus", required=True,
                      help="comma-separated text files or glob patterns, or 'stdlib' (Python docstrings)")
  parser.add_argument("--vocab_size", "--vocab-size", type=int, required=True,
                      help="number of pieces in the model (sentinels are added on top at run time)")
  parser.add_argument("--out", required=True,
                      help="output .model path (never overwritten: runs may use the model there)")
  parser.add_argument("--model_type", "--model-type", default="bpe", choices=["bpe", "unigram"])
  parser.add_argument("--max_bytes", "--max-bytes", type=int, default=4_000_000,
                      help="train on at most this many bytes of text lines")
  try:
    args, _ = flags.parse(parser, argv[1:])
    # sentencepiece stores the vocabulary size as an int32.
    checks.integer("--vocab-size", args.vocab_size, min=4, max=2**31 - 1)
    checks.integer("--max-bytes", args.max_bytes, min=1)
    checks.string("--corpus", args.corpus)
    outpaths.file("--out", args.out, overwrite=False,
                  why=" (runs that use the model there would see another vocabulary)")
    start = time.time()
    if args.corpus.strip() == "stdlib":
      cfg = {"corpus_files": None, "stdlib_path": None, "max_corpus_bytes": None, "eval_fraction": 0.0,
             "cache_dir": None}
      texts = docstrings.load(cfg)["train"]
    else:
      try:  # files, folders and tar archives, as data.corpus_files reads them
        texts = [t for _, t in docstrings.read_documents(docstrings.corpus_files(args.corpus,
                                                                                 "--corpus"))]
      except OSError as e:
        raise checks.fail("--corpus", args.corpus, f"{e.filename or 'a file'} cannot be read "
                                                    f"({e.strerror}); give readable text files") from None
    proto = train_sentencepiece(texts, args.vocab_size, model_type=args.model_type, max_bytes=args.max_bytes)
    import sentencepiece as spm

    size = spm.SentencePieceProcessor(model_proto=proto).get_piece_size()
    if size < args.vocab_size:  # hard_vocab_limit=False: sentencepiece stops where the corpus ends
      raise checks.fail("--vocab-size", args.vocab_size,
                        f"this corpus yields only {size} pieces; use at most {size}, or a larger "
                        "--corpus / --max-bytes")
    out = os.path.abspath(os.path.expanduser(args.out))
    fileio.write_atomic(out, proto)
  except UserError as e:
    return errors.report(e)
  print(f"wrote {out}: {size} pieces ({args.model_type}) in {time.time() - start:.1f}s")
  return 0


if __name__ == "__main__":
  sys.exit(main())
