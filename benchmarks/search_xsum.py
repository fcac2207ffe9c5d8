"""Retrieval quality on XSum: each reference summary is a query, its own article the one relevant document.

    python benchmarks/search_xsum.py [--docs 300] [--model all-MiniLM-L6-v2]

Indexes the first N articles (chunks of 200 tokens, overlap 40), ranks articles by their best chunk,
and reports recall@1, recall@5 and MRR for dense search, BM25 and the hybrid (reciprocal rank fusion).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import report  # noqa: E402

from lmkit.search import Index, build_index  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "xsum_sample" / "test.jsonl"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--docs", type=int, default=300)
    ap.add_argument("--model", default="all-MiniLM-L6-v2")
    a = ap.parse_args()
    rows = [json.loads(l) for l in open(DATA, encoding="utf-8")][: a.docs]
    tmp = Path(tempfile.mkdtemp(prefix="lmkit-xsum-"))
    with open(tmp / "articles.jsonl", "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps({"text": r["document"]}) + "\n")
    t0 = time.perf_counter()
    meta = build_index(str(tmp / "articles.jsonl"), tmp / "index", a.model, progress=False)
    index_s = time.perf_counter() - t0
    idx = Index(tmp / "index")
    table = []
    for mode in ("dense", "bm25", "hybrid"):
        r1 = r5 = mrr = 0.0
        t0 = time.perf_counter()
        for i, r in enumerate(rows):
            want = f"{tmp / 'articles.jsonl'}:{i + 1}"
            seen = []
            for hit in idx.search(r["summary"], k=50, mode=mode):
                if hit.source not in seen:
                    seen.append(hit.source)
            rank = seen.index(want) + 1 if want in seen else None
            r1 += rank == 1
            r5 += rank is not None and rank <= 5
            mrr += 1 / rank if rank else 0
        n = len(rows)
        table.append([mode, f"{r1 / n:.3f}", f"{r5 / n:.3f}", f"{mrr / n:.3f}",
                      f"{1000 * (time.perf_counter() - t0) / n:.1f}"])
    report(f"semantic search on XSum ({a.docs} articles, {meta['chunks']} chunks, {a.model})",
           ["ranking", "recall@1", "recall@5", "MRR", "ms/query"], table,
           notes=f"index built in {index_s:.0f} s (embedding {meta['chunks']} chunks on the CPU); "
                 "MRR counts ranks within the top 50 chunks' articles.")


if __name__ == "__main__":
    main()
