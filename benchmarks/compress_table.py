"""Compression table: fp32, bf16, int8, pruned and ONNX versions of a GPT and of MiniLM, measured in one run.

    python benchmarks/compress_table.py [--run RUN_DIR | --iters 500] [--docs 150] [--rounds 3]

GPT: a char-level GPT trained here on tiny-shakespeare (examples/shakespeare_char.toml, --iters steps)
or an existing --run. Every row is scored on the same held-out windows (the run's own val split):
val loss, forward-pass scoring throughput (tokens/s over batches of val windows) and greedy decoding
at batch 1 with lmkit's engine (not for ONNX, which has no KV-cache loop here).
MiniLM: the all-MiniLM-L6-v2 that `lmkit embed` uses. Retrieval on XSum as in search_xsum.py (dense
only): each reference summary is a query, its own article the one relevant document; here each
article is one vector of its first --max-len tokens. Encoding speed: sentences/s over --speed-docs
articles at --max-len tokens. Timed parts run in --rounds rounds, the rows alternating; the median is
reported.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_model

sys.path.insert(0, str(Path(__file__).parent))
from _common import report  # noqa: E402

import lmkit  # noqa: E402
from lmkit.compress import (_run_data_dir, export_onnx, onnx_session, prune_run,  # noqa: E402
                            quantize)
from lmkit.data.shards import open_split  # noqa: E402
from lmkit.engine import generate_ids  # noqa: E402
from lmkit.sampling import SamplingConfig  # noqa: E402
from lmkit.search import Encoder, default_model_path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


def load_avg() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


def mb(path: Path) -> str:
    return f"{path.stat().st_size / 1e6:.2f}"


def bf16_file(model, path: Path) -> Path:
    """The model's weights cast to bf16 and written as safetensors (for the file size)."""
    save_model(model, str(path))
    return path


def timed_rounds(jobs: dict, rounds: int) -> dict:
    """Run every job once per round, alternating the jobs; -> median seconds per job."""
    times = {k: [] for k in jobs}
    for _ in range(rounds):
        for k, job in jobs.items():
            t0 = time.perf_counter()
            job()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


