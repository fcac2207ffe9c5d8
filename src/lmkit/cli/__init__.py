"""`lmkit <command>`: flags in, calls of the Python API out.

One table, GROUPS, lists the command groups in the order `lmkit --help` shows them; each group module
adds its commands' parsers in `register(group)` and binds each to a handler (`args.run(args)`), which
imports the library only when it runs: building the parser loads no torch, numpy or transformers.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import textwrap

from ..errors import LmkitError
from . import convert, evaluate, finetune, flags, generate, search, serve, train

# (heading in `lmkit --help`, module whose register(group) adds the commands)
GROUPS = [
    ("train: data, tokenizers, models", train),
    ("generate: run a model on text", generate),
    ("fine-tune: classifiers, chat models, LoRA", finetune),
    ("evaluate: scores and pictures of a model", evaluate),
    ("convert: Hugging Face, GGUF, int8, pruning, ONNX", convert),
    ("search: embeddings and semantic search", search),
    ("serve: an OpenAI-compatible HTTP API", serve),
]


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="lmkit", usage="lmkit [-h] COMMAND ...",
                                 description="Train, run and inspect language models.",
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", metavar="COMMAND", prog="lmkit", help=argparse.SUPPRESS)  # listed below
    sub.required = True
    groups = []
    for title, module in GROUPS:
        groups.append(flags.Group(title, sub))
        module.register(groups[-1])
    ap.epilog = _listing(groups)
    return ap


def _listing(groups: list[flags.Group]) -> str:
    """Every command once, under its group's heading, with its one-line help wrapped to the terminal."""
    names = max(len(name) for g in groups for name, _ in g.commands) + 4
    width = max(shutil.get_terminal_size().columns - 2, names + 30)
    lines = ["commands (lmkit COMMAND --help shows a command's flags):"]
    for g in groups:
        lines += ["", g.title]
        for name, help in g.commands:
            text = textwrap.wrap(help, width - names, break_on_hyphens=False) or [""]
            lines.append(f"  {name:<{names - 2}}{text[0]}")
            lines += [" " * names + more for more in text[1:]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        flags.check_numbers(args)  # every numeric flag within its declared range, before any work
        flags.settle(args)  # old spellings of renamed flags (a note), a required --out
        return args.run(args) or 0
    except LmkitError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
