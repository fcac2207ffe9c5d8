"""Measured matmul throughput of this machine, fp32 and bf16: the peak that MFU figures divide by.

    python benchmarks/matmul_peak.py [--size 2048]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import report  # noqa: E402


def gflops(n: int, dtype: torch.dtype, seconds: float = 3.0) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b  # warm-up
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        reps += 1
    return 2 * n ** 3 * reps / (time.perf_counter() - t0) / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size", type=int, default=1024)
    a = ap.parse_args()
    fp32 = gflops(a.size, torch.float32)
    bf16 = gflops(a.size, torch.bfloat16, seconds=1.0)
    report(f"matmul peak ({a.size}x{a.size})", ["dtype", "GFLOP/s", "vs fp32"],
           [["float32", f"{fp32:.1f}", "1.00"], ["bfloat16", f"{bf16:.1f}", f"{bf16 / fp32:.3f}"]],
           notes=f"torch.cpu._is_avx512_bf16_supported() = "
                 f"{getattr(torch.cpu, '_is_avx512_bf16_supported', lambda: 'n/a')()}; "
                 "train dtype 'auto' picks bfloat16 on a CPU only where that is True (or AMX).")


if __name__ == "__main__":
    main()
