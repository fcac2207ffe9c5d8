"""Held-out perplexity of lmkit quantize (int8, int4 g32 / g128) beside llama.cpp's q8_0 / q4_0 of the same
weights, with file size and decode speed.

    python benchmarks/quant_perplexity.py [--corpus shakespeare|tinystories] [--run RUN] [--iters 720]
                                          [--eval-tokens 50000] [--decode-tokens 100] [--threads 1]
    python benchmarks/quant_perplexity.py --qwen-decode [--threads 1]   (decode speed at Qwen2.5-0.5B's shape)

Without --run a model is trained first with examples/shakespeare_char.toml (4 layers, 128 wide, untied head;
--iters steps): on tiny-shakespeare, char tokens (held-out text: the run's own validation split, the last
10% of input.txt), or on the TinyStories sample with a 1024-token BPE (held out: tinystories_validation_head.txt,
which training never reads). Then, on the same weights:

    fp32                     the run as trained (the reference)
    int8 per-channel         lmkit quantize RUN (--bits 8): one scale per output row; loaded, it runs fbgemm's int8
                             matmul, which also quantizes the activations per call (7 bits)
    …, weights only          the same file with QuantLinear.prepare("float") (F.linear on q·s): the weights' error alone
    int8 g32                 lmkit quantize --bits 8 --group-size 32 (the "float" kernel)
    int4 g32 / int4 g128     lmkit quantize --bits 4 --group-size N: PyTorch's CPU int4 kernel ("int4pack", bf16
                             activations and scales)
    llama.cpp q8_0 / q4_0    every Linear that lmkit quantizes, quantized and dequantized with gguf-py's reference
                             implementation of llama.cpp's q8_0 / q4_0 (blocks of 32, one fp16 scale each), then
                             run by lmkit's forward: llama.cpp's quantization, not its runtime

Perplexity = exp(mean next-token NLL) over --eval-tokens held-out tokens, in windows of block_size.
Decode: greedy tokens/s from one prompt token, batch 1 and 8, best of 3 alternated rounds (the gguf rows run
as fp32 would). A tiny model decodes at a speed set by Python and small-op overheads, so a second table times
the kernels themselves on Qwen2.5-0.5B-sized matrices: lmkit's QuantLinear kernels, fp32 and torchao's.
"""
from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import report  # noqa: E402

import lmkit  # noqa: E402
from lmkit.compress import _run_data_dir, quantize  # noqa: E402
from lmkit.data.shards import open_split  # noqa: E402
from lmkit.engine import generate_ids  # noqa: E402
from lmkit.evaluate.lm import score_tokens  # noqa: E402
from lmkit.models.quant import QuantLinear, quantizable  # noqa: E402
from lmkit.sampling import SamplingConfig  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
CORPORA = {
    "shakespeare": {"train": DATA / "tinyshakespeare" / "input.txt", "held_out": None, "set": []},
    "tinystories": {"train": DATA / "tinystories_sample" / "tiny_stories_train_first1000.txt",
                    "held_out": DATA / "tinystories_sample" / "tinystories_validation_head.txt",
                    "set": ["tokenizer=bpe", "data.vocab_size=1024"]},
}


def train(corpus: str, out: Path, iters: int) -> Path:
    c = CORPORA[corpus]
    subprocess.run([sys.executable, "-m", "lmkit", "train", "examples/shakespeare_char.toml", "--quiet", "--set",
                    f"out_dir={out}", f"data={c['train']}", f"max_iters={iters}", f"lr_decay_iters={iters}",
                    f"eval_interval={iters}", *c["set"]], cwd=ROOT, check=True)
    return out


def held_out(lm, corpus: str, n: int) -> list[int]:
    path = CORPORA[corpus]["held_out"]
    if path is None:
        return open_split(_run_data_dir(lm), "val")[: n + 1].astype("int64").tolist()
    return lm.tokenizer.encode(path.read_text(encoding="utf-8"))[: n + 1]


