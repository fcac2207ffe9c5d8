"""Tokenizing a stream of documents into a pair of split files at the speed of the tokenizer.

Text arrives in pieces (data.sources) and is handed to the tokenizer's `encode_batch` BATCH_CHARS at a time,
on all cores. While the Rust side encodes one batch (it lets go of the GIL), this thread reads and cleans
the next and writes the ids of the one before, so reading, cleaning and writing hide behind encoding; memory
holds about three batches whatever the corpus size. Each document goes to train or val by a stable hash of
its name and ends with <|endoftext|>.

`write_source` stops after about `max_tokens` tokens when that is set, and when the source breaks part-way
(hub.StreamBroken) it finishes what it read, so the files written so far are whole documents, and says how
many rows arrived.
"""
from __future__ import annotations

import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import chain
from typing import Iterator

import numpy as np

from .hub import StreamBroken

BATCH_CHARS = 1 << 21  # text handed to the tokenizer at once: 16 pieces of 128 KB keep all cores busy


@dataclass
class Written:
    tokens: dict = field(default_factory=lambda: {"train": 0, "val": 0})
    documents: dict = field(default_factory=lambda: {"train": 0, "val": 0})
    stopped: bool = False  # max_tokens reached before the source ended
    broken: StreamBroken | None = None  # the source failed part-way

    @property
    def total(self) -> int:
        return self.tokens["train"] + self.tokens["val"]


def is_val(doc_id: str, val_fraction: float) -> bool:
    return zlib.crc32(doc_id.encode("utf-8")) % 10_000 < val_fraction * 10_000


def batches(pieces: Iterator[tuple[str, str]], batch_chars: int = 0) -> Iterator[list[tuple[str, str]]]:
    """Pieces grouped into batches of about batch_chars (default BATCH_CHARS); a source that breaks hands over
    what came first."""
    batch, size, batch_chars = [], 0, batch_chars or BATCH_CHARS
    try:
        for doc_id, text in pieces:
            batch.append((doc_id, text))
            size += len(text)
            if size >= batch_chars:
                yield batch
                batch, size = [], 0
    except StreamBroken:
        if batch:
            yield batch
        raise
    if batch:
        yield batch


def write_source(pieces: Iterator[tuple[str, str]], files: dict, tok, dtype, val_fraction: float,
                 max_tokens: int = 0, on_batch=None) -> Written:
    """Encode `pieces` into files["train"] / files["val"] (open binary files); `on_batch(tokens)` after each
    batch is written (progress)."""
    out, state = Written(), {"last": None}
    encode = tok.encode_batch
    pending = None  # (batch, future of its ids): encoding while the next batch is read
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="lmkit-encode") as pool:
        stream = batches(pieces)
        try:
            for batch in stream:
                future = pool.submit(encode, [t for _, t in batch])
                if pending is not None and _write_batch(pending, files, tok, dtype, val_fraction, out, state,
                                                         max_tokens, on_batch):
                    pending = None
                    future.cancel()
                    break
                pending = (batch, future)
        except StreamBroken as e:
            out.broken = e
        if pending is not None:
            _write_batch(pending, files, tok, dtype, val_fraction, out, state, max_tokens, on_batch)
    if state["last"] is not None:  # close the last document in the split it went to
        _write_ids(files, dtype, out, "val" if is_val(state["last"], val_fraction) else "train", [[tok.eot_id]])
    return out


def _write_batch(pending, files, tok, dtype, val_fraction, out: Written, state: dict, max_tokens: int,
                 on_batch) -> bool:
    """Write one encoded batch; True when max_tokens is reached (stop reading)."""
    batch, future = pending
    ids = future.result()
    parts = {"train": [], "val": []}
    last = state["last"]
    for (doc_id, _), seq in zip(batch, ids):
        split = "val" if is_val(doc_id, val_fraction) else "train"
        if doc_id != last:
            out.documents[split] += 1
            if last is not None:
                parts["val" if is_val(last, val_fraction) else "train"].append([tok.eot_id])
            last = doc_id
        parts[split].append(seq)
    state["last"] = last
    before = out.total
    for split, seqs in parts.items():
        _write_ids(files, dtype, out, split, seqs)
    if on_batch is not None:
        on_batch(out.total - before)
    if max_tokens and out.total >= max_tokens:
        out.stopped = True
        return True
    return False


def _write_ids(files, dtype, out: Written, split: str, seqs: list[list[int]]) -> None:
    n = sum(map(len, seqs))
    if n:
        files[split].write(np.fromiter(chain.from_iterable(seqs), dtype=dtype, count=n).tobytes())
        out.tokens[split] += n
