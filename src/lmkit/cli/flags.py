"""What the group modules share: the recorder they add their commands to, and the flags several commands take."""
from __future__ import annotations

import argparse
import math
import sys

from ..errors import LmkitError
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


def number(p, *names, type=int, lo=None, hi=None, lo_open=False, hi_open=False, parser=None, **kw):
    """A numeric flag and the values it takes: lo..hi (inclusive unless lo_open / hi_open; None = no bound).
    A float must also be finite. check_numbers refuses anything else before the command runs; flags whose
    range a library function checks itself (the sampling flags) declare only what it leaves out. `parser`:
    the command's parser when `p` is a group of it (a mutually exclusive group)."""
    action = p.add_argument(*names, type=type, **kw)
    action.bounds = (lo, hi, lo_open, hi_open)
    vars(parser or p).setdefault("numbers", []).append(action)
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


def draft(p, refused: str) -> None:
    """--draft SMALL_RUN and --draft-tokens: speculative decoding (speculative.py); `refused`: what it cannot serve."""
    p.add_argument("--draft", default=None, metavar="SMALL_RUN",
                   help="speculative decoding: SMALL_RUN (a smaller run with the same tokenizer) proposes tokens "
                        "that RUN_DIR checks several at a time; the same text when greedy, the same distribution "
                        f"when sampling ({refused} are refused)")
    number(p, "--draft-tokens", lo=0, hi=64, default=4,
           help="with --draft: proposals per round beyond the first (default 4)")


def device(p, default: str = "cpu") -> None:
    help = "auto (cuda if there is one), cpu or cuda" if default == "auto" else "cpu or cuda"
    p.add_argument("--device", default=default, help=f"{help} (default {default})")


def dtype(p) -> None:
    p.add_argument("--dtype", choices=("float32", "bfloat16", "auto"), default="float32",
                   help="precision of a float model's weights: float32 (default, the reference), bfloat16, or "
                        "auto: bfloat16 where the CPU (AVX-512 BF16 / AMX) or GPU multiplies it natively, else "
                        "float32. On such a CPU bf16 processes prompts about 4x faster and decodes as fast; a "
                        "quantized run keeps its own kernels")


def threads(p) -> None:
    number(p, "--threads", lo=0, hi=MAX_THREADS, default=0, metavar="N",
           help="CPU threads (default 0: the fastest count right now, chosen by timing a few steps; sets num_threads)")


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


# ---- one vocabulary: outputs are --out; an old spelling still works for one release, with a note -------------
class _Renamed(argparse.Action):
    """An old flag name kept as an alias: stores into the new flag's dest and leaves a deprecation note."""

    def __init__(self, option_strings, dest, new: str = "", **kw):
        self.new = new
        super().__init__(option_strings, dest, **kw)

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        notes = vars(namespace).setdefault("deprecated", [])
        notes.append(f"{option_string} is now {self.new} ({option_string} goes in the next release)")


def renamed(p, old: str, new_action: argparse.Action) -> None:
    """Accept `old` as a hidden alias of the flag `new_action` (same values, same dest)."""
    p.add_argument(old, dest=new_action.dest, action=_Renamed, new=new_action.option_strings[-1],
                   choices=new_action.choices, type=new_action.type, help=argparse.SUPPRESS)


def out(p, help: str, legacy: str | None = None, required: bool = True, **kw) -> None:
    """The output flag, --out. `legacy`: the name of the positional that held the output before (still taken
    for one release, with a note). `required`: settle() refuses a command without either, before any work."""
    p.add_argument("--out", default=None, help=help + (" (required)" if required else ""), **kw)
    if legacy:
        p.add_argument(legacy, nargs="?", default=None, help=argparse.SUPPRESS)
    vars(p)["out_rule"] = (legacy, required)


def settle(args) -> None:
    """After parsing: an old positional output moves to --out (a note), a required --out is there; the notes of
    every old spelling used are printed once, to stderr."""
    legacy, required = vars(getattr(args, "parser", None) or argparse.Namespace()).get("out_rule", (None, False))
    notes = list(dict.fromkeys(vars(args).pop("deprecated", [])))
    given = getattr(args, legacy, None) if legacy else None
    if given is not None:
        if args.out is not None and args.out != given:
            raise LmkitError(f"the output is given twice ({given} and --out {args.out}); give --out only")
        args.out = given
        notes.append(f"the output as a positional ({given}) is now --out {given} (the positional form goes in the "
                     f"next release)")
    if required and args.out is None:
        raise LmkitError(f"{args.parser.prog}: --out is required (where to write)")
    for note in notes:
        print(f"note: {note}", file=sys.stderr)


# the training flags every training command shares: each is a --set key (train, finetune sft) or the same setting
# by the same name (finetune classify's own flags)
TRAIN_FLAGS = {  # flag -> (config key, type, lo, help)
    "--learning-rate": ("learning_rate", float, 0, "peak learning rate"),
    "--batch-size": ("batch_size", int, 1, "sequences per micro-batch"),
    "--max-iters": ("max_iters", int, 0, "training steps"),
    "--max-minutes": ("max_minutes", float, 0, "stop (evaluate and save) after this many minutes of training"),
}


def train_settings(p, out_key: str | None = "out_dir") -> None:
    """--out (out_dir), --device, --threads (num_threads), --seed and TRAIN_FLAGS as shorthands of --set: given,
    each becomes KEY=VALUE after the --set pairs (settings_of)."""
    if out_key:
        p.add_argument("--out", dest="set_out", metavar="OUT", help="run directory (out_dir)")
    p.add_argument("--device", dest="set_device", help="auto, cpu or cuda (device; default: the config's, auto)")
    number(p, "--threads", dest="set_threads", lo=0, hi=MAX_THREADS, metavar="N",
           help="CPU threads (num_threads; 0 = the fastest count right now)")
    number(p, "--seed", dest="set_seed", lo=0, metavar="N", help="random seed (seed)")
    for flag, (key, tp, lo, help) in TRAIN_FLAGS.items():
        number(p, flag, dest=f"set_{key}", type=tp, lo=lo, lo_open=tp is float and key == "learning_rate",
               metavar="X" if tp is float else "N", help=f"{help} ({key})")


def settings_of(a, out_key: str = "out_dir") -> list[str]:
    """The --set pairs of the shorthand flags given (train_settings)."""
    keys = {"set_out": out_key, "set_device": "device", "set_threads": "num_threads", "set_seed": "seed",
            **{f"set_{k}": k for k, *_ in TRAIN_FLAGS.values()}}
    return [f"{key}={getattr(a, dest)}" for dest, key in keys.items() if getattr(a, dest, None) is not None]
