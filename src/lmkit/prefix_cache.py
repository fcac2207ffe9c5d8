"""Prefix caching: prompts that start alike (a system prompt, few-shot examples) reuse the keys and values
computed for that start instead of running it through the model again.

In a causal Transformer the key and value of the token at position t depend only on tokens 0 … t and on t
itself (positions count a row's real tokens: padding shifts nothing, see models/gpt.py). So K/V computed
once for a prompt's first tokens serve every later prompt that starts with exactly those tokens. The
cache stores them in blocks of `block_tokens` (16) tokens: block j of a prompt holds the K/V of its
tokens 16j … 16j+15 in every layer and is found by the tokens before and in it, as a chain

    entry of block j = table[(serial of the entry of block j−1, the 16 token ids of block j)]

(serial 0 for the first block). Serials are never reused, so a lookup matches the exact token prefix —
no hash of the tokens stands in for them. A prompt's hit is its longest run of cached blocks from the
start; DecodeSession (engine.py) copies those K/V into its cache, prefills only the rest and stores the
full blocks it computed.

A batch is left-padded, so its prefill is as wide as its widest un-cached part: a row whose cached part
is longer recomputes the difference (32 prompts sharing a system prompt differ only by their user parts).

Memory: a block costs 2 · n_layer · n_kv_head · 16 · head_dim numbers in the model's dtype (a 4×256 fp32
model: 8 KiB a token, so the default 256 MiB hold 32k tokens); blocks are kept under `max_bytes` by
evicting the least recently used block that no cached block continues (a chain's leaf: evicting an
inner block would strand its descendants). Every lookup and store refreshes the blocks of its chain,
the first block most recently.

Only GPT models (their cache is the plain KVCache; a sliding window is fine, it is still causal): for
the LSTM a PrefixCache holds nothing and sessions ignore it. The tokens are those without the cache; the
K/V were computed in another batch, so logits may differ by float rounding (in the tests, fp32 on a CPU,
they come out identical).
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Sequence

import torch

from .errors import LmkitError
from .models.gpt import GPT

__all__ = ["PrefixCache", "BLOCK_TOKENS", "DEFAULT_MB"]

BLOCK_TOKENS = 16
DEFAULT_MB = 256


@dataclass(eq=False)
class Block:
    serial: int
    parent: tuple | None  # the table key of the block before, None for a prompt's first block
    k: torch.Tensor  # (n_layer, n_kv_head, block_tokens, head_dim)
    v: torch.Tensor
    children: int = 0  # cached blocks that continue this one

    @property
    def nbytes(self) -> int:
        return self.k.numel() * self.k.element_size() + self.v.numel() * self.v.element_size()


class PrefixCache:
    """K/V of prompt prefixes in blocks of `block_tokens` tokens for one `model`, the least recently used
    evicted beyond `max_bytes`. `lookup_tokens` counts the prompt tokens sessions looked up, `hit_tokens`
    those their prefill did not compute; `bytes` is what the blocks hold."""

    def __init__(self, model, block_tokens: int = BLOCK_TOKENS, max_bytes: int = DEFAULT_MB * 2 ** 20):
        if isinstance(block_tokens, bool) or not isinstance(block_tokens, int) or block_tokens < 1:
            raise LmkitError(f"block_tokens must be an integer >= 1 (got {block_tokens!r})")
        if not max_bytes >= 0:
            raise LmkitError(f"max_bytes must be >= 0 (got {max_bytes!r})")
        self.model, self.block_tokens, self.max_bytes = model, block_tokens, max_bytes
        self.table: OrderedDict[tuple, Block] = OrderedDict()  # (serial of the block before, token ids) -> Block
        self.bytes = self.hit_tokens = self.lookup_tokens = 0
        self._serial = 0  # the last serial given out

    @property
    def enabled(self) -> bool:
        """False for models whose cache is not a KVCache (the LSTM): nothing is stored or found."""
        return isinstance(self.model, GPT)

    def __len__(self) -> int:
        return len(self.table)

    def _hits(self, ids: Sequence[int]) -> list[tuple[tuple, Block]]:
        """(key, Block) of the cached chain of `ids`'s usable blocks, from the first block to the first miss."""
        n, serial, out = self.block_tokens, 0, []
        for j in range(self.usable_blocks(ids)):
            key = (serial, tuple(ids[j * n:(j + 1) * n]))
            if (blk := self.table.get(key)) is None:
                break
            out.append((key, blk))
            serial = blk.serial
        return out

    def usable_blocks(self, ids: Sequence[int]) -> int:
        """Blocks a prompt could reuse: full blocks that leave its last token to compute (its logits are drawn from)."""
        return (len(ids) - 1) // self.block_tokens if self.enabled else 0

    def cached_tokens(self, ids: Sequence[int]) -> int:
        """Tokens of `ids` a lookup would find now (counts and recency untouched)."""
        return len(self._hits(ids)) * self.block_tokens

    def lookup(self, ids: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The K/V of the longest cached block prefix of `ids` (never its last token), each (n_layer,
        n_kv_head, hit, head_dim), or None; its blocks are refreshed."""
        chain = self._hits(ids)
        if not chain:
            return None
        self._refresh([key for key, _ in chain])
        return torch.cat([b.k for _, b in chain], dim=2), torch.cat([b.v for _, b in chain], dim=2)

    def count(self, looked_up: int, reused: int) -> None:
        """A session looked up `looked_up` prompt tokens and did not compute `reused` of them (the counters)."""
        self.lookup_tokens += looked_up
        self.hit_tokens += reused

    def store(self, ids: Sequence[int], k: torch.Tensor, v: torch.Tensor) -> None:
        """Keep the full blocks of prompt `ids` whose K/V are k, v (n_layer, n_kv_head, len(ids), head_dim):
        the blocks not cached yet are copied, all of the chain refreshed."""
        if not self.enabled:
            return
        n, chain, serial, parent = self.block_tokens, [], 0, None
        for j in range(len(ids) // n):
            key = (serial, tuple(ids[j * n:(j + 1) * n]))
            blk = self.table.get(key)
            if blk is None:
                kb, vb = k[:, :, j * n:(j + 1) * n], v[:, :, j * n:(j + 1) * n]
                if not self._make_room(kb.numel() * kb.element_size() * 2, keep=parent):
                    break
                self._serial += 1
                copy = lambda t: t.clone(memory_format=torch.contiguous_format)  # noqa: E731 (not a view of k)
                blk = self.table[key] = Block(self._serial, parent, copy(kb), copy(vb))
                self.bytes += blk.nbytes
                if parent is not None:
                    self.table[parent].children += 1
            chain.append(key)
            serial, parent = blk.serial, key
        self._refresh(chain)

    def _refresh(self, chain: list[tuple]) -> None:
        for key in reversed(chain):  # the first block last: most recent, evicted after its continuations
            self.table.move_to_end(key)

    def _make_room(self, nbytes: int, keep: tuple | None) -> bool:
        """Evict least recently used leaf blocks (not `keep`, the block the new one continues) until nbytes fit."""
        while self.bytes + nbytes > self.max_bytes:
            victim = next((key for key, b in self.table.items() if b.children == 0 and key != keep), None)
            if victim is None:
                return False
            blk = self.table.pop(victim)
            self.bytes -= blk.nbytes
            if blk.parent is not None:
                self.table[blk.parent].children -= 1
        return True

    def clear(self) -> None:
        self.table.clear()
        self.bytes = 0
