"""Optimizers (AdamW; Muon + AdamW) and the learning-rate schedules (cosine; warm-up-stable-decay).

AdamW (Loshchilov & Hutter): m ← β1·m + (1−β1)·g;  v ← β2·v + (1−β2)·g²;
θ ← θ − lr·( m̂ / (√v̂ + ε) + λ·θ ), the weight decay λ·θ decoupled from the gradient.
Decay applies to weight matrices only: not to biases, norm gains or embeddings.

Muon (Jordan et al., 2024, "Muon: MomentUm Orthogonalized by Newton-Schulz"), for a hidden weight
matrix W (m × n) with gradient G:
    B ← μ·B + (1−μ)·G                      momentum buffer
    U ← (1−μ)·G + μ·B                      Nesterov look-ahead
    O ← NS₅(U) ≈ U·(UᵀU)^(−1/2)             the nearest semi-orthogonal matrix (all singular values ≈ 1)
    W ← W·(1 − lr·λ) − lr·√max(1, m/n)·O      (make_optimizer uses λ = 0 for these matrices)
NS₅ runs five steps of the quintic Newton–Schulz iteration on X₀ = U / ‖U‖_F (rows ≤ columns):
    A = X Xᵀ;  X ← a·X + (b·A + c·A²)·X,   (a, b, c) = (3.4445, −4.7750, 2.0315)
The coefficients push every singular value in (0, 1] towards ~1 fast (they land in about [0.7, 1.2],
which is enough: the update is used as a direction). Every step then has the same size whatever the
scale of the gradient, and rare directions get as much of it as common ones.
"""
from __future__ import annotations

import math
from collections import defaultdict

import torch
import torch.nn as nn
from torch.optim.adamw import adamw

from ..config import TrainConfig

NS_COEFFS = (3.4445, -4.7750, 2.0315)


def newton_schulz(g: torch.Tensor, steps: int = 5, eps: float = 1e-7) -> torch.Tensor:
    """g: (..., m, n) -> the approximately semi-orthogonal matrices NS₅(g) of the same shape (batched)."""
    a, b, c = NS_COEFFS
    tall = g.size(-2) > g.size(-1)
    x = g.mT if tall else g  # iterate on the wide side: A = X Xᵀ is the smaller square
    x = x / (x.norm(dim=(-2, -1), keepdim=True) + eps)
    for _ in range(steps):
        s = x @ x.mT
        x = a * x + (b * s + c * (s @ s)) @ x
    return x.mT if tall else x


def _split_params(model: nn.Module, muon: bool):
    """(hidden matrices, other decayed matrices, no-decay parameters), each parameter once.

    Hidden = 2-D weights inside the blocks; embeddings and the output head are not hidden (Muon's
    authors keep them on AdamW) and neither are 1-D gains and biases."""
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    head = getattr(model, "lm_head", None)
    outer = embeddings | ({id(head.weight)} if isinstance(head, nn.Linear) else set())
    hidden, decay, no_decay, seen = [], [], [], set()
    for p in model.parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        if p.dim() < 2 or id(p) in embeddings:
            no_decay.append(p)
        elif muon and id(p) not in outer:
            hidden.append(p)
        else:
            decay.append(p)
    return hidden, decay, no_decay


def make_optimizer(model: nn.Module, cfg: TrainConfig, device_type: str) -> torch.optim.Optimizer:
    hidden, decay, no_decay = _split_params(model, cfg.optimizer == "muon")
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    kwargs = dict(lr=cfg.learning_rate, betas=(cfg.beta1, cfg.beta2), eps=1e-8)
    if cfg.optimizer == "muon":
        groups.append({"params": hidden, "weight_decay": 0.0, "muon": True,
                       "lr_mult": cfg.muon_lr / cfg.learning_rate})
        return MuonAdamW([g for g in groups if g["params"]], momentum=cfg.muon_momentum, **kwargs)
    try:  # the fused kernel updates all parameters in one pass (CUDA, and CPU since torch 2.4)
        return torch.optim.AdamW(groups, fused=True, **kwargs)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(groups, **kwargs)


class MuonAdamW(torch.optim.Optimizer):
    """Muon for the groups marked `muon` (their step size is lr · lr_mult, so one schedule drives both),
    AdamW (PyTorch's fused kernel) for the others. One optimizer: one state_dict, one `lr` per group."""

    def __init__(self, params, lr: float, betas=(0.9, 0.99), eps: float = 1e-8, momentum: float = 0.95):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=0.0, momentum=momentum,
                                      muon=False, lr_mult=1.0))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if params:
                (self._muon if group["muon"] else self._adamw)(group, params)
        return loss

    def _adamw(self, group: dict, params: list) -> None:
        for p in params:
            if not self.state[p]:
                self.state[p].update(step=torch.tensor(0.0, device=p.device),
                                     exp_avg=torch.zeros_like(p), exp_avg_sq=torch.zeros_like(p))
        st = [self.state[p] for p in params]
        beta1, beta2 = group["betas"]
        fused = params[0].device.type in ("cpu", "cuda")
        adamw(params, [p.grad for p in params], [s["exp_avg"] for s in st], [s["exp_avg_sq"] for s in st], [],
              [s["step"] for s in st], fused=fused, foreach=None if fused else False, amsgrad=False,
              beta1=beta1, beta2=beta2, lr=group["lr"], weight_decay=group["weight_decay"], eps=group["eps"],
              maximize=False)

    def _muon(self, group: dict, params: list) -> None:
        mu, lr = group["momentum"], group["lr"] * group["lr_mult"]
        by_shape = defaultdict(list)  # matrices of one shape are orthogonalised together (one batched NS₅)
        for p in params:
            if "momentum_buffer" not in self.state[p]:
                self.state[p]["momentum_buffer"] = torch.zeros_like(p)
            buf = self.state[p]["momentum_buffer"]
            buf.lerp_(p.grad, 1 - mu)
            by_shape[p.shape].append((p, p.grad.lerp(buf, mu)))
        for shape, items in by_shape.items():
            ortho = newton_schulz(torch.stack([u for _, u in items]))
            scale = lr * math.sqrt(max(1.0, shape[0] / shape[1]))
            for (p, _), o in zip(items, ortho):
                if group["weight_decay"]:
                    p.mul_(1 - lr * group["weight_decay"])
                p.add_(o, alpha=-scale)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up to learning_rate over warmup_iters, then
    cosine: min_lr + ½(1 + cos(π·progress))·(learning_rate − min_lr) until lr_decay_iters, flat after;
    wsd:    learning_rate until the last decay_fraction of lr_decay_iters, then linear down to min_lr."""
    decay_iters = cfg.lr_decay_iters or cfg.max_iters
    if step < cfg.warmup_iters:
        return cfg.learning_rate * (step + 1) / (cfg.warmup_iters + 1)
    if step >= decay_iters:
        return cfg.min_lr
    if cfg.lr_schedule == "wsd":
        decay_start = max(cfg.warmup_iters, decay_iters - round(cfg.decay_fraction * decay_iters))
        if step < decay_start:
            return cfg.learning_rate
        progress = (step - decay_start) / max(1, decay_iters - decay_start)
        return cfg.learning_rate + progress * (cfg.min_lr - cfg.learning_rate)
    progress = (step - cfg.warmup_iters) / max(1, decay_iters - cfg.warmup_iters)
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (cfg.learning_rate - cfg.min_lr)
