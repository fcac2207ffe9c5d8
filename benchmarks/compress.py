"""Compression of a trained run: int8 quantization and magnitude pruning, measured in one run.

    python benchmarks/compress.py RUN_DIR [--eval-tokens 20000] [--finetune-iters 200]

Reports model file size, val loss (the run's own held-out split) and greedy generation speed
(tokens/s, batch 1) for fp32, int8, 50% unstructured pruning (+ recovery) and 50% structured pruning.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import report  # noqa: E402

import lmkit  # noqa: E402
from lmkit.compress import _run_data_dir, prune_run, quantize, val_loss  # noqa: E402
from lmkit.engine import generate_ids  # noqa: E402
from lmkit.sampling import SamplingConfig  # noqa: E402


def speed(lm, n: int = 200) -> float:
    idx = torch.tensor([lm.encode_prompt("")])
    cfg = SamplingConfig(max_new_tokens=n, temperature=0, stop_at_eos=False)
    list(generate_ids(lm.model, idx, SamplingConfig(max_new_tokens=10, temperature=0)))  # warm-up
    t0 = time.perf_counter()
    steps = len(list(generate_ids(lm.model, idx, cfg)))
    return steps / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("run_dir")
    ap.add_argument("--eval-tokens", type=int, default=20_000)
    ap.add_argument("--finetune-iters", type=int, default=200)
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="lmkit-compress-"))
    base = lmkit.load(a.run_dir)
    data = _run_data_dir(base)
    block = base.config.model.block_size
    rows = []

    def row(name, lm, path, extra=""):
        loss = val_loss(lm.model, data, block, a.eval_tokens)
        size = (Path(path) / "model.safetensors").stat().st_size / 1e6
        rows.append([name, f"{size:.2f}", f"{loss:.4f}", f"{speed(lm):.0f}", extra])

    row("fp32 (original)", base, a.run_dir)
    quantize(a.run_dir, tmp / "int8")
    row("int8 per-channel", lmkit.load(tmp / "int8"), tmp / "int8")
    r = prune_run(a.run_dir, tmp / "p50", 0.5, finetune_iters=0, progress=False)
    row("50% unstructured", lmkit.load(tmp / "p50"), tmp / "p50", f"sparsity {r['weight_sparsity']:.2f}")
    r = prune_run(a.run_dir, tmp / "p50r", 0.5, finetune_iters=a.finetune_iters, progress=False)
    row(f"50% unstructured + {a.finetune_iters} recovery steps", lmkit.load(tmp / "p50r"), tmp / "p50r")
    r = prune_run(a.run_dir, tmp / "s50", 0.5, structured=True, progress=False)
    row("50% structured (MLP units)", lmkit.load(tmp / "s50"), tmp / "s50",
        f"params {r['params_before']:,} → {r['params_after']:,}")
    report(f"compression of {a.run_dir}", ["model", "file MB", f"val loss ({a.eval_tokens:,} tokens)",
                                           "greedy tokens/s (batch 1)", "note"], rows)
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
