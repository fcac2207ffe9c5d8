"""The Linear layers of the Transformer blocks, which pruning and quantization work on. The int8 / int4
weights themselves are in models/quant.py (QuantLinear)."""
from __future__ import annotations

import torch.nn as nn


def block_linears(model: nn.Module) -> dict[str, nn.Linear]:
    """The Linear layers inside the Transformer blocks (not embeddings or the output head)."""
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear) and n.startswith("h.")}
