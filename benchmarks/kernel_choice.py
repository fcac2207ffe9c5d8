"""The CPU kernel choices lmkit makes, timed: attention (PyTorch's flash and math SDPA kernels vs
lmkit's explicit matmuls + fp32 softmax) and normalisation (fused LayerNorm vs RMSNorm), forward +
backward, fp32 and bf16, at the shapes of the small models trained here.

    python benchmarks/kernel_choice.py [--seconds 0.7]

Each cell is the mean of as many forward+backward passes as fit in --seconds, after warm-up; the
candidates of one row run one after another in this process. "lmkit uses" is what the model code
picks for that row (models/attention.py: short_bf16_on_cpu; examples: norm = "layernorm").
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, str(Path(__file__).parent))
from _common import report  # noqa: E402

from lmkit.models.attention import attend_explicit, short_bf16_on_cpu  # noqa: E402
from lmkit.train.trainer import resolve_dtype  # noqa: E402

ATTENTION_SHAPES = [(12, 4, 64, 32), (48, 4, 64, 32), (16, 6, 128, 64), (16, 6, 256, 64), (4, 12, 512, 64)]
NORM_SHAPES = [(48, 64, 128), (16, 256, 384)]


def ms_per_pass(fn, seconds: float) -> float:
    for _ in range(3):
        fn()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        fn()
        n += 1
    return 1000 * (time.perf_counter() - t0) / n


def attention_row(shape, dtype, seconds):
    q, k, v = (torch.randn(*shape, dtype=dtype, requires_grad=True) for _ in range(3))

    def sdpa(backend):
        def run():
            with sdpa_kernel(backend):
                F.scaled_dot_product_attention(q, k, v, is_causal=True).sum().backward()
        return run

    times = {"flash": ms_per_pass(sdpa(SDPBackend.FLASH_ATTENTION), seconds),
             "math": ms_per_pass(sdpa(SDPBackend.MATH), seconds),
             "explicit": ms_per_pass(lambda: attend_explicit(q, k, v, causal=True).sum().backward(), seconds)}
    uses = "explicit" if short_bf16_on_cpu(q, k, v, None) else "flash"
    return times, uses


def norm_row(shape, dtype, seconds):
    x = torch.randn(*shape, dtype=dtype, requires_grad=True)
    ln, rms = torch.nn.LayerNorm(shape[-1]).to(dtype), torch.nn.RMSNorm(shape[-1]).to(dtype)
    times = {"LayerNorm": ms_per_pass(lambda: ln(x).sum().backward(), seconds),
             "RMSNorm": ms_per_pass(lambda: rms(x).sum().backward(), seconds)}
    return times, "LayerNorm"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=0.7, help="timing per cell (default 0.7)")
    a = ap.parse_args()
    dtypes = [torch.float32]
    if resolve_dtype("auto", torch.device("cpu")) == "bfloat16":  # native bf16 only; AVX2 emulates it
        dtypes.append(torch.bfloat16)
    rows = []
    for dtype in dtypes:
        name = str(dtype).removeprefix("torch.")
        for shape in ATTENTION_SHAPES:
            times, uses = attention_row(shape, dtype, a.seconds)
            best = min(times, key=times.get)
            rows.append(["attention (B,H,T,D)", str(shape), name,
                         " · ".join(f"{k} {v:.2f}" for k, v in times.items()), best, uses])
            print(rows[-1], flush=True)
        for shape in NORM_SHAPES:
            times, uses = norm_row(shape, dtype, a.seconds)
            best = min(times, key=times.get)
            rows.append(["norm (B,T,C)", str(shape), name,
                         " · ".join(f"{k} {v:.2f}" for k, v in times.items()), best, uses])
            print(rows[-1], flush=True)
    report("CPU kernel choice: attention and normalisation, forward + backward",
           ["op", "shape", "dtype", "ms per pass", "fastest", "lmkit uses"], rows,
           notes=f"torch threads {torch.get_num_threads()}; {a.seconds} s per cell; causal attention."
                 + ("" if len(dtypes) > 1 else " bf16 rows skipped: no native bf16 on this CPU."))


if __name__ == "__main__":
    main()
