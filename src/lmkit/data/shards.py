"""Token shards: tokenize a corpus once into flat uint16/uint32 files that training reads by memmap.

A prepared folder holds:
    train.bin, val.bin   token ids, documents separated by <|endoftext|>
    tokenizer.json       the tokenizer that made them
    meta.json            vocab size, dtype, token and document counts, how the split was made

The split is by document: a stable hash of each document's name sends about `val_fraction` of the
documents to val. A corpus of only a few documents (one big .txt file, say) cannot be split that
way; then the last `val_fraction` of its tokens is val, as nanoGPT does for tiny-shakespeare.
"""
from __future__ import annotations

import json
import shutil
import sys
import zlib
from pathlib import Path
from typing import Iterator

import numpy as np
from tqdm.auto import tqdm

from ..errors import LmkitError
from ..io import atomic_dir, check_target
from ..tokenizer import Tokenizer
from .sources import iter_documents

MIN_DOCS_FOR_DOC_SPLIT = 10
TRAINED_HERE = ("bpe", "wordpiece", "char")  # tokenizer specs that build_tokenizer trains on the corpus
BATCH_CHARS = 1 << 19  # text handed to the tokenizer at once: enough for all cores, little memory


def dtype_for(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size <= 65536 else np.uint32)


def is_prepared(path: str | Path) -> bool:
    return (Path(path) / "meta.json").is_file()


def _is_val(doc_id: str, val_fraction: float) -> bool:
    return zlib.crc32(doc_id.encode("utf-8")) % 10_000 < val_fraction * 10_000


def _batches(pieces: Iterator[tuple[str, str]]) -> Iterator[list[tuple[str, str]]]:
    batch, size = [], 0
    for doc_id, text in pieces:
        batch.append((doc_id, text))
        size += len(text)
        if size >= BATCH_CHARS:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def build_tokenizer(spec: str, data: str, text_field: str = "text", errors: str = "strict",
                    vocab_size: int = 4096, progress: bool = True, normalize_newlines: bool = True) -> Tokenizer:
    """The tokenizer for a corpus: spec 'bpe', 'wordpiece' or 'char' trains one on `data` (saying so first
    when `progress`, with the trainer's bar on a terminal, and saying when the corpus gives fewer tokens than
    vocab_size); any other spec is a tokenizer.json / vocab.txt path to load. vocab_size is checked (within
    what the type needs and tokenizer.MAX_VOCAB) before the corpus is read."""
    if spec not in TRAINED_HERE:
        return Tokenizer.load(spec)
    if progress:
        print(f"training a {spec} tokenizer on {data} …", flush=True)
    tok = Tokenizer.train((t for _, t in iter_documents(data, text_field, errors, normalize_newlines)), kind=spec,
                          vocab_size=vocab_size, show_progress=progress and sys.stderr.isatty())
    if progress and spec != "char" and tok.vocab_size < vocab_size:
        print(f"note: {data} gives {tok.vocab_size:,} tokens, fewer than vocab_size {vocab_size:,}", file=sys.stderr)
    return tok


def prepare(source: str, out_dir: str | Path, tokenizer: Tokenizer, val_fraction: float = 0.1,
            text_field: str = "text", errors: str = "strict", overwrite: bool = False,
            progress: bool = True, normalize_newlines: bool = True) -> dict:
    """Tokenize `source` into `out_dir`; returns the meta dict. Writes to a temp folder, then renames.
    `normalize_newlines`: drop a leading BOM and read CRLF / CR as LF (see data.sources)."""
    if not 0 < val_fraction < 1:
        raise LmkitError(f"val_fraction must be in (0, 1) (got {val_fraction})")
    out_dir = check_target(out_dir, overwrite)
    if tokenizer.eot_id is None:
        raise LmkitError("tokenizer has no <|endoftext|> token to separate documents")
    dtype = dtype_for(tokenizer.vocab_size)
    with atomic_dir(out_dir) as tmp:
        meta = _write(source, tmp, tokenizer, dtype, val_fraction, text_field, errors, progress, normalize_newlines)
        tokenizer.save(tmp / "tokenizer.json")
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return meta