def perplexity(model, ids: list[int], block: int) -> float:
    s = score_tokens(model, ids, block, batch_size=16)
    return math.exp(s["nll"] / s["n"])


def decode_seconds(model, batch: int, n: int) -> float:
    t0 = time.perf_counter()
    steps = len(list(generate_ids(model, [[1]] * batch, SamplingConfig(max_new_tokens=n, temperature=0,
                                                                        stop_at_eos=False))))
    assert steps == n
    return time.perf_counter() - t0


def kernel_table(repeats: int = 5) -> None:
    """ms for the 8 MLP matrices (4864×896) of Qwen2.5-0.5B's shape, random weights: why QuantLinear picks
    the kernels it does."""
    import copy
    import warnings
    import torch.nn as nn
    from lmkit.models.quant import quantize_linears
    torch.manual_seed(0)
    ref = nn.Sequential(*[nn.Linear(896, 4864, bias=False) for _ in range(8)]).eval()
    def ours(bits, group, kernel=None):
        m = nn.Sequential(*[QuantLinear.from_linear(lin, bits, group) for lin in ref])
        for q in m:
            q.prepare(kernel)
        return m
    def torchao(bits, group):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return quantize_linears(copy.deepcopy(ref), bits, group)
    engines = {"fp32 F.linear": ref, "lmkit int8 per-channel (fbgemm)": ours(8, None),
               "lmkit int8 per-channel (float)": ours(8, None, "float"), "lmkit int4 g32 (int4pack)": ours(4, 32),
               "lmkit int4 g32 (float)": ours(4, 32, "float"),
               "torchao int8 weight-only": torchao(8, None), "torchao int4 g32 weight-only": torchao(4, 32)}
    rows = []
    with torch.inference_mode():
        best = {(k, b): math.inf for k in engines for b in (1, 8)}
        for b in (1, 8):
            x = torch.randn(b, 896)
            for m in engines.values():
                [lin(x) for lin in m]
            for _ in range(repeats):
                for k, m in engines.items():
                    t0 = time.perf_counter()
                    [lin(x) for lin in m]
                    best[k, b] = min(best[k, b], time.perf_counter() - t0)
    for k in engines:
        rows.append([k, f"{best[k, 1] * 1e3:.1f}", f"{best[k, 8] * 1e3:.1f}"])
    report("int8 / int4 kernels at Qwen2.5-0.5B's MLP shape (8 matrices 4864×896), ms per pass",
           ["kernel", "batch 1 ms", "batch 8 ms"], rows,
           notes=f"torch threads {torch.get_num_threads()}; best of {repeats} alternated passes. fbgemm also "
                 "quantizes the activations per call; the float kernel is F.linear on the restored weights.")


