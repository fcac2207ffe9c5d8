"""Serving throughput against a peer: `lmkit serve` and `transformers serve` on identical weights.

Builds a Llama-shaped model with random weights and a byte-level BPE tokenizer trained on tiny-shakespeare,
saved by transformers (`save_pretrained`), or takes --model HF_FOLDER. Starts both servers on loopback
from that one folder — `lmkit serve FOLDER` and transformers' own OpenAI-compatible server
(`transformers serve FOLDER --continuous-batching`, its continuous-batching engine) — with the same
number of torch threads, then drives 1, 8 and 32 concurrent streaming clients (greedy /v1/completions,
a fixed number of new tokens) against each, alternating lmkit / peer level by level in one run.
Reports aggregate generated tokens/s, p50/p95 time to first token and the share of replies equal to
lmkit's single-client reply (both engines decode greedily from the same weights).

    python benchmarks/serve_load.py [--clients 1 8 32] [--requests 2] [--max-tokens 64] [--threads 1]
                                    [--model HF_FOLDER] [--hidden 384 --layers 6] [--peer-args ...]
"""
from __future__ import annotations

import argparse
import json
import os
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


def build_model(out: Path, hidden: int, layers: int, vocab: int = 4096) -> Path:
    """A random Llama (hidden/64 heads, SwiGLU 8/3 wide, tied head) and a BPE tokenizer trained on the text."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer, tok.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    tok.train_from_iterator(DATA.read_text(encoding="utf-8").split("\n"),
                            trainers.BpeTrainer(vocab_size=vocab, special_tokens=["<|endoftext|>"], show_progress=False,
                                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=tok.get_vocab_size(), hidden_size=hidden, num_hidden_layers=layers,
                      intermediate_size=hidden * 8 // 3 // 64 * 64, num_attention_heads=hidden // 64,
                      num_key_value_heads=hidden // 64, max_position_embeddings=1024, tie_word_embeddings=True,
                      bos_token_id=0, eos_token_id=0)
    LlamaForCausalLM(cfg).save_pretrained(out)
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>").save_pretrained(out)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(cmd: list[str], url: str, env: dict, log: Path) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
    deadline = time.time() + 300
    while True:
        try:
            return proc, httpx.get(url + "/v1/models", timeout=5).json()["data"][0]["id"]
        except (httpx.TransportError, KeyError, IndexError, ValueError):
            if time.time() > deadline or proc.poll() is not None:
                proc.kill()
                sys.exit(f"{cmd[0:3]} did not start; its log: {log}")
            time.sleep(0.5)


def stream_one(url: str, model: str, prompt: str, max_tokens: int) -> dict:
    t0 = time.perf_counter()
    first, text, tokens = None, "", 0
    body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    with httpx.stream("POST", url + "/v1/completions", json=body, timeout=900) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            for c in chunk.get("choices", []):
                if c.get("text") and first is None:
                    first = time.perf_counter() - t0
                text += c.get("text") or ""
    return {"prompt": prompt, "text": text, "latency": time.perf_counter() - t0, "ttft": first or 0.0, "tokens": tokens}


def load(url: str, model: str, prompts: list[str], clients: int, requests: int, max_tokens: int):
    """`clients` threads, each sending `requests` streaming requests one after another; (results, wall s)."""
    results, lock = [], threading.Lock()

    def client(i: int) -> None:
        for j in range(requests):
            r = stream_one(url, model, prompts[(i * requests + j) % len(prompts)], max_tokens)
            with lock:
                results.append(r)
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results, time.perf_counter() - t0


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--requests", type=int, default=2, help="requests per client at each level")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1, help="torch threads of each server (the clients need CPU too)")
    ap.add_argument("--model", default=None, help="a Hugging Face folder both servers load (default: build one)")
    ap.add_argument("--hidden", type=int, default=384)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--peer-args", default="--continuous-batching", help="extra flags for `transformers serve`")
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="lmkit-serve-load-"))
    folder = Path(a.model) if a.model else build_model(tmp / "hf", a.hidden, a.layers)
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads), MKL_NUM_THREADS=str(a.threads), TOKENIZERS_PARALLELISM="false")
    lines = [l for l in DATA.read_text(encoding="utf-8").splitlines() if 20 < len(l) < 60]
    prompts = [lines[(i * 97) % len(lines)] for i in range(max(a.clients) * a.requests)]

    servers = {}
    lm_port, peer_port = free_port(), free_port()
    servers["lmkit"] = start([sys.executable, "-m", "lmkit", "serve", str(folder), "--port", str(lm_port),
                              "--max-batch", str(max(a.clients)), "--threads", str(a.threads)],
                             f"http://127.0.0.1:{lm_port}", env, tmp / "lmkit.log") + (f"http://127.0.0.1:{lm_port}",)
    servers["transformers"] = start(["transformers", "serve", str(folder), "--port", str(peer_port), "--host",
                                     "127.0.0.1", "--device", "cpu", *a.peer_args.split()],
                                    f"http://127.0.0.1:{peer_port}", env, tmp / "peer.log") + (f"http://127.0.0.1:{peer_port}",)
    load_before = os.getloadavg()[0]
    try:
        for name, (_, model, url) in servers.items():
            load(url, model, prompts[:2], 2, 1, 8)  # warm-up
        reference = {p: stream_one(servers["lmkit"][2], servers["lmkit"][1], p, a.max_tokens)["text"]
                     for p in prompts}  # lmkit one request at a time: what every reply should equal
        rows, tps = [], {}
        for clients in a.clients:
            for name in ("lmkit", "transformers"):  # alternated, level by level
                _, model, url = servers[name]
                results, wall = load(url, model, prompts, clients, a.requests, a.max_tokens)
                tokens = sum(r["tokens"] for r in results)
                tps[name, clients] = tokens / wall
                ttft = [r["ttft"] for r in results]
                same = sum(r["text"] == reference[r["prompt"]] for r in results)
                rows.append([clients, name, len(results), f"{same}/{len(results)}", f"{tokens / wall:,.0f}",
                             f"{statistics.median(ttft):.2f}", f"{pct(ttft, 0.95):.2f}",
                             f"{statistics.median(r['latency'] for r in results):.2f}", f"{wall:.1f}"])
                print(rows[-1], flush=True)
    finally:
        for proc, _, _ in servers.values():
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
    import transformers
    from transformers import AutoConfig
    cfg = AutoConfig.from_pretrained(folder)
    ratios = ", ".join(f"{c} clients {tps['lmkit', c] / tps['transformers', c]:.2f}×" for c in a.clients)
    report(f"serve throughput: lmkit serve vs transformers serve {transformers.__version__} "
           f"({cfg.num_hidden_layers}×{cfg.hidden_size} Llama, vocab {cfg.vocab_size}, greedy, {a.max_tokens} new tokens)",
           ["clients", "server", "requests", "= lmkit single-client reply", "tokens/s", "p50 first token s",
            "p95 first token s", "p50 latency s", "wall s"], rows,
           notes=f"lmkit / transformers aggregate tokens/s: {ratios} (target ≥ 3× at 32 clients). Both servers load "
                 f"the same folder (random weights, BPE tokenizer trained on tiny-shakespeare), {a.threads} torch "
                 f"thread(s) each, peer flags `{a.peer_args}`; each client sends {a.requests} streaming requests one "
                 f"after another; levels alternate lmkit / transformers in one run; clients on the same 2-core machine "
                 f"(loopback). Load average before/after: {load_before:.2f}/{os.getloadavg()[0]:.2f}.")


if __name__ == "__main__":
    main()
