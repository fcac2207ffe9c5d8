"""Text classifier directories (lmkit finetune classify): classifier.json (backbone settings, pooling,
labels, fields), model.safetensors (backbone + head), tokenizer.json."""
from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import save_model

from ..config import Config, ModelConfig
from ..errors import LmkitError
from ..io import atomic_path, atomic_write_text
from ..models.classifier import Classifier, build_classifier
from ..tokenizer import Tokenizer
from .detect import read_json
from .native import load_weights
from .record import Run


def read_classifier(path: Path) -> Run:
    meta = read_json(path / "classifier.json")
    try:
        model = build_classifier(meta)
    except (KeyError, TypeError) as e:
        raise LmkitError(f"{path / 'classifier.json'}: missing or bad field {e}")
    step = load_weights(model, path / "model.safetensors")
    cfg = Config(model=ModelConfig(**meta["model"]))
    return Run(path, "classifier", cfg, model, Tokenizer.load(path / "tokenizer.json"), meta=meta, step=max(step, 0))


def save_classifier(model: Classifier, tokenizer: Tokenizer, meta: dict, out: str | Path) -> Path:
    """Write (or replace, file by file, each atomically) a classifier directory's files. The caller checks
    the target first (runs.check_target); the training loop calls this at every improvement."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "model.safetensors") as tmp:
        save_model(model, str(tmp))
    tokenizer.save(out / "tokenizer.json")
    atomic_write_text(out / "classifier.json", json.dumps(meta, indent=2) + "\n")
    return out