def qwen_decode(new_tokens: int = 16, repeats: int = 2) -> None:
    """Decode tokens/s of a Qwen2.5-0.5B-shaped model (random weights, tied head) through the commands a user
    runs: import-hf, quantize --bits 8, quantize --bits 4; the kernels at a real model's size."""
    import transformers
    from import_memory import QWEN25_05B
    with tempfile.TemporaryDirectory(prefix="quant-qwen-") as tmp:
        tmp = Path(tmp)
        torch.manual_seed(0)
        hf = transformers.AutoModelForCausalLM.from_config(transformers.Qwen2Config(**QWEN25_05B),
                                                           dtype=torch.float32).eval()
        hf.save_pretrained(tmp / "hf")
        del hf
        tok = lmkit.Tokenizer.train(["the quick brown fox jumps over the lazy dog"] * 50, kind="bpe", vocab_size=300)
        tok.save(tmp / "hf" / "tokenizer.json")
        subprocess.run([sys.executable, "-m", "lmkit", "import-hf", str(tmp / "hf"), "--out", str(tmp / "run")],
                       check=True, stdout=subprocess.DEVNULL)
        models = {"fp32": lmkit.load(tmp / "run").model}
        for bits in (8, 4):
            quantize(tmp / "run", tmp / f"int{bits}", bits)
            models[f"int{bits} " + ("per-channel (fbgemm)" if bits == 8 else "g32 (int4pack)")] = \
                lmkit.load(tmp / f"int{bits}").model
        best = {(k, b): math.inf for k in models for b in (1, 8)}
        with torch.inference_mode():
            for b in (1, 8):
                for _ in range(repeats):
                    for k, m in models.items():
                        best[k, b] = min(best[k, b], decode_seconds(m, b, new_tokens))
    report("decode tokens/s, imported Qwen2.5-0.5B-shaped model (random weights): lmkit fp32 / int8 / int4",
           ["weights", "tokens/s b1", "tokens/s b8"],
           [[k, f"{new_tokens / best[k, 1]:.2f}", f"{8 * new_tokens / best[k, 8]:.2f}"] for k in models],
           notes=f"{new_tokens} greedy tokens from one prompt token, best of {repeats} alternated runs, torch threads "
                 f"{torch.get_num_threads()}. Block Linears and the head quantized (the tied head, 151,936 × 896, as a copy "
                 "beside the float embedding).")


def float_kernel(lm):
    """The loaded quantized model with every QuantLinear on the "float" kernel (weights q·s, float matmul)."""
    for m in lm.model.modules():
        if isinstance(m, QuantLinear):
            m.prepare("float")
    return lm


