"""Speculative decoding on this CPU: acceptance rate and speed-up of a 6×384 target with a 2×128 draft.

Trains both on tiny-shakespeare (char tokenizer, same text, a short run each; or takes --target/--draft),
then decodes the same prompts with the target alone (DecodeSession) and with the draft
(SpeculativeSession), alternated, greedy and at temperature 0.8, batch 1 and 8. Greedy outputs are checked
equal. Also measures the forwards a round is made of: the target over 1 and over k+1 positions, the
draft over 1, which say whether drafting can pay here (it pays when k+1 target positions cost little more
than one, i.e. when a forward is bound by reading the weights, not by arithmetic).

    python benchmarks/speculative.py [--iters 300] [--tokens 96] [--k 4] [--out DIR] [--target RUN --draft RUN]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import report  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"
PROMPTS = ["ROMEO:\nBut soft", "KING HENRY:\nNow", "First Citizen:\nWe are", "JULIET:\nO", "MENENIUS:\nI tell",
           "HAMLET:\nTo be", "GLOUCESTER:\nNow is", "LADY MACBETH:\nOut"]


def train(out: Path, n_layer: int, n_embd: int, n_head: int, iters: int) -> Path:
    import lmkit
    cfg = lmkit.load_config(None, [f"data={DATA}", "tokenizer=char", f"n_layer={n_layer}", f"n_head={n_head}",
                                   f"n_embd={n_embd}", "block_size=256", "batch_size=16", f"max_iters={iters}",
                                   f"eval_interval={iters}", "eval_iters=5", "learning_rate=2e-3", "min_lr=2e-4",
                                   "warmup_iters=30", "pos=rope", "norm=rmsnorm", "bias=false", "dtype=float32",
                                   f"out_dir={out}"])
    return lmkit.train(cfg, progress=False).out_dir


def per_forward_ms(model, T: int, past: int = 64, reps: int = 30) -> float:
    """One cached forward of T new positions after `past` cached ones, batch 1, in ms."""
    idx = torch.randint(0, model.config.vocab_size, (1, past + T))
    with torch.inference_mode():
        cache = model.make_cache(1)
        model(idx[:, :past], cache=cache, last_only=True)
        t0 = time.perf_counter()
        for _ in range(reps):
            cache.pos = past
            model(idx[:, past:], cache=cache, last_only=T == 1)
    return (time.perf_counter() - t0) / reps * 1e3


def run(lm, draft, prompts, n: int, temperature: float, k: int | None):
    from lmkit.engine import DecodeSession
    from lmkit.sampling import SamplingConfig
    from lmkit.speculative import SpeculativeSession
    cfg = SamplingConfig(max_new_tokens=n, temperature=temperature, top_k=None, seed=1)
    ids = [lm.encode_prompt(p) for p in prompts]
    t0 = time.perf_counter()
    if k is None:
        s = DecodeSession(lm.model, ids, cfg)
    else:
        s = SpeculativeSession(lm.model, ids, cfg, draft=draft.model, draft_tokens=k)
    out = torch.stack([s.step().tokens for _ in range(n)], 1).tolist()
    dt = time.perf_counter() - t0
    rate = s.accepted / s.proposed if k is not None else None
    return out, len(prompts) * n / dt, rate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--iters", type=int, default=300, help="training steps of each model")
    ap.add_argument("--tokens", type=int, default=96)
    ap.add_argument("--k", type=int, nargs="+", default=[2, 4])
    ap.add_argument("--out", default=None, help="where the two runs go (default: a temporary folder)")
    ap.add_argument("--target", default=None)
    ap.add_argument("--draft", default=None)
    ap.add_argument("--train-only", action="store_true")
    a = ap.parse_args()
    import lmkit
    out = Path(a.out or tempfile.mkdtemp())
    target = a.target or train(out / "target", 6, 384, 6, a.iters)
    draft = a.draft or train(out / "draft", 2, 128, 4, a.iters)
    if a.train_only:
        print(target, draft)
        return
    torch.set_num_threads(int(os.environ.get("THREADS", "2")))
    lm, small = lmkit.load(target), lmkit.load(draft)
    load_before = os.getloadavg()[0]
    costs = {"target 1": per_forward_ms(lm.model, 1), "draft 1": per_forward_ms(small.model, 1)}
    for k in a.k:
        costs[f"target {k + 1}"] = per_forward_ms(lm.model, k + 1)
    rows = []
    for batch in (1, 8):
        for temperature in (0.0, 0.8):
            prompts = PROMPTS[:batch]
            for k in a.k:
                plain_tps, spec_tps, rates = [], [], []
                for _ in range(2):  # alternated
                    ref, tps, _ = run(lm, small, prompts, a.tokens, temperature, None)
                    plain_tps.append(tps)
                    got, tps, rate = run(lm, small, prompts, a.tokens, temperature, k)
                    spec_tps.append(tps)
                    rates.append(rate)
                    if temperature == 0:
                        assert got == ref, "greedy speculative output differs from the target's"
                p, s = max(plain_tps), max(spec_tps)
                rows.append([batch, temperature, k, f"{sum(rates) / len(rates):.2f}", f"{p:.0f}", f"{s:.0f}",
                             f"{s / p:.2f}x"])
    load_after = os.getloadavg()[0]
    cost_text = ", ".join(f"{name} position(s): {ms:.2f} ms" for name, ms in costs.items())
    notes = (f"Target {target} (6×384), draft {draft} (2×128), {a.iters} training steps each, char tokenizer, "
             f"{a.tokens} new tokens per row; best of 2 alternated runs; greedy outputs checked identical. "
             f"Acceptance = accepted proposals / proposals (k+1 per row and round). Per-forward costs, batch 1, "
             f"after 64 cached positions: {cost_text}. Load average before/after: {load_before:.2f}/{load_after:.2f}.")
    report("Speculative decoding: 6×384 target, 2×128 draft (CPU)",
           ["batch", "temperature", "k", "acceptance", "target alone tok/s", "with draft tok/s", "speed-up"],
           rows, notes)
    print(notes)


if __name__ == "__main__":
    main()
