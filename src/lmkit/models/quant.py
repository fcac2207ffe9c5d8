"""Weight-only quantized Linears through torchao: int8 (one scale per output row, or per group of
`group_size` inputs) or int4 (one scale per group); activations stay float. The fp32 model stays the
reference. `quantize_linears` is the one entry point (in place); its signature is kept stable.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..errors import LmkitError

BITS = (4, 8)
GROUP_SIZES = (32, 64, 128)


def quantize_linears(model: nn.Module, bits: int, group_size: int | None = None,
                     modules: list[str] | None = None) -> nn.Module:
    """Make the named Linears of `model` (None: every nn.Linear) weight-only int8/int4 through torchao's
    `quantize_`, in place; returns `model`. bits 8 with group_size None: one scale per output row;
    bits 4 needs a group size (default 32). Bad bits or a group size that does not divide a layer's
    input width: LmkitError naming it."""
    from torchao.quantization import Int8WeightOnlyConfig, IntxWeightOnlyConfig, quantize_
    from torchao.quantization.granularity import PerGroup
    if bits not in BITS:
        raise LmkitError(f"--bits {bits}: must be 4 or 8")
    if bits == 4 and group_size is None:
        group_size = 32
    linears = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    names = list(linears) if modules is None else list(modules)
    for n in names:
        if n not in linears:
            raise LmkitError(f"{n}: not a Linear layer of this model")
        width = linears[n].in_features
        if group_size is not None and (group_size <= 0 or width % group_size):
            raise LmkitError(f"--group-size {group_size}: does not divide the width {width} of layer {n}")
    if bits == 8:
        cfg = Int8WeightOnlyConfig() if group_size is None else Int8WeightOnlyConfig(granularity=PerGroup(group_size))
    else:
        cfg = IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(group_size))
    chosen = set(names)
    quantize_(model, cfg, filter_fn=lambda m, fqn: fqn in chosen)
    return model
