"""open_run and save_run: the entry points of the loading layer (see lmkit.runs)."""
from __future__ import annotations

from pathlib import Path

import torch

from ..errors import LmkitError
from ..models.precision import DTYPES, resolve_dtype
from .classifier import read_classifier
from .detect import Found, detect, refusal
from .hf import read_hf, resolve_hub
from .native import read_native, save_native
from .record import Run

# what commands accept: kinds, and model families (config.model.type, or "classifier")
MODELS = ("run", "hf", "int8", "pruned", "lora", "merged")  # every kind that holds one language model
FLOAT = ("run", "hf", "pruned", "lora", "merged")  # ... with float weights (trainable, exportable)
NATIVE_FLOAT = ("run", "pruned", "lora", "merged")  # ... written by lmkit itself
CAUSAL = ("gpt", "lstm")  # the families that generate text
ENCODERS = ("bert",)


def open_run(path: str | Path, accept=MODELS, families=None, purpose: str = "this command",
             device: str = "cpu", hints: dict | None = None, what: str = "run directory",
             dtype: str = "float32") -> Run:
    """Open the directory at `path` as a Run, refusing (LmkitError, one line) a kind or model family that
    is not in `accept` / `families`. `hints` may replace the advice given for a refused kind or family;
    `what` names the directory expected, in messages for a path that is none of lmkit's kinds.
    `dtype` ("float32", "bfloat16" or "auto": bfloat16 where the device multiplies it natively) is the
    precision of a float model's weights; a quantized run keeps its own (its kernels choose)."""
    found = detect(path, what)
    if found.kind not in accept:
        raise LmkitError(refusal(found, purpose, hints, accept))
    if found.kind == "hf" and found.hf_id:
        found = detect(resolve_hub(str(found.path)))
    if families is not None and found.family is not None and found.family not in families:
        raise LmkitError(refusal(found, purpose, hints, accept, families))
    run = _read(found, device, dtype)
    if families is not None and run.family not in families:  # a hub id: family known once downloaded
        raise LmkitError(refusal(detect(run.path), purpose, hints, accept, families))
    return run


def _read(found: Found, device: str, dtype: str) -> Run:
    if found.kind == "hf":
        run = read_hf(found.path)
    elif found.kind == "classifier":
        run = read_classifier(found.path)
    elif found.kind in ("index", "data"):
        return Run(found.path, found.kind, meta=found.meta)
    else:
        run = read_native(found.path, found.kind)
    dtype = resolve_dtype(dtype, torch.device(device))
    float_model = found.kind != "int8"  # "int8" is every lmkit quantize output, int4 too: its kernels choose
    run.model.to(device, DTYPES[dtype] if float_model else None).eval()
    return run


def save_run(out: str | Path, config, tokenizer, model=None, state_dict=None, chat_template=None,
             marker: tuple[str, dict] | None = None, step: int = 0, overwrite: bool = False, metadata=None) -> Path:
    """Write a native run directory (see native.save_native)."""
    return save_native(out, config, tokenizer, model, state_dict, chat_template, marker, step, overwrite, metadata)


