"""Decode tokens/s of an imported Qwen2.5-0.5B-shaped model: lmkit fp32, int8 and int4 beside transformers.

    python benchmarks/decode_families.py [--new-tokens 16] [--prompt 16] [--repeats 2] [--batches 1,8]

The model has Qwen2.5-0.5B's shape (hidden 896, 24 layers, 14 heads, 2 key/value heads, MLP 4864, vocabulary
151,936, tied head; 494M parameters), random weights, built and saved (float32) by transformers in a temp
folder, then taken through the commands a user runs:

    lmkit import-hf HF RUN          the Hugging Face folder as an lmkit run
    lmkit quantize RUN --out INT8   int8 block weights and head (fbgemm's dynamic int8 kernel)
    lmkit quantize RUN --out INT8H --float-head        the same with the tied head kept fp32
    lmkit quantize RUN --bits 4 --group-size 32 --out INT4   int4 g32 (PyTorch's CPU int4 kernel)

Engines, each greedy from the same random prompt, a fixed number of new tokens (no early stop), run in turn
(alternated) so that load from other jobs falls on all alike; the best of --repeats per engine:
    lmkit fp32         lmkit.load(RUN) with the generation engine (engine.generate_ids)
    lmkit int8         lmkit.load(INT8); "lmkit int8, fp32 head" lmkit.load(INT8H); "lmkit int4 g32" lmkit.load(INT4)
    transformers fp32  Qwen2ForCausalLM.generate(do_sample=False) on the same weights
    transformers int8  the same model through torch.ao.quantization.quantize_dynamic: the decoder layers'
                       Linears, per-channel qint8, the scheme lmkit quantize uses (the tied head stays fp32)
Tokens/s counts the new tokens of all rows over the whole call (prefill included). The greedy tokens of the
fp32 engines are compared (random weights give near-ties, so a few late tokens may differ).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import report  # noqa: E402
from import_memory import QWEN25_05B  # noqa: E402


def lmkit_cli(*args: str) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "lmkit", *args], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def time_lmkit(model, prompt, n_new):
    from lmkit.engine import generate_ids
    from lmkit.sampling import SamplingConfig
    t0 = time.perf_counter()
    steps = list(generate_ids(model, prompt.tolist(), SamplingConfig(max_new_tokens=n_new, temperature=0)))
    return time.perf_counter() - t0, torch.stack(steps, 1)


def time_hf(model, prompt, n_new):
    kw = dict(do_sample=False, pad_token_id=0, eos_token_id=None, attention_mask=torch.ones_like(prompt))
    t0 = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(prompt, max_new_tokens=n_new, min_new_tokens=n_new, **kw)
    return time.perf_counter() - t0, out[:, prompt.size(1):]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--prompt", type=int, default=16, help="prompt tokens (default 16)")
    ap.add_argument("--repeats", type=int, default=2, help="best of this many alternated runs per engine")
    ap.add_argument("--batches", default="1,8")
    a = ap.parse_args()
    import transformers
    import lmkit
    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    with tempfile.TemporaryDirectory(prefix="decode-families-") as tmp:
        hf_dir, run, int8 = Path(tmp) / "hf", Path(tmp) / "run", Path(tmp) / "int8"
        t0 = time.perf_counter()
        torch.manual_seed(0)
        hf = transformers.AutoModelForCausalLM.from_config(transformers.Qwen2Config(**QWEN25_05B),
                                                           dtype=torch.float32).eval()
        hf.save_pretrained(hf_dir)
        tok = lmkit.Tokenizer.train(["the quick brown fox jumps over the lazy dog"] * 50, kind="bpe", vocab_size=300)
        tok.save(hf_dir / "tokenizer.json")
        built = time.perf_counter() - t0
        n_params = sum(p.numel() for p in hf.parameters())
        t_import = lmkit_cli("import-hf", str(hf_dir), "--out", str(run))
        t_quant = lmkit_cli("quantize", str(run), "--out", str(int8))
        lmkit_cli("quantize", str(run), "--float-head", "--out", str(Path(tmp) / "int8h"))
        lmkit_cli("quantize", str(run), "--bits", "4", "--group-size", "32", "--out", str(Path(tmp) / "int4"))
        ours, ours8 = lmkit.load(run).model, lmkit.load(int8).model
        ours8h, ours4 = lmkit.load(Path(tmp) / "int8h").model, lmkit.load(Path(tmp) / "int4").model
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic
        layers = {n: per_channel_dynamic_qconfig for n, m in hf.named_modules()
                  if isinstance(m, torch.nn.Linear) and n.startswith("model.layers.")}  # as lmkit's: the blocks
        theirs8 = quantize_dynamic(hf, layers, dtype=torch.qint8)
        engines = {"lmkit fp32": lambda p: time_lmkit(ours, p, a.new_tokens),
                   "lmkit int8": lambda p: time_lmkit(ours8, p, a.new_tokens),
                   "lmkit int8, fp32 head": lambda p: time_lmkit(ours8h, p, a.new_tokens),
                   "lmkit int4 g32": lambda p: time_lmkit(ours4, p, a.new_tokens),
                   "transformers fp32": lambda p: time_hf(hf, p, a.new_tokens),
                   "transformers int8": lambda p: time_hf(theirs8, p, a.new_tokens)}
        x = torch.randint(0, QWEN25_05B["vocab_size"], (1, 12))
        with torch.no_grad():
            diff = (ours(x)[0] - hf(x).logits).abs().max().item()
        rows = []
        for batch in (int(b) for b in a.batches.split(",")):
            g = torch.Generator().manual_seed(batch)
            prompt = torch.randint(0, QWEN25_05B["vocab_size"], (batch, a.prompt), generator=g)
            best = {}
            for _ in range(a.repeats):
                for name, go in engines.items():
                    sec, toks = go(prompt)
                    if name not in best or sec < best[name][0]:
                        best[name] = (sec, toks)
                    print(batch, name, f"{batch * a.new_tokens / sec:.2f} tok/s", flush=True)
            ref = best["transformers fp32"]
            for name, (sec, toks) in best.items():
                tps = batch * a.new_tokens / sec
                same = f"{100 * (toks == ref[1]).float().mean().item():.0f}%"
                rows.append([batch, name, f"{tps:.2f}", f"{1000 * sec / a.new_tokens:.0f}",
                             f"{tps / (batch * a.new_tokens / ref[0]):.2f}×", same])
    load_after = " ".join(f"{x:.2f}" for x in os.getloadavg())
    report(f"decode tokens/s, imported Qwen2.5-0.5B-shaped model (random weights): lmkit fp32 / int8 / int4 vs "
           f"transformers {transformers.__version__}",
           ["batch", "engine", "tokens/s", "ms per new token", "vs transformers fp32", "same greedy tokens as "
            "transformers fp32"], rows,
           notes=f"{n_params / 1e6:.0f}M parameters, built and saved by transformers in {built:.0f} s; "
                 f"`lmkit import-hf` {t_import:.0f} s, `lmkit quantize` (int8) {t_quant:.0f} s; lmkit fp32 vs "
                 f"transformers fp32 max |Δlogit| {diff:.1e}. Greedy, prompt {a.prompt} random tokens, "
                 f"{a.new_tokens} new tokens per row (no early stop), best of {a.repeats} alternated runs per "
                 f"engine, torch threads {torch.get_num_threads()}. transformers int8 = torch.ao dynamic "
                 f"per-channel qint8 quantization of the decoder layers' Linears, as lmkit's int8; its tied "
                 f"head stays fp32, as in 'lmkit int8, fp32 head' (lmkit quantizes a copy of it by default). Load average before / after: {load_before} / {load_after}.")


if __name__ == "__main__":
    main()
