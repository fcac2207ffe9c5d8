"""What the group modules share: the recorder they add their commands to, and the flags several commands take."""
from __future__ import annotations

import argparse
import math

from ..sampling_config import MAX_SEED

CORPUS = "file, folder, glob, .jsonl, or built-in corpus (shakespeare, python-stdlib)"
TRAINED_RUN = "run directory written by lmkit train"
UTF8 = "bytes that are not UTF-8"
# sane maxima for flags that size memory (a model, a thread pool, processes): past them lmkit refuses in one
# line instead of the process being killed for memory mid-allocation
MAX_LAYERS, MAX_HEADS, MAX_WIDTH, MAX_LEN = 1024, 1024, 65536, 65536
MAX_THREADS, MAX_PROCS = 1024, 256


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
        p.set_defaults(run=run, parser=p)  # `parser`: the command's own flags, for check_numbers
    return p


def number(p, *names, type=int, lo=None, hi=None, lo_open=False, hi_open=False, **kw):
    """A numeric flag and the values it takes: lo..hi (inclusive unless lo_open / hi_open; None = no bound).
    A float must also be finite. check_numbers refuses anything else before the command runs; flags whose
    range a library function checks itself (the sampling flags) declare only what it leaves out."""
    action = p.add_argument(*names, type=type, **kw)
    action.bounds = (lo, hi, lo_open, hi_open)
    vars(p).setdefault("numbers", []).append(action)
    return action


def check_numbers(args) -> None:
    """One line naming the flag for the first numeric value out of its declared range (None = not given)."""
    from ..errors import LmkitError
    for action in getattr(getattr(args, "parser", None), "numbers", []):
        value = getattr(args, action.dest)
        if value is None:
            continue
        flag, (lo, hi, lo_open, hi_open) = action.option_strings[-1], action.bounds
        if isinstance(value, float) and not math.isfinite(value):
            raise LmkitError(f"{flag} must be a finite number (got {value})")
        low = lo is None or (value > lo if lo_open else value >= lo)
        high = hi is None or (value < hi if hi_open else value <= hi)
        if low and high:
            continue
        if action.type is int and not low:  # a count too small: the bound it is under
            rule = f"{'>' if lo_open else '>='} {lo}"
        elif lo is not None and hi is not None and action.type is int and not (lo_open or hi_open):
            rule = f"in {lo}..{hi}"
        elif lo is not None and hi is not None:
            rule = f"in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
        else:
            rule = f"{'>' if lo_open else '>='} {lo}" if lo is not None else f"{'<' if hi_open else '<='} {hi}"
        raise LmkitError(f"{flag} must be {rule} (got {value})")


def seed(p, **kw) -> None:
    number(p, "--seed", lo=0, hi=MAX_SEED, hi_open=True, **kw)


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


def keep_line_ends(p) -> None:
    p.add_argument("--keep-line-ends", dest="normalize_newlines", action="store_false",
                   help="keep a leading byte-order mark and CRLF / CR line ends (default: dropped, read as LF)")


def overrides(p, help: str) -> None:
    p.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE", help=help)
