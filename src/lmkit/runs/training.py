"""Which settings a training run starts from: a TOML config and --set overrides, or a run's own config.json."""
from __future__ import annotations

from pathlib import Path

from ..config import Config, apply, load_config, load_json, parse_overrides, validate
from ..errors import LmkitError


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
    saved = Path(out) / "config.json"
    if not saved.is_file():
        raise LmkitError(f"{out}: no run to resume (no config.json)")
    return validate(apply(load_json(saved), flat, "--set"))
