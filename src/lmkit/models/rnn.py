"""A recurrent language model (LSTM or GRU), for comparison with the Transformer on the same data.

    h_t = RNN(h_{t−1}, E x_t);   P(x_{t+1} | x_≤t) = softmax(W h_t)

Embedding → `n_layer` stacked LSTM/GRU layers of width n_embd → LayerNorm → output head tied to the
embedding. It speaks GPT's interface, forward(idx, targets, cache, last_only), so the same Trainer
trains it and the same `generate` samples it: the "cache" is the recurrent state.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..config import ModelConfig
from .gpt import next_token_head


class RNNState:
    """The recurrent state carried between generation steps; setting pos = 0 starts over (as KVCache)."""

    def __init__(self):
        self.state, self._pos = None, 0

    @property
    def pos(self) -> int:
        return self._pos

    @pos.setter
    def pos(self, value: int) -> None:
        if value == 0:
            self.state = None
        self._pos = value

    def select(self, rows: torch.Tensor) -> None:
        """Keep only these batch rows (the state's batch dimension is 1)."""
        if self.state is not None:
            self.state = tuple(s[:, rows] for s in self.state) if isinstance(self.state, tuple) else self.state[:, rows]

    def drop_front(self, n: int) -> None:
        self._pos -= n  # the state summarises the past; only the position count moves


class RNNLM(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        assert cfg.vocab_size > 0, "vocab_size must be set from the tokenizer before building the model"
        self.config = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        cell = nn.LSTM if cfg.rnn == "lstm" else nn.GRU
        self.rnn = cell(cfg.n_embd, cfg.n_embd, num_layers=cfg.n_layer, batch_first=True,
                        dropout=cfg.dropout if cfg.n_layer > 1 else 0.0)
        self.drop = nn.Dropout(cfg.dropout)
        self.ln_f = nn.LayerNorm(cfg.n_embd)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.wte.weight  # weight tying, as in GPT
        nn.init.normal_(self.wte.weight, mean=0.0, std=0.02)

    def num_params(self, non_embedding: bool = True) -> int:
        return sum(p.numel() for p in self.parameters())

    def encode(self, idx: torch.Tensor, cache: RNNState | None = None,
               attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """idx (B, T) -> hidden states (B, T, C), continuing from (and updating) `cache` when given.
        With a left-padded `attention_mask` (B, past + T), each row runs over its real tokens only, so
        padding never enters its state."""
        if attention_mask is not None and not bool(attention_mask[:, -idx.size(1):].all()):
            return self._encode_rows(idx, cache, attention_mask[:, -idx.size(1):].bool())
        x, state = self.rnn(self.drop(self.wte(idx)), cache.state if cache is not None else None)
        if cache is not None:
            cache.state = state
            cache.pos += idx.size(1)
        return self.ln_f(self.drop(x))

    def _encode_rows(self, idx, cache, mask):
        prev = cache.state if cache is not None else None
        pick = lambda st, i: None if st is None else (tuple(s[:, i:i + 1] for s in st) if isinstance(st, tuple)
                                                      else st[:, i:i + 1])  # noqa: E731
        outs, states = [], []
        for i in range(idx.size(0)):
            x, st = self.rnn(self.drop(self.wte(idx[i:i + 1, mask[i]])), pick(prev, i))
            out = x.new_zeros(1, idx.size(1), x.size(-1))
            out[:, mask[i]] = x
            outs.append(out)
            states.append(st)
        if cache is not None:
            cat = lambda parts: torch.cat(parts, dim=1)  # noqa: E731
            cache.state = tuple(map(cat, zip(*states))) if isinstance(states[0], tuple) else cat(states)
            cache.pos += idx.size(1)
        return self.ln_f(self.drop(torch.cat(outs)))

    def forward(self, idx, targets=None, cache: RNNState | None = None, last_only: bool = False,
                attention_mask: torch.Tensor | None = None):
        return next_token_head(self.lm_head, self.encode(idx, cache, attention_mask), targets, last_only)

    def make_cache(self, batch_size: int, max_len: int | None = None, dtype=None) -> RNNState:
        return RNNState()
