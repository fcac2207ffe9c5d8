"""Training batches: random windows of a token memmap, for causal (GPT) or masked (BERT) language modelling.

Causal: windows of block_size+1 tokens; x = window[:-1], y = window[1:]: the model at position t predicts
token t+1. Offsets (and MLM masks) come from a torch.Generator whose state is saved in checkpoints, so a
resumed run sees the same batches.

Under data parallelism every rank holds the same generator and draws the offsets of the whole global
batch (batch_size × world_size windows); rank r keeps rows [r·batch_size, (r+1)·batch_size). The ranks'
data are disjoint slices of one draw, so 2 ranks × batch b see exactly the batches of 1 process × 2b,
and a checkpoint resumes on any world size.

A prepared mixture (data.mixture) hands its sources' ranges as `spans` [(start, end, weight)]: each global
batch then takes floor or ceil of N·weight windows from each source (systematic sampling from one random
start, in a random order), each inside its source's range, from the same generator.
"""
from __future__ import annotations

import numpy as np
import torch

from ..errors import LmkitError


class CausalBatches:
    def __init__(self, tokens: np.memmap, block_size: int, batch_size: int, seed: int, name: str = "train",
                 rank: int = 0, world_size: int = 1, spans: list | None = None, labels: list | None = None):
        if len(tokens) < block_size + 2:
            raise LmkitError(f"{name} split has {len(tokens)} tokens, fewer than block_size+2 = {block_size + 2}; "
                             "use more data or a smaller block_size")
        self.tokens, self.block_size, self.batch_size = tokens, block_size, batch_size
        self.rank, self.world_size = rank, world_size
        self.generator = torch.Generator().manual_seed(seed)
        self._arange = np.arange(block_size + 1)
        self.spans = None
        if spans and len(spans) > 1:
            self._mixture(spans, labels, name)

    def _mixture(self, spans: list, labels: list | None, name: str) -> None:
        for i, (start, end, _) in enumerate(spans):
            if end - start < self.block_size + 2:
                raise LmkitError(f"{labels[i] if labels else f'source {i}'}: its {name} split has {end - start} "
                                 f"tokens, fewer than block_size+2 = {self.block_size + 2}; give it more text or "
                                 "leave it out of the mixture")
        w = torch.tensor([s[2] for s in spans], dtype=torch.float64)
        self.cumulative = torch.cumsum(w / w.sum(), 0)
        self.cumulative[-1] = 1.0
        self.spans = torch.tensor([s[0] for s in spans]), torch.tensor([s[1] - s[0] - self.block_size - 1 for s in spans])

    def draw_sources(self, n: int) -> torch.Tensor:
        """Which source each of n windows comes from: systematic sampling, in a random order."""
        u = (torch.rand((), generator=self.generator, dtype=torch.float64) + torch.arange(n, dtype=torch.float64)) / n
        which = torch.searchsorted(self.cumulative, u, right=True).clamp_(max=len(self.cumulative) - 1)
        return which[torch.randperm(n, generator=self.generator)]

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        n = self.batch_size * self.world_size
        if self.spans is None:
            starts = torch.randint(len(self.tokens) - self.block_size - 1, (n,), generator=self.generator)
        else:
            which = self.draw_sources(n)
            u = torch.rand(n, generator=self.generator, dtype=torch.float64)
            starts = self.spans[0][which] + (u * self.spans[1][which]).long()
        starts = starts[self.rank * self.batch_size:(self.rank + 1) * self.batch_size]  # this rank's slice
        window = torch.from_numpy(self.tokens[starts.numpy()[:, None] + self._arange].astype(np.int64))  # (B, T+1)
        return window[:, :-1], window[:, 1:]

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])


class MLMBatches(CausalBatches):
    """Batches for masked language modelling (BERT): [CLS] + a random window of block_size−1 tokens.

    Each batch draws afresh which positions are selected (probability p, 15% by default; never [CLS]
    or special tokens); of the selected: 80% become [MASK], 10% a random token, 10% stay as they are.
    labels hold the original token at selected positions and −100 (ignored by the loss) elsewhere.
    """

    def __init__(self, tokens: np.memmap, block_size: int, batch_size: int, seed: int, tokenizer,
                 mlm_probability: float = 0.15, name: str = "train", rank: int = 0, world_size: int = 1,
                 spans: list | None = None, labels: list | None = None):
        super().__init__(tokens, block_size - 1, batch_size, seed, name, rank, world_size, spans, labels)
        if tokenizer.mask_id is None or tokenizer.cls_id is None:
            raise LmkitError("objective = 'mlm' needs a tokenizer with [CLS] and [MASK] (use tokenizer = 'wordpiece')")
        self.cls_id, self.mask_id, self.p = tokenizer.cls_id, tokenizer.mask_id, mlm_probability
        self.vocab_size = tokenizer.vocab_size
        self.special = torch.tensor(sorted(i for i in (tokenizer.pad_id, tokenizer.cls_id, tokenizer.sep_id,
                                                       tokenizer.mask_id, tokenizer.hf.token_to_id("[UNK]"))
                                           if i is not None))

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        window, _ = super().next()  # (B, T−1)
        x = torch.cat([torch.full((window.size(0), 1), self.cls_id), window], dim=1)  # (B, T)
        return mask_tokens(x, self.p, self.mask_id, self.vocab_size, self.special, self.generator)


def mask_tokens(x: torch.Tensor, p: float, mask_id: int, vocab_size: int, special: torch.Tensor,
                generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's 80/10/10 corruption of ids x (B, T) -> (inputs, labels with −100 where not selected)."""
    u = torch.rand(x.shape, generator=generator)
    selected = (u < p) & ~torch.isin(x, special)
    labels = torch.where(selected, x, torch.full_like(x, -100))
    r = torch.rand(x.shape, generator=generator)  # which of the three fates
    random_ids = torch.randint(vocab_size, x.shape, generator=generator)
    inputs = torch.where(selected & (r < 0.8), torch.full_like(x, mask_id), x)
    inputs = torch.where(selected & (r >= 0.8) & (r < 0.9), random_ids, inputs)
    return inputs, labels


def make_batches(tokens: np.memmap, cfg, seed: int, tokenizer, name: str = "train", rank: int = 0,
                 world_size: int = 1) -> CausalBatches:
    """The batches the training objective needs: next-token windows (clm) or masked windows (mlm); from a
    mixture's sources in proportion to their weights when `tokens` (open_split) carries their spans."""
    t = cfg.train
    spans, labels = getattr(tokens, "mixture", None), getattr(tokens, "mixture_labels", None)
    if t.objective == "mlm":
        return MLMBatches(tokens, cfg.model.block_size, t.batch_size, seed, tokenizer, t.mlm_probability, name,
                          rank, world_size, spans, labels)
    return CausalBatches(tokens, cfg.model.block_size, t.batch_size, seed, name, rank, world_size, spans, labels)


def pad_batch(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad to the longest sequence -> ids (B, T), attention_mask (B, T) with 1 on real tokens."""
    T = max(len(s) for s in seqs)
    idx = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), T), dtype=torch.long)
    for i, s in enumerate(seqs):
        idx[i, :len(s)] = torch.tensor(s)
        mask[i, :len(s)] = 1
    return idx, mask