# ---- GPT ------------------------------------------------------------------------------------------
def val_windows(data_dir: Path, block: int, n_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Non-overlapping windows of the val split: x = tokens [i·T, i·T + T), y = the next token of each."""
    n = n_tokens // block
    ids = torch.from_numpy(open_split(data_dir, "val")[: n * block + 1].astype("int64"))
    n = (len(ids) - 1) // block
    return ids[: n * block].view(n, block), ids[1: n * block + 1].view(n, block)


def torch_logits(model):
    def f(x):
        with torch.no_grad():
            return model(x)[0].float()
    return f


def onnx_logits(session):
    return lambda x: torch.from_numpy(session.run(None, {"input_ids": x.numpy()})[0])


def score(logits_fn, x, y, batch: int) -> float:
    """Mean −ln p(y | x) over every window position."""
    nll = sum(F.cross_entropy(logits_fn(x[i:i + batch]).flatten(0, 1), y[i:i + batch].flatten(),
                              reduction="sum").item() for i in range(0, len(x), batch))
    return nll / y.numel()


def decode(model, lm, n: int):
    idx = torch.tensor([lm.encode_prompt("")])
    cfg = SamplingConfig(max_new_tokens=n, temperature=0, stop_at_eos=False)
    return lambda: list(generate_ids(model, idx, cfg))


def gpt_table(a, tmp: Path) -> None:
    if a.run:
        run = Path(a.run)
        trained = f"existing run {run}"
    else:
        run = tmp / "gpt"
        t0 = time.perf_counter()
        lmkit.train(str(ROOT / "examples" / "shakespeare_char.toml"), progress=False,
                    overrides=[f"max_iters={a.iters}", f"lr_decay_iters={a.iters}", f"out_dir={run}",
                               f"data={SHARED / 'tinyshakespeare' / 'input.txt'}", f"eval_interval={a.iters}"])
        trained = f"trained here: examples/shakespeare_char.toml, {a.iters} steps, {time.perf_counter() - t0:.0f} s"
    base = lmkit.load(run)
    block = base.config.model.block_size
    x, y = val_windows(_run_data_dir(base), block, a.eval_tokens)

    bf16 = lmkit.load(run)
    bf16.model.to(torch.bfloat16)
    quantize(run, tmp / "int8")
    p0 = prune_run(run, tmp / "p50", 0.5, progress=False)
    p1 = prune_run(run, tmp / "p50r", 0.5, finetune_iters=a.recovery_iters, progress=False)
    onnx = export_onnx(base, tmp / "gpt.onnx")
    session = onnx_session(tmp / "gpt.onnx", a.threads)
    lms = {"fp32": base, "bf16 (weights cast)": bf16, "int8 (dynamic, per-channel)": lmkit.load(tmp / "int8"),
           "50% pruned, no recovery": lmkit.load(tmp / "p50"),
           f"50% pruned + {a.recovery_iters} recovery steps": lmkit.load(tmp / "p50r")}
    files = {"fp32": run / "model.safetensors", "bf16 (weights cast)": bf16_file(bf16.model, tmp / "bf16.safetensors"),
             "int8 (dynamic, per-channel)": tmp / "int8" / "model.safetensors",
             "50% pruned, no recovery": tmp / "p50" / "model.safetensors",
             f"50% pruned + {a.recovery_iters} recovery steps": tmp / "p50r" / "model.safetensors",
             "ONNX fp32 (onnxruntime)": tmp / "gpt.onnx"}
    fns = {k: torch_logits(lm.model) for k, lm in lms.items()}
    fns["ONNX fp32 (onnxruntime)"] = onnx_logits(session)
    losses = {k: score(f, x, y, a.batch) for k, f in fns.items()}
    for lm in lms.values():  # warm up the decoding loop
        decode(lm.model, lm, 5)()
    fwd = timed_rounds({k: (lambda f=f: score(f, x, y, a.batch)) for k, f in fns.items()}, a.rounds)
    dec = timed_rounds({k: decode(lm.model, lm, a.decode_tokens) for k, lm in lms.items()}, a.rounds)
    rows = [[k, mb(files[k]), f"{losses[k]:.4f}", f"{y.numel() / fwd[k]:,.0f}",
             f"{a.decode_tokens / dec[k]:.0f}" if k in dec else "—"] for k in fns]
    report(f"compression table: char-level GPT on tiny-shakespeare ({base.model.num_params():,} params)",
           ["model", "file MB", f"val loss ({y.numel():,} tokens)", "scoring tokens/s (batch "
            f"{a.batch}×{block})", f"greedy tokens/s (batch 1, {a.decode_tokens} new)"], rows,
           notes=f"{trained}. Same val windows for every row. bf16 = every weight cast to bfloat16 and run in "
                 f"bf16 (no autocast); this AVX2 CPU has no native bf16 arithmetic, hence its speed. int8 = "
                 f"`lmkit quantize` (block Linears int8, embeddings fp32). Pruned = `lmkit prune --sparsity 0.5` "
                 f"(unstructured magnitude; zeros stored densely, so the file keeps its size; val loss by "
                 f"prune_run's own count: {p0['val_loss_before']:.4f} before, {p0['val_loss_pruned']:.4f} pruned, "
                 f"{p1['val_loss_recovered']:.4f} after recovery). ONNX: `lmkit export-onnx` (max |Δ logits| "
                 f"{onnx['max_abs_diff']:.1e}), onnxruntime CPU, scoring only. Speeds: median of {a.rounds} "
                 f"alternating rounds; torch and onnxruntime threads {a.threads}; load average {load_avg()}.")


# ---- MiniLM ---------------------------------------------------------------------------------------
def onnx_embed(session, enc: Encoder):
    def f(seqs):
        return np.concatenate([session.run(None, {"input_ids": i.numpy(), "attention_mask": m.numpy()})[0]
                               for i, m in enc.batches(seqs)])
    return f


def retrieval(d: np.ndarray, q: np.ndarray) -> tuple[float, float, float]:
    """recall@1, recall@5, MRR when query i's one relevant document is document i."""
    s = q @ d.T
    rank = (s > s[np.arange(len(q)), np.arange(len(q))][:, None]).sum(1) + 1
    return float((rank == 1).mean()), float((rank <= 5).mean()), float((1 / rank).mean())


def minilm_table(a, tmp: Path) -> None:
    path = default_model_path()
    rows = [json.loads(l) for l in open(SHARED / "xsum_sample" / "test.jsonl", encoding="utf-8")][: a.docs]
    fp32 = Encoder(max_len=a.max_len, batch_size=a.batch)
    docs = [fp32.tokenizer.encode(r["document"]) for r in rows]
    queries = [fp32.tokenizer.encode(r["summary"]) for r in rows]
    speed_set = docs[: a.speed_docs]

    bf16 = Encoder(max_len=a.max_len, batch_size=a.batch)
    bf16.model.to(torch.bfloat16)
    quantize(path, tmp / "mini_int8")
    prune_run(path, tmp / "mini_p50", 0.5, progress=False)
    onnx = export_onnx(lmkit.load(path), tmp / "minilm.onnx")
    encoders = {"fp32": fp32, "bf16 (weights cast)": bf16,
                "int8 (dynamic, per-channel)": Encoder(tmp / "mini_int8", max_len=a.max_len, batch_size=a.batch),
                "50% pruned (magnitude, no recovery)": Encoder(tmp / "mini_p50", max_len=a.max_len,
                                                               batch_size=a.batch)}
    fns = {k: e.embed_ids for k, e in encoders.items()}
    fns["ONNX fp32 (onnxruntime)"] = onnx_embed(onnx_session(tmp / "minilm.onnx", a.threads), fp32)
    files = {"fp32": path / "model.safetensors", "bf16 (weights cast)": bf16_file(bf16.model, tmp / "mini_bf16.st"),
             "int8 (dynamic, per-channel)": tmp / "mini_int8" / "model.safetensors",
             "50% pruned (magnitude, no recovery)": tmp / "mini_p50" / "model.safetensors",
             "ONNX fp32 (onnxruntime)": tmp / "minilm.onnx"}
    vecs = {}
    for k, f in fns.items():
        t0 = time.perf_counter()
        vecs[k] = (f(docs), f(queries))
        print(f"{k}: embedded {len(docs)} articles and {len(queries)} summaries in {time.perf_counter() - t0:.0f} s",
              file=sys.stderr)
    speed = timed_rounds({k: (lambda f=f: f(speed_set)) for k, f in fns.items()}, a.rounds)
    ref = np.concatenate(vecs["fp32"])
    table = []
    for k in fns:
        r1, r5, mrr = retrieval(*vecs[k])
        gap = float((1 - (np.concatenate(vecs[k]) * ref).sum(1)).max())
        table.append([k, mb(files[k]), f"{len(speed_set) / speed[k]:.1f}", f"{r1:.3f}", f"{r5:.3f}", f"{mrr:.3f}",
                      f"{gap:.2e}"])
    report(f"compression table: all-MiniLM-L6-v2 on XSum ({a.docs} articles)",
           ["model", "file MB", f"sentences/s ({a.speed_docs} articles × ≤{a.max_len} tokens)", "recall@1",
            "recall@5", "MRR", "max (1 − cos) vs fp32"], table,
           notes=f"Dense retrieval, {a.docs} summaries against {a.docs} articles, each article one vector of its "
                 f"first {a.max_len} tokens (search_xsum.py chunks whole articles instead, so its figures differ). "
                 f"bf16 = weights cast, bf16 arithmetic (no native bf16 on this AVX2 CPU). int8 = `lmkit quantize` "
                 f"on the MiniLM folder: block Linears int8 with dynamic per-tensor activation quantization, the "
                 f"word embeddings (11.7 M of 22.7 M parameters) stay fp32. Pruned = `lmkit prune --sparsity 0.5` "
                 f"on the MiniLM folder, no recovery fine-tune (zeros stored densely). ONNX: `lmkit export-onnx` "
                 f"(pooling in the graph; max |Δ embedding| {onnx['max_abs_diff']:.1e}). Speed: median of "
                 f"{a.rounds} alternating rounds, batch {a.batch}; torch and onnxruntime threads {a.threads}; "
                 f"load average {load_avg()}.")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", help="an existing char-level GPT run (default: train one here)")
    ap.add_argument("--iters", type=int, default=500, help="training steps when training here")
    ap.add_argument("--eval-tokens", type=int, default=8192)
    ap.add_argument("--recovery-iters", type=int, default=100)
    ap.add_argument("--decode-tokens", type=int, default=100)
    ap.add_argument("--batch", type=int, default=32, help="windows (GPT) or texts (MiniLM) per forward pass")
    ap.add_argument("--docs", type=int, default=150)
    ap.add_argument("--max-len", type=int, default=128)
    ap.add_argument("--speed-docs", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch and onnxruntime threads (default 1: on a shared, "
                    "oversubscribed CPU, 2 spinning threads decode ~15x slower than 1)")
    ap.add_argument("--only", choices=["gpt", "minilm"])
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    tmp = Path(tempfile.mkdtemp(prefix="lmkit-compress-table-"))
    try:
        if a.only != "minilm":
            gpt_table(a, tmp)
        if a.only != "gpt":
            minilm_table(a, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
