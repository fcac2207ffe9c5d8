"""lmkit's benchmark scorer vs lm-evaluation-harness's `hf` backend on the same weights: 1,000 HellaSwag rows.

A small random Llama-style model is saved with transformers (its own byte-level BPE, trained on the rows);
`lmkit import-hf` makes the lmkit run of the same weights. Both score the same (context, continuation)
pairs (4 per row, lm-eval's HellaSwag prompt) at the same batch size; the rows are cut into chunks and the
two scorers alternate chunk by chunk (the order flips every chunk), so load on the machine hits both alike.
Timed: the scoring call only (lm-eval: HFLM.loglikelihood on Instances; lmkit: bench_score.score_pairs),
model loading excluded for both. Also checked: the per-pair log-likelihoods agree within 1e-4.

    flock -x /tmp/lmkit-bench.lock python benchmarks/bench_vs_lmeval.py [--rows 1000] [--chunks 4]
"""
from __future__ import annotations

import argparse
import bz2
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import report  # noqa: E402

HELLASWAG = Path(__file__).resolve().parents[2] / "shared" / "data" / "hellaswag" / "hellaswag_val_full.txt.bz2"


def make_model(out: Path, lines: list[str], args) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
    hf = Tokenizer(models.BPE())
    hf.pre_tokenizer, hf.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    hf.train_from_iterator(lines, trainers.BpeTrainer(vocab_size=args.vocab, special_tokens=["<|endoftext|>"],
                                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                      show_progress=False))
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=hf.get_vocab_size(), hidden_size=args.dim, intermediate_size=args.dim * 4,
                      num_hidden_layers=args.layers, num_attention_heads=args.dim // 32,
                      num_key_value_heads=args.dim // 64 or 1, max_position_embeddings=256,
                      tie_word_embeddings=False, bos_token_id=0, eos_token_id=0)
    LlamaForCausalLM(cfg).save_pretrained(out)
    PreTrainedTokenizerFast(tokenizer_object=hf, eos_token="<|endoftext|>").save_pretrained(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1000)
    ap.add_argument("--chunks", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=4096)
    args = ap.parse_args()
    torch.set_num_threads(2)
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    import lmkit
    from lmkit.cli import main as lmkit_main
    from lmkit.evaluate.bench import hellaswag_clean
    from lmkit.evaluate.bench_score import score_pairs

    lines = bz2.open(HELLASWAG, "rt", encoding="utf-8").read().split("\n")[:6 * args.rows]
    tmp = Path(tempfile.mkdtemp(prefix="bench_vs_lmeval_"))
    try:
        make_model(tmp / "hf", lines, args)
        assert lmkit_main(["import-hf", str(tmp / "hf"), "--out", str(tmp / "run")]) == 0
        ours = lmkit.load(tmp / "run")
        theirs = HFLM(pretrained=str(tmp / "hf"), dtype="float32", batch_size=args.batch_size, device="cpu")
        default = HFLM(pretrained=str(tmp / "hf"), dtype="float32", batch_size=1, device="cpu")  # lm-eval's default
        items = [(hellaswag_clean(lines[i]), [" " + hellaswag_clean(e) for e in lines[i + 2:i + 6]],
                  int(lines[i + 1])) for i in range(0, len(lines), 6)]
        size = -(-len(items) // args.chunks)
        t_ours = t_theirs = t_default = 0.0
        ll_ours, ll_theirs = [], []
        for c in range(args.chunks):
            chunk = items[c * size:(c + 1) * size]
            pairs = [(ctx, e) for ctx, ends, _ in chunk for e in ends]
            for who in ((0, 1, 2) if c % 2 == 0 else (2, 1, 0)):
                t0 = time.perf_counter()
                if who == 0:
                    got = [s.logprob for s in score_pairs(ours, pairs, batch_size=args.batch_size, progress=False)]
                    t_ours += time.perf_counter() - t0
                    ll_ours += got
                else:
                    reqs = [Instance("loglikelihood", {}, p, i) for i, p in enumerate(pairs)]
                    got = [r[0] for r in (theirs if who == 1 else default).loglikelihood(reqs, disable_tqdm=True)]
                    if who == 1:
                        t_theirs += time.perf_counter() - t0
                        ll_theirs += got
                    else:
                        t_default += time.perf_counter() - t0
        diff = max(abs(a - b) for a, b in zip(ll_ours, ll_theirs))

        def acc(ll):
            return sum(max(range(4), key=lambda k: ll[4 * i + k]) == gold for i, (_, _, gold) in enumerate(items)) / len(items)
        n = len(items)
        params = sum(p.numel() for p in ours.model.parameters())
        rows = [["lmkit (shared context cache)", f"{n / t_ours:.1f}", f"{t_ours:.1f}", f"{100 * acc(ll_ours):.1f}"],
                ["lm-eval hf backend, same batch size", f"{n / t_theirs:.1f}", f"{t_theirs:.1f}",
                 f"{100 * acc(ll_theirs):.1f}"],
                ["lm-eval hf backend, its default batch size 1", f"{n / t_default:.1f}", f"{t_default:.1f}", "—"]]
        notes = (f"Random Llama-style model, {args.layers} layers, dim {args.dim}, vocab {args.vocab} "
                 f"({params / 1e6:.2f}M parameters), float32, batch size {args.batch_size} for both, {n:,} rows "
                 f"({4 * n:,} continuations) in {args.chunks} alternated chunks; scoring calls timed, loading "
                 f"excluded. Speed-up {t_theirs / t_ours:.2f}x at the same batch size, {t_default / t_ours:.2f}x against "
                 f"lm-eval's default batch size 1; largest per-pair |Δ log-likelihood| {diff:.2e}.")
        report("lmkit evaluate --bench vs lm-evaluation-harness (HellaSwag scorer)",
               ["scorer", "rows/s", "seconds", "acc %"], rows, notes)
        print(notes)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
