"""Tokens/s of lmkit's generation engine vs Hugging Face `transformers` `generate`, identical weights.

Builds one GPT-2 configuration (~10M parameters) in both libraries, copies lmkit's weights into
`GPT2LMHeadModel` (checking that the logits agree), then decodes greedily 256 new tokens after a
16-token prompt at batch 1 and batch 8, float32 on the CPU. Engines, run in turn (interleaved) so that
load from other jobs falls on all of them alike:
    lmkit          the engine's default (fast) path: DecodeSession(fast=True), steps under torch.inference_mode
    lmkit plain    DecodeSession(fast=False): the same steps under torch.no_grad
    transformers   GPT2LMHeadModel.generate(do_sample=False)
    lmkit int8     the default path with the block Linears on dynamic int8 kernels (lmkit.compress);
                   not the same weights, so reported apart and not in the headline
Reports tokens/s (new tokens of all rows ÷ wall time of the whole call, prefill included), ms per token
(per step), time to first token and the speed-up over transformers, all measured in this run; with
several --threads each engine gets its best of them (listed). The greedy tokens of every fp32 lmkit
path must equal those of the plain path (asserted).

    python benchmarks/generate_vs_transformers.py [--new-tokens 256] [--repeats 3] [--threads 1[,2]]
"""
from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import report  # noqa: E402

from lmkit.models.int8 import block_linears  # noqa: E402
from lmkit.models.quant import replace_linears  # noqa: E402
from lmkit.config import ModelConfig  # noqa: E402
from lmkit.engine import generate_ids  # noqa: E402
from lmkit.models import build_model  # noqa: E402
from lmkit.sampling import SamplingConfig  # noqa: E402

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


def time_lmkit(model, prompt, n_new, fast=True):
    cfg = SamplingConfig(max_new_tokens=n_new, temperature=0)
    t0 = time.perf_counter()
    steps, first = [], None
    for nxt in generate_ids(model, prompt, cfg, fast=fast):
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
    with torch.inference_mode():
        out = hf.generate(prompt, max_new_tokens=n_new, min_new_tokens=n_new, **kw)
    return time.perf_counter() - t0, first, out[:, prompt.size(1):]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3, help="best of this many runs per engine, interleaved")
    ap.add_argument("--threads", default="1", help="torch thread counts to try, comma-separated (default 1)")
    ap.add_argument("--batches", default="1,8", help="batch sizes, comma-separated (default 1,8)")
    a = ap.parse_args()
    threads = [int(t) for t in a.threads.split(",")]
    torch.manual_seed(0)
    model = build_model(ModelConfig(**SHAPE, mlp="gelu_tanh")).eval()
    hf = hf_twin(model)
    int8 = replace_linears(copy.deepcopy(model), list(block_linears(model)), 8, None)  # what lmkit quantize writes
    x = torch.randint(0, SHAPE["vocab_size"], (2, 32))
    with torch.no_grad():
        diff = (model(x)[0] - hf(x).logits).abs().max().item()
    assert diff < 1e-3, f"the two models disagree: max |Δlogit| = {diff}"
    engines = {"lmkit": lambda p: time_lmkit(model, p, a.new_tokens),
               "lmkit plain": lambda p: time_lmkit(model, p, a.new_tokens, fast=False),
               "transformers": lambda p: time_hf(hf, p, a.new_tokens),
               "lmkit int8": lambda p: time_lmkit(int8, p, a.new_tokens)}
    rows = []
    for batch in (int(b) for b in a.batches.split(",")):
        prompt = torch.randint(0, SHAPE["vocab_size"], (batch, 16))
        best = {}  # engine -> (seconds, first-token seconds, tokens, threads)
        for n in threads:
            torch.set_num_threads(n)
            for _ in range(a.repeats):
                for name, run in engines.items():
                    r = run(prompt)
                    if name not in best or r[0] < best[name][0]:
                        best[name] = (*r, n)
        ref = best["lmkit plain"][2]
        assert torch.equal(best["lmkit"][2], ref), "the fast path changed the greedy tokens"
        hf_tps = batch * a.new_tokens / best["transformers"][0]
        for name, (sec, first, toks, n) in best.items():
            tps = batch * a.new_tokens / sec
            rows.append([batch, name, n, f"{tps:,.0f}", f"{1000 * sec / a.new_tokens:.2f}", f"{1000 * first:.1f}",
                         f"{tps / hf_tps:.2f}×", f"{100 * (toks == ref).float().mean().item():.0f}%"])
            print(rows[-1], flush=True)
    import transformers
    report(f"generation engine vs transformers {transformers.__version__} generate "
           f"({model.num_params() / 1e6:.1f}M-parameter GPT-2 shape, greedy, {a.new_tokens} new tokens, fp32)",
           ["batch", "engine", "threads", "tokens/s", "ms/token", "first token ms", "vs transformers",
            "same greedy tokens as lmkit plain"], rows,
           notes=f"Identical weights (max |Δlogit| {diff:.1e}); best of {a.repeats} interleaved runs per engine "
                 f"and thread count (tried: {a.threads}); `uptime` load before the run: {load()}. No compile "
                 "warm-up: every engine here is eager (torch.compile measured no faster, see the note below). "
                 "Target: lmkit ≥ 3× transformers at batch 1 and ≥ 2× at batch 8.")


def load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


if __name__ == "__main__":
    main()
