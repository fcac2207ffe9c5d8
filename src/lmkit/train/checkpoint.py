"""Run directories: everything needed to reload, continue or export a model.

    config.json        the full Config the run was trained with
    tokenizer.json     its tokenizer
    model.safetensors  weights (metadata: step)
    train_state.pt     optimizer, step, RNG and data-sampler state (tensors and numbers only,
                       read back with torch.load(weights_only=True))
    train_state/       under torchrun: model and optimizer shards (torch.distributed.checkpoint);
                       train_state.pt then holds no optimizer
    metrics.jsonl      one JSON line per log / eval
    loss.png           the loss curve

Each file is written to a temp file and renamed, so an interrupted save never leaves a broken file.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_model, safe_open, save_model

from ..errors import LmkitError
from ..io import atomic_path

RUN_FILES = ("config.json", "tokenizer.json", "model.safetensors", "train_state.pt", "metrics.jsonl", "loss.png")


def is_run(path: str | Path) -> bool:
    return (Path(path) / "config.json").is_file() and (Path(path) / "model.safetensors").is_file()


def holds_run(path: str | Path) -> bool:
    return any((Path(path) / f).exists() for f in ("config.json", "model.safetensors", "train_state.pt", "train_state"))


def clear_run(path: str | Path) -> None:
    """Remove lmkit's own files from a run directory (never anything else the user keeps there)."""
    path = Path(path)
    for f in RUN_FILES:
        (path / f).unlink(missing_ok=True)
    if (path / "train_state" / ".metadata").is_file():
        shutil.rmtree(path / "train_state")
    if (path / "data" / "meta.json").is_file():
        shutil.rmtree(path / "data")


def save_weights(model: torch.nn.Module, path: Path, step: int) -> None:
    with atomic_path(path) as tmp:
        save_model(model, str(tmp), metadata={"format": "pt", "step": str(step)})


def load_weights(model: torch.nn.Module, path: Path) -> int:
    """Load weights into `model`; return the step they were saved at."""
    if not path.is_file():
        raise LmkitError(f"{path}: no such weights file")
    try:
        with safe_open(str(path), framework="pt") as f:
            step = int((f.metadata() or {}).get("step", -1))
        missing, unexpected = load_model(model, str(path), strict=False)
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise LmkitError(f"{path}: corrupt or truncated checkpoint ({str(e).splitlines()[0]})")
    if missing or unexpected:
        raise LmkitError(f"{path}: weights do not fit the model in config.json "
                         f"(missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]})")
    return step


def save_train_state(state: dict, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_train_state(path: Path) -> dict:
    if not path.is_file():
        raise LmkitError(f"{path}: no training state to resume from")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for truncated zip / pickle data
        raise LmkitError(f"{path}: corrupt or truncated checkpoint ({str(e).splitlines()[0][:120]})")
