"""Does llama.cpp run lmkit's GGUF export as lmkit does? Greedy tokens of lmkit vs llama-cpp-python.

    pip install llama-cpp-python      # builds llama.cpp from its PyPI source: cmake and a C++ compiler
                                      # (apt-get install cmake build-essential); about 10 minutes on 2 cores
    python benchmarks/gguf_llamacpp.py [RUN] [--tokens 32] [--prompts 8] [--family llama|qwen2]

Not run in CI (it needs that build); this script installs nothing. Without RUN it trains a small Llama-style
model (rope, RMSNorm, SwiGLU, grouped-query attention, byte-level BPE) on the built-in Shakespeare corpus for a
few hundred steps, so that greedy decoding is not a string of near-ties (--family qwen2: with biases on q/k/v,
which export-gguf writes under llama.cpp's qwen2 architecture). Each --type (f16, q8_0, q4_0) is
exported with `lmkit export-gguf`, loaded by llama-cpp-python, and both decode the same prompt ids greedily:
the table gives, per type, how many prompts' continuations match exactly, how many tokens match in all, and
the mean length of the common prefix. f16 is expected to match on every prompt (up to the odd near-tie that
float16 weights flip); the quantized types report how close they stay.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from _common import report  # noqa: E402

PROMPTS = ["ROMEO:", "First Citizen:\nBefore we proceed", "KING HENRY:\nO God", "To be, or not", "HAMLET:\nWhat",
           "JULIET:\nO Romeo, Romeo", "MACBETH:\nIs this a dagger", "Enter", "LEAR:\nBlow, winds", "O, what a"]


def train_small(out: Path, family: str = "llama") -> Path:
    from lmkit import Config, train
    cfg = Config()
    cfg.data.data, cfg.data.tokenizer, cfg.data.vocab_size = "shakespeare", "bpe", 1024
    m = cfg.model
    m.n_layer, m.n_head, m.n_kv_head, m.n_embd, m.block_size = 4, 4, 2, 128, 128
    m.pos, m.norm, m.mlp, m.bias, m.mlp_hidden = "rope", "rmsnorm", "swiglu", False, 352
    m.qkv_bias = family == "qwen2"
    t = cfg.train
    t.out_dir, t.max_iters, t.batch_size, t.eval_interval, t.dtype = str(out), 400, 16, 200, "float32"
    return train(cfg, progress=False).out_dir


def lmkit_greedy(model, ids: list[int], n: int) -> list[int]:
    import torch
    ids = list(ids)
    with torch.no_grad():
        for _ in range(n):
            logits = model(torch.tensor([ids[-model.config.block_size:]]))[0]
            ids.append(int(logits[0, -1].argmax()))
    return ids[-n:]


def llamacpp_greedy(llm, ids: list[int], n: int) -> list[int]:
    llm.reset()
    out = []
    for tok in llm.generate(ids, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0, reset=True):
        out.append(int(tok))
        if len(out) == n:
            break
    return out


def common_prefix(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", nargs="?", help="a Llama-style run (default: train a small one)")
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--types", default="f16,q8_0,q4_0")
    ap.add_argument("--family", choices=["llama", "qwen2"], default="llama", help="the small model trained without RUN")
    a = ap.parse_args()
    try:
        from llama_cpp import Llama
    except ImportError:
        sys.exit("llama_cpp is not importable: pip install llama-cpp-python (builds llama.cpp; ~10 minutes)")
    from lmkit.runs import open_run
    from lmkit.runs.gguf import export_gguf

    tmp = Path(tempfile.mkdtemp(prefix="lmkit-gguf-"))
    run_dir = Path(a.run) if a.run else train_small(tmp / "run", a.family)
    run = open_run(run_dir, purpose="the GGUF benchmark")
    prompts = [run.tokenizer.encode(p) for p in PROMPTS[:a.prompts]]
    n = min(a.tokens, run.config.model.block_size - max(map(len, prompts)))
    ours = [lmkit_greedy(run.model, p, n) for p in prompts]
    rows = []
    for kind in a.types.split(","):
        r = export_gguf(run_dir, tmp / f"model-{kind}.gguf", kind, overwrite=True)
        llm = Llama(model_path=r["path"], n_ctx=run.config.model.block_size, n_threads=2, verbose=False)
        same_ids = all(llm.tokenize(t.encode(), add_bos=False, special=True) == p for t, p in
                       zip(PROMPTS, prompts))
        theirs = [llamacpp_greedy(llm, p, n) for p in prompts]
        prefix = [common_prefix(x, y) for x, y in zip(ours, theirs)]
        rows.append([kind, r.get("arch", "llama"), f"{r['bytes'] / 1e6:.2f}", "yes" if same_ids else "no",
                     f"{sum(x == y for x, y in zip(ours, theirs))}/{len(prompts)}",
                     f"{sum(sum(u == v for u, v in zip(x, y)) for x, y in zip(ours, theirs))}/{n * len(prompts)}",
                     f"{sum(prefix) / len(prefix):.1f}"])
        del llm
    import llama_cpp
    what = f"run {run_dir}" if a.run else f"a small {a.family}-style model trained here on Shakespeare"
    report(f"GGUF export: lmkit vs llama.cpp greedy tokens (llama-cpp-python {llama_cpp.__version__})",
           ["type", "architecture", "MB", "same prompt ids", "prompts identical", "tokens equal",
            "mean common prefix"], rows,
           notes=f"{len(prompts)} prompts x {n} greedy tokens; {what} "
                 f"({sum(p.numel() for p in run.model.parameters()) / 1e6:.2f}M parameters); load average at the "
                 f"end {' '.join(f'{x:.2f}' for x in os.getloadavg())} (token agreement does not depend on load).")


if __name__ == "__main__":
    main()
