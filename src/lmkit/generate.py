"""Sampling: the one generation loop behind the CLI and the Python API.

Each step turns the logits of the last position into a distribution and draws the next token:
    p = softmax(logits / temperature), restricted to the k most likely tokens (top-k) and/or the
    smallest set whose probability reaches top_p (nucleus); temperature 0 means greedy (argmax).
The prompt runs through the model once (prefill) and fills a key/value cache; every later step feeds
only the newest token. When the text outgrows the context, the oldest tokens are dropped.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch


@dataclass
class SamplingConfig:
    max_new_tokens: int = 200
    temperature: float = 0.8
    top_k: int | None = 200
    top_p: float | None = None
    seed: int | None = None
    stop_at_eos: bool = True


def sample_next(logits: torch.Tensor, cfg: SamplingConfig, generator: torch.Generator | None) -> torch.Tensor:
    """logits (B, V) -> next token ids (B,)."""
    logits = logits.float()
    if cfg.temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits / cfg.temperature
    if cfg.top_k is not None and cfg.top_k < logits.size(-1):
        kth = torch.topk(logits, cfg.top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if cfg.top_p is not None and cfg.top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        drop = cum - sorted_logits.softmax(dim=-1) >= cfg.top_p  # keep tokens until the mass reaches top_p
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.no_grad()
def generate_ids(model, idx: torch.Tensor, cfg: SamplingConfig, eos_id: int | None = None,
                 use_cache: bool = True) -> Iterator[torch.Tensor]:
    """Yield the next token of every sequence, (B,), up to max_new_tokens or until all hit EOS."""
    model.eval()
    device = next(model.parameters()).device
    block = model.config.block_size
    generator = None
    if cfg.seed is not None:
        generator = torch.Generator(device=device).manual_seed(cfg.seed)
    idx = idx.to(device)
    done = torch.zeros(idx.size(0), dtype=torch.bool, device=device)
    cache = model.make_cache(idx.size(0), block) if use_cache else None
    fresh = idx[:, -block:]  # what the model has not seen yet (the prompt, at first)
    for _ in range(cfg.max_new_tokens):
        if cache is not None and cache.pos + fresh.size(1) > block:
            cache.pos = 0  # context is full: recompute the cache over the last block_size tokens
            fresh = idx[:, -block:]
        if cache is None:
            fresh = idx[:, -block:]
        logits, _ = model(fresh, cache=cache, last_only=True)
        nxt = sample_next(logits[:, -1], cfg, generator)
        if eos_id is not None and cfg.stop_at_eos:
            nxt = torch.where(done, torch.full_like(nxt, eos_id), nxt)
            done |= nxt == eos_id
        idx = torch.cat([idx, nxt[:, None]], dim=1)
        fresh = nxt[:, None]
        yield nxt
        if eos_id is not None and cfg.stop_at_eos and bool(done.all()):
            return


class TextStream:
    """Turns a growing list of token ids into text pieces, holding back a piece that ends inside a
    multi-byte character (a byte-level token may carry half of a Chinese character or emoji)."""

    def __init__(self, tokenizer):
        self.tokenizer, self.ids, self.emitted = tokenizer, [], ""

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        text = self.tokenizer.decode(self.ids)
        if text.endswith("\ufffd"):
            return ""
        piece, self.emitted = text[len(self.emitted):], text
        return piece

    def flush(self) -> str:
        text = self.tokenizer.decode(self.ids)
        piece, self.emitted = text[len(self.emitted):], text
        return piece
