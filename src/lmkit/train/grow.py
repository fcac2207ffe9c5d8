"""Progressive stacking: make a trained GPT deeper by copying its layers, then keep training it.

New layer i of n takes its weights from old layer ⌊i·n_old/n⌋. The first copy of each old layer is
that layer; a further copy gets its attention and MLP output projections (weights and biases) set
to zero, so it starts as the identity: x + 0 + 0 = x. The grown model therefore computes exactly
what the shallow one did (same loss at step 0), and training moves the copies away from the
identity where depth helps (the projections get gradients at once: ∂L/∂W_proj = h·δᵀ ≠ 0).

    lmkit grow runs/shallow --n-layer 8 --out runs/grown
    lmkit train examples/x.toml --set n_layer=8 init_from=runs/grown out_dir=runs/deep
"""
from __future__ import annotations

import copy
from pathlib import Path

import torch

from ..config import Config
from ..errors import LmkitError
from ..models import build_model
from ..runs import check_target, open_run, save_run
from ..runs.train_dir import INIT_KINDS


def layer_sources(n_old: int, n_new: int) -> list[int]:
    """Which old layer each new layer copies: [⌊i·n_old/n_new⌋ for i < n_new] (each old layer used)."""
    return [i * n_old // n_new for i in range(n_new)]


def grow_model(model: torch.nn.Module, n_layer: int) -> torch.nn.Module:
    """A deeper copy of a GPT that computes the same function (new copies start as identity blocks)."""
    cfg = model.config
    if cfg.type != "gpt":
        raise LmkitError(f"grow: only GPT models grow by stacking layers (this is '{cfg.type}')")
    if n_layer <= cfg.n_layer:
        raise LmkitError(f"grow: --n-layer {n_layer} must be larger than the model's {cfg.n_layer} layers")
    new_cfg = copy.deepcopy(cfg)
    new_cfg.n_layer = n_layer
    deep = build_model(new_cfg)
    old = model.state_dict()
    deep.load_state_dict({k: v for k, v in old.items() if not k.startswith("h.")}, strict=False)
    used = set()
    for i, src in enumerate(layer_sources(cfg.n_layer, n_layer)):
        block = deep.h[i]
        block.load_state_dict(model.h[src].state_dict())
        if src in used:  # a further copy: zero its output projections -> the block is the identity
            with torch.no_grad():
                for proj in (block.attn.proj, block.mlp.proj):
                    proj.weight.zero_()
                    if proj.bias is not None:
                        proj.bias.zero_()
        used.add(src)
    return deep


def grow_run(run_dir: str | Path, n_layer: int, out_dir: str | Path, overwrite: bool = False) -> Path:
    """Write a deeper copy of the GPT run in `run_dir` to `out_dir` (config.json, tokenizer.json, weights at
    step 0). An int8 or LoRA run, another family, or a non-empty `out_dir` without `overwrite` is refused in
    one line."""
    if not overwrite:
        check_target(out_dir)  # refuse before the work (with overwrite, save_run clears it)
    run = open_run(run_dir, accept=INIT_KINDS, families=("gpt",), purpose="grow")
    deep = grow_model(run.model, n_layer)
    cfg = Config(model=deep.config, data=run.config.data, train=run.config.train)
    cfg.train.init_from = ""
    return save_run(out_dir, cfg, run.tokenizer, model=deep, chat_template=run.chat_template, overwrite=overwrite)
