"""Prefix caching on this CPU: time to first token for 32 requests sharing a 400-token system prompt.

A randomly initialised 4×256 GPT (4 heads, rotary positions, RMSNorm, block_size 512; the weights do not
change the cost) over a char tokenizer of tiny-shakespeare, so the system prompt (the play's first 400
characters) is 400 tokens; each request adds a distinct user part of 8-25 tokens. The 32 requests are
submitted together to an in-process Scheduler (the server's, serve/scheduler.py) before it starts, so they
form one admitted wave, and decode 8 greedy tokens each. Three ways, alternated round by round:
  off   no prefix cache: one prefill of 32 rows × ~420 columns;
  cold  an empty PrefixCache: the scheduler prefills the first request alone (it stores the system prompt's
        blocks), then the other 31, which find 384 of its 400 tokens;
  warm  a PrefixCache that already holds the system prompt (one earlier request): all 32 find it.
Replies are checked identical across the three. TTFT is from a request's submission to its first token.

    python benchmarks/prefix_cache.py [--rounds 3] [--requests 32] [--system 400]
"""
from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import report  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"
MODES = ("off", "cold", "warm")


def wave(model, tokenizer, prompts, prefix_cache, tokens: int):
    """Submit every prompt, then start the scheduler: (TTFT of each request in s, the replies, wall s)."""
    from lmkit.sampling import SamplingConfig
    from lmkit.serve.metrics import Metrics
    from lmkit.serve.scheduler import Scheduler

    class Recording(Metrics):
        def __init__(self):
            super().__init__()
            self.ttfts = []

        def first_token(self, after: float) -> None:
            self.ttfts.append(after)
            super().first_token(after)

    metrics = Recording()
    scheduler = Scheduler(model, tokenizer, max_batch=len(prompts), metrics=metrics, prefix_cache=prefix_cache)
    cfg = SamplingConfig(max_new_tokens=tokens, temperature=0, stop_at_eos=False)

    async def run():
        jobs = [scheduler.submit([(ids, cfg)]) for ids in prompts]
        t0 = time.monotonic()
        scheduler.start()
        out = []
        for job in jobs:
            got = []
            while (item := await job.queue.get()) is not None:
                got.append(item.token_id)
            out.append(got)
        return out, time.monotonic() - t0
    try:
        replies, wall = asyncio.run(run())
    finally:
        scheduler.stop()
    return metrics.ttfts, replies, wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--requests", type=int, default=32)
    ap.add_argument("--system", type=int, default=400, help="characters (= tokens) of the shared system prompt")
    ap.add_argument("--tokens", type=int, default=8, help="new tokens per request")
    a = ap.parse_args()
    from lmkit.config import ModelConfig
    from lmkit.engine import DecodeSession
    from lmkit.models import build_model
    from lmkit.prefix_cache import PrefixCache
    from lmkit.sampling import SamplingConfig
    from lmkit.tokenizer import Tokenizer
    torch.set_num_threads(int(os.environ.get("THREADS", "2")))
    text = DATA.read_text(encoding="utf-8")
    tokenizer = Tokenizer.train([text], kind="char")
    torch.manual_seed(0)
    model = build_model(ModelConfig(vocab_size=tokenizer.vocab_size, block_size=512, n_layer=4, n_head=4, n_embd=256,
                                    pos="rope", norm="rmsnorm", bias=False)).eval()
    system = tokenizer.encode(text[:a.system])
    assert len(system) == a.system
    lines = [line for line in text[a.system:].splitlines() if 8 <= len(line) <= 25]

    def prompts(offset: int) -> list[list[int]]:  # distinct user parts, never seen by any cache before
        return [system + tokenizer.encode(lines[offset + i]) for i in range(a.requests)]

    ttft = {m: [] for m in MODES}
    computed = {m: [] for m in MODES}
    wall = {m: [] for m in MODES}
    load_before = os.getloadavg()[0]
    for r in range(a.rounds):
        batch = prompts(r * a.requests)
        replies = {}
        for mode in MODES:
            pc = None if mode == "off" else PrefixCache(model)
            if mode == "warm":  # one earlier request with the same system prompt
                DecodeSession(model, [system + tokenizer.encode(lines[-1 - r])], SamplingConfig(max_new_tokens=1),
                              prefix_cache=pc).step()
                pc.hit_tokens = pc.lookup_tokens = 0
            t, replies[mode], w = wave(model, tokenizer, batch, pc, a.tokens)
            ttft[mode].append(t)
            wall[mode].append(w)
            total = sum(map(len, batch))
            computed[mode].append(total - (pc.hit_tokens if pc is not None else 0))
        assert replies["off"] == replies["cold"] == replies["warm"], "the prefix cache changed a reply"
    load_after = os.getloadavg()[0]
    rows = []
    base = statistics.median(statistics.mean(t) for t in ttft["off"])
    for mode in MODES:
        mean = statistics.median(statistics.mean(t) for t in ttft[mode])
        p50 = statistics.median(statistics.median(t) for t in ttft[mode])
        worst = statistics.median(max(t) for t in ttft[mode])
        rows.append([mode, f"{mean * 1e3:.0f}", f"{p50 * 1e3:.0f}", f"{worst * 1e3:.0f}",
                     f"{statistics.median(wall[mode]):.2f}", f"{statistics.median(computed[mode]):.0f}",
                     f"{base / mean:.1f}x"])
    lengths = [len(p) for p in prompts(0)]
    notes = (f"Random 4×256 GPT (rope, block_size 512), char tokenizer, {a.requests} requests with a "
             f"{a.system}-token system prompt and distinct user parts ({min(lengths)}-{max(lengths)} tokens in all), "
             f"submitted together to an in-process Scheduler, {a.tokens} greedy tokens each; the median over "
             f"{a.rounds} alternated rounds of each round's mean / median / max TTFT; prompt tokens computed = "
             f"looked up − reused (the rest came from the cache); replies checked identical. "
             f"torch threads {torch.get_num_threads()}; load average before/after: {load_before:.2f}/{load_after:.2f}.")
    report(f"Prefix caching: TTFT of {a.requests} requests sharing a {a.system}-token system prompt (CPU)",
           ["prefix cache", "mean TTFT ms", "median TTFT ms", "max TTFT ms", "wave s", "prompt tokens computed",
            "mean TTFT speed-up"], rows, notes)
    print(notes)


if __name__ == "__main__":
    main()
