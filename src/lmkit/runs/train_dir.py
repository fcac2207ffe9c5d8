"""The run directory a training run writes, and the run it may start from: the policy `lmkit train` follows
before the first step.

    out_dir holds a run   refused, unless --resume (continue it) or --overwrite (lmkit's files removed)
    --resume              out_dir must hold a run with its training state, trained with the same model settings
    init_from = DIR       start from the weights of another run (e.g. one `lmkit grow` made): a float lmkit run
                          (run, pruned, merged) with this run's tokenizer and model settings
    every start           the temp files and folders of a write that a kill cut short are removed
    a failed start        a run that fails before its first checkpoint removes the folder it made
"""
from __future__ import annotations

import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..config import Config, ModelConfig, load_json
from ..errors import LmkitError
from ..tokenizer import Tokenizer
from .detect import detect, refusal
from .native import weights_metadata
from .open import open_run
from .target import OWN_FILES, OWN_FOLDERS, clear

INIT_KINDS = ("run", "pruned", "merged")  # what init_from (and grow) start from: float weights, no adapters
RUN_SIGNS = ("config.json", "model.safetensors", "train_state.pt", "train_state")


def holds_run(path: str | Path) -> bool:
    """Whether `path` holds (part of) a training run: its config, weights or training state."""
    return any((Path(path) / f).exists() for f in RUN_SIGNS)


TEMP_FOLDERS = (".train_state.tmp", ".train_state.old")  # distributed.save_checkpoint's switch
RANDOM = "[a-z0-9_]{8}"  # the part tempfile adds to a name (io.atomic_path, io.atomic_dir)
TEMP_NAME = re.compile(rf"\.({'|'.join(map(re.escape, OWN_FILES))})\.{RANDOM}\.tmp")
TEMP_DIR = re.compile(rf"\.({'|'.join(map(re.escape, OWN_FOLDERS))})\.{RANDOM}")


@dataclass
class TrainDir:
    path: Path
    resume: bool = False  # a checkpoint to continue from (False: a new run, or one killed before its first)
    created: list = field(default_factory=list)  # the folders this run made (out_dir, missing parents), innermost first


def open_train_dir(cfg: Config, resume: bool = False, overwrite: bool = False, is_main: bool = True,
                   barrier=None) -> TrainDir:
    """cfg.train.out_dir, made ready for training (created when new; temp files of a killed write removed). A
    run already there is refused unless `resume` (checked: see check_resume; cfg.model.vocab_size = 0 takes the
    run's) or `overwrite` (lmkit's own files removed by the main process, after `barrier()` so that every
    process has looked first)."""
    out = Path(cfg.train.out_dir)
    has_checkpoint = check_resume(out, cfg) if resume else False
    if not resume and holds_run(out):
        if not overwrite:
            raise LmkitError(f"{out}: already holds a run (use --resume to continue it or --overwrite to replace it)")
        if barrier is not None:
            barrier()
        if is_main:
            clear(out)
    if is_main:
        remove_temp(out)
    created = [p for p in (out.absolute(), *out.absolute().parents) if not p.exists()]
    out.mkdir(parents=True, exist_ok=True)
    return TrainDir(out, has_checkpoint, created)


def remove_temp(out: Path) -> None:
    """Remove what a write cut short by a kill leaves in `out`: lmkit's temp files (.model.safetensors.*.tmp,
    ...) and folders (.data.*, .train_state.tmp); a distributed checkpoint caught between its two renames is
    switched back (.train_state.old → train_state)."""
    if not out.is_dir():
        return
    old, final = out / TEMP_FOLDERS[1], out / "train_state"
    if old.is_dir() and not final.exists():
        old.rename(final)
    for f in out.iterdir():
        if f.is_file() and TEMP_NAME.fullmatch(f.name):
            f.unlink()
        elif f.is_dir() and (f.name in TEMP_FOLDERS or TEMP_DIR.fullmatch(f.name)):
            shutil.rmtree(f, ignore_errors=True)


