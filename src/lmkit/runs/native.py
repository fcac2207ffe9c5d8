"""lmkit's own run directories: reading (run, int8, pruned, lora, merged) and writing them.

    config.json          the Config the model was built from (validated on read)
    tokenizer.json       the tokenizer
    model.safetensors    the weights; metadata "step" = the training step they were saved at
    chat_template.json   the chat template, when the run was chat fine-tuned
    + one marker file for the derived kinds: quantization.json (int8 / int4 weights: `…weight_int8` or
    `…weight_int4`, and `…weight_scale`; it records method, bits, group_size, modules, source),
    adapter_config.json (LoRA: base and adapters in model.safetensors, merged on read), pruning.json,
    merged.json.
"""
from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file, save_model

from ..chat import load_template
from ..config import load_json, save_json
from ..errors import LmkitError
from ..io import atomic_dir, atomic_path, atomic_write_text, check_target, holds_files, user_mode
from ..models import build_model
from ..models.quant import prepare, replace_linears
from ..models.lora import add_lora, adapter_state, merge_lora
from ..tokenizer import Tokenizer
from .detect import MARKERS, read_json
from .record import Run
from .target import OWN_FILES, clear

ADAPTER_WEIGHTS = "adapter.safetensors"


# ---- reading ----------------------------------------------------------------------------------------
def read_weights(file: Path) -> tuple[dict[str, torch.Tensor], int]:
    """The tensors of a safetensors file and the step in its metadata (-1 when none)."""
    if not file.is_file():
        raise LmkitError(f"{file}: no such weights file")
    try:
        with safe_open(str(file), framework="pt") as f:
            step = int((f.metadata() or {}).get("step", -1))
        return load_file(str(file)), step
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise LmkitError(f"{file}: corrupt or truncated checkpoint ({str(e).splitlines()[0][:160]})")


def check_fit(model: torch.nn.Module, sd: dict[str, torch.Tensor], file: Path, what: str = "config.json") -> None:
    """Say precisely how `sd` disagrees with `model`, if it does: a tensor whose shape differs (both shapes
    named), or names missing / unexpected. A tied matrix may be stored once. Works on a meta-device model."""
    want = model.state_dict()
    for k, v in want.items():
        if k in sd and tuple(sd[k].shape) != tuple(v.shape):
            raise LmkitError(f"{file}: the weights do not match {what}: {k} is {tuple(sd[k].shape)} in the file "
                             f"but {tuple(v.shape)} for the model {what} describes")
    shared = {}  # tied parameters are one object under several names
    for k, p in model.named_parameters(remove_duplicate=False):
        shared.setdefault(id(p), []).append(k)
    tied = {k for keys in shared.values() if any(n in sd for n in keys) for k in keys}
    missing = sorted(k for k in want if k not in sd and k not in tied)
    unexpected = sorted(k for k in sd if k not in want)
    if missing or unexpected:
        raise LmkitError(f"{file}: weights do not fit the model in {what} "
                         f"(missing {missing[:3]}, unexpected {unexpected[:3]})")


def fit_weights(model: torch.nn.Module, sd: dict[str, torch.Tensor], file: Path, what: str = "config.json") -> None:
    """Load `sd` into `model`, or say precisely how they disagree (see check_fit)."""
    check_fit(model, sd, file, what)
    model.load_state_dict(sd, strict=False)


def load_weights(model: torch.nn.Module, file: Path) -> int:
    """Fill `model` from a safetensors file; returns the step it was saved at."""
    sd, step = read_weights(file)
    fit_weights(model, sd, file)
    return step


def quant_settings(file: Path, meta: dict) -> tuple[int, int | None, list[str]]:
    """bits, group size and module names from quantization.json (a run written before int4 existed has
    method "int8-per-channel" and no bits: 8 bits, one scale per row)."""
    bits, group_size, modules = meta.get("bits", 8), meta.get("group_size"), meta.get("modules")
    if bits not in (4, 8) or not (group_size is None or (isinstance(group_size, int) and group_size > 0)) \
            or not isinstance(modules, list):
        raise LmkitError(f"{file}: bad quantization settings (bits {bits!r}, group_size {group_size!r}, "
                         f"modules {type(modules).__name__})")
    return bits, group_size, modules