def _write(source, tmp: Path, tok: Tokenizer, dtype, val_fraction, text_field, errors, progress, normalize) -> dict:
    eot = np.array([tok.eot_id], dtype=dtype)
    files = {"train": open(tmp / "train.bin", "wb"), "val": open(tmp / "val.bin", "wb")}
    counts = {"train": 0, "val": 0}
    docs = {"train": 0, "val": 0}
    last_doc = None
    bar = tqdm(desc="tokenizing", unit="tok", unit_scale=True, disable=not progress, leave=False)
    try:
        for batch in _batches(iter_documents(source, text_field, errors, normalize)):
            for (doc_id, _), ids in zip(batch, tok.encode_batch([t for _, t in batch])):
                split = "val" if _is_val(doc_id, val_fraction) else "train"
                if doc_id != last_doc:
                    docs[split] += 1
                    if last_doc is not None:
                        # close the previous document in the split it went to
                        prev = "val" if _is_val(last_doc, val_fraction) else "train"
                        files[prev].write(eot.tobytes())
                        counts[prev] += 1
                    last_doc = doc_id
                arr = np.asarray(ids, dtype=dtype)
                files[split].write(arr.tobytes())
                counts[split] += len(arr)
                bar.update(len(arr))
        if last_doc is not None:
            prev = "val" if _is_val(last_doc, val_fraction) else "train"
            files[prev].write(eot.tobytes())
            counts[prev] += 1
    finally:
        bar.close()
        for f in files.values():
            f.close()
    n_docs = docs["train"] + docs["val"]
    if counts["train"] + counts["val"] <= n_docs:
        raise LmkitError(f"{source}: the corpus is empty (no text found)")
    split = "document"
    if n_docs < MIN_DOCS_FOR_DOC_SPLIT or docs["val"] == 0 or docs["train"] == 0:
        split = "tail"
        counts = _tail_split(tmp, dtype, val_fraction)
    return {
        "source": source, "tokenizer": "tokenizer.json", "vocab_size": tok.vocab_size,
        "eot_id": tok.eot_id, "dtype": dtype.name, "split": split, "documents": n_docs,
        "train_tokens": counts["train"], "val_tokens": counts["val"], "normalize_newlines": normalize,
    }


def _tail_split(tmp: Path, dtype, val_fraction: float) -> dict:
    """Put every token in one stream (train then val, in source order), then cut off the tail as val."""
    train, val = tmp / "train.bin", tmp / "val.bin"
    # doc-hash order is gone here; with this few documents, source order is the only sensible one
    with open(train, "ab") as f, open(val, "rb") as g:
        shutil.copyfileobj(g, f)
    n = train.stat().st_size // dtype.itemsize
    cut = int(n * (1 - val_fraction))
    mm = np.memmap(train, dtype=dtype, mode="r")
    with open(val, "wb") as g:
        for start in range(cut, n, 1 << 24):
            g.write(np.asarray(mm[start:min(n, start + (1 << 24))]).tobytes())
    del mm
    with open(train, "r+b") as f:
        f.truncate(cut * dtype.itemsize)
    return {"train": cut, "val": n - cut}


def load_meta(data_dir: str | Path) -> dict:
    path = Path(data_dir) / "meta.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise LmkitError(f"{path}: cannot read prepared data ({e})")


def open_split(data_dir: str | Path, split: str) -> np.memmap:
    meta = load_meta(data_dir)
    path = Path(data_dir) / f"{split}.bin"
    if not path.is_file():
        raise LmkitError(f"{path}: missing token file (re-run lmkit prepare)")
    dtype = np.dtype(meta["dtype"])
    if path.stat().st_size != meta[f"{split}_tokens"] * dtype.itemsize:
        raise LmkitError(f"{path}: size does not match meta.json (truncated? re-run lmkit prepare)")
    if meta[f"{split}_tokens"] == 0:
        raise LmkitError(f"{path}: holds no tokens")
    return np.memmap(path, dtype=dtype, mode="r")
