"""Batch-1 decode and 512-token prompt processing: lmkit against llama.cpp on the same weights, beside the
memory-bandwidth floor and transformers' fp32 generate.

    python benchmarks/decode_vs_llamacpp.py [--layers 24] [--new-tokens 32] [--prompt 512] [--threads 1,2]
                                            [--repeats 2] [--skip-transformers]
                                            [--no-extra-bufts] [--dir DIR]

The model is Llama-style with Qwen2.5-0.5B's block shape (hidden 896, 14 heads, 2 key/value heads, SwiGLU
4864, 24 layers: 358M block parameters) and a byte-level BPE vocabulary of 8,192 trained on tiny-shakespeare
(untied head); random weights, built by transformers (`save_pretrained`), then taken through the commands a
user runs:

    lmkit import-hf HF --out RUN
    lmkit quantize RUN --bits 8 --out Q8          lmkit quantize RUN --bits 4 --group-size 32 --out Q4
    lmkit export-gguf RUN --type f16|q8_0|q4_0 --out F.gguf

lmkit also runs the fp32 run cast to bfloat16 (fast where the CPU has AVX-512 BF16 / AMX).
llama.cpp runs through llama-cpp-python built from its PyPI source on this machine (--no-extra-bufts: without
its AMX / repacked weight buffers, for builds whose AMX path crashes). Every engine runs at
each thread count of --threads, alternated lmkit / llama.cpp configuration by configuration; the best
of --repeats is kept and the table shows each engine at its best thread count.

    pp tok/s     a 512-token prompt in one forward (llama.cpp: n_batch 512), tokens / seconds
    decode tok/s --new-tokens greedy tokens after that prompt, one forward each, tokens / seconds
    floor tok/s  measured read bandwidth / bytes of weights read per token (block matrices + head; the
                 embedding row is negligible); 'of floor' = decode / floor
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import report  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"
SHAPE = dict(hidden_size=896, intermediate_size=4864, num_attention_heads=14, num_key_value_heads=2,
             max_position_embeddings=2048, rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=False)
BYTES_PER_WEIGHT = {"fp32": 4.0, "f16": 2.0, "q8_0": 34 / 32, "q4_0": 18 / 32}


def lmkit_cli(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "lmkit", *args], check=True, stdout=subprocess.DEVNULL)


def read_bandwidth(threads: int, gib: float = 1.0, reps: int = 5) -> float:
    """GB/s of summing a buffer far larger than the caches, best of reps."""
    torch.set_num_threads(threads)
    x = torch.ones(int(gib * 2**30 / 4))
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        x.sum()
        best = min(best, time.perf_counter() - t0)
    return x.numel() * 4 / best / 1e9


def time_lmkit(model, prompt: list[int], n_new: int) -> tuple[float, float, list[int]]:
    """(prompt tokens/s, decode tokens/s, greedy tokens) with the generation engine, batch 1."""
    from lmkit.engine import DecodeSession
    from lmkit.sampling import SamplingConfig
    s = DecodeSession(model, [prompt], SamplingConfig(max_new_tokens=n_new, temperature=0))
    t0 = time.perf_counter()
    out = [int(s.step().tokens[0])]
    t1 = time.perf_counter()
    for _ in range(n_new - 1):
        out.append(int(s.step().tokens[0]))
    t2 = time.perf_counter()
    return len(prompt) / (t1 - t0), (n_new - 1) / (t2 - t1), out


def time_llamacpp(llm, prompt: list[int], n_new: int) -> tuple[float, float, list[int]]:
    import numpy as np

    def greedy() -> int:  # the logits of the last position evaluated (the only one kept without logits_all)
        return int(np.argmax(np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(llm.n_vocab(),))))
    llm.reset()
    t0 = time.perf_counter()
    llm.eval(prompt)
    out = [greedy()]
    t1 = time.perf_counter()
    for _ in range(n_new - 1):
        llm.eval([out[-1]])
        out.append(greedy())
    t2 = time.perf_counter()
    return len(prompt) / (t1 - t0), (n_new - 1) / (t2 - t1), out


def time_transformers(model, prompt: list[int], n_new: int) -> tuple[float, float, list[int]]:
    """generate() of 1 and of n_new tokens, each timed twice (the faster kept): decode = the difference."""
    ids = torch.tensor([prompt])
    kw = dict(do_sample=False, pad_token_id=0, eos_token_id=None, attention_mask=torch.ones_like(ids))

    def timed(n: int):
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(ids, max_new_tokens=n, min_new_tokens=n, **kw)
        return time.perf_counter() - t0, out
    one = min(timed(1)[0] for _ in range(2))
    (full, out), (again, _) = timed(n_new), timed(n_new)
    return len(prompt) / one, (n_new - 1) / (min(full, again) - one), out[0, len(prompt):].tolist()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=24)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--prompt", type=int, default=512)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--skip-transformers", action="store_true")
    ap.add_argument("--no-extra-bufts", action="store_true",
                    help="load llama.cpp without its extra buffer types (AMX, repacked weights): for builds whose AMX path crashes")
    ap.add_argument("--dir", default=None, help="work folder (default: a temporary one); models are reused")
    a = ap.parse_args()
    try:
        from llama_cpp import Llama
        import llama_cpp
    except ImportError:
        sys.exit("llama_cpp is not importable: pip install llama-cpp-python (builds llama.cpp from source)")
    import transformers
    import lmkit
    threads = [int(t) for t in a.threads.split(",")]
    tmp = Path(a.dir or tempfile.mkdtemp(prefix="lmkit-vs-llamacpp-"))
    hf_dir, run = tmp / "hf", tmp / "run"
    if not (hf_dir / "config.json").exists():
        tok = lmkit.Tokenizer.train(DATA.read_text(encoding="utf-8").split("\n"), kind="bpe", vocab_size=8192)
        torch.manual_seed(0)
        cfg = transformers.LlamaConfig(vocab_size=tok.vocab_size, num_hidden_layers=a.layers, **SHAPE)
        transformers.LlamaForCausalLM(cfg).save_pretrained(hf_dir)
        tok.save(hf_dir / "tokenizer.json")
    if not run.exists():
        lmkit_cli("import-hf", str(hf_dir), "--out", str(run))
    lm_variants = {"fp32": run}
    for name, args in (("int8", ["--bits", "8"]), ("int4 g32", ["--bits", "4", "--group-size", "32"])):
        lm_variants[name] = tmp / name.replace(" ", "-")
        if not lm_variants[name].exists():
            lmkit_cli("quantize", str(run), *args, "--out", str(lm_variants[name]))
    ggufs = {}
    for kind in ("f16", "q8_0", "q4_0"):
        ggufs[kind] = tmp / f"model-{kind}.gguf"
        if not ggufs[kind].exists():
            lmkit_cli("export-gguf", str(run), "--type", kind, "--out", str(ggufs[kind]))

    base = lmkit.load(run)
    V, P = base.config.model.vocab_size, base.model.num_params()
    block = sum(p.numel() for n, p in base.model.named_parameters() if ".h." in f".{n}" or n.startswith("h."))
    head = base.model.lm_head.weight.numel()
    read = block + head  # weights read per decoded token
    prompt = torch.randint(1, V, (a.prompt,), generator=torch.Generator().manual_seed(0)).tolist()
    bandwidth = {t: read_bandwidth(t) for t in threads}
    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())

    lm_models = {"fp32": base.model, "bf16": lmkit.load(run).model.to(torch.bfloat16)}
    for name in ("int8", "int4 g32"):
        lm_models[name] = lmkit.load(lm_variants[name]).model
    if a.no_extra_bufts:  # llama.cpp's AMX buffers crash on some Xeons (llama.cpp#20824): plain CPU buffers
        default = llama_cpp.llama_model_default_params

        def plain_buffers():
            p = default()
            p.use_extra_bufts = False
            return p
        llama_cpp.llama_model_default_params = llama_cpp.llama.llama_cpp.llama_model_default_params = plain_buffers
    llms = {(k, t): Llama(model_path=str(p), n_ctx=a.prompt + a.new_tokens + 8, n_batch=a.prompt, n_ubatch=a.prompt,
                          n_threads=t, n_threads_batch=t, verbose=False) for k, p in ggufs.items() for t in threads}
    hf = None if a.skip_transformers else transformers.LlamaForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    pairs = [("fp32", "f16"), ("bf16", None), ("int8", "q8_0"), ("int4 g32", "q4_0")]
    best: dict[tuple[str, str], tuple] = {}  # (engine, variant) -> (pp, decode, threads of the best decode)

    def keep(key, t, result):
        pp, dec, _ = result
        old = best.get(key)
        best[key] = (max(pp, old[0] if old else 0), max(dec, old[1] if old else 0),
                     t if not old or dec > old[1] else old[2])

    for _ in range(a.repeats):
        for t in threads:
            torch.set_num_threads(t)
            for ours, theirs in pairs:  # alternated: lmkit, then llama.cpp, configuration by configuration
                keep(("lmkit", ours), t, time_lmkit(lm_models[ours], prompt, a.new_tokens))
                if theirs is not None:
                    keep(("llama.cpp", theirs), t, time_llamacpp(llms[theirs, t], prompt, a.new_tokens))
            if hf is not None:
                keep(("transformers", "fp32"), t, time_transformers(hf, prompt, a.new_tokens))
    load_after = " ".join(f"{x:.2f}" for x in os.getloadavg())

    bytes_per = {"fp32": 4.0, "f16": 2.0, "bf16": 2.0, "q8_0": BYTES_PER_WEIGHT["q8_0"], "q4_0": BYTES_PER_WEIGHT["q4_0"],
                 "int8": 1.0 + 4 / SHAPE["hidden_size"], "int4 g32": 0.5 + 4 / 32}
    bw = max(bandwidth.values())
    rows = []
    for (engine, variant), (pp, dec, t) in best.items():
        floor = bw * 1e9 / (read * bytes_per[variant])
        rows.append([engine, variant, t, f"{pp:,.0f}", f"{dec:.1f}", f"{floor:.1f}", f"{dec / floor:.0%}"])
    order = {("lmkit", "fp32"): 0, ("lmkit", "bf16"): 1, ("llama.cpp", "f16"): 2, ("transformers", "fp32"): 3,
             ("lmkit", "int8"): 4, ("llama.cpp", "q8_0"): 5, ("lmkit", "int4 g32"): 6, ("llama.cpp", "q4_0"): 7}
    rows.sort(key=lambda r: order.get((r[0], r[1]), 9))
    d = {k: v[1] for k, v in best.items()}
    ratio = lambda x, y: f"{d[x] / d[y]:.2f}×" if x in d and y in d else "n/a"
    notes = (f"{P / 1e6:.0f}M parameters ({read / 1e6:.0f}M read per decoded token), random weights, prompt "
             f"{a.prompt} random ids, {a.new_tokens} greedy new tokens; best of {a.repeats} alternated runs at "
             f"threads {a.threads}. Read bandwidth (sum of 1 GiB): "
             + ", ".join(f"{t} thread(s) {b:.1f} GB/s" for t, b in bandwidth.items())
             + f"; the floor uses {bw:.1f}. Bytes per weight: q8_0 34/32, q4_0 18/32, lmkit int8 1 + a scale per row, "
             f"int4 g32 0.5 + a 4-byte scale per 32. lmkit int8 / llama.cpp q8_0 decode: {ratio(('lmkit', 'int8'), ('llama.cpp', 'q8_0'))} "
             f"(target ≥ 1.0×); lmkit int8 / transformers fp32: {ratio(('lmkit', 'int8'), ('transformers', 'fp32'))} "
             f"(target ≥ 3×); lmkit int4 g32 / llama.cpp q4_0: {ratio(('lmkit', 'int4 g32'), ('llama.cpp', 'q4_0'))}; "
             f"lmkit int4 g32 / transformers fp32: {ratio(('lmkit', 'int4 g32'), ('transformers', 'fp32'))}. lmkit bf16 is the fp32 run cast with .to(torch.bfloat16) in this script. llama.cpp "
             f"{'without extra buffer types (no AMX / repacking)' if a.no_extra_bufts else 'with its default buffers'}; "
             f"llama-cpp-python {llama_cpp.__version__}, transformers {transformers.__version__}. "
             f"Load average before/after: {load_before} / {load_after}.")
    report(f"Batch-1 decode and prompt processing vs llama.cpp ({P / 1e6:.0f}M Llama-style, CPU)",
           ["engine", "weights", "threads", "pp tok/s", "decode tok/s", "floor tok/s", "of floor"], rows, notes)
    print(notes)


if __name__ == "__main__":
    main()
