"""Tokens/s of lmkit's generation engine vs Hugging Face `transformers` `generate`, identical weights.

Builds one GPT-2 configuration (~10M parameters) in both libraries, copies lmkit's weights into
`GPT2LMHeadModel` (checking that the logits agree), then decodes greedily 256 new tokens after a
16-token prompt at batch 1 and batch 8, float32 on the CPU. Reports tokens/s (new tokens of all rows
÷ wall time), time to first token, and the speed-up, all measured in this run.

    python benchmarks/generate_vs_transformers.py [--new-tokens 256] [--repeats 2] [--threads N]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import report  # noqa: E402

from lmkit.config import ModelConfig  # noqa: E402
from lmkit.generate import SamplingConfig, generate_ids  # noqa: E402
from lmkit.models import build_model  # noqa: E402

SHAPE = dict(vocab_size=8192, block_size=512, n_layer=10, n_head=8, n_embd=256)


def hf_twin(model):
    """The same network as a transformers GPT2LMHeadModel (its Conv1D weights are stored transposed)."""
    from transformers import GPT2Config, GPT2LMHeadModel
    c = model.config
    hf = GPT2LMHeadModel(GPT2Config(vocab_size=c.vocab_size, n_positions=c.block_size, n_embd=c.n_embd,
                                    n_layer=c.n_layer, n_head=c.n_head, activation_function="gelu_new",
                                    layer_norm_epsilon=c.norm_eps, resid_pdrop=0, embd_pdrop=0, attn_pdrop=0))
    src = model.state_dict()
    out = {"transformer.wte.weight": src["wte.weight"], "transformer.wpe.weight": src["wpe.weight"],
           "transformer.ln_f.weight": src["ln_f.weight"], "transformer.ln_f.bias": src["ln_f.bias"]}
    names = {"ln_1": "ln_1", "ln_2": "ln_2", "attn.qkv": "attn.c_attn", "attn.proj": "attn.c_proj",
             "mlp.fc": "mlp.c_fc", "mlp.proj": "mlp.c_proj"}
    for i in range(c.n_layer):
        for ours, theirs in names.items():
            w = src[f"h.{i}.{ours}.weight"]
            out[f"transformer.h.{i}.{theirs}.weight"] = w if ours.startswith("ln") else w.t().contiguous()
            out[f"transformer.h.{i}.{theirs}.bias"] = src[f"h.{i}.{ours}.bias"]
    missing, unexpected = hf.load_state_dict(out, strict=False)
    assert not unexpected and all("lm_head" in k or "attn.bias" in k or "masked_bias" in k for k in missing), missing
    hf.tie_weights()
    return hf.eval()


def time_lmkit(model, prompt, n_new):
    cfg = SamplingConfig(max_new_tokens=n_new, temperature=0)
    t0 = time.perf_counter()
    steps, first = [], None
    for nxt in generate_ids(model, prompt, cfg):
        if first is None:
            first = time.perf_counter() - t0
        steps.append(nxt)
    return time.perf_counter() - t0, first, torch.stack(steps, 1)


def time_hf(hf, prompt, n_new):
    kw = dict(do_sample=False, pad_token_id=0, eos_token_id=None, attention_mask=torch.ones_like(prompt))
    t0 = time.perf_counter()
    hf.generate(prompt, max_new_tokens=1, min_new_tokens=1, **kw)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    out = hf.generate(prompt, max_new_tokens=n_new, min_new_tokens=n_new, **kw)
    return time.perf_counter() - t0, first, out[:, prompt.size(1):]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=2, help="best of this many runs per setting")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (default 0 = torch's choice)")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model = build_model(ModelConfig(**SHAPE, mlp="gelu_tanh")).eval()
    hf = hf_twin(model)
    x = torch.randint(0, SHAPE["vocab_size"], (2, 32))
    with torch.no_grad():
        diff = (model(x)[0] - hf(x).logits).abs().max().item()
    assert diff < 1e-3, f"the two models disagree: max |Δlogit| = {diff}"
    rows = []
    for batch in (1, 8):
        prompt = torch.randint(0, SHAPE["vocab_size"], (batch, 16))
        ours = min((time_lmkit(model, prompt, a.new_tokens) for _ in range(a.repeats)), key=lambda r: r[0])
        theirs = min((time_hf(hf, prompt, a.new_tokens) for _ in range(a.repeats)), key=lambda r: r[0])
        same = (ours[2] == theirs[2]).float().mean().item()
        tps_ours, tps_theirs = batch * a.new_tokens / ours[0], batch * a.new_tokens / theirs[0]
        rows.append([batch, f"{tps_ours:,.0f}", f"{tps_theirs:,.0f}", f"{tps_ours / tps_theirs:.2f}×",
                     f"{1000 * ours[1]:.1f}", f"{1000 * theirs[1]:.1f}", f"{100 * same:.0f}%"])
        print(rows[-1], flush=True)
    import transformers
    report(f"generation engine vs transformers {transformers.__version__} generate "
           f"({model.num_params() / 1e6:.1f}M-parameter GPT-2 shape, greedy, {a.new_tokens} new tokens, fp32, "
           f"{torch.get_num_threads()} threads)",
           ["batch", "lmkit tokens/s", "transformers tokens/s", "speed-up", "lmkit first token ms",
            "transformers first token ms", "same greedy tokens"], rows,
           notes=f"Identical weights (max |Δlogit| {diff:.1e}); best of {a.repeats} runs each; target ≥ 3× at "
                 "batch 1 and ≥ 2× at batch 8.")


if __name__ == "__main__":
    main()
