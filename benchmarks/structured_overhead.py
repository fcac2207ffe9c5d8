"""What a JSON Schema costs while decoding: tokens/s with and without the grammar's token mask (grammar.py).

A byte-level BPE tokenizer (vocabulary --vocab, trained on tiny-shakespeare in seconds) and a GPT of
--layers × --width with random weights (the timing does not depend on what the weights say; the mask
forces the JSON either way). Each configuration decodes --tokens tokens for a batch of B prompts through
`lm.generate` (the engine's one sampler); the figure is the best of --repeats. The first constrained call
compiles the schema (timed separately: the compiler caches it for every later request).

    python benchmarks/structured_overhead.py [--vocab 4096] [--layers 6] [--width 384] [--tokens 64]
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import report  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"
SCHEMA = {"type": "object", "properties": {
    "speaker": {"type": "string", "maxLength": 24}, "line": {"type": "string", "maxLength": 200},
    "act": {"type": "integer", "minimum": 1, "maximum": 5}, "tags": {"type": "array", "items": {"type": "string"}}},
    "required": ["speaker", "line", "act", "tags"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--width", type=int, default=384)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    import torch
    from lmkit.api import LM
    from lmkit.config import Config
    from lmkit.grammar import json_grammar
    from lmkit.models import build_model
    from lmkit.sampling import sampling_config
    from lmkit.textstream import stream_pieces
    from lmkit.tokenizer import Tokenizer
    torch.set_num_threads(a.threads)
    tok = Tokenizer.train([DATA.read_text(encoding="utf-8")[:300_000]], kind="bpe", vocab_size=a.vocab)
    cfg = Config()
    m = cfg.model
    m.vocab_size, m.n_layer, m.n_head, m.n_embd, m.block_size = tok.vocab_size, a.layers, 6, a.width, 256
    torch.manual_seed(0)
    lm = LM(build_model(m).eval(), tok, cfg)
    t0 = time.perf_counter()
    json_grammar(tok, m.vocab_size, SCHEMA)
    compile_s = time.perf_counter() - t0
    rows = []
    warm = sampling_config(max_new_tokens=8, seed=0)
    for _ in stream_pieces(lm.model, tok, [lm.encode_prompt("ROMEO:")] * 8, warm):  # first-call costs out of the way
        pass
    for batch in (1, 8):
        best = {}
        for label, extra in (("free", {}), ("json_schema", {"json_schema": SCHEMA})):
            runs = []
            for r in range(a.repeats):
                # the free rows ignore end-of-text so they run the whole --tokens; a JSON row ends when complete
                cfg_r = sampling_config(max_new_tokens=a.tokens, temperature=1.0, seed=r, stop_at_eos=bool(extra),
                                        **extra)
                t0 = time.perf_counter()
                n = sum(1 for _ in stream_pieces(lm.model, tok, [lm.encode_prompt("ROMEO:")] * batch, cfg_r))
                runs.append((time.perf_counter() - t0, n))
            best[label] = min(runs, key=lambda x: x[0] / x[1])
        (tf, nf), (tj, nj) = best["free"], best["json_schema"]
        rows.append([batch, f"{nf / tf:.0f}", f"{nj / tj:.0f}", f"{(tj / max(nj, 1)) / (tf / nf) - 1:+.0%}"])
    load = os.getloadavg()[0]
    report(f"structured output: decoding with and without a JSON Schema mask ({a.layers}×{a.width} GPT, "
           f"byte-level BPE vocabulary {m.vocab_size})",
           ["batch", "free tokens/s", "json_schema tokens/s", "time per token"], rows,
           notes=f"Random weights (the mask forces the JSON either way), {a.tokens} tokens per row, best of "
                 f"{a.repeats}, {a.threads} threads; schema compiled once in {compile_s * 1e3:.0f} ms (cached after). "
                 f"Load average at the end: {load:.2f}.")


if __name__ == "__main__":
    main()
