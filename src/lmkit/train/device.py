"""Where and in which precision the training loop runs: the device, the autocast dtype."""
from __future__ import annotations

import contextlib

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def pick_device(name: str) -> torch.device:
    """'auto' -> cuda when there is one, else cpu; any other name as given."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_dtype(dtype: str, device: torch.device) -> str:
    """'auto' -> bfloat16 where it is fast, else float32. On CPUs without native bf16 (AVX2 only),
    bf16 matmuls run about 100x slower than fp32, so auto never picks it there."""
    if dtype != "auto":
        return dtype
    if device.type == "cuda":
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
    if device.type == "cpu":
        is_fast = getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)()
        is_fast = is_fast or getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()
        return "bfloat16" if is_fast else "float32"
    return "float32"


def autocast_ctx(device: torch.device, dtype: str):
    """Mixed precision for a forward pass: a no-op for float32."""
    if dtype == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=DTYPES[dtype])
