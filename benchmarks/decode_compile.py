"""Does torch.compile pay for the batch-1 decode step on this CPU? Eager against compiled, same runs.

    python benchmarks/decode_compile.py --dir DIR [--variants fp32,int8,int4-g32] [--threads 2]
                                        [--prompt 512] [--new-tokens 32] [--whole]

DIR is the folder benchmarks/decode_vs_llamacpp.py builds (its `run`, `int8` and `int4-g32` runs of the 373M
Llama-style model). For each variant the script times the generation engine eager, then with every
Transformer block compiled in place (`block.compile(dynamic=True)`: the cache grows by one position a step,
so static shapes would recompile every token), and with --whole also the whole model compiled. Each compiled
configuration reports its warm-up (the first prompt + 32 tokens, compilation included) and then its decode
tokens/s on a second prompt of the same length; eager runs first and again last, and the better is kept.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import report  # noqa: E402


def decode(model, prompt: list[int], n_new: int) -> tuple[float, float, float]:
    """(seconds for the whole call, prompt tokens/s, decode tokens/s) with the generation engine."""
    from lmkit.engine import DecodeSession
    from lmkit.sampling import SamplingConfig
    t0 = time.perf_counter()
    s = DecodeSession(model, [prompt], SamplingConfig(max_new_tokens=n_new, temperature=0))
    s.step()
    t1 = time.perf_counter()
    for _ in range(n_new - 1):
        s.step()
    t2 = time.perf_counter()
    return t2 - t0, len(prompt) / (t1 - t0), (n_new - 1) / (t2 - t1)


def parser(doc: str) -> argparse.ArgumentParser:
    """The options of the scripts that time the runs benchmarks/decode_vs_llamacpp.py builds."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", required=True, help="the work folder of benchmarks/decode_vs_llamacpp.py")
    ap.add_argument("--variants", default="fp32,int8,int4-g32")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt", type=int, default=512)
    return ap


def variant_runs(folder: Path, variants: str):
    """(variant, run folder) for each of the comma-separated variants, or exit naming the missing one."""
    for variant in variants.split(","):
        path = folder / ("run" if variant == "fp32" else variant)
        if not path.exists():
            sys.exit(f"{path}: not found (run benchmarks/decode_vs_llamacpp.py --dir {folder} first)")
        yield variant, path


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--whole", action="store_true", help="also compile the whole model (slow to warm up)")
    a = ap.parse_args()
    import lmkit
    torch.set_num_threads(a.threads)
    folder = Path(a.dir)
    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    rows = []
    for variant, path in variant_runs(folder, a.variants):
        V = lmkit.load(path).config.model.vocab_size
        gen = torch.Generator().manual_seed(0)
        prompts = [torch.randint(1, V, (a.prompt,), generator=gen).tolist() for _ in range(2)]
        eager = lmkit.load(path).model
        decode(eager, prompts[0], 4)  # first touches
        first = decode(eager, prompts[1], a.new_tokens)
        configs = [("blocks compiled", "blocks")] + ([("whole model compiled", "whole")] if a.whole else [])
        results = []
        for label, how in configs:
            torch._dynamo.reset()
            m = lmkit.load(path).model
            if how == "blocks":
                for b in m.h:
                    b.compile(dynamic=True)
            else:
                m.compile(dynamic=True)
            warm = decode(m, prompts[0], a.new_tokens)[0]
            results.append((label, warm, decode(m, prompts[1], a.new_tokens)))
            del m
        last = decode(eager, prompts[1], a.new_tokens)
        base = max(first[2], last[2])
        rows.append([variant, "eager", "–", f"{max(first[1], last[1]):,.0f}", f"{base:.1f}", "1.00×"])
        for label, warm, (_, pp, dec) in results:
            rows.append([variant, label, f"{warm:.1f}", f"{pp:,.0f}", f"{dec:.1f}", f"{dec / base:.2f}×"])
    load_after = " ".join(f"{x:.2f}" for x in os.getloadavg())
    notes = (f"Batch 1, prompt {a.prompt} random ids, {a.new_tokens} greedy new tokens, torch threads {a.threads}, "
             f"models from {folder} (benchmarks/decode_vs_llamacpp.py). warm-up s = the first prompt and its tokens "
             f"with compilation; pp and decode tok/s from a second prompt of the same length. Compiled with "
             f"dynamic=True, default inductor mode, torch {torch.__version__}. Load average before/after: "
             f"{load_before} / {load_after}.")
    report("torch.compile for the decode step (373M Llama-style, CPU)",
           ["weights", "step", "warm-up s", "pp tok/s", "decode tok/s", "vs eager"], rows, notes)
    print(notes)


if __name__ == "__main__":
    main()
