"""Batches for causal language modelling: random windows of block_size+1 tokens from a memmap.

x = window[:-1], y = window[1:]: the model at position t predicts token t+1. Offsets come from a
torch.Generator whose state is saved in checkpoints, so a resumed run sees the same batches.

Under data parallelism every rank holds the same generator and draws the offsets of the whole global
batch (batch_size × world_size windows); rank r keeps rows [r·batch_size, (r+1)·batch_size). The ranks'
data are disjoint slices of one draw, so 2 ranks × batch b see exactly the batches of 1 process × 2b,
and a checkpoint resumes on any world size.
"""
from __future__ import annotations

import numpy as np
import torch

from ..errors import LmkitError


class CausalBatches:
    def __init__(self, tokens: np.memmap, block_size: int, batch_size: int, seed: int, name: str = "train",
                 rank: int = 0, world_size: int = 1):
        if len(tokens) < block_size + 2:
            raise LmkitError(f"{name} split has {len(tokens)} tokens, fewer than block_size+2 = {block_size + 2}; "
                             "use more data or a smaller block_size")
        self.tokens, self.block_size, self.batch_size = tokens, block_size, batch_size
        self.rank, self.world_size = rank, world_size
        self.generator = torch.Generator().manual_seed(seed)
        self._arange = np.arange(block_size + 1)

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        starts = torch.randint(len(self.tokens) - self.block_size - 1, (self.batch_size * self.world_size,),
                               generator=self.generator)
        starts = starts[self.rank * self.batch_size:(self.rank + 1) * self.batch_size]  # this rank's slice
        window = torch.from_numpy(self.tokens[starts.numpy()[:, None] + self._arange].astype(np.int64))  # (B, T+1)
        return window[:, :-1], window[:, 1:]

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
