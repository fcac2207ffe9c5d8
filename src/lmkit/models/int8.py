"""int8 weights: every Linear weight row w is stored as round(w / s) in int8 with one scale
s = max|w| / 127 per output channel (4× smaller than fp32). On load the rows are restored and PyTorch's
dynamic int8 kernels (`quantize_dynamic`, per-channel) run the matrix products; activations stay float.
"""
from __future__ import annotations

import warnings

import torch
import torch.nn as nn


def block_linears(model: nn.Module) -> dict[str, nn.Linear]:
    """The Linear layers inside the Transformer blocks (not embeddings or the output head)."""
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear) and n.startswith("h.")}


def int8_pack(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """w (out, in) -> (round(w / s) as int8, s) with one scale s = max|w_row| / 127 per output row."""
    w = w.float()
    scale = (w.abs().amax(dim=1, keepdim=True) / 127.0).clamp(min=1e-12)  # (out, 1)
    return torch.round(w / scale).clamp(-127, 127).to(torch.int8), scale.squeeze(1)


def pack_state(sd: dict[str, torch.Tensor], modules: list[str]) -> dict[str, torch.Tensor]:
    """A state dict with the weights of `modules` as `…weight_int8` + `…weight_scale`."""
    sd = dict(sd)
    for name in modules:
        sd[f"{name}.weight_int8"], sd[f"{name}.weight_scale"] = int8_pack(sd.pop(f"{name}.weight"))
    return sd


def unpack_state(sd: dict[str, torch.Tensor], modules: list[str]) -> dict[str, torch.Tensor]:
    """The inverse of pack_state: float weights q · s restored."""
    sd = dict(sd)
    for name in modules:
        q, s = sd.pop(f"{name}.weight_int8"), sd.pop(f"{name}.weight_scale")
        sd[f"{name}.weight"] = q.float() * s[:, None]
    return sd


def dynamic_int8(model: nn.Module, modules: list[str] | None = None) -> nn.Module:
    """A copy of `model` whose block Linears (or the named ones) run PyTorch's dynamic int8 kernels:
    weights int8 per output channel, activations quantized per call, outputs float."""
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic
    modules = list(block_linears(model)) if modules is None else modules
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization announces its move to torchao
        return quantize_dynamic(model.eval(), {n: per_channel_dynamic_qconfig for n in modules}, dtype=torch.qint8)
