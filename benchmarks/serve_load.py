"""Load test of `lmkit serve` on loopback: C concurrent streaming clients × R requests each, greedy.

Trains a small character-level GPT on tiny-shakespeare briefly (or takes --run), starts
`lmkit serve` in a subprocess on 127.0.0.1, and checks every streamed reply against the engine's
single-request output. Reports requests/s, generated tokens/s, p50/p95 latency and time to first token,
next to the same requests sent one at a time (the batching speed-up, measured in this run).

    python benchmarks/serve_load.py [--clients 32] [--requests 3] [--max-tokens 48] [--run RUN_DIR] [--threads 1]
"""
from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).parent))
from _common import report  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"


def train_small_model(out: Path) -> Path:
    import lmkit
    cfg = lmkit.load_config(None, [f"data={DATA}", "tokenizer=char", "n_layer=3", "n_head=4", "n_embd=96",
                                   "block_size=112", "batch_size=8", "max_iters=150", "eval_interval=150",
                                   "eval_iters=5", "learning_rate=2e-3", "min_lr=2e-4", "warmup_iters=20",
                                   "pos=rope", "norm=rmsnorm", "bias=false", "dtype=float32", f"out_dir={out}"])
    return lmkit.train(cfg, progress=False).out_dir


def stream_one(url: str, model: str, prompt: str, max_tokens: int) -> dict:
    t0 = time.perf_counter()
    first, text, tokens = None, "", 0
    body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    with httpx.stream("POST", url + "/v1/completions", json=body, timeout=300) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            for c in chunk["choices"]:
                if c["text"] and first is None:
                    first = time.perf_counter() - t0
                text += c["text"]
    return {"text": text, "latency": time.perf_counter() - t0, "ttft": first or 0.0, "tokens": tokens}


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--requests", type=int, default=3, help="requests per client")
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--sequential", type=int, default=8, help="requests sent one at a time for the baseline")
    ap.add_argument("--run", default=None, help="serve this run directory instead of training one")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads in the server and for the references (default 1: the clients need a core)")
    a = ap.parse_args()
    import torch

    import lmkit
    torch.set_num_threads(a.threads)
    run = Path(a.run) if a.run else train_small_model(Path(tempfile.mkdtemp(prefix="lmkit-load-")) / "run")
    lm = lmkit.load(run)
    lines = [l for l in DATA.read_text(encoding="utf-8").splitlines() if 8 < len(l) < 60]
    prompts = [lines[(i * 97) % len(lines)] for i in range(a.clients * a.requests)]
    t0 = time.perf_counter()
    expected = {p: lm.generate(p, max_new_tokens=a.max_tokens, temperature=0) for p in set(prompts)}
    print(f"{len(expected)} single-request references in {time.perf_counter() - t0:.1f} s", flush=True)

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "-m", "lmkit", "serve", str(run), "--port", str(port),
                               "--max-batch", str(a.clients), "--threads", str(a.threads)], cwd=ROOT)
    try:
        deadline = time.time() + 120
        while True:
            try:
                model = httpx.get(url + "/v1/models").json()["data"][0]["id"]
                break
            except httpx.TransportError:
                assert time.time() < deadline and server.poll() is None, "server did not start"
                time.sleep(0.2)
        stream_one(url, model, prompts[0], 4)  # warm-up

        t0 = time.perf_counter()
        seq = [stream_one(url, model, p, a.max_tokens) for p in prompts[:a.sequential]]
        seq_wall = time.perf_counter() - t0

        results: list[dict] = []
        lock = threading.Lock()

        def client(i: int) -> None:
            for j in range(a.requests):
                p = prompts[i * a.requests + j]
                r = stream_one(url, model, p, a.max_tokens)
                r["ok"] = r["text"] == expected[p]
                with lock:
                    results.append(r)
        threads = [threading.Thread(target=client, args=(i,)) for i in range(a.clients)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=600)
        wall = time.perf_counter() - t0
        health = httpx.get(url + "/health").json()
    finally:
        server.terminate()
        server.wait(timeout=30)

    n_ok = sum(r["ok"] for r in results)
    lat, ttft = [r["latency"] for r in results], [r["ttft"] for r in results]
    tokens = sum(r["tokens"] for r in results)
    seq_tokens = sum(r["tokens"] for r in seq)
    rows = [[f"{a.clients} concurrent × {a.requests}", len(results), f"{n_ok}/{len(results)}",
             f"{len(results) / wall:.2f}", f"{tokens / wall:,.0f}", f"{statistics.median(lat):.2f}",
             f"{pct(lat, 0.95):.2f}", f"{statistics.median(ttft):.2f}", f"{wall:.1f}"],
            ["one at a time", len(seq), "-", f"{len(seq) / seq_wall:.2f}", f"{seq_tokens / seq_wall:,.0f}",
             f"{statistics.median(r['latency'] for r in seq):.2f}", f"{pct([r['latency'] for r in seq], 0.95):.2f}",
             f"{statistics.median(r['ttft'] for r in seq):.2f}", f"{seq_wall:.1f}"]]
    cfg = lm.config.model
    report(f"serve load test ({cfg.n_layer}L/{cfg.n_embd}d char GPT, {lm.model.num_params() / 1e6:.2f}M params, "
           f"greedy, max_tokens {a.max_tokens})",
           ["clients", "requests", "greedy = single-request", "requests/s", "tokens/s", "p50 latency s",
            "p95 latency s", "p50 first token s", "wall s"], rows,
           notes=f"Batching speed-up in tokens/s: {(tokens / wall) / (seq_tokens / seq_wall):.1f}×. "
                 f"Server ({a.threads} torch thread) and clients on one 2-core machine shared with other jobs (loopback).")
    if n_ok != len(results):
        sys.exit(f"{len(results) - n_ok} replies differ from the single-request output")


if __name__ == "__main__":
    main()
