"""Sampling: how a language model's scores become the next token. Read this file first.

Each step turns the logits l (one score per vocabulary entry) of the last position into a
distribution and draws the next token:
    grammar     l_v ← −inf for tokens a row's grammar forbids (structured output: grammar.py, applied by the engine)
    bias        l_v ← l_v + b_v    (logit_bias; −100 in effect bans a token, +100 forces it, as in OpenAI's API)
    penalties   l_v ← l_v / r if l_v > 0 else l_v · r    for tokens v already in the text (repetition, CTRL)
                l_v ← l_v − c_v · α_freq − [c_v > 0] · α_presence   (c_v = times v was generated; OpenAI)
    p = softmax(l / temperature), restricted to the k most likely tokens (top-k), the smallest set whose
    probability reaches top_p (nucleus) and the tokens with p ≥ min_p · p_max (min-p);
    temperature 0 means greedy (argmax).
`generate_reference` at the bottom is the whole generation loop in its plainest form: one sequence,
the model re-run over the text (at most its last block_size tokens) for every new token. The engine
(engine.py) gives exactly its tokens, faster: a key/value cache, batches of prompts of different
lengths, requests joining and leaving a running batch.
"""
from __future__ import annotations

from typing import Sequence

import torch

from .errors import LmkitError
from .sampling_config import GREEDY_BELOW, MAX_SEED, SAMPLING_FIELDS, SamplingConfig, sampling_config

__all__ = ["SamplingConfig", "sampling_config", "SAMPLING_FIELDS", "GREEDY_BELOW", "MAX_SEED", "process_logits",
           "logit_bias", "choose", "sample_next", "seeded_generator", "fit_to_context", "generate_reference"]


def _per_row(cfgs: Sequence[SamplingConfig], name: str, off, device) -> torch.Tensor:
    """One column (B, 1) of a sampling parameter, `off` where a row leaves it unset."""
    vals = [getattr(c, name) for c in cfgs]
    return torch.tensor([[off if v is None else float(v)] for v in vals], device=device)


def process_logits(logits: torch.Tensor, cfgs: Sequence[SamplingConfig], counts: torch.Tensor | None,
                   seen: torch.Tensor | None, bias: torch.Tensor | None = None) -> torch.Tensor:
    """logits (B, V) -> the logits to sample from: penalties, temperature, top-k, top-p, min-p applied
    row by row (masked tokens get −inf). `counts` (B, V): generated occurrences; `seen` (B, V): in the text."""
    device = logits.device
    logits = logits.float()
    if bias is not None:  # (B, V) from logit_bias(), built once by the caller (engine.py keeps it per session)
        logits = logits + bias
    elif any(c.logit_bias for c in cfgs):
        logits = logits + logit_bias(cfgs, logits.size(-1), device)
    if seen is not None:
        r = _per_row(cfgs, "repetition_penalty", 1.0, device)
        logits = torch.where(seen, torch.where(logits > 0, logits / r, logits * r), logits)
    if counts is not None:
        logits = logits - counts * _per_row(cfgs, "frequency_penalty", 0.0, device) \
            - (counts > 0) * _per_row(cfgs, "presence_penalty", 0.0, device)
    temperature = _per_row(cfgs, "temperature", 1.0, device)
    logits = logits / torch.where(temperature >= GREEDY_BELOW, temperature, torch.ones_like(temperature))
    V = logits.size(-1)
    top_k = [c.top_k if c.top_k and c.top_k < V else V for c in cfgs]
    top_p = _per_row(cfgs, "top_p", 1.0, device)
    min_p = _per_row(cfgs, "min_p", 0.0, device)
    if min(top_k) < V or bool((top_p < 1).any()):
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        ranks = torch.arange(V, device=device)[None]
        drop = ranks >= torch.tensor(top_k, device=device)[:, None]
        probs = sorted_logits.softmax(dim=-1)
        drop |= probs.cumsum(dim=-1) - probs >= top_p  # keep tokens until the mass reaches top_p
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    if bool((min_p > 0).any()):
        probs = logits.softmax(dim=-1)
        logits = logits.masked_fill(probs < min_p * probs.max(dim=-1, keepdim=True).values, float("-inf"))
    return logits


