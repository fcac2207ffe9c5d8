"""Run directories: everything needed to reload, continue or export a model.

    config.json        the full Config the run was trained with
    tokenizer.json     its tokenizer
    model.safetensors  weights (metadata: step), written and read by lmkit.runs.native
    train_state.pt     optimizer, step, RNG and data-sampler state (tensors and numbers only,
                       read back with torch.load(weights_only=True)): this module
    train_state/       under torchrun: model and optimizer shards (torch.distributed.checkpoint);
                       train_state.pt then holds no optimizer
    metrics.jsonl      one JSON line per log / eval
    loss.png           the loss curve

Each file is written to a temp file and renamed, so an interrupted save never leaves a broken file.
What may be written where (resume, overwrite, init_from) is decided in lmkit.runs.train_dir.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..errors import LmkitError
from ..io import atomic_path


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
