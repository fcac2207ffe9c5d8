"""Cleaning a corpus as it is read, each step counted for the report `prepare` prints and meta.json keeps.

    normalize   in the order given: nfc, nfkc (Unicode normal forms), t2s / s2t (Traditional <-> Simplified
                Chinese through OpenCC). Applied to every piece of text.
    min_chars   drop documents shorter than this many characters (after normalising).
    dedup       "exact": drop a document whose text (after normalising) was seen before (an 8-byte BLAKE2 hash
                per document is kept: about 70 bytes of memory each); "minhash": also drop near-duplicates, whose
                estimated Jaccard similarity of character 5-grams with an earlier document is at least
                MINHASH_THRESHOLD (datasketch MinHash LSH, 128 permutations).

The byte-order mark and line-end normalisation happen in data.sources; their counts join the report here.
Documents-level steps see a document whole: the pieces of a large text file (data.sources cuts one into
~128 KB pieces) are gathered first, up to GATHER_CHARS; a longer document is kept as it is (and counted).
"""
from __future__ import annotations

import hashlib
import unicodedata
from collections import Counter
from typing import Iterable, Iterator

from ..errors import LmkitError

NORMALIZERS = ("nfc", "nfkc", "t2s", "s2t")
DEDUP = ("none", "exact", "minhash")
MINHASH_THRESHOLD = 0.8
MINHASH_PERM = 128
SHINGLE = 5
GATHER_CHARS = 1 << 25  # 32 M characters of one document at most are held to decide on it


def parse_normalize(value) -> list[str]:
    """'nfc,t2s' or ['nfc', 't2s'] -> the list, each name checked."""
    names = [n.strip().lower() for n in (value.split(",") if isinstance(value, str) else value) if n.strip()]
    for n in names:
        if n not in NORMALIZERS:
            raise LmkitError(f"normalize: unknown '{n}' (use any of {', '.join(NORMALIZERS)}, comma-separated)")
    return names


class Cleaner:
    def __init__(self, normalize: Iterable[str] = (), dedup: str = "none", min_chars: int = 0):
        self.normalize = parse_normalize(list(normalize))
        if dedup not in DEDUP:
            raise LmkitError(f"dedup: unknown '{dedup}' (use {', '.join(DEDUP)})")
        if min_chars < 0:
            raise LmkitError(f"min_chars must be >= 0 (got {min_chars})")
        self.dedup, self.min_chars = dedup, min_chars
        self.counts: Counter = Counter()
        self._steps = [(n, _converter(n)) for n in self.normalize]
        self._seen: set[int] = set()
        self._lsh = None
        if dedup == "minhash":
            from datasketch import MinHashLSH
            self._lsh = MinHashLSH(threshold=MINHASH_THRESHOLD, num_perm=MINHASH_PERM)

    @property
    def active(self) -> bool:
        return bool(self._steps) or self.dedup != "none" or self.min_chars > 0

    @property
    def whole_documents(self) -> bool:
        return self.dedup != "none" or self.min_chars > 0

    def options(self) -> dict:
        return {"normalize": self.normalize, "dedup": self.dedup, "min_chars": self.min_chars}

    def run(self, pieces: Iterator[tuple[str, str]]) -> Iterator[tuple[str, str]]:
        """The pieces, normalised, without the documents the document-level steps drop."""
        if not self.whole_documents:
            last = None
            for doc_id, text in pieces:
                if doc_id != last:
                    self.counts["documents"] += 1
                    last = doc_id
                yield doc_id, self._normalized(text)
            return
        last = None
        for doc_id, parts, whole in _gathered(pieces):
            first = doc_id != last
            self.counts["documents"] += first
            last = doc_id
            parts = [self._normalized(p) for p in parts]
            if not whole:
                self.counts["too_long_to_check"] += first
            elif not self._keep(doc_id, "".join(parts)):
                continue
            for p in parts:
                yield doc_id, p

    def _normalized(self, text: str) -> str:
        for name, convert in self._steps:
            new = convert(text)
            if new != text:
                self.counts[f"{name}_pieces"] += 1
                self.counts[f"{name}_chars"] += (sum(a != b for a, b in zip(new, text)) if len(new) == len(text)
                                                 else max(len(new), len(text)))
                text = new
        return text

    def _keep(self, doc_id: str, text: str) -> bool:
        if len(text) < self.min_chars:
            self.counts["short"] += 1
            return False
        if self.dedup == "none":
            return True
        digest = int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")
        if digest in self._seen:
            self.counts["duplicates"] += 1
            return False
        self._seen.add(digest)
        if self._lsh is not None:
            m = _minhash(text)
            if self._lsh.query(m):
                self.counts["near_duplicates"] += 1
                return False
            self._lsh.insert(f"{len(self._seen)}", m)
        return True

    def report(self, read: dict | None = None) -> list[str]:
        """One line per step that ran (with what it did), for `prepare` to print."""
        c, read = self.counts, read or {}
        lines = []
        if read.get("bom") or read.get("line_ends"):
            lines.append(f"line ends: {read.get('line_ends', 0):,} CR/CRLF read as LF; "
                         f"{read.get('bom', 0):,} byte-order marks dropped")
        for n in self.normalize:
            lines.append(f"{n}: changed {c[n + '_chars']:,} characters in {c[n + '_pieces']:,} pieces of text")
        if self.min_chars:
            lines.append(f"min-chars {self.min_chars}: dropped {c['short']:,} of {c['documents']:,} documents")
        if self.dedup != "none":
            near = f", {c['near_duplicates']:,} near-duplicates (MinHash ≥ {MINHASH_THRESHOLD})" \
                if self.dedup == "minhash" else ""
            lines.append(f"dedup {self.dedup}: dropped {c['duplicates']:,} exact duplicates{near}")
        if c["too_long_to_check"]:
            lines.append(f"note: {c['too_long_to_check']:,} documents over {GATHER_CHARS:,} characters were kept "
                         "unchecked by min-chars / dedup")
        return lines


def _converter(name: str):
    if name in ("nfc", "nfkc"):
        form = name.upper()
        return lambda t: unicodedata.normalize(form, t)
    try:
        import opencc
    except ImportError:
        raise LmkitError(f"normalize {name}: needs the 'opencc' package (pip install opencc)") from None
    return opencc.OpenCC(name).convert


def _gathered(pieces: Iterator[tuple[str, str]]) -> Iterator[tuple[str, list[str], bool]]:
    """Consecutive pieces of one document -> (doc_id, pieces, whole); whole is False past GATHER_CHARS (the
    rest of that document then follows in further groups of the same doc_id, marked not whole too)."""
    doc, parts, size, whole = None, [], 0, True
    for doc_id, text in pieces:
        if doc_id != doc and doc is not None:
            yield doc, parts, whole
            parts, size, whole = [], 0, True
        doc = doc_id
        parts.append(text)
        size += len(text)
        if size > GATHER_CHARS:
            yield doc, parts, False
            parts, size, whole = [], 0, False
    if doc is not None and (parts or whole):
        yield doc, parts, whole


def _minhash(text: str):
    from datasketch import MinHash
    m = MinHash(num_perm=MINHASH_PERM)
    squeezed = " ".join(text.split())
    grams = {squeezed[i:i + SHINGLE] for i in range(max(1, len(squeezed) - SHINGLE + 1))}
    m.update_batch([g.encode("utf-8") for g in grams])
    return m
