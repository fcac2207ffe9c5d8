"""Activation checkpointing (train.activation_checkpointing): memory saved and time paid on a 12×768 GPT, block 512.

Each setting runs in a fresh process (peak RSS only grows within one), with glibc's mmap threshold fixed at
64 KiB so that freed tensors go back to the system at once and RSS follows what is allocated:

    rest          RSS after a warm-up step: weights, AdamW state, the data, Python and torch (no gradients)
    activations   RSS right after the forward pass minus rest: what backward keeps (the figure checkpointing cuts)
    step peak     the process's peak RSS over forward + backward + optimizer step (reset first through
                  /proc/self/clear_refs) minus rest: activations, gradients and the optimizer's temporaries
    step time     median of --steps timed steps of each setting, taken alternately (off, on, off, on …) in the
                  first process, so that both see the same load on a shared machine

Target (issue 21): ≥ 40% less activation memory for ≤ 35% more step time.
    flock -x /tmp/lmkit-bench.lock python benchmarks/activation_checkpointing.py
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def status(field: str) -> int:
    """A VmRSS / VmHWM line of /proc/self/status, in bytes."""
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def child(a) -> dict:
    import torch
    from lmkit.config import Config
    from lmkit.models import build_model
    from lmkit.train import resources
    from lmkit.train.optim import make_optimizer
    cfg = Config()
    m, t = cfg.model, cfg.train
    m.n_layer, m.n_head, m.n_embd, m.block_size, m.vocab_size = a.n_layer, a.n_embd // 64, a.n_embd, a.block, a.vocab
    t.batch_size, t.activation_checkpointing = a.batch, a.mode == "on"
    torch.manual_seed(0)
    model = build_model(m).train()
    resources.set_checkpointing(model, t.activation_checkpointing)
    opt = make_optimizer(model, t, "cpu")
    x = torch.randint(0, a.vocab, (a.batch, a.block))
    y = torch.randint(0, a.vocab, (a.batch, a.block))

    def step():
        _, loss = model(x, y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()  # warm-up: optimizer state allocated
    rest = status("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # the peak (VmHWM) starts again from the current RSS
    _, loss = model(x, y)
    activations = status("VmRSS") - rest
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    peak = status("VmHWM") - rest
    est = resources.memory_estimate(model, cfg, torch.float32)
    times = {"off": [], "on": []}
    for i in range(2 * a.steps if a.mode == "off" else 0):  # timing: off and on alternate, under the same load
        mode = "off" if i % 2 == 0 else "on"
        resources.set_checkpointing(model, mode == "on")
        t0 = time.perf_counter()
        step()
        times[mode].append(time.perf_counter() - t0)
    return {"rest": rest, "activations": activations, "peak": peak, "times": times, "estimate": est["activations"],
            "params": sum(p.numel() for p in model.parameters()), "threads": torch.get_num_threads()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-layer", type=int, default=12)
    ap.add_argument("--n-embd", type=int, default=768)
    ap.add_argument("--block", type=int, default=512)
    ap.add_argument("--vocab", type=int, default=4096, help="vocabulary (default 4096, lmkit's BPE default)")
    ap.add_argument("--batch", type=int, default=2, help="sequences per micro-batch (default 2)")
    ap.add_argument("--steps", type=int, default=3, help="timed steps per setting, alternating (default 3)")
    ap.add_argument("--mode", choices=["off", "on"], help=argparse.SUPPRESS)  # the child process
    a = ap.parse_args()
    if a.mode:
        print(json.dumps(child(a)))
        return
    from _common import report
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
    load_before = os.getloadavg()
    out = {}
    for mode in ("off", "on"):
        r = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--mode", mode], capture_output=True, text=True,
                           env=env, check=True)
        out[mode] = json.loads(r.stdout.strip().splitlines()[-1])
        print(mode, out[mode], flush=True)
    off, on = out["off"], out["on"]
    alternated = off["times"]
    for mode in ("off", "on"):  # the step times were taken alternately in the first process
        out[mode]["times"] = alternated[mode]
        out[mode]["step_s"] = statistics.median(out[mode]["times"])
    mib = 1024 ** 2
    rows = [[name, f"{r['activations'] / mib:,.0f}", f"{r['estimate'] / mib:,.0f}", f"{r['peak'] / mib:,.0f}",
             f"{r['rest'] / mib:,.0f}", f"{r['step_s']:.2f}"] for name, r in (("off", off), ("on", on))]
    saved = 1 - on["activations"] / off["activations"]
    slower = on["step_s"] / off["step_s"] - 1
    rows.append(["on vs off", f"{-100 * saved:+.0f}%", "", f"{100 * (on['peak'] / off['peak'] - 1):+.0f}%", "",
                 f"{100 * slower:+.0f}%"])
    load = f"load average {load_before[0]:.2f} before, {os.getloadavg()[0]:.2f} after"
    notes = (f"GPT {a.n_layer}×{a.n_embd}, block {a.block}, vocabulary {a.vocab}, {off['params'] / 1e6:.1f}M parameters, "
             f"fp32 on the CPU, micro-batch {a.batch} × {a.block} tokens, AdamW, {off['threads']} threads; step times "
             f"{[round(t, 2) for t in off['times']]} s off, {[round(t, 2) for t in on['times']]} s on; {load}. "
             f"Target ≥ 40% less activation memory for ≤ 35% more step time: "
             f"{'met' if saved >= 0.40 and slower <= 0.35 else 'not met'} ({-100 * saved:+.0f}%, {100 * slower:+.0f}%). "
             "The estimate column is lmkit's printed estimate (train/resources.py); with checkpointing it counts "
             "one block recomputed in backward, which is transient, so it sits above the forward-pass figure.")
    report("Activation checkpointing, 12×768 GPT, block 512 (issue 21)",
           ["checkpointing", "activations MiB (RSS after forward)", "estimate MiB", "step peak MiB above rest",
            "rest RSS MiB", "step s"], rows, notes)


if __name__ == "__main__":
    main()