def gguf_roundtrip(lm, qtype):
    """The fp32 model with each quantizable Linear's weight replaced by gguf's quantize -> dequantize."""
    import gguf
    with torch.no_grad():
        for lin in quantizable(lm.model).values():
            w = lin.weight.detach().float().numpy()
            lin.weight.copy_(torch.from_numpy(gguf.quants.dequantize(gguf.quants.quantize(w, qtype), qtype)))
    return lm


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", choices=list(CORPORA), default="shakespeare")
    ap.add_argument("--run", default=None, help="a trained run (default: train one)")
    ap.add_argument("--iters", type=int, default=720)
    ap.add_argument("--eval-tokens", type=int, default=50_000)
    ap.add_argument("--decode-tokens", type=int, default=100)
    ap.add_argument("--no-kernels", action="store_true", help="skip the table of matrix kernels")
    ap.add_argument("--qwen-decode", action="store_true",
                    help="only time decoding of a Qwen2.5-0.5B-shaped model in fp32 / int8 / int4 (a few minutes)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads for the timings (default 1: steadier on a shared 2-core machine)")
    a = ap.parse_args()
    if a.qwen_decode:
        torch.set_num_threads(a.threads)
        return qwen_decode()
    import gguf
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    tmp = Path(tempfile.mkdtemp(prefix="lmkit-quant-ppl-"))
    t0 = time.perf_counter()
    run = Path(a.run) if a.run else train(a.corpus, tmp / "run", a.iters)
    t_train = time.perf_counter() - t0
    base = lmkit.load(run)
    block = base.config.model.block_size
    ids = held_out(base, a.corpus, a.eval_tokens)
    n_linear = len(quantizable(base.model))
    fp32_size = (run / "model.safetensors").stat().st_size

    variants = [("fp32", lambda: lmkit.load(run), fp32_size, 32, True)]
    for bits, group in ((8, None), (8, 32), (4, 32), (4, 128)):
        out = tmp / f"int{bits}-{group}"
        r = quantize(run, out, bits, group)
        size = r["bytes_after"]
        name = f"int{bits} " + (f"g{group}" if group else "per-channel")
        variants.append((name, (lambda out=out: lmkit.load(out)), size, None, True))
        if group is None or bits == 4:  # what the kernel's own rounding (fbgemm's, bf16's) adds
            variants.append((name + ", weights only", (lambda out=out: float_kernel(lmkit.load(out))), size, None, True))
    variants += [("llama.cpp q8_0 (gguf-py)", lambda: gguf_roundtrip(lmkit.load(run), gguf.GGMLQuantizationType.Q8_0),
                  None, 8.5, False),
                 ("llama.cpp q4_0 (gguf-py)", lambda: gguf_roundtrip(lmkit.load(run), gguf.GGMLQuantizationType.Q4_0),
                  None, 4.5, False)]
    torch.set_num_threads(a.threads)
    rows, ppl0, timed_models = [], None, {}
    for name, make, size, bpw, timed in variants:
        lm = make()
        if timed:
            timed_models[name] = lm.model
        quant = [m for m in lm.model.modules() if isinstance(m, QuantLinear)]
        kernels = sorted({m.kernel for m in quant})
        if bpw is None:  # the stored values and their fp32 scales, per weight
            bpw = sum(m.bits * m.in_features * m.out_features + 32 * m.weight_scale.numel() for m in quant) / \
                sum(m.in_features * m.out_features for m in quant)
        with torch.inference_mode():
            ppl = perplexity(lm.model, ids, block)
        ppl0 = ppl0 or ppl
        rows.append([name, f"{bpw:.2f}", f"{size / 1e6:.3f}" if size else "–", f"{ppl:.4f}",
                     f"{100 * (ppl / ppl0 - 1):+.2f}%", "–", "–", ", ".join(kernels) or "fp32"])
        print(" | ".join(rows[-1]), flush=True)
    best = {(k, b): math.inf for k in timed_models for b in (1, 8)}
    with torch.inference_mode():  # decode: alternated rounds, the best of 3 per variant and batch
        for model in timed_models.values():
            decode_seconds(model, 8, 5)  # warm-up
        for _ in range(3):
            for k, model in timed_models.items():
                for b in (1, 8):
                    best[k, b] = min(best[k, b], decode_seconds(model, b, a.decode_tokens))
    for row in rows:
        if row[0] in timed_models:
            row[5], row[6] = (f"{a.decode_tokens * b / best[row[0], b]:.0f}" for b in (1, 8))
    n = len(ids) - 1
    what = ("tiny-shakespeare, char tokens; held out: the run's validation split" if a.corpus == "shakespeare" else
            "TinyStories sample, 1024-token BPE; held out: tinystories_validation_head.txt")
    report(f"quantized perplexity: fp32 / int8 / int4 / llama.cpp q8_0, q4_0 ({a.corpus})",
           ["weights", "bits per weight (quantized Linears)", "model.safetensors MB", "held-out perplexity", "vs fp32",
            "decode tok/s b1", "decode tok/s b8", "kernel"], rows,
           notes=f"{what}; {n:,} tokens in windows of {block}. Model: examples/shakespeare_char.toml "
                 f"({base.model.config.n_layer} layers, {base.model.config.n_embd} wide, untied head; "
                 + (f"{a.run}" if a.run else f"{a.iters} steps, trained in {t_train:.0f} s") + f"), {n_linear} Linears "
                 "quantized (block Linears and the head; embeddings stay fp32). llama.cpp q8_0 / q4_0 = llama.cpp's "
                 "quantization of those same matrices computed by gguf-py's reference implementation "
                 "(gguf.quants quantize -> dequantize), evaluated with lmkit's forward: not llama.cpp's runtime "
                 "(whose q8_0 / q4_0 matmuls also quantize the activations to 8 bits), and not timed. "
                 "int8 per-channel as loaded runs fbgemm's int8 kernel, which quantizes activations per call; "
                 "\"weights only\" is the same file on the float kernel. Bits per weight count the scales "
                 f"(fp32 in lmkit, fp16 in q8_0 / q4_0). Decode with {a.threads} torch thread(s); at this size it "
                 f"is bound by per-token overheads, not the matrices. Load average before: {load}.")
    if not a.no_kernels:
        kernel_table()


if __name__ == "__main__":
    main()