def read_native(path: Path, kind: str) -> Run:
    """A run directory as a Run: its config, tokenizer, chat template and model with the weights in place
    (int8 / int4 weights in QuantLinears, models/quant.py; LoRA adapters are merged into the weights)."""
    cfg = load_json(path / "config.json")
    tokenizer = Tokenizer.load(path / "tokenizer.json")
    meta = read_json(path / MARKERS[kind]) if kind in MARKERS else {}
    model = build_model(cfg.model)
    file = path / "model.safetensors"
    if kind == "int8":
        bits, group_size, modules = quant_settings(path / MARKERS[kind], meta)
        try:
            replace_linears(model, modules, bits, group_size, empty=True)
        except LmkitError as e:
            raise LmkitError(f"{path / MARKERS[kind]}: {e}")
        step = load_weights(model, file)
        prepare(model)
    elif kind == "lora":
        try:
            add_lora(model, meta["targets"], meta["rank"], meta["alpha"])
        except (KeyError, TypeError) as e:
            raise LmkitError(f"{path / MARKERS['lora']}: missing or bad field {e}")
        step = load_weights(model, file)
        model = merge_lora(model)
    else:
        step = load_weights(model, file)
    return Run(path, kind, cfg, model, tokenizer, load_template(path, tokenizer), meta, max(step, 0))


# ---- writing ----------------------------------------------------------------------------------------
def save_native(out: str | Path, config, tokenizer, model=None, state_dict=None, chat_template=None,
                marker: tuple[str, dict] | None = None, step: int = 0, overwrite: bool = False,
                metadata: dict | None = None, weights_file: Path | None = None) -> Path:
    """Write a run directory: config.json (with train.out_dir = out), tokenizer.json, model.safetensors
    (from `model`, from `state_dict` as given, e.g. int8, or the finished `weights_file` moved in), the chat
    template when it has special tokens,
    and `marker` = (kind, record) for a derived kind. A new folder is built beside and renamed into place
    whole; an existing one (with `overwrite`) has lmkit's files replaced one by one."""
    out = check_target(out, overwrite)
    cfg = copy.deepcopy(config)
    cfg.train.out_dir = str(out)
    if state_dict is None:
        state_dict = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    sd, seen = {}, set()
    for k, v in state_dict.items():  # a tied matrix is stored once (safetensors refuses shared storage)
        if v.data_ptr() in seen and v.numel():
            continue
        seen.add(v.data_ptr())
        sd[k] = v.contiguous()

    def write(d: Path) -> None:
        tokenizer.save(d / "tokenizer.json")
        if chat_template is not None and chat_template.special:
            chat_template.save(d)
        if weights_file is not None:  # written already (e.g. streamed by import-hf): moved in with the rest
            os.replace(weights_file, d / "model.safetensors")
        else:
            save_file(sd, str(d / "model.safetensors"), metadata={"format": "pt", "step": str(step),
                                                                  **(metadata or {})})
        if marker is not None:
            (d / MARKERS[marker[0]]).write_text(json.dumps(marker[1], indent=2, ensure_ascii=False) + "\n",
                                                encoding="utf-8")
        save_json(cfg, d / "config.json")

    if holds_files(out):  # --overwrite: lmkit's files are replaced, anything else of the user's stays
        clear(out)
        write(out)
        for f in OWN_FILES:  # as atomic_dir does for a new folder: the user's umask, not a writer's 0600
            if (out / f).is_file():
                user_mode(out / f)
    else:
        with atomic_dir(out) as tmp:
            write(tmp)
    return out


def save_weights(model: torch.nn.Module, file: Path, step: int, before_rename=None) -> None:
    """model.safetensors alone, atomically and flushed to disk (the training loop's checkpoints; metadata
    "trainer" marks them). `before_rename()` runs when the temp file is complete (fault injection)."""
    with atomic_path(file, fsync=True) as tmp:
        save_model(model, str(tmp), metadata={"format": "pt", "step": str(step), "trainer": "lmkit"})
        if before_rename is not None:
            before_rename()


def weights_metadata(file: Path) -> dict | None:
    """The metadata of a safetensors file (its header alone is read), or None when it is missing or corrupt."""
    try:
        with safe_open(str(file), framework="pt") as f:
            return f.metadata() or {}
    except (SafetensorError, OSError, ValueError, RuntimeError):
        return None


def save_adapters(model: torch.nn.Module, out_dir: Path, settings: dict) -> None:
    """A LoRA run's adapter.safetensors (the adapters alone) and adapter_config.json (rank, alpha, targets,
    base)."""
    with atomic_path(out_dir / ADAPTER_WEIGHTS) as tmp:
        save_file(adapter_state(model), str(tmp), metadata={"format": "pt"})
    atomic_write_text(out_dir / MARKERS["lora"], json.dumps(settings, indent=2) + "\n")
