"""Where a batch-1 decode step of the 373M Llama-style model goes, and how far it is from the memory floor.

    python benchmarks/decode_breakdown.py --dir DIR [--variants fp32,int8,int4-g32] [--threads 2]
                                          [--prompt 512] [--steps 12]

DIR is the folder benchmarks/decode_vs_llamacpp.py builds (its `run`, `int8` and `int4-g32` runs). The profiler
distorts small ops (it made each RMSNorm look four times slower than it is), so the parts are measured by
taking them out: the decode step is timed whole, then with the RMSNorms, the attention call (`attend`, the
GQA view and SDPA over the cache) and the rotary embedding each replaced by the identity; a part costs the
difference. The Linear layers (block projections and the head) are timed alone, each called in model order
on one row, and their weight bytes ÷ that time is the rate the kernel streams them at. What is left (residual
adds, SiLU, views, cache writes, sampling, the Python between ops) is the rest. The floor is the weight bytes
÷ the machine's read bandwidth (a sum over 1 GiB). Outputs are meaningless with parts removed; only times count.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).parent))
from _common import report  # noqa: E402
from decode_compile import parser, variant_runs  # noqa: E402
from decode_vs_llamacpp import read_bandwidth  # noqa: E402


def step_ms(model, prompt: list[int], steps: int, rounds: int = 3) -> float:
    """Best-of-`rounds` ms per greedy decode step after the prompt and 4 warm-up steps."""
    from lmkit.engine import DecodeSession
    from lmkit.sampling import SamplingConfig
    s = DecodeSession(model, [prompt], SamplingConfig(max_new_tokens=4 + steps * rounds + 1, temperature=0))
    for _ in range(5):
        s.step()
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(steps):
            s.step()
        best = min(best, (time.perf_counter() - t0) / steps)
    return best * 1e3


def linears(model) -> list[nn.Module]:
    from lmkit.models.quant import QuantLinear
    return [m for m in model.modules() if isinstance(m, (nn.Linear, QuantLinear))]


def weight_bytes(layer: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for n, t in layer.state_dict().items() if n != "bias")


def linears_ms(model, reps: int = 5) -> float:
    """ms for one pass over every Linear on one row (B=1, T=1), in model order: what the kernels cost alone."""
    layers = linears(model)
    xs = [torch.randn(1, 1, layer.in_features) for layer in layers]
    best = float("inf")
    with torch.inference_mode():
        for r in range(reps + 1):
            t0 = time.perf_counter()
            for layer, x in zip(layers, xs):
                layer(x)
            if r:
                best = min(best, time.perf_counter() - t0)
    return best * 1e3


def without(part: str):
    """Replace one part of the forward by the identity; returns the undo."""
    import lmkit.models.gpt as gpt
    if part == "norms":
        old = nn.RMSNorm.forward
        nn.RMSNorm.forward = lambda self, x: x
        return lambda: setattr(nn.RMSNorm, "forward", old)
    name, stub = {"attention": ("attend", lambda q, k, v, **kw: q), "rope": ("apply_rope", lambda x, cos, sin: x)}[part]
    old = getattr(gpt, name)
    setattr(gpt, name, stub)
    return lambda: setattr(gpt, name, old)


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--steps", type=int, default=12)
    a = ap.parse_args()
    import lmkit
    torch.set_num_threads(a.threads)
    folder = Path(a.dir)
    bandwidth = read_bandwidth(a.threads)
    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    rows = []
    for variant, path in variant_runs(folder, a.variants):
        model = lmkit.load(path).model
        prompt = torch.randint(1, model.config.vocab_size, (a.prompt,), generator=torch.Generator().manual_seed(0)).tolist()
        full = step_ms(model, prompt, a.steps)
        parts = {}
        for part in ("norms", "attention", "rope"):
            undo = without(part)
            try:
                parts[part] = full - step_ms(model, prompt, a.steps)
            finally:
                undo()
        full = min(full, step_ms(model, prompt, a.steps))  # whole again, last: the better of the two
        lin = linears_ms(model)
        nbytes = sum(weight_bytes(layer) for layer in linears(model))
        floor = nbytes / bandwidth / 1e6
        rest = full - lin - sum(parts.values())
        share = lambda ms: f"{ms:.1f} ({ms / full:.0%})"  # noqa: E731
        rows.append([variant, f"{full:.1f}", f"{1e3 / full:.1f}", f"{lin:.1f} ({lin / full:.0%}, {nbytes / lin / 1e6:.1f} GB/s)",
                     share(parts["attention"]), share(parts["norms"]), share(parts["rope"]), share(rest),
                     f"{floor:.1f}", f"{full / floor:.2f}×"])
        del model
    load_after = " ".join(f"{x:.2f}" for x in os.getloadavg())
    notes = (f"Batch 1 after a {a.prompt}-token random prompt, best of 3 rounds of {a.steps} greedy steps, torch threads "
             f"{a.threads}, models from {folder} (benchmarks/decode_vs_llamacpp.py). Read bandwidth {bandwidth:.1f} GB/s. "
             f"Parts measured by removal (see the script's docstring); Linears = every block projection and the head "
             f"called alone on one row, with the rate their weight bytes stream at. torch {torch.__version__}. "
             f"Load average before/after: {load_before} / {load_after}.")
    report("Where a batch-1 decode step goes (373M Llama-style, CPU), ms per step",
           ["weights", "step ms", "tok/s", "Linears", "attention", "norms", "rope", "rest", "floor ms", "step / floor"],
           rows, notes)
    print(notes)


if __name__ == "__main__":
    main()
