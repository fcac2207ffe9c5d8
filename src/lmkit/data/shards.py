"""Token shards: tokenize a corpus once into flat uint16/uint32 files that training reads by memmap.

A prepared folder holds:
    train.bin, val.bin   token ids, documents separated by <|endoftext|>
    tokenizer.json       the tokenizer that made them
    meta.json            vocab size, dtype, token and document counts, how the split was made, what cleaning
                         did, and for a mixture each source's weight and token counts ("sources")

The split is by document: a stable hash of each document's name sends about `val_fraction` of the
documents to val. A corpus of only a few documents (one big .txt file, say) cannot be split that
way; then the last `val_fraction` of its tokens is val, as nanoGPT does for tiny-shakespeare. A mixture's
sources are split each on its own and written one after another (train.bin: source 0's train tokens, then
source 1's, …), so that training can draw from each in proportion to its weight (data.mixture).

Text streams through (data.encode): memory stays flat whatever the corpus size. A source that breaks
part-way (a hub stream losing the network) leaves a usable folder of the documents read so far, marked
"complete": false in meta.json, and `prepare(..., resume=True)` (`lmkit prepare … --continue`) reads on
from the next row.
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..errors import LmkitError
from ..io import atomic_dir, atomic_write_text, check_target
from ..tokenizer import KINDS, Tokenizer
from .clean import Cleaner
from .encode import Written, write_source
from .hub import is_hub
from .mixture import Source, ranges
from .sources import iter_documents, total_bytes

MIN_DOCS_FOR_DOC_SPLIT = 10
TRAINED_HERE = KINDS  # tokenizer specs that build_tokenizer trains on the corpus (every type Tokenizer.train knows)
STREAM_TRAIN_CHARS = 1 << 28  # a streamed corpus trains its tokenizer on its first 256 M characters


def dtype_for(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size <= 65536 else np.uint32)


def is_prepared(path: str | Path) -> bool:
    return (Path(path) / "meta.json").is_file()


def _specs(data) -> list[Source]:
    return [Source(data)] if isinstance(data, str) else list(data)


def build_tokenizer(spec: str, data, text_field: str = "text", errors: str = "strict",
                    vocab_size: int = 4096, progress: bool = True, normalize_newlines: bool = True,
                    cleaner: Cleaner | None = None, streaming: bool = False) -> Tokenizer:
    """The tokenizer for a corpus: spec 'bpe', 'bpe-chars', 'wordpiece' or 'char' trains one on `data` (a source
    spec or a list of mixture Sources; their text normalised as `cleaner` says), saying so first when `progress`, with the
    trainer's bar on a terminal, and saying when the corpus gives fewer tokens than vocab_size; any other spec is
    a tokenizer.json / vocab.txt path to load. vocab_size is checked (within what the type needs and
    tokenizer.MAX_VOCAB) before the corpus is read. A streamed source trains on its first STREAM_TRAIN_CHARS."""
    if spec not in TRAINED_HERE:
        return Tokenizer.load(spec)
    sources = _specs(data)
    name = " + ".join(s.spec for s in sources)
    if progress:
        print(f"training a {spec} tokenizer on {name} …", flush=True)
    normalize = Cleaner(cleaner.normalize) if cleaner is not None and cleaner.normalize else None

    def texts():
        for s in sources:
            pieces = iter_documents(s.spec, s.text_field or text_field, errors, normalize_newlines, streaming=streaming)
            pieces = normalize.run(pieces) if normalize else pieces
            read = 0
            for _, t in pieces:
                yield t
                read += len(t)
                if streaming and is_hub(s.spec) and read >= STREAM_TRAIN_CHARS:
                    break
    try:
        tok = Tokenizer.train(texts(), kind=spec, vocab_size=vocab_size,
                              show_progress=progress and sys.stderr.isatty())
    except LmkitError as e:
        if "corpus is empty" not in str(e):
            raise
        raise LmkitError(f"{name}: the source yields no text to train a tokenizer on") from None
    if progress and spec != "char" and tok.vocab_size < vocab_size:
        print(f"note: {name} gives {tok.vocab_size:,} tokens, fewer than vocab_size {vocab_size:,}", file=sys.stderr)
    return tok


def prepare(source, out_dir: str | Path, tokenizer: Tokenizer, val_fraction: float = 0.1,
            text_field: str = "text", errors: str = "strict", overwrite: bool = False,
            progress: bool = True, normalize_newlines: bool = True, cleaner: Cleaner | None = None,
            streaming: bool = False, max_tokens: int = 0, resume: bool = False) -> dict:
    """Tokenize `source` (a spec, or a list of mixture Sources) into `out_dir`; returns the meta dict. Writes to a
    temp folder, then renames. `normalize_newlines`: drop a leading BOM and read CRLF / CR as LF (see
    data.sources); `cleaner`: normalisation, dedup, min-chars (data.clean); `streaming`: read hub datasets as a
    stream; `max_tokens`: stop each source after about that many tokens; `resume`: continue the folder a broken
    stream left (see module doc)."""
    if not 0 < val_fraction < 1:
        raise LmkitError(f"val_fraction must be in (0, 1) (got {val_fraction})")
    if tokenizer.eot_id is None:
        raise LmkitError("tokenizer has no <|endoftext|> token to separate documents")
    cleaner = cleaner or Cleaner()
    if resume:
        return _resume(source, Path(out_dir), tokenizer, val_fraction, text_field, errors, progress,
                       normalize_newlines, cleaner, max_tokens)
    out_dir = check_target(out_dir, overwrite)
    sources, dtype = _specs(source), dtype_for(tokenizer.vocab_size)
    read: dict = {}
    bar = _bar(sources, progress, max_tokens)
    with atomic_dir(out_dir) as tmp:
        try:
            parts = []
            for i, s in enumerate(sources):
                paths = {k: tmp / (f"{k}.bin" if len(sources) == 1 else f"part{i}.{k}.bin") for k in ("train", "val")}
                with open(paths["train"], "wb") as tr, open(paths["val"], "wb") as va:
                    pieces = iter_documents(s.spec, s.text_field or text_field, errors, normalize_newlines, read,
                                            streaming)
                    w = write_source(cleaner.run(pieces), {"train": tr, "val": va}, tokenizer, dtype, val_fraction,
                                     s.max_tokens or max_tokens, _progress(bar, read))
                if w.broken is not None and len(sources) > 1:
                    raise LmkitError(f"{w.broken}; a mixture is prepared whole: run it again (or prepare that "
                                     "source alone with --streaming, which can continue after a break)")
                if w.total <= w.documents["train"] + w.documents["val"]:
                    raise LmkitError(f"{s.spec}: the source yields no text" + (" (after cleaning)" if cleaner.active
                                                                              else ""))
                split = "document"
                if w.broken is None and _too_few(w):
                    split = "tail"
                    w.tokens = _tail_split(paths["train"], paths["val"], dtype, val_fraction)
                parts.append((s, w, split))
        finally:
            bar.close()
        if len(sources) > 1:
            _concatenate(tmp, len(sources))
        meta = _meta(source, parts, tokenizer, dtype, normalize_newlines, cleaner, read, streaming, max_tokens)
        tokenizer.save(tmp / "tokenizer.json")
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    _say_cleaning(cleaner, read, progress)
    if parts[0][1].broken is not None:
        raise _broken_message(parts[0][1], out_dir)
    return meta


def _too_few(w: Written) -> bool:
    docs = w.documents
    return docs["train"] + docs["val"] < MIN_DOCS_FOR_DOC_SPLIT or docs["val"] == 0 or docs["train"] == 0


def _bar(sources: list[Source], progress: bool, max_tokens: int = 0):
    sizes = [total_bytes(s.spec) for s in sources]
    total = None if None in sizes or max_tokens or any(s.max_tokens for s in sources) else sum(sizes)
    return tqdm(desc="tokenizing", total=total, unit="B", unit_scale=True, unit_divisor=1000, disable=not progress,
                leave=False, smoothing=0.1)


def _progress(bar, read: dict):
    state = {"bytes": read.get("bytes", 0), "tokens": 0}

    def on_batch(tokens: int) -> None:
        done = read.get("bytes", 0)
        state["tokens"] += tokens
        bar.update(done - state["bytes"])
        state["bytes"] = done
        bar.set_postfix_str(f"{state['tokens']:,} tokens", refresh=False)
    return on_batch


def _concatenate(tmp: Path, n: int) -> None:
    for split in ("train", "val"):
        with open(tmp / f"{split}.bin", "wb") as out:
            for i in range(n):
                part = tmp / f"part{i}.{split}.bin"
                with open(part, "rb") as f:
                    shutil.copyfileobj(f, out, 1 << 24)
                part.unlink()


def _meta(source, parts, tok: Tokenizer, dtype, normalize, cleaner: Cleaner, read: dict, streaming: bool,
          max_tokens: int) -> dict:
    tokens = {k: sum(w.tokens[k] for _, w, _ in parts) for k in ("train", "val")}
    meta = {
        "source": source if isinstance(source, str) else mixture_key(parts_sources(parts)),
        "tokenizer": "tokenizer.json", "vocab_size": tok.vocab_size,
        "eot_id": tok.eot_id, "dtype": dtype.name, "split": parts[0][2] if len(parts) == 1 else "per source",
        "documents": sum(w.documents["train"] + w.documents["val"] for _, w, _ in parts),
        "train_tokens": tokens["train"], "val_tokens": tokens["val"], "normalize_newlines": normalize,
        "cleaning": {**cleaner.options(), "counts": dict(cleaner.counts), "read": read},
        "streaming": streaming, "max_tokens": max_tokens, "complete": all(w.broken is None for _, w, _ in parts),
    }
    if any(w.stopped for _, w, _ in parts):
        meta["stopped_at_max_tokens"] = [s.spec for s, w, _ in parts if w.stopped]
    if len(parts) > 1:
        meta["sources"] = [{"path": s.spec, "weight": s.weight, "train_tokens": w.tokens["train"],
                            "val_tokens": w.tokens["val"], "documents": w.documents["train"] + w.documents["val"],
                            "split": split} for s, w, split in parts]
    broken = parts[0][1].broken
    if broken is not None:
        meta["rows_read"] = broken.rows
    return meta


def parts_sources(parts) -> list[Source]:
    return [s for s, _, _ in parts]


def mixture_key(sources: list[Source]) -> str:
    """How meta.json names a mixture: its sources and weights, in order."""
    return "mixture: " + ", ".join(f"{s.spec} × {s.weight:g}" for s in sources)


def _say_cleaning(cleaner: Cleaner, read: dict, progress: bool) -> None:
    if progress:
        for line in cleaner.report(read):
            print(line, flush=True)


def _broken_message(w: Written, out_dir: Path) -> LmkitError:
    return LmkitError(f"{w.broken}; {out_dir} holds the {w.total:,} tokens read before it and can be trained on; "
                      f"continue with the same command and --continue (lmkit prepare {w.broken.spec} --out {out_dir} "
                      "--streaming --continue)")


def _resume(source, out_dir: Path, tok: Tokenizer, val_fraction, text_field, errors, progress, normalize,
            cleaner: Cleaner, max_tokens: int) -> dict:
    """Continue a folder that a broken stream left: append the rows after meta's rows_read, rewrite meta."""
    meta = load_meta(out_dir)
    if meta.get("complete", True):
        raise LmkitError(f"{out_dir}: is complete; --continue is for a folder a broken stream left")
    if meta["source"] != source:
        raise LmkitError(f"{out_dir}: was prepared from {meta['source']}, not {source}")
    dtype, read = np.dtype(meta["dtype"]), {}
    w = Written(tokens={"train": meta["train_tokens"], "val": meta["val_tokens"]},
                documents={"train": meta["documents"], "val": 0})
    bar = _bar([Source(source)], progress, max_tokens)
    try:
        with open(out_dir / "train.bin", "r+b") as tr, open(out_dir / "val.bin", "r+b") as va:
            for f, n in ((tr, meta["train_tokens"]), (va, meta["val_tokens"])):
                f.truncate(n * dtype.itemsize)  # a kill after the last meta.json: drop what it does not count
                f.seek(0, 2)
            pieces = iter_documents(source, text_field, errors, normalize, read, True, skip=meta["rows_read"])
            more = write_source(cleaner.run(pieces), {"train": tr, "val": va}, tok, dtype, val_fraction,
                                max(0, max_tokens - w.total) if max_tokens else 0, _progress(bar, read))
    finally:
        bar.close()
    for k in ("train", "val"):
        w.tokens[k] += more.tokens[k]
        w.documents[k] += more.documents[k]
    w.broken, w.stopped = more.broken, more.stopped
    if more.broken is not None:
        more.broken.rows += meta["rows_read"]
    new = _meta(source, [(Source(source), w, "document")], tok, dtype, normalize, cleaner, read, True, max_tokens)
    atomic_write_text(out_dir / "meta.json", json.dumps(new, indent=2, ensure_ascii=False) + "\n")
    _say_cleaning(cleaner, read, progress)
    if w.broken is not None:
        raise _broken_message(w, out_dir)
    return new


def _tail_split(train: Path, val: Path, dtype, val_fraction: float) -> dict:
    """Put every token in one stream (train then val, in source order), then cut off the tail as val."""
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
    tokens = np.memmap(path, dtype=dtype, mode="r")
    if split == "train" and ranges(meta, split):  # a mixture: make_batches draws from each source by weight
        tokens.mixture = ranges(meta, split)
        tokens.mixture_labels = [f"{path.parent}: source {s['path']}" for s in meta["sources"]]
    return tokens
