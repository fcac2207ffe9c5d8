"""Training throughput, same GPT-2-style model and batch: lmkit vs a plain loop over transformers'
GPT2LMHeadModel with torch.optim.AdamW, in fp32 and, where the CPU computes bf16 natively (AVX-512 BF16
/ AMX), under bf16 autocast (lmkit's best settings: fp32 master weights and optimizer state, fp32
softmax and loss, attention kernel chosen by shape). Model FLOPs utilisation is against the matmul
peak of the same precision, measured in this run.

    python benchmarks/train_throughput.py [--steps 8] [--rounds 3] [--compile] [--no-bf16] [--explicit-max-t N]

Contenders are interleaved (round-robin, --rounds times --steps timed steps each, after warm-up) and
the median step time is reported, so background load hits all of them alike.
MFU = (6·N + 12·L·d·T) · tokens/s / peak   (N = parameters without position embeddings; PaLM / nanoGPT).
"""
from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import report  # noqa: E402
from matmul_peak import gflops  # noqa: E402

from lmkit.models import attention  # noqa: E402
from lmkit.train.trainer import resolve_dtype  # noqa: E402

SIZES = {"4x128 (T 64, batch 12)": (4, 4, 128, 64, 12), "6x384 (T 256, batch 16)": (6, 6, 384, 256, 16)}
VOCAB = 65  # tiny-shakespeare characters


def autocast(bf16: bool):
    return torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


def lmkit_step_fn(n_layer, n_head, n_embd, T, compile_=False, bf16=False):
    from lmkit.config import Config
    from lmkit.models import build_model
    from lmkit.train.optim import make_optimizer
    cfg = Config()
    m = cfg.model
    m.vocab_size, m.n_layer, m.n_head, m.n_embd, m.block_size = VOCAB, n_layer, n_head, n_embd, T
    model = build_model(m)
    opt = make_optimizer(model, cfg.train, "cpu")
    fwd = torch.compile(model) if compile_ else model

    def step(x, y):
        with autocast(bf16):
            _, loss = fwd(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step, model.num_params()


def hf_step_fn(n_layer, n_head, n_embd, T, bf16=False):
    from transformers import GPT2Config, GPT2LMHeadModel
    hc = GPT2Config(vocab_size=VOCAB, n_positions=T, n_embd=n_embd, n_layer=n_layer, n_head=n_head,
                    resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, activation_function="gelu",
                    attn_implementation="sdpa", bos_token_id=0, eos_token_id=0)
    model = GPT2LMHeadModel(hc).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.99), weight_decay=0.1)

    def step(x, y):
        with autocast(bf16):
            loss = model(input_ids=x, labels=x).loss  # HF shifts the labels itself
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def time_steps(step, x, y, n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        step(x, y)
    return (time.perf_counter() - t0) / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=8, help="timed steps per round (default 8)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--compile", action="store_true", help="also time lmkit under torch.compile (about a minute of compiling per row)")
    ap.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    ap.add_argument("--no-bf16", action="store_true", help="skip the bf16 rows even where the CPU has native bf16")
    ap.add_argument("--explicit-max-t", type=int, default=attention.EXPLICIT_MAX_T,
                    help="bf16 on a CPU: lmkit's explicit attention up to this length, flash beyond "
                         f"(default lmkit's {attention.EXPLICIT_MAX_T}; one value per run: torch.compile guards on it)")
    a = ap.parse_args()
    attention.EXPLICIT_MAX_T = a.explicit_max_t
    torch.manual_seed(0)
    peak = gflops(1024, torch.float32, seconds=2.0)
    peak_bf16 = gflops(1024, torch.bfloat16, seconds=2.0)
    # bf16 rows where the trainer's dtype "auto" would pick bf16 (AVX-512 BF16 / AMX); AVX2 emulates it ~100x slower
    bf16 = resolve_dtype("auto", torch.device("cpu")) == "bfloat16" and not a.no_bf16
    rows = []
    for size in a.sizes:
        L, H, d, T, B = SIZES[size]
        x = torch.randint(0, VOCAB, (B, T))
        y = torch.roll(x, -1, dims=1)
        HF = "transformers GPT2LMHeadModel + AdamW, fp32"
        contenders = {HF: hf_step_fn(L, H, d, T)}
        lm_step, n_params = lmkit_step_fn(L, H, d, T)
        contenders["lmkit (fused AdamW), fp32"] = lm_step
        if a.compile:
            contenders["lmkit + torch.compile, fp32"] = lmkit_step_fn(L, H, d, T, compile_=True)[0]
        if bf16:
            contenders["transformers + AdamW, bf16 autocast"] = hf_step_fn(L, H, d, T, bf16=True)
            contenders["lmkit, bf16 autocast"] = lmkit_step_fn(L, H, d, T, bf16=True)[0]
            if a.compile:
                contenders["lmkit, bf16 autocast + torch.compile"] = lmkit_step_fn(L, H, d, T, compile_=True, bf16=True)[0]
        for step in contenders.values():  # warm-up (and compile)
            time_steps(step, x, y, 2)
        times = {k: [] for k in contenders}
        for _ in range(a.rounds):
            for name, step in contenders.items():
                times[name].append(time_steps(step, x, y, a.steps))
        flops_per_token = 6 * n_params + 12 * L * d * T
        hf_s = statistics.median(times[HF])
        for name, ts in times.items():
            s = statistics.median(ts)
            tps = B * T / s
            achieved = flops_per_token * tps / 1e9
            mfu = achieved / (peak_bf16 if "bf16" in name else peak)
            rows.append([size, name, f"{1000 * s:.1f}", f"{tps:,.0f}", f"{hf_s / s:.2f}",
                         f"{achieved:.1f}", f"{mfu:.0%}"])
        print(rows[-len(times):], flush=True)
    report("train throughput: lmkit vs transformers GPT2LMHeadModel (same model and batch)",
           ["config", "trainer", "ms/step (median)", "tokens/s", "speed vs transformers fp32", "model GFLOP/s",
            "MFU vs peak of its precision"], rows,
           notes=f"Measured in the same run: matmul peak (1024×1024) fp32 {peak:.1f} GFLOP/s, bf16 "
                 f"{peak_bf16:.1f} GFLOP/s ({peak_bf16 / peak:.2f}× fp32"
                 + ("" if bf16 else "; bf16 rows skipped: no native bf16 here, lmkit trains in fp32") + "). "
                 f"torch threads {torch.get_num_threads()}; {a.rounds} interleaved rounds of {a.steps} steps; "
                 f"bf16 explicit attention up to T {a.explicit_max_t}.")


if __name__ == "__main__":
    main()
