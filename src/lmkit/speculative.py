"""Speculative decoding: a small draft model guesses the next tokens, the large target model checks them.

A target forward over k+1 positions costs little more than over one when decoding is bound by reading
the weights (a GPU, a large model), so the draft proposes tokens d_1 … d_{k+1}, one cheap forward each,
and the target scores all of them in one forward with its KV cache, giving its distribution p_j at
every position. The output keeps the target's distribution exactly (Leviathan et al., 2023; Chen et
al., 2023): walking j = 1 … k+1,

    accept d_j with probability min(1, p_j(d_j) / q_j(d_j))        q_j: the draft's distribution
    at the first rejection, draw from norm(max(0, p_j − q_j)) instead, and stop.

(A token from q kept with probability min(1, p/q), else redrawn from what p has beyond q, is distributed
as p.) Greedy rows (temperature 0) accept d_j when it is the target's argmax and otherwise take that
argmax, so the tokens are those of the target alone. p and q are both processed by sampling.py's
`process_logits` (temperature, top-k, top-p, min-p, logit_bias) and greedy rows follow `choose`.

This variant asks the draft for k+1 proposals (not k and a "bonus" token from p) so that every position
is decided the same way, whatever round it falls in. With one random generator per row, position and
use, seeded from the row's seed, a row's tokens depend on its seed alone: not on k, nor on which other
rows share the batch (rounds start when any row has run out of tokens). A discarded proposal's draw is
never reused for anything that was kept.

`SpeculativeSession` is a `DecodeSession` (engine.py) whose `step()` still returns one token per row:
a round yields 1 … k+1 tokens per row into a per-row buffer, and `step()` serves from the buffers,
running a round when one is empty. Rows accept different numbers of tokens; the batch stays aligned
(every row's newest token in the last column) by turning a row's rejected proposals into mask=False
columns, which attention skips and positions (cumsum(mask) − 1) do not count. Proposals no row kept are
rolled back by `pos` arithmetic on both KV caches. When the columns would outgrow the context, the
rows are packed again (holes removed, the last block_size tokens kept) and both caches rebuilt.
Not combined with drafting (refused, naming the field): grammar-constrained rows (json_schema, tools)
and the penalties (repetition, frequency, presence), whose state moves with every proposed token.
"""
from __future__ import annotations

from typing import Sequence

import torch

from .engine import DecodeSession, Step, _without_autograd, right_aligned
from .errors import LmkitError
from .models.gpt import GPT, next_token_head
from .sampling import GREEDY_BELOW, SamplingConfig, choose, process_logits

__all__ = ["SpeculativeSession", "unsupported", "check_draft", "DRAFT_TOKENS"]

DRAFT_TOKENS = 4  # proposals per round beyond the first (k); benchmarks/speculative.py measures the choice
DRAFT, ACCEPT, RESIDUAL = 0, 1, 2  # what a position's random generators are for


def unsupported(cfg: SamplingConfig) -> str | None:
    """The SamplingConfig field that cannot combine with a draft model, or None."""
    for name, off in (("json_schema", None), ("tools", None), ("repetition_penalty", 1),
                      ("frequency_penalty", 0), ("presence_penalty", 0)):
        if getattr(cfg, name) not in (off, None):
            return name
    return None


def check_draft(target, draft, target_name: str = "the target", draft_name: str = "the draft") -> None:
    """Both models are Transformers (KV caches to roll back) over the same vocabulary; the draft reads at
    least the target's context. Refused in one line naming both."""
    for model, name in ((target, target_name), (draft, draft_name)):
        if not isinstance(model, GPT):
            raise LmkitError(f"draft: speculative decoding needs Transformer (GPT) models; {name} is "
                             f"'{model.config.type}'")
    if draft.config.vocab_size != target.config.vocab_size:
        raise LmkitError(f"draft: {draft_name} ({draft.config.vocab_size} tokens) and {target_name} "
                         f"({target.config.vocab_size} tokens) do not share a vocabulary")
    if draft.config.block_size < target.config.block_size:
        raise LmkitError(f"draft: {draft_name} reads {draft.config.block_size} tokens, less than {target_name}'s "
                         f"context of {target.config.block_size}")