def logit_bias(cfgs: Sequence[SamplingConfig], V: int, device) -> torch.Tensor:
    """(B, V): each row's logit_bias (token id -> bias) spread over the vocabulary, zero elsewhere."""
    bias = torch.zeros(len(cfgs), V, device=device)
    for i, c in enumerate(cfgs):
        for token, b in (c.logit_bias or {}).items():
            if token >= V:
                raise LmkitError(f"logit_bias: token id {token} is outside the vocabulary (size {V})")
            bias[i, token] = float(b)
    return bias


def choose(logits: torch.Tensor, cfgs: Sequence[SamplingConfig],
           generators: Sequence[torch.Generator | None]) -> torch.Tensor:
    """Processed logits (B, V) -> next token ids (B,): the argmax for a greedy row, else one draw from
    softmax(logits) with that row's generator."""
    probs = logits.softmax(dim=-1)
    return torch.stack([logits[i].argmax() if c.temperature < GREEDY_BELOW else
                        torch.multinomial(probs[i], 1, generator=g)[0]
                        for i, (c, g) in enumerate(zip(cfgs, generators))])


def sample_next(logits: torch.Tensor, cfg: SamplingConfig, generator: torch.Generator | None,
                counts: torch.Tensor | None = None, seen: torch.Tensor | None = None) -> torch.Tensor:
    """logits (B, V) -> next token ids (B,), every row with the same config and generator."""
    B = logits.size(0)
    return choose(process_logits(logits, [cfg] * B, counts, seen), [cfg] * B, [generator] * B)


def seeded_generator(seed: int | None, device) -> torch.Generator | None:
    """The random source of one sequence: seeded, so a seed repeats the output; None = torch's global one."""
    return None if seed is None else torch.Generator(device=device).manual_seed(seed)


class PromptTooLong(LmkitError):
    """A prompt longer than the context. The message names the Python spelling (truncate=True); the CLI says
    `spelled("--truncate")`, its own."""

    def __init__(self, tokens: int, block_size: int):
        self.tokens, self.block_size = tokens, block_size
        super().__init__(self.spelled("truncate=True"))

    def spelled(self, option: str) -> str:
        return (f"prompt is {self.tokens} tokens, longer than the model's context of {self.block_size} tokens "
                f"(shorten it, or pass {option} to keep the last {self.block_size})")


def fit_to_context(ids: list[int], block_size: int, truncate: bool) -> list[int]:
    """A prompt longer than the context fails with a clear message, or keeps its last block_size tokens."""
    if len(ids) <= block_size:
        return ids
    if not truncate:
        raise PromptTooLong(len(ids), block_size)
    return ids[-block_size:]


@torch.no_grad()
def generate_reference(model, prompt_ids: list[int], cfg: SamplingConfig, eos_id: int | None = None) -> list[int]:
    """The new token ids for one prompt, the slow and obvious way: no cache, one sequence, the model
    re-run over the last block_size tokens of the text for every token. EOS, when generated, is the
    last id returned. The engine (engine.py `generate_ids`) gives exactly these tokens."""
    model.eval()
    device = next(model.parameters()).device
    block, V = model.config.block_size, model.config.vocab_size
    text = fit_to_context(list(prompt_ids), block, cfg.truncate)  # prompt, then every new token
    generator = seeded_generator(cfg.seed, device)
    counts = torch.zeros(1, V, device=device)  # how often each token was generated (frequency, presence)
    seen = torch.zeros(1, V, dtype=torch.bool, device=device)  # which tokens are in the text (repetition)
    seen[0, text] = True
    new = []
    for _ in range(cfg.max_new_tokens):
        window = torch.tensor([text[-block:]], device=device)  # the model reads at most block_size tokens
        logits, _ = model(window)  # (1, T, V): a score for every token after every position
        token = int(sample_next(logits[:, -1], cfg, generator, counts, seen)[0])
        text.append(token)
        new.append(token)
        counts[0, token] += 1
        seen[0, token] = True
        if cfg.stop_at_eos and token == eos_id:
            break
    return new
