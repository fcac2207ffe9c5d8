"""Which settings a training run starts from: a TOML config and --set overrides, or a run's own config.json."""
from __future__ import annotations

from pathlib import Path

from ..config import Config, apply, load_config, load_json, parse_overrides, validate
from ..errors import LmkitError
from .train_dir import check_train_resume


def training_config(config_path: str | Path | None, overrides: list[str] | None = None,
                    resume: bool = False) -> Config:
    """CONFIG.toml with `overrides` ("key=value" strings) applied. Without a config file only `resume` is
    possible: the run named by the `out_dir` override continues from its saved config.json, with the
    other overrides applied on top (e.g. a larger max_iters)."""
    if config_path is not None:
        cfg = load_config(config_path, overrides)
        if resume:
            check_train_resume(cfg.train.out_dir)
        return cfg
    if not resume:
        raise LmkitError("train: give a CONFIG.toml (or --resume with --set out_dir=RUN_DIR)")
    flat = parse_overrides(overrides or [])
    out = flat.get("out_dir") or flat.get("train.out_dir")
    if not out:
        raise LmkitError("train --resume without a config needs --set out_dir=RUN_DIR")
    check_train_resume(out)
    return validate(apply(load_json(Path(out) / "config.json"), flat, "--set"))