def remove_failed(d: TrainDir) -> None:
    """A run that failed before its first checkpoint, in a folder it made: lmkit's files go, and the folders it
    made if that leaves them empty (a folder that was there before is left as it is)."""
    if not d.created or (d.path / "train_state.pt").exists():
        return
    clear(d.path)
    remove_temp(d.path)
    for folder in d.created:
        try:
            folder.rmdir()
        except OSError:  # not empty: something else is in it
            return


def check_resume(out: Path, cfg: Config) -> bool:
    """`out` must hold a run with its training state (train_state.pt), trained with cfg's model settings; True
    when it does. False for a run that `lmkit train` started but a kill stopped before its first checkpoint
    (config.json and no weights, or only the weights it writes at the start, step 0): it starts again."""
    if not (out / "train_state.pt").is_file():
        if not holds_run(out):
            raise LmkitError(f"{out}: no run to resume (train without --resume to start one)")
        weights = weights_metadata(out / "model.safetensors") or {}
        if (out / "config.json").is_file() and (not (out / "model.safetensors").exists()
                                                or (weights.get("trainer"), weights.get("step")) == ("lmkit", "0")):
            check_settings(out, cfg)
            return False
        found = detect(out)
        start = f"; start from its weights with init_from={out}" if found.kind in INIT_KINDS else ""
        raise LmkitError(f"{out} is {found.describe()} with no training state (train_state.pt) to resume from"
                         f"{start}")
    check_settings(out, cfg)
    return True


def check_settings(out: Path, cfg: Config) -> None:
    saved = load_json(out / "config.json").model
    if saved != cfg.model and cfg.model.vocab_size == 0:
        cfg.model.vocab_size = saved.vocab_size
    if saved != cfg.model:
        raise LmkitError(f"{out}: the model settings differ from the run being resumed "
                         f"({differences(saved, cfg.model)})")


RESUME_HINTS = {"lora": "continue it with lmkit finetune sft --resume --out {path} (and its --base, --data)",
                "classifier": "train it again with lmkit finetune classify --overwrite",
                "merged": "train on from it with init_from = {path}", "int8": "resume the float run it came from"}


def check_train_resume(out: str | Path) -> None:
    """`lmkit train --resume` continues a run that `lmkit train` made (or a pruned run it fine-tuned); any
    other kind is refused in one line (a LoRA run resumes through finetune sft; its state is checked by
    check_resume like every run's)."""
    if not Path(out).exists():
        raise LmkitError(f"{out}: no run to resume (no such folder)")
    found = detect(out)
    if found.kind not in ("run", "pruned"):
        hints = {k: v.format(path=found.path) for k, v in RESUME_HINTS.items()}
        raise LmkitError(refusal(found, "train --resume", hints, ("run", "pruned")))


def differences(theirs: ModelConfig, ours: ModelConfig, most: int = 3) -> str:
    """'n_layer = 4 there, 6 here; ...': the first `most` model settings in which two configs differ."""
    diff = [f"{k} = {getattr(theirs, k)!r} there, {getattr(ours, k)!r} here" for k in vars(ours)
            if getattr(theirs, k) != getattr(ours, k)]
    return "; ".join(diff[:most])


def load_init(path: str | Path, cfg: ModelConfig, tokenizer: Tokenizer) -> torch.nn.Module:
    """The model of `cfg` with the weights of the run at `path` (train.init_from), in training mode. Refused in
    one line: another kind of directory (int8, LoRA, ...), another tokenizer, other model settings, or weights
    that do not fit the run's own config (the tensor and both shapes named)."""
    run = open_run(path, accept=INIT_KINDS, families=("gpt", "lstm", "bert"), purpose="init_from")
    what = f"init_from: {run.path} is {detect(run.path).describe()}"
    if run.tokenizer.hf.get_vocab() != tokenizer.hf.get_vocab():
        raise LmkitError(f"{what}, whose tokenizer.json is not the tokenizer of this run's data")
    if run.config.model != cfg:
        raise LmkitError(f"{what} and has other model settings ({differences(run.config.model, cfg)})")
    return run.model.train()
