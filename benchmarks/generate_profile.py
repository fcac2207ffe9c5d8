"""Where a decode step's time goes, lmkit vs transformers: the bound behind generate_vs_transformers.py.

Same ~10M-parameter GPT-2 shape and identical weights as that benchmark (fp32, 1 thread). After a
16-token prompt and 64 warm-up steps, torch.profiler records `--steps` greedy decode steps of each
library and splits the time of a step into the matrix products (aten::addmm / mm: the 41 Linear layers and the
output head), attention (SDPA) and everything else (element-wise ops, views, copies, Python between
ops). It also measures how fast this machine streams the model's fp32 weights from memory (a sum over
a buffer of the same size): at batch 1 every step must read all of them once, so
    floor (ms/token) = weight bytes / streaming bandwidth
bounds any fp32 engine, and transformers' ms/token ÷ floor bounds the speed-up over it.

    python benchmarks/generate_profile.py [--steps 50]
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).parent))
from _common import report  # noqa: E402
from generate_vs_transformers import SHAPE, hf_twin  # noqa: E402

from lmkit.config import ModelConfig  # noqa: E402
from lmkit.engine import DecodeSession  # noqa: E402
from lmkit.models import build_model  # noqa: E402
from lmkit.sampling import SamplingConfig  # noqa: E402

MATMUL, ATTENTION = ("aten::addmm", "aten::mm"), ("aten::_scaled_dot_product_flash_attention_for_cpu",)


def profiled(step, steps: int) -> tuple[float, float, float, int]:
    """ms per step unprofiled (best of 3 rounds); then, profiled, the self CPU ms per step of the matrix
    products and of attention (kernels the profiler barely slows), and the number of ops per step."""
    for _ in range(64):
        step()
    wall = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        wall = min(wall, (time.perf_counter() - t0) * 1000 / steps)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    ev = prof.key_averages()
    ms = lambda names: sum(e.self_cpu_time_total for e in ev if e.key in names) / 1000 / steps
    return wall, ms(MATMUL), ms(ATTENTION), sum(e.count for e in ev) // steps


def hf_stepper(hf, prompt):
    """One greedy step of transformers at a time: the model call with its DynamicCache, as generate does it."""
    from transformers import DynamicCache
    state = {"cache": DynamicCache(), "ids": prompt}
    def step():
        with torch.inference_mode():
            out = hf(state["ids"], past_key_values=state["cache"], use_cache=True)
            state["ids"] = out.logits[:, -1].argmax(-1, keepdim=True)
    step()
    return step


def stream_ms(nbytes: int) -> float:
    """Best time (ms) to read `nbytes` of float32 once (a sum), the buffer larger than the caches."""
    a = torch.ones(nbytes // 4)
    a.sum()
    best = float("inf")
    for _ in range(20):
        t0 = time.perf_counter()
        a.sum()
        best = min(best, time.perf_counter() - t0)
    return best * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=50)
    a = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = build_model(ModelConfig(**SHAPE, mlp="gelu_tanh")).eval()
    hf = hf_twin(model)
    weight_bytes = sum(p.numel() * 4 for n, p in model.named_parameters() if n != "wpe.weight")
    floor = stream_ms(weight_bytes)
    rows = []
    for batch in (1, 8):
        prompt = torch.randint(0, SHAPE["vocab_size"], (batch, 16))
        dec = DecodeSession(model, prompt.tolist(), SamplingConfig(max_new_tokens=10**6, temperature=0))
        for name, step in (("lmkit", dec.step), ("transformers", hf_stepper(hf, prompt))):
            wall, mm, attn, ops = profiled(step, a.steps)
            rest = max(0.0, wall - mm - attn)
            rows.append([batch, name, f"{wall:.2f}", f"{mm:.2f}", f"{attn:.2f}", f"{rest:.2f}", ops])
            print(rows[-1], flush=True)
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    report("decode step profile, lmkit vs transformers (10.0M-parameter GPT-2 shape, fp32, 1 thread)",
           ["batch", "library", "ms/step", "matmul ms", "attention ms", "everything else ms", "ops/step"], rows,
           notes=f"fp32 weights read per step: {weight_bytes / 1e6:.1f} MB; streaming them once takes {floor:.2f} ms "
                 f"on this machine now ({weight_bytes / floor / 1e6:.1f} GB/s): the floor of any fp32 engine at "
                 f"batch 1. `uptime` load: {load}. ms/step unprofiled (best of 3 rounds of {a.steps} steps); matmul and attention: "
                 "their kernels' self time under torch.profiler; everything else = ms/step − both.")


if __name__ == "__main__":
    main()
