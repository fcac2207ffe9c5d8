"""LoRA: low-rank adapters on a frozen model (Hu et al., 2021).

A target Linear layer W (out × in) keeps its weights frozen and learns a low-rank update:

    y = x Wᵀ + b + (α / r) · x Aᵀ Bᵀ,    A: (r × in) ~ Kaiming-uniform,  B: (out × r) = 0

B = 0 at the start, so the adapted model starts exactly equal to its base. Only A and B train
(r·(in + out) numbers per layer instead of in·out). Merging folds the update into the weight,
W' = W + (α / r) B A, after which the model is a plain one again (same outputs, no extra cost).

`LoRALinear` subclasses nn.Linear, so the base weights keep their names (`h.0.attn.qkv.weight`) and the
adapters add `….lora_A` / `….lora_B`. How a LoRA run is stored on disk: `lmkit.runs.native`.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import LmkitError

DEFAULT_TARGETS = ("attn.qkv", "attn.proj", "mlp.fc", "mlp.proj")  # every Linear of the GPT blocks


class LoRALinear(nn.Linear):
    """A frozen Linear plus the trainable low-rank update (α / r) · B A."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0):
        super().__init__(base.in_features, base.out_features, bias=base.bias is not None, device="meta")
        self.weight, self.bias = base.weight, base.bias  # the same tensors, frozen
        self.weight.requires_grad_(False)
        if self.bias is not None:
            self.bias.requires_grad_(False)
        self.rank, self.alpha, self.scale = rank, alpha, alpha / rank
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features, device=base.weight.device))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, device=base.weight.device))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # as nn.Linear initialises its weight
        self.lora_dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias) + self.scale * F.linear(F.linear(self.lora_dropout(x), self.lora_A),
                                                                           self.lora_B)

    def merged(self) -> nn.Linear:
        """A plain Linear with W' = W + (α / r) B A."""
        out = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                        device=self.weight.device, dtype=self.weight.dtype)
        with torch.no_grad():
            out.weight.copy_(self.weight + self.scale * (self.lora_B @ self.lora_A).to(self.weight.dtype))
            if self.bias is not None:
                out.bias.copy_(self.bias)
        return out


def _matches(name: str, target: str) -> bool:
    """`attn.qkv` matches `h.3.attn.qkv`; a target is a dotted suffix of module names."""
    return name == target or name.endswith("." + target)


def add_lora(model: nn.Module, targets=DEFAULT_TARGETS, rank: int = 8, alpha: float = 16.0,
             dropout: float = 0.0) -> list[str]:
    """Freeze every parameter of `model` and put a LoRA adapter on each Linear whose name ends with one of
    `targets`; returns the adapted module names. A target that matches no Linear is an error naming it."""
    if rank < 1:
        raise LmkitError(f"--lora-rank must be >= 1 (got {rank})")
    if alpha <= 0:
        raise LmkitError(f"--lora-alpha must be positive (got {alpha})")
    for p in model.parameters():
        p.requires_grad_(False)
    linears = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear) and not isinstance(m, LoRALinear)}
    for target in targets:
        if not any(_matches(n, target) for n in linears):
            known = sorted({n.split(".", 2)[-1] if n.startswith("h.") else n for n in linears})
            raise LmkitError(f"--lora-targets: '{target}' matches no Linear module of the model "
                             f"(its Linear modules: {', '.join(known)})")
    done = []
    for name, module in linears.items():
        if any(_matches(name, t) for t in targets):
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, LoRALinear(module, rank, alpha, dropout))
            done.append(name)
    return done


def merge_lora(model: nn.Module) -> nn.Module:
    """Replace every LoRALinear by its merged plain Linear (in place); the model's outputs do not change."""
    for name, module in list(model.named_modules()):
        if isinstance(module, LoRALinear):
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, module.merged())
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def adapter_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if ".lora_" in n}


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts, a tied matrix counted once."""
    seen, trainable, total = set(), 0, 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    return trainable, total
