"""The run directory a training run writes, and the run it may start from: the policy `lmkit train` follows
before the first step.

    out_dir holds a run   refused, unless --resume (continue it) or --overwrite (lmkit's files removed)
    --resume              out_dir must hold a run with its training state, trained with the same model settings
    init_from = DIR       start from the weights of another run (e.g. one `lmkit grow` made): a float lmkit run
                          (run, pruned, merged) with this run's tokenizer and model settings
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..config import Config, ModelConfig, load_json
from ..errors import LmkitError
from ..tokenizer import Tokenizer
from .open import open_run
from .detect import detect, refusal
from .target import clear

INIT_KINDS = ("run", "pruned", "merged")  # what init_from (and grow) start from: float weights, no adapters
RUN_SIGNS = ("config.json", "model.safetensors", "train_state.pt", "train_state")


def holds_run(path: str | Path) -> bool:
    """Whether `path` holds (part of) a training run: its config, weights or training state."""
    return any((Path(path) / f).exists() for f in RUN_SIGNS)


def open_train_dir(cfg: Config, resume: bool = False, overwrite: bool = False, is_main: bool = True,
                   barrier=None) -> Path:
    """cfg.train.out_dir, made ready for training (created when new). A run already there is refused unless
    `resume` (checked: see check_resume; cfg.model.vocab_size = 0 takes the run's) or `overwrite` (lmkit's own
    files removed by the main process, after `barrier()` so that every process has looked first)."""
    out = Path(cfg.train.out_dir)
    if resume:
        check_resume(out, cfg)
    elif holds_run(out):
        if not overwrite:
            raise LmkitError(f"{out}: already holds a run (use --resume to continue it or --overwrite to replace it)")
        if barrier is not None:
            barrier()
        if is_main:
            clear(out)
    out.mkdir(parents=True, exist_ok=True)
    return out


def check_resume(out: Path, cfg: Config) -> None:
    """`out` must hold a run with its training state (train_state.pt), trained with cfg's model settings."""
    if not (out / "train_state.pt").is_file():
        if not holds_run(out):
            raise LmkitError(f"{out}: no run to resume (train without --resume to start one)")
        found = detect(out)
        start = f"; start from its weights with init_from={out}" if found.kind in INIT_KINDS else ""
        raise LmkitError(f"{out} is {found.describe()} with no training state (train_state.pt) to resume from"
                         f"{start}")
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
