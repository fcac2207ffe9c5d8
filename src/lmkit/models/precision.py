"""Which float precision a model runs in: the dtype names the configs and flags take, and 'auto', the
machine's choice (bfloat16 where the hardware multiplies it natively, else float32)."""
from __future__ import annotations

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def fast_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices natively (AVX-512 BF16 or AMX): there a bf16 matmul is
    several times fp32's; on AVX2-only CPUs it is far slower."""
    return getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)() or \
        getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()


def resolve_dtype(dtype: str, device: torch.device) -> str:
    """'auto' -> bfloat16 where it is fast, else float32. On CPUs without native bf16 (AVX2 only),
    bf16 matmuls run about 100x slower than fp32, so auto never picks it there."""
    if dtype != "auto":
        return dtype
    if device.type == "cuda":
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
    if device.type == "cpu":
        return "bfloat16" if fast_bf16() else "float32"
    return "float32"