def verify(p: torch.Tensor, q: torch.Tensor, drafts: list[int], greedy: bool, generator) -> tuple[list[int], int]:
    """One row's round: p, q (k+1, V) the target's and the draft's probabilities at each proposal,
    `drafts` the k+1 proposals -> (the tokens kept, how many proposals were accepted).
    `generator(j, use)` gives position j's random generator (None for greedy rows)."""
    out = []
    for j, x in enumerate(drafts):
        if greedy:
            ok = x == int(p[j].argmax())
        else:  # u < p/q, written without dividing: accepts with probability min(1, p(x)/q(x))
            u = float(torch.rand((), generator=generator(j, ACCEPT)))
            ok = u * float(q[j, x]) < float(p[j, x])
        if ok:
            out.append(x)
            continue
        if greedy:
            out.append(int(p[j].argmax()))
        else:  # what p has beyond q, renormalised by choose's softmax (p itself if nothing is left)
            rest = (p[j] - q[j]).clamp(min=0)
            rest = rest if float(rest.sum()) > 0 else p[j]
            out.append(int(torch.multinomial(rest, 1, generator=generator(j, RESIDUAL))[0]))
        return out, j
    return out, len(drafts)


class SpeculativeSession(DecodeSession):
    """A DecodeSession whose tokens come from speculative rounds: `draft` (a GPT over the same vocabulary)
    proposes `draft_tokens` + 1 tokens per round, the target verifies them in one forward."""

    def __init__(self, model, prompts: Sequence[Sequence[int]], cfgs: Sequence[SamplingConfig] | SamplingConfig,
                 draft, draft_tokens: int = DRAFT_TOKENS, use_cache: bool = True, pad_id: int = 0,
                 fast: bool = True, tokenizer=None, eos_id: int | None = None):
        check_draft(model, draft)
        for c in [cfgs] if isinstance(cfgs, SamplingConfig) else cfgs:
            if (name := unsupported(c)) is not None:
                raise LmkitError(f"{name}: not available with a draft model (speculative decoding)")
        super().__init__(model, prompts, cfgs, use_cache=True, pad_id=pad_id, fast=fast, tokenizer=tokenizer)
        self.pad_id, self.k = pad_id, draft_tokens
        self.eos = eos_id if eos_id is not None else tokenizer.eot_id if tokenizer is not None else None
        self._start_draft(draft)

    @_without_autograd
    def _start_draft(self, draft) -> None:
        draft.eval()
        B, W = self.idx.shape
        self.draft, self.draft_cache = draft, draft.make_cache(B, draft.config.block_size)
        self.fresh = W  # columns neither cache has seen: all of them
        self.buffers: list[list[tuple]] = [[] for _ in range(B)]  # accepted tokens step() has not returned yet
        self.made = [0] * B  # tokens accepted per row (returned or buffered): the position of its next one
        self.ended = [False] * B  # the row accepted EOS (and stops there)
        siblings, self.seeds = {}, []  # the i-th row sharing a config uses seed + i, as DecodeSession
        for c in self.cfgs:
            i = siblings[id(c)] = siblings.get(id(c), -1) + 1
            self.seeds.append(int(torch.randint(0, 2 ** 62, ())) if c.seed is None else c.seed + i)
        self.rounds = self.proposed = self.accepted = 0  # for the acceptance rate

    def _generator(self, row: int, position: int, use: int) -> torch.Generator | None:
        if self.cfgs[row].temperature < GREEDY_BELOW:
            return None
        return torch.Generator(device=self.device).manual_seed(hash((self.seeds[row], position, use)) % 2 ** 63)

    @_without_autograd
    def step(self) -> Step:
        if any(not b for b in self.buffers):
            self._round()
        entries = [b.pop(0) for b in self.buffers]
        out = Step(torch.tensor([e[0] for e in entries], device=self.device))
        if self.want_logprobs is not None:  # a row that did not ask (it joined from another session) reads 0
            out.logprobs = torch.tensor([0.0 if e[1] is None else float(e[1]) for e in entries])
            if self.want_logprobs > 0:
                n = self.want_logprobs
                wide = lambda t, fill: torch.cat([t, torch.full((n - len(t),), fill, dtype=t.dtype)])  # noqa: E731
                out.top_logprobs = torch.stack([wide(e[2] if e[2] is not None else torch.zeros(0), 0.0)
                                                for e in entries])
                out.top_ids = torch.stack([wide(e[3] if e[3] is not None else torch.zeros(0, dtype=torch.long), 0)
                                           for e in entries])
        return out

    def _caps(self) -> list[int]:
        """How many tokens each row may accept this round: none for a row that has what it needs (its
        max_new_tokens, or EOS) and still has tokens to serve, at most k+1 buffered otherwise."""
        caps = []
        for c, made, ended, buf in zip(self.cfgs, self.made, self.ended, self.buffers):
            need = 0 if ended and c.stop_at_eos else c.max_new_tokens - made
            caps.append(0 if need <= 0 and buf else max(1, min(need, self.k + 1 - len(buf))))
        return caps

    def _round(self) -> None:
        caps = self._caps()
        k = max(0, min(self.k, max(caps) - 1))  # no more proposals than any row can keep
        if self.idx.size(1) + k > self.block:
            self._pack()
            k = max(0, min(k, self.block - self.idx.size(1)))
        B, W = self.idx.shape
        cfgs, tc, dc = self.cfgs, self.cache, self.draft_cache
        ext = torch.cat([self.idx, torch.full((B, k + 1), self.pad_id, dtype=torch.long, device=self.device)], 1)
        ext_mask = torch.cat([self.mask, torch.ones(B, k + 1, dtype=torch.bool, device=self.device)], 1)
        gens = lambda j, use: [self._generator(i, self.made[i] + j, use) for i in range(B)]  # noqa: E731
        # 1. the draft proposes k+1 tokens, one forward each (the first also reads what it has not seen yet)
        q = []
        for j in range(k + 1):
            logits, _ = self.draft(ext[:, dc.pos:W + j], cache=dc, last_only=True,
                                   attention_mask=ext_mask[:, :W + j] if self.padded else None)
            q.append(process_logits(logits[:, -1].float(), cfgs, None, None, self.bias))
            ext[:, W + j] = choose(q[-1], cfgs, gens(j, DRAFT))
        q = torch.stack(q, 1).softmax(dim=-1)  # (B, k+1, V)
        # 2. the target scores every proposal in one forward: p_j for d_{j+1}, j = 0 … k
        h = self.model.encode(ext[:, tc.pos:W + k], cache=tc, attention_mask=ext_mask[:, :W + k] if self.padded else None)
        logits = next_token_head(self.model.lm_head, h[:, -(k + 1):], None, False, self.model.config.logit_softcap)[0].float()
        p = torch.stack([process_logits(logits[:, j], cfgs, None, None, self.bias) for j in range(k + 1)], 1)
        p = p.softmax(dim=-1)
        # 3. each row keeps the proposals the acceptance rule lets through, then one drawn token
        drafts = ext[:, W:].tolist()
        kept = []
        for i in range(B):
            tokens, n = verify(p[i], q[i], drafts[i], cfgs[i].temperature < GREEDY_BELOW,
                               lambda j, use: self._generator(i, self.made[i] + j, use))
            self.proposed, self.accepted = self.proposed + k + 1, self.accepted + n
            tokens = tokens[:caps[i]]
            if self.eos is not None and cfgs[i].stop_at_eos and self.eos in tokens:
                tokens = tokens[:tokens.index(self.eos) + 1]
            kept.append(tokens)
        self.rounds += 1
        self._commit(kept, W, logits)

    def _commit(self, kept: list[list[int]], W: int, logits: torch.Tensor) -> None:
        """New columns: the longest row's kept proposals (mask False where a row kept fewer), then each row's
        last kept token in the last column (a row that keeps nothing gets a padding column there)."""
        A = max(len(t) for t in kept)
        B = len(kept)
        new = torch.full((B, A), self.pad_id, dtype=torch.long, device=self.device)
        real = torch.zeros((B, A), dtype=torch.bool, device=self.device)
        for i, tokens in enumerate(kept):
            if tokens:
                new[i, :len(tokens) - 1] = torch.tensor(tokens[:-1], dtype=torch.long)
                new[i, -1] = tokens[-1]
                real[i, :len(tokens) - 1] = True
                real[i, -1] = True
        self.idx, self.mask = torch.cat([self.idx, new], 1), torch.cat([self.mask, real], 1)
        self.cache.pos = self.draft_cache.pos = W + A - 1  # roll back what no row kept; the last column is fresh
        self.fresh, self.padded = 1, not bool(self.mask.all())
        logp = logits.log_softmax(dim=-1) if self.want_logprobs is not None else None
        top = logp.topk(min(self.want_logprobs, logp.size(-1)), dim=-1) if self.want_logprobs else None
        for i, tokens in enumerate(kept):
            for j, t in enumerate(tokens):
                self.buffers[i].append((t, logp[i, j, t] if logp is not None else None,
                                        top.values[i, j] if top is not None else None,
                                        top.indices[i, j] if top is not None else None))
            self.made[i] += len(tokens)
            self.ended[i] = self.ended[i] or (bool(tokens) and tokens[-1] == self.eos)

    def _pack(self) -> None:
        """Remove the mask=False holes: every row's last block_size real tokens, left-padded again; both
        caches start over (the next round reads everything)."""
        rows = [self.idx[i][self.mask[i]][-self.block:] for i in range(self.batch_size)]
        L = max(len(r) for r in rows)
        self.idx = torch.full((len(rows), L), self.pad_id, dtype=torch.long, device=self.device)
        self.mask = torch.zeros((len(rows), L), dtype=torch.bool, device=self.device)
        for i, r in enumerate(rows):
            self.idx[i, L - len(r):], self.mask[i, L - len(r):] = r, True
        self.cache.pos = self.draft_cache.pos = 0
        self.fresh, self.padded = L, not bool(self.mask.all())

    @_without_autograd
    def keep(self, rows: Sequence[int]) -> None:
        W = self.idx.size(1)
        super().keep(rows)
        if self.cache.pos == 0:  # before the first round: still nothing cached
            self.fresh = self.idx.size(1)
        self.draft_cache.select(torch.tensor(list(rows), dtype=torch.long, device=self.device))
        dropped = W - self.idx.size(1)  # leading columns that were padding in every kept row
        if dropped and self.draft_cache.pos:
            self.draft_cache.drop_front(dropped)
        for name in ("buffers", "made", "ended", "seeds"):
            setattr(self, name, [getattr(self, name)[i] for i in rows])

    @_without_autograd
    def merge(self, other: "SpeculativeSession", pad_id: int = 0) -> None:
        """As DecodeSession.merge; the draft's caches are right-aligned into one the same way."""
        assert all(s.draft_cache.pos == s.idx.size(1) - 1 for s in (self, other)), "merge after a round"
        caches = [self.draft_cache, other.draft_cache]
        super().merge(other, pad_id)
        self.draft_cache = right_aligned(self.draft, caches, self.idx.size(1), self.draft.config.block_size)
        for name in ("buffers", "made", "ended", "seeds"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.rounds, self.proposed, self.accepted = (self.rounds + other.rounds, self.proposed + other.proposed,
                                                     self.accepted + other.accepted)
