"""Log-likelihood of continuations given contexts, the quantity every multiple-choice benchmark is scored on.

    ll(cont | ctx) = Σ_j ln p(c_j | ctx, c_<j),   greedy = every c_j is the argmax of its distribution

Tokenisation follows lm-evaluation-harness (`_encode_pair`): trailing spaces of the context move to the
continuation; ctx_ids = enc(ctx) and cont_ids = enc(ctx + cont)[len(ctx_ids):], so the continuation's
tokens are the ones the whole text has. An empty context is replaced by <|endoftext|> (the harness's
prefix token). Nothing else is prepended.

Speed: requests with the same context ids form a group. Each batch of groups runs its contexts through
the model once (left-padded, one prefill into a KV cache, or the recurrent state of an LSTM); the cache
rows are then repeated once per continuation and every continuation of every group runs as one batch on
top of them. A context with K continuations costs one context pass, not K. Single-token continuations
(the answer letters of MMLU) need no second pass at all: the prefill's last logits score them.

Over-long requests: when a context and its group's longest continuation do not fit the model's window,
the context loses tokens from the left (as the harness does) and the request is flagged `truncated`.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Sequence

import torch
from tqdm.auto import tqdm

from ..models.gpt import next_token_head


@dataclass
class Scored:
    logprob: float  # Σ ln p of the continuation's tokens
    greedy: bool  # every continuation token was the model's top choice
    tokens: int  # continuation tokens scored
    truncated: bool  # the context (or continuation) was cut to fit the window


def encode_pairs(tokenizer, pairs: Sequence[tuple[str, str]]) -> list[tuple[list[int], list[int]]]:
    """(context, continuation) strings -> token ids, split as lm-evaluation-harness splits them."""
    ctxs, wholes = [], []
    for ctx, cont in pairs:
        n = len(ctx) - len(ctx.rstrip())
        if n:
            ctx, cont = ctx[:-n], ctx[-n:] + cont
        ctxs.append(ctx)
        wholes.append(ctx + cont)
    unique = list(dict.fromkeys(ctxs))  # contexts repeat once per choice: encode each once
    enc_ctx = dict(zip(unique, tokenizer.encode_batch(unique)))
    enc_whole = tokenizer.encode_batch(wholes)
    out = []
    for ctx, whole in zip(ctxs, enc_whole):
        if not ctx:  # empty context: the harness conditions on the end-of-text token
            out.append(([tokenizer.eot_id if tokenizer.eot_id is not None else 0], whole))
            continue
        c = enc_ctx[ctx]
        out.append((c, whole[len(c):]))
    return out


def score_pairs(lm, pairs: Sequence[tuple[str, str]], batch_size: int = 32, progress: bool = True,
                desc: str = "scoring") -> list[Scored]:
    """Score (context, continuation) string pairs with an `lmkit.LM`; results in the order given."""
    return score_tokens(lm.model, encode_pairs(lm.tokenizer, pairs), batch_size, progress, desc)


def score_tokens(model, requests: Sequence[tuple[Sequence[int], Sequence[int]]], batch_size: int = 32,
                 progress: bool = True, desc: str = "scoring") -> list[Scored]:
    """Score (context ids, continuation ids) requests; `batch_size` counts continuation rows per pass."""
    block = model.config.block_size
    groups: dict[tuple, list[int]] = {}
    for i, (ctx, _) in enumerate(requests):
        groups.setdefault(tuple(ctx), []).append(i)
    fitted = {ctx: _fit(list(ctx), [list(requests[i][1]) for i in idx], block) for ctx, idx in groups.items()}
    # longest (cut) contexts first: a batch holds contexts of similar length (little padding)
    order = sorted(groups.items(), key=lambda kv: -len(fitted[kv[0]][0]))
    fitted = [fitted[ctx] for ctx, _ in order]
    out: list[Scored | None] = [None] * len(requests)
    batch, rows, longest_ctx, longest_cont = [], 0, 0, 0
    bar = tqdm(total=len(requests), desc=desc, unit="req", disable=not progress, leave=False)

    def flush():
        for g, scores in zip(batch, _score_batch(model, [fitted[g] for g in batch])):
            for i, s in zip(order[g][1], scores):
                out[i] = s
        bar.update(sum(len(order[g][1]) for g in batch))

    for g, (ctx, conts, _) in enumerate(fitted):
        need = max(len(c) for c in conts) - 1  # continuation tokens fed after the context
        # a batch's cache holds its longest context and its longest continuation: both must fit the window
        if batch and (rows + len(conts) > batch_size or max(longest_ctx, len(ctx)) + max(longest_cont, need) > block):
            flush()
            batch, rows, longest_ctx, longest_cont = [], 0, 0, 0
        batch.append(g)
        rows += len(conts)
        longest_ctx, longest_cont = max(longest_ctx, len(ctx)), max(longest_cont, need)
    if batch:
        flush()
    bar.close()
    return out  # type: ignore[return-value]


def _fit(ctx: list[int], conts: list[list[int]], block: int) -> tuple[list[int], list[list[int]], bool]:
    """Cut the context from the left (and, past all hope, the continuations from the right) so that the
    context and the longest continuation but its last token fit `block` positions."""
    longest = max(len(c) for c in conts)
    if len(ctx) + longest - 1 <= block:
        return ctx, conts, False
    keep = block + 1 - longest
    if keep >= 1:
        return ctx[-keep:], conts, True
    return ctx[-1:], [c[:block] for c in conts], True


@torch.inference_mode()
def _score_batch(model, batch: list[tuple[list[int], list[list[int]], bool]]) -> list[list[Scored]]:
    model.eval()
    device = next(model.parameters()).device
    G, L = len(batch), max(len(ctx) for ctx, _, _ in batch)
    idx = torch.zeros(G, L, dtype=torch.long)
    mask = torch.zeros(G, L, dtype=torch.bool)
    for g, (ctx, _, _) in enumerate(batch):  # left padding: every context ends in the last column
        idx[g, L - len(ctx):] = torch.tensor(ctx)
        mask[g, L - len(ctx):] = True
    idx, mask = idx.to(device), mask.to(device)
    padded = not bool(mask.all())
    T = max(len(c) for _, conts, _ in batch for c in conts) - 1  # continuation tokens fed after the context
    cache = model.make_cache(G, L + max(T, 0)) if T > 0 else None
    logits, _ = model(idx, cache=cache, last_only=True, attention_mask=mask if padded else None)
    first = logits[:, -1].double().log_softmax(-1)  # (G, V): predicts each continuation's first token
    owner = [g for g, (_, conts, _) in enumerate(batch) for _ in conts]
    conts = [c for _, cs, _ in batch for c in cs]
    R = len(conts)
    own = torch.tensor(owner, device=device)
    c0 = torch.tensor([c[0] for c in conts], device=device)
    lp = first[own, c0]
    greedy = first[own].argmax(-1) == c0
    if T > 0:
        # rows of similar continuation length run together: a pass pads only to its own longest row
        by_len = sorted((r for r in range(R) if len(conts[r]) > 1), key=lambda r: len(conts[r]))
        step = max(8, -(-len(by_len) // 4))
        for i in range(0, len(by_len), step):
            rows = by_len[i:i + step]
            part = copy.copy(cache)  # select() replaces the tensors of the copy, not the prefill's
            part.select(own[rows])
            add, wrong = _continue(model, part, mask[own[rows]] if padded else None, [conts[r] for r in rows])
            where = torch.tensor(rows, device=device)
            lp = lp.index_add(0, where, add)
            greedy[where] &= wrong == 0
    lp, greedy = lp.tolist(), greedy.tolist()
    res, r = [], 0
    for _, cs, cut in batch:
        res.append([Scored(lp[r + k], bool(greedy[r + k]), len(c), cut) for k, c in enumerate(cs)])
        r += len(cs)
    return res


def _continue(model, cache, mask, conts: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Feed each continuation but its last token on top of its context's cached rows -> per row, Σ ln p of
    its tokens after the first, and how many of them were not the argmax."""
    device = next(model.parameters()).device
    R, T = len(conts), max(len(c) for c in conts) - 1
    x = torch.zeros(R, T, dtype=torch.long)
    tgt = torch.zeros(R, T, dtype=torch.long)
    real = torch.zeros(R, T, dtype=torch.bool)
    for r, c in enumerate(conts):
        n = len(c) - 1
        x[r, :n], tgt[r, :n], real[r, :n] = torch.tensor(c[:-1]), torch.tensor(c[1:]), True
    x, tgt, real = x.to(device), tgt.to(device), real.to(device)
    full = torch.cat([mask, torch.ones(R, T, dtype=torch.bool, device=device)], 1) if mask is not None else None
    hidden = model.encode(x, cache, full)  # (R, T, C); the head runs on real positions only
    logits, _ = next_token_head(model.lm_head, hidden[real][None], None, False,
                                getattr(model.config, "logit_softcap", 0.0))
    logp = logits[0].double().log_softmax(-1)  # (N, V), N = real continuation positions
    t = tgt[real]
    where = real.nonzero()[:, 0]  # the row of each real position
    add = torch.zeros(R, dtype=torch.float64, device=device).index_add(0, where, logp.gather(-1, t[:, None])[:, 0])
    wrong = torch.zeros(R, dtype=torch.float64, device=device).index_add(0, where, (logp.argmax(-1) != t).double())
    return add, wrong


def rolling_requests(ids: Sequence[int], prefix: int, block: int) -> list[tuple[list[int], list[int]]]:
    """A whole text as (context, continuation) windows that predict every token exactly once, each with
    as much context as the window allows: [prefix] + ids, cut into pieces of `block` tokens."""
    seq = [prefix] + list(ids)
    out = []
    for s in range(1, len(seq), block):
        e = min(s + block, len(seq))
        out.append((seq[max(0, e - block - 1):s], seq[s:e]))
    return out
