"""Beam search: keep the `num_beams` most likely continuations at every step instead of one sample.

    score(y) = Σ_t log P(y_t | x, y_<t) / |y|^α        (α = length_penalty; α > 0 favours longer outputs)

Useful where one best answer is wanted (translation, summarisation); sampling (sampling.py, engine.py) is for
open-ended text. The beams are the rows of one batch sharing a pre-allocated key/value cache, which is
reordered whenever a beam's parent changes.
"""
from __future__ import annotations

import torch

from .errors import LmkitError
from .sampling import fit_to_context


@torch.no_grad()
def beam_search(model, prompt: list[int], num_beams: int = 4, max_new_tokens: int = 50,
                eos_id: int | None = None, length_penalty: float = 1.0) -> list[int]:
    """Return the new token ids (EOS excluded) of the best-scoring beam."""
    if num_beams < 1:
        raise LmkitError(f"num_beams must be >= 1 (got {num_beams})")
    block = model.config.block_size
    prompt = fit_to_context(list(prompt), block, truncate=False)
    if len(prompt) + max_new_tokens > block:
        raise LmkitError(f"beam search needs prompt + max_new_tokens <= the context of {block} tokens "
                         f"(got {len(prompt)} + {max_new_tokens})")
    model.eval()
    device = next(model.parameters()).device
    cache = model.make_cache(1, block)
    logits = model(torch.tensor([prompt], device=device), cache=cache, last_only=True)[0][:, -1]  # (1, V)
    scores = torch.zeros(1, device=device)  # Σ log p of each live beam
    beams: list[list[int]] = [[]]
    finished: list[tuple[float, list[int]]] = []

    def normalised(score: float, n: int) -> float:
        return score / max(n, 1) ** length_penalty

    for _ in range(max_new_tokens):
        total = logits.float().log_softmax(dim=-1) + scores[:, None]  # (K, V)
        V = total.size(-1)
        top, flat = total.view(-1).topk(min(2 * num_beams, total.numel()))
        parents, tokens, new_scores = [], [], []
        for s, f in zip(top.tolist(), flat.tolist()):
            b, tok = divmod(f, V)
            if tok == eos_id:
                finished.append((normalised(s, len(beams[b]) + 1), beams[b]))
            else:
                parents.append(b), tokens.append(tok), new_scores.append(s)
            if len(parents) == num_beams:
                break
        if len(finished) >= num_beams or not parents:
            break
        sel = torch.tensor(parents, device=device)
        cache.k, cache.v = cache.k[:, sel], cache.v[:, sel]  # each new beam continues its parent's cache
        beams = [beams[b] + [t] for b, t in zip(parents, tokens)]
        scores = torch.tensor(new_scores, device=device)
        logits = model(torch.tensor(tokens, device=device)[:, None], cache=cache, last_only=True)[0][:, -1]
    finished += [(normalised(float(s), len(b)), b) for s, b in zip(scores, beams)]
    return max(finished, key=lambda x: x[0])[1]
