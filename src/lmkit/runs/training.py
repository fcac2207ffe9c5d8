"""Which settings a training run starts from: a TOML config and --set overrides, or a run's own config.json."""
from __future__ import annotations

from pathlib import Path

from ..config import Config, apply, load_config, load_json, parse_overrides, validate
from ..errors import LmkitError
from . import refusal
from .detect import detect


def training_config(config_path: str | Path | None, overrides: list[str] | None = None,
                    resume: bool = False) -> Config:
    """CONFIG.toml with `overrides` ("key=value" strings) applied. Without a config file only `resume` is
    possible: the run named by the `out_dir` override continues from its saved config.json, with the
    other overrides applied on top (e.g. a larger max_iters)."""
    if config_path is not None:
        return load_config(config_path, overrides)
    if not resume:
        raise LmkitError("train: give a CONFIG.toml (or --resume with --set out_dir=RUN_DIR)")
    flat = parse_overrides(overrides or [])
    out = flat.get("out_dir") or flat.get("train.out_dir")
    if not out:
        raise LmkitError("train --resume without a config needs --set out_dir=RUN_DIR")
    found = resumable(out)
    return validate(apply(load_json(found.path / "config.json"), flat, "--set"))


RESUME_HINTS = {"lora": "continue it with lmkit finetune sft --resume --out {path} (and its --base, --data)",
                "classifier": "train it again with lmkit finetune classify --overwrite",
                "merged": "train on from it with init_from = {path}", "int8": "resume the float run it came from"}


def resumable(out: str | Path):
    """The run in `out` if `train --resume` can continue it: a run (or pruned run) trained by lmkit train;
    any other kind is refused in one line."""
    found = detect(out)
    if found.kind not in ("run", "pruned"):
        hints = {k: v.format(path=found.path) for k, v in RESUME_HINTS.items()}
        raise LmkitError(refusal(found, "train --resume", hints, ("run", "pruned")))
    return found
