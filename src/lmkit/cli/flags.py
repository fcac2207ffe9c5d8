"""What the group modules share: the recorder they add their commands to, and the flags several commands take."""
from __future__ import annotations

import argparse

CORPUS = "file, folder, glob, .jsonl, or built-in corpus (shakespeare, python-stdlib)"
TRAINED_RUN = "run directory written by lmkit train"
UTF8 = "bytes that are not UTF-8"


class Group:
    """One heading of `lmkit --help`: adds each command's parser to the shared subparsers, binds it to its
    handler (`args.run(args)`), and remembers the name and one-line help for the grouped listing."""

    def __init__(self, title: str, sub):
        self.title, self.sub, self.commands = title, sub, []

    def command(self, name: str, run, help: str, description: str | None = None) -> argparse.ArgumentParser:
        self.commands.append((name, help))
        return bind(self.sub, name, run, help, description)


def actions(p: argparse.ArgumentParser, dest: str, metavar: str):
    """Subcommands of a command (`lmkit tokenizer train`, `lmkit finetune sft`): each is bound with `bind`."""
    sub = p.add_subparsers(dest=dest, metavar=metavar)
    sub.required = True
    return sub


def bind(sub, name: str, run, help: str, description: str | None = None) -> argparse.ArgumentParser:
    """A parser for `name` whose parsed args run `run(args)` (None: a command made of subcommands)."""
    p = sub.add_parser(name, help=help, description=description)
    if run is not None:
        p.set_defaults(run=run)
    return p


def overwrite(p, help: str | None = None) -> None:
    p.add_argument("--overwrite", action="store_true", help=help)


def device(p) -> None:
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")


def quiet(p) -> None:
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def text_field(p, help: str = "field holding the text in .jsonl/.json rows") -> None:
    p.add_argument("--text-field", default="text", help=help)


def errors(p, help: str = UTF8) -> None:
    p.add_argument("--errors", choices=["strict", "replace"], default="strict", help=help)


def overrides(p, help: str) -> None:
    p.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE", help=help)
