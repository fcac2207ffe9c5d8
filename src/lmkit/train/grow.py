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

from ..config import Config, ModelConfig, load_json, save_json
from ..errors import LmkitError
from ..models import build_model
from ..tokenizer import Tokenizer
from .checkpoint import holds_run, is_run, load_weights, save_weights


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
    """Write a deeper copy of the run in `run_dir` to `out_dir` (config.json, tokenizer.json, weights at step 0)."""
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    if not is_run(run_dir):
        raise LmkitError(f"{run_dir}: not a run directory (no config.json and model.safetensors)")
    if holds_run(out_dir) and not overwrite:
        raise LmkitError(f"{out_dir}: already holds a run (use --overwrite to replace it)")
    cfg = load_json(run_dir / "config.json")
    model = build_model(cfg.model)
    load_weights(model, run_dir / "model.safetensors")
    deep = grow_model(model, n_layer)
    out_dir.mkdir(parents=True, exist_ok=True)
    new_cfg = Config(model=deep.config, data=cfg.data, train=cfg.train)
    new_cfg.train.out_dir, new_cfg.train.init_from = str(out_dir), ""
    save_weights(deep, out_dir / "model.safetensors", 0)
    Tokenizer.load(run_dir / "tokenizer.json").save(out_dir / "tokenizer.json")
    save_json(new_cfg, out_dir / "config.json")
    return out_dir


def load_init(path: str | Path, cfg: ModelConfig, tokenizer: Tokenizer) -> torch.nn.Module:
    """The model of `cfg` with the weights of run directory `path` (train.init_from)."""
    path = Path(path)
    if not is_run(path):
        raise LmkitError(f"init_from: {path} is not a run directory (no config.json and model.safetensors)")
    theirs = Tokenizer.load(path / "tokenizer.json")
    if theirs.hf.get_vocab() != tokenizer.hf.get_vocab():
        raise LmkitError(f"init_from: {path / 'tokenizer.json'} is not the tokenizer of this run's data")
    saved = load_json(path / "config.json").model
    if saved != cfg:
        diff = [f"{k} = {getattr(saved, k)!r} there, {getattr(cfg, k)!r} here" for k in vars(cfg)
                if getattr(saved, k) != getattr(cfg, k)]
        raise LmkitError(f"init_from: {path} has other model settings ({'; '.join(diff[:3])})")
    model = build_model(cfg)
    load_weights(model, path / "model.safetensors")
    return model
