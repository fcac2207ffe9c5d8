"""The batched decoding engine: the tokens of sampling.py's `generate_reference`, fast, for many prompts.

The reference loop re-runs the model over the whole text for every new token, one sequence at a time.
A `DecodeSession` gives exactly the same tokens and adds:
  - a key/value cache (the recurrent state for the LSTM): the prompts run through the model once
    (prefill) and fill a pre-allocated cache; every later step feeds only the newest token;
  - batches of prompts of different lengths, left-padded, with an attention mask that hides the
    padding, so each row gives the tokens it would give alone; each row has its own SamplingConfig;
  - one generator per row (seed + i for the i-th row sharing a config), so a seed reproduces a
    request's output whatever else shares the batch;
  - context overflow: when the text outgrows block_size the cache is rebuilt over the last block_size
    tokens, which is what the reference model reads;
  - surgery for the server's continuous batching: `keep(rows)` drops finished rows (cache included),
    `merge(other)` lets a freshly prefilled session join a running one;
  - structured output: a row whose config has `json_schema` gets its own grammar matcher (grammar.py),
    whose token mask is applied to that row's logits before every draw (needs `tokenizer=`);
  - prefix caching (`prefix_cache=`, prefix_cache.py): each prompt's longest cached block prefix is copied
    into the cache and the prefill computes only the columns after it; the prompts' full blocks are
    stored once prefilled. The tokens are those without it.
`generate_ids` drives one session to the end; textstream.py turns its tokens into text, and
serve/scheduler.py drives sessions for the server. Beam search is beam.py.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch

from .errors import LmkitError
from .grammar import Constraint, RowMasks, grammar_for
from .prefix_cache import PrefixCache
from .sampling import GREEDY_BELOW, SamplingConfig, choose, fit_to_context, logit_bias, process_logits, seeded_generator

__all__ = ["Step", "DecodeSession", "generate_ids", "fit_to_context"]


@dataclass
class Step:
    """One decoding step for every row: the tokens (B,), and with logprobs on, their log-probabilities
    under the model (B,) and the top alternatives (B, k) ids and log-probabilities."""
    tokens: torch.Tensor
    logprobs: torch.Tensor | None = None
    top_ids: torch.Tensor | None = None
    top_logprobs: torch.Tensor | None = None


def _without_autograd(method):
    """Run a DecodeSession method under torch.inference_mode (fast path) or torch.no_grad (plain path)."""
    @functools.wraps(method)
    def run(self, *args, **kwargs):
        with torch.inference_mode() if self.fast else torch.no_grad():
            return method(self, *args, **kwargs)
    return run


class DecodeSession:
    """One decoding session: batched step-by-step decoding of prompts of different lengths, each row
    with its own config (a session, not a decoder model: it holds the cache and the text so far).

    `step()` advances every row by one token; `keep(rows)` drops the others (finished requests, clients
    that left) from the batch, cache included; `merge(other)` appends another session's rows. The
    server's scheduler and `generate_ids` both drive it.
    `fast` (default) runs every method under torch.inference_mode, which skips autograd's per-op
    bookkeeping (version counters, view tracking); the tokens are the same as with `fast=False`
    (torch.no_grad), and the tensors it returns cannot enter autograd later.
    `prefix_cache` (a PrefixCache for this model) lets the prefill reuse the K/V of cached prompt prefixes;
    `reused` then tells how many prompt tokens of each row were not computed. Ignored without a cache
    (`use_cache=False`) and for the LSTM.
    """

    def __init__(self, model, prompts: Sequence[Sequence[int]], cfgs: Sequence[SamplingConfig] | SamplingConfig,
                 use_cache: bool = True, pad_id: int = 0, fast: bool = True, tokenizer=None,
                 prefix_cache: PrefixCache | None = None):
        self.fast = fast
        self._start(model, prompts, cfgs, use_cache, pad_id, tokenizer, prefix_cache)

    @_without_autograd
    def _start(self, model, prompts, cfgs, use_cache, pad_id, tokenizer, prefix_cache) -> None:
        model.eval()
        self.model, self.block = model, model.config.block_size
        if isinstance(cfgs, SamplingConfig):
            cfgs = [cfgs] * len(prompts)
        assert len(cfgs) == len(prompts) > 0
        prompts = [fit_to_context(list(p), self.block, c.truncate) for p, c in zip(prompts, cfgs)]
        self.device = device = next(model.parameters()).device
        B, L = len(prompts), max(len(p) for p in prompts)
        self.idx = torch.full((B, L), pad_id, dtype=torch.long, device=device)
        self.mask = torch.zeros((B, L), dtype=torch.bool, device=device)
        for i, p in enumerate(prompts):  # left padding: every row's newest token sits in the last column
            self.idx[i, L - len(p):] = torch.tensor(p, dtype=torch.long)
            self.mask[i, L - len(p):] = True
        self.padded = not bool(self.mask.all())
        self.cfgs = list(cfgs)
        self.cache = model.make_cache(B, self.block) if use_cache else None
        self.fresh = 0  # columns of idx the cache has not seen; 0 = recompute the window
        self.generators, siblings = [], {}  # the i-th row sharing a config object draws from seed + i
        for c in self.cfgs:
            i = siblings[id(c)] = siblings.get(id(c), -1) + 1
            self.generators.append(seeded_generator(None if c.seed is None else c.seed + i, device))
        V = model.config.vocab_size
        penalised = [c.frequency_penalty or c.presence_penalty for c in self.cfgs]
        self.counts = torch.zeros(B, V, device=device) if any(penalised) else None
        self.seen = None
        if any(c.repetition_penalty != 1 for c in self.cfgs):
            in_prompt = torch.zeros(B, V, device=device).scatter_add_(1, self.idx, self.mask.float())
            self.seen = in_prompt > 0  # padding ids do not count
        self.bias = logit_bias(self.cfgs, V, device) if any(c.logit_bias for c in self.cfgs) else None  # built once
        self.want_logprobs = max((c.logprobs for c in self.cfgs if c.logprobs is not None), default=None)
        self.masks = self._constraints(tokenizer, V)
        self.prefix_cache = self.reused = self.unstored = None  # unstored: prompts to store once prefilled
        if prefix_cache is not None and self.cache is not None:
            if prefix_cache.model is not model:
                raise LmkitError("prefix_cache: this PrefixCache was built for another model")
            if prefix_cache.enabled:
                self.prefix_cache = prefix_cache
                self._reuse_prefixes(prompts)

    def _reuse_prefixes(self, prompts: list[list[int]]) -> None:
        """Copy each row's cached prefix into the cache and start the prefill after them. Rows are left-padded,
        so the prefill starts at the first column where some row has neither padding nor a cached key
        (a row with a longer hit recomputes the rest of it); the padding columns before it are zeros."""
        c, (B, L) = self.cache, self.idx.shape
        found = [self.prefix_cache.lookup(p) for p in prompts]
        starts = [L - len(p) for p in prompts]  # each prompt's first column
        begin = min(s + (0 if f is None else f[0].size(2)) for s, f in zip(starts, found))
        self.reused = [max(0, begin - s) if f is not None else 0 for s, f in zip(starts, found)]
        self.prefix_cache.count(sum(map(len, prompts)), sum(self.reused))
        self.unstored = prompts
        if begin == 0:
            return
        c.k[:, :, :, :begin].zero_()  # padding keys are hidden by the mask, but must be finite (0 · NaN = NaN)
        c.v[:, :, :, :begin].zero_()
        for i, (s, f, n) in enumerate(zip(starts, found, self.reused)):
            if n:
                c.k[:, i, :, s:begin], c.v[:, i, :, s:begin] = f[0][:, :, :n], f[1][:, :, :n]
        c.pos, self.fresh = begin, L - begin

    def _store_prefixes(self) -> None:
        """After the prefill: the full blocks of every prompt go into the prefix cache."""
        c, W = self.cache, self.idx.size(1)
        for i, p in enumerate(self.unstored):
            self.prefix_cache.store(p, c.k[:, i, :, W - len(p):W], c.v[:, i, :, W - len(p):W])
        self.unstored = None

    def _constraints(self, tokenizer, V: int) -> RowMasks | None:
        """One grammar matcher per row that asks for structured output; rows sharing a config share its grammar."""
        constrained = [c.json_schema is not None or c.tools is not None for c in self.cfgs]
        if not any(constrained):
            return None
        if tokenizer is None:
            raise LmkitError("json_schema: structured output needs the tokenizer (DecodeSession(..., tokenizer=))")
        grammars, rows = {}, []
        for c, on in zip(self.cfgs, constrained):
            if on and id(c) not in grammars:
                grammars[id(c)] = grammar_for(tokenizer, V, c)
            rows.append(Constraint(grammars[id(c)]) if on else None)
        return RowMasks(rows, tokenizer.eot_id)

    @property
    def batch_size(self) -> int:
        return self.idx.size(0)

    @_without_autograd
    def step(self) -> Step:
        cache, block = self.cache, self.block
        T = self.fresh
        if cache is None or T == 0 or cache.pos + T > block:  # first step, no cache, or context full:
            T = min(self.idx.size(1), block)  # (re)compute over the last block_size columns
            if cache is not None:
                cache.pos = 0
        past = cache.pos if cache is not None else 0
        mask = self.mask[:, -(past + T):] if self.padded else None
        logits, _ = self.model(self.idx[:, -T:], cache=cache, last_only=True, attention_mask=mask)
        logits = logits[:, -1].float()  # (B, V)
        if self.unstored is not None:
            self._store_prefixes()
        nxt = self._draw(logits)
        out = Step(nxt)
        if self.want_logprobs is not None:
            logp = logits.log_softmax(dim=-1)
            out.logprobs = logp.gather(1, nxt[:, None]).squeeze(1)
            if self.want_logprobs > 0:
                out.top_logprobs, out.top_ids = logp.topk(min(self.want_logprobs, logp.size(-1)), dim=-1)
        self._append(nxt)
        return out

    def _draw(self, logits: torch.Tensor) -> torch.Tensor:
        if self.masks:  # in place; on a copy when a step reports log-probabilities, which stay the model's
            if self.want_logprobs is not None:
                logits = logits.clone()
            self.masks.apply(logits)
        simple = self.counts is None and self.seen is None and self.bias is None
        if simple and all(c.temperature < GREEDY_BELOW for c in self.cfgs):
            nxt = logits.argmax(dim=-1)
        else:
            nxt = choose(process_logits(logits, self.cfgs, self.counts, self.seen, self.bias), self.cfgs,
                         self.generators)
        if self.masks:
            self.masks.accept(nxt)
        return nxt

    def _append(self, nxt: torch.Tensor) -> None:
        self.idx = torch.cat([self.idx, nxt[:, None]], dim=1)
        self.mask = torch.cat([self.mask, torch.ones_like(self.mask[:, :1])], dim=1)
        if self.counts is not None:
            self.counts.scatter_add_(1, nxt[:, None], torch.ones_like(self.counts[:, :1]))
        if self.seen is not None:
            self.seen.scatter_(1, nxt[:, None], True)
        self.fresh = 1 if self.cache is not None else 0
        if self.idx.size(1) > 4 * self.block:  # keep the history bounded; only the last block is ever read
            self.idx, self.mask = self.idx[:, -2 * self.block:], self.mask[:, -2 * self.block:]

    @_without_autograd
    def keep(self, rows: Sequence[int]) -> None:
        """Keep only these rows (in this order)."""
        sel = torch.tensor(list(rows), dtype=torch.long, device=self.device)
        self.idx, self.mask = self.idx[sel], self.mask[sel]
        self.cfgs = [self.cfgs[i] for i in rows]
        self.generators = [self.generators[i] for i in rows]
        if self.masks is not None:
            self.masks.keep(rows)
        if self.counts is not None:
            self.counts = self.counts[sel]
        if self.seen is not None:
            self.seen = self.seen[sel]
        if self.bias is not None:
            self.bias = self.bias[sel]
        if self.unstored is not None:
            self.unstored, self.reused = [self.unstored[i] for i in rows], [self.reused[i] for i in rows]
        if self.cache is not None:
            self.cache.select(sel)
        empty = int(self.mask.any(dim=0).long().argmax())  # leading columns that are padding in every row
        if empty:
            self.idx, self.mask = self.idx[:, empty:], self.mask[:, empty:]
            c = self.cache  # laid out by column, from column `before` of idx on: shift it too
            before = self.idx.size(1) + empty - self.fresh - c.pos if c is not None else 0
            n = max(0, empty - before)
            if c is not None and c.pos and n:
                if n <= c.pos:
                    c.drop_front(n)
                else:  # (only before a prefill that reuses a prefix) more went than was cached: compute it all
                    c.pos = self.fresh = 0
        self.padded = not bool(self.mask.all())

    @_without_autograd
    def merge(self, other: "DecodeSession", pad_id: int = 0) -> None:
        """Append the rows of `other`, which has also just stepped, so both decode as one batch from now
        on (the server's scheduler lets new requests join this way). The narrower side gets columns of
        padding on the left; both caches move into one, right-aligned. Needs caches and no sliding yet."""
        a, b = self, other
        assert a.cache is not None and b.cache is not None and a.fresh == b.fresh == 1
        assert a.cache.pos == a.idx.size(1) - 1 and b.cache.pos == b.idx.size(1) - 1, "merge after sliding"
        C = max(a.idx.size(1), b.idx.size(1))
        wide = lambda t, value: torch.nn.functional.pad(t, (C - t.size(1), 0), value=value)
        self.cache = right_aligned(self.model, [a.cache, b.cache], C, self.block)
        self.idx = torch.cat([wide(a.idx, pad_id), wide(b.idx, pad_id)])
        self.mask = torch.cat([wide(a.mask, False), wide(b.mask, False)])
        self.padded = not bool(self.mask.all())
        for name, dtype in (("counts", torch.float32), ("seen", torch.bool), ("bias", torch.float32)):
            x, y = getattr(a, name), getattr(b, name)
            if x is not None or y is not None:
                zeros = lambda d: torch.zeros(d.batch_size, self.model.config.vocab_size, dtype=dtype, device=self.device)
                setattr(self, name, torch.cat([x if x is not None else zeros(a), y if y is not None else zeros(b)]))
        if a.masks is not None or b.masks is not None:
            eos = (a.masks if a.masks is not None else b.masks).eos_id  # not `or`: RowMasks of only None is falsy
            rows = lambda d: d.masks.rows if d.masks is not None else [None] * len(d.cfgs)  # cfgs: not merged yet
            self.masks = RowMasks(rows(a) + rows(b), eos)
        self.cfgs, self.generators = a.cfgs + b.cfgs, a.generators + b.generators
        wants = [w for w in (a.want_logprobs, b.want_logprobs) if w is not None]
        self.want_logprobs = max(wants) if wants else None


def right_aligned(model, caches, width: int, max_len: int):
    """One cache holding the rows of `caches` (one per session, each filled up to its own width − 1), laid out
    right-aligned over `width` − 1 columns so every row's newest key sits last; what is left of a row's keys
    is zeros, which its attention mask hides (they must be finite: 0 · NaN = NaN)."""
    cache = model.make_cache(sum(c.k.size(1) for c in caches), max_len)
    start = 0
    for c in caches:
        rows, n = slice(start, start + c.k.size(1)), c.pos
        cache.k[:, rows, :, :width - 1 - n].zero_()
        cache.v[:, rows, :, :width - 1 - n].zero_()
        cache.k[:, rows, :, width - 1 - n:width - 1] = c.k[:, :, :, :n]
        cache.v[:, rows, :, width - 1 - n:width - 1] = c.v[:, :, :, :n]
        start += c.k.size(1)
    cache.pos = width - 1
    return cache


@torch.no_grad()
def generate_ids(model, idx: torch.Tensor | Sequence[Sequence[int]], cfg: SamplingConfig, eos_id: int | None = None,
                 use_cache: bool = True, pad_id: int = 0, fast: bool = True, tokenizer=None,
                 prefix_cache: PrefixCache | None = None) -> Iterator[torch.Tensor]:
    """Yield the next token of every sequence, (B,), up to max_new_tokens or until all hit EOS.

    `idx` is a (B, T) tensor, or a list of prompts of different lengths (left-padded into one batch).
    Rows that reached EOS keep yielding EOS until every row is done."""
    prompts = idx.tolist() if isinstance(idx, torch.Tensor) else idx
    dec = DecodeSession(model, prompts, cfg, use_cache=use_cache, pad_id=pad_id, fast=fast, tokenizer=tokenizer,
                        prefix_cache=prefix_cache)
    done = torch.zeros(dec.batch_size, dtype=torch.bool, device=dec.device)
    stop_at_eos = eos_id is not None and cfg.stop_at_eos
    for _ in range(cfg.max_new_tokens):
        nxt = dec.step().tokens
        if stop_at_eos:
            nxt = torch.where(done, torch.full_like(nxt, eos_id), nxt)
            done |= nxt == eos_id
        yield nxt
        if stop_at_eos and bool(done.all()):
            return


