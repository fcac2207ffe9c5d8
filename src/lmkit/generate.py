"""Sampling: the one generation loop behind the CLI, the Python API and the server.

Each step turns the logits of the last position into a distribution and draws the next token:
    penalties   l_v ← l_v / r if l_v > 0 else l_v · r    for tokens v already in the text (repetition, CTRL)
                l_v ← l_v − c_v · α_freq − [c_v > 0] · α_presence   (c_v = times v was generated; OpenAI)
    p = softmax(l / temperature), restricted to the k most likely tokens (top-k), the smallest set whose
    probability reaches top_p (nucleus) and the tokens with p ≥ min_p · p_max (min-p);
    temperature 0 means greedy (argmax).
The prompts run through the model once (prefill) and fill a pre-allocated key/value cache; every later
step feeds only the newest token. Prompts of different lengths share a batch left-padded, with an
attention mask that hides the padding, so each row gives the tokens it would give alone. When the text
outgrows the context, the oldest tokens are dropped and the cache is rebuilt over the last block_size.
Each row draws from its own generator (seed + i for the i-th row of one request), so a seed reproduces
a request's output whatever else shares the batch.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, fields
from typing import Iterator, Sequence

import torch

from .errors import LmkitError

GREEDY_BELOW = 1e-4  # temperatures under this are greedy (logits / 1e-30 would overflow to inf)
MAX_SEED = 2**62


@dataclass
class SamplingConfig:
    max_new_tokens: int = 200
    temperature: float = 0.8  # 0 = greedy (as is anything below GREEDY_BELOW)
    top_k: int | None = 200  # None or 0 = off
    top_p: float | None = None  # nucleus mass in (0, 1]
    min_p: float | None = None  # keep tokens with p >= min_p * p_max
    repetition_penalty: float = 1.0  # > 1 discourages any token already in prompt or output
    frequency_penalty: float = 0.0  # subtracted once per earlier occurrence in the output
    presence_penalty: float = 0.0  # subtracted once if the token occurred in the output
    seed: int | None = None
    stop_at_eos: bool = True
    stop: tuple[str, ...] = ()  # stop strings, matched in the text across token boundaries
    logprobs: int | None = None  # report the chosen token's log-probability and this many alternatives
    truncate: bool = False  # a prompt longer than the context keeps its last tokens instead of failing

    def validate(self) -> "SamplingConfig":
        """Check every field once, at the edge; raises LmkitError naming the field and value."""
        def bad(name, rule):
            raise LmkitError(f"{name} must be {rule} (got {getattr(self, name)!r})")
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 0:
            bad("max_new_tokens", "an integer >= 0")
        if self.temperature < 0:
            bad("temperature", ">= 0")
        if self.top_k is not None and self.top_k < 0:
            bad("top_k", ">= 0")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            bad("top_p", "in (0, 1]")
        if self.min_p is not None and not 0 <= self.min_p <= 1:
            bad("min_p", "in [0, 1]")
        if self.repetition_penalty <= 0:
            bad("repetition_penalty", "> 0")
        for name in ("frequency_penalty", "presence_penalty"):
            if not -2 <= getattr(self, name) <= 2:
                bad(name, "in [-2, 2]")
        if self.logprobs is not None and not 0 <= self.logprobs <= 20:
            bad("logprobs", "in [0, 20]")
        if self.seed is not None and not 0 <= self.seed < MAX_SEED:
            bad("seed", "in [0, 2**62)")
        if isinstance(self.stop, str):
            self.stop = (self.stop,)
        self.stop = tuple(s for s in self.stop if s)
        return self


SAMPLING_FIELDS = {f.name for f in fields(SamplingConfig)}


def sampling_config(**kw) -> SamplingConfig:
    """SamplingConfig from keyword arguments, with a clear error for an unknown name."""
    unknown = sorted(set(kw) - SAMPLING_FIELDS)
    if unknown:
        raise LmkitError(f"unknown sampling option {unknown[0]!r} (known: {', '.join(sorted(SAMPLING_FIELDS))})")
    return SamplingConfig(**kw).validate()


def _per_row(cfgs: Sequence[SamplingConfig], name: str, off, device) -> torch.Tensor:
    """One column (B, 1) of a sampling parameter, `off` where a row leaves it unset."""
    vals = [getattr(c, name) for c in cfgs]
    return torch.tensor([[off if v is None else float(v)] for v in vals], device=device)


def process_logits(logits: torch.Tensor, cfgs: Sequence[SamplingConfig], counts: torch.Tensor | None,
                   seen: torch.Tensor | None) -> torch.Tensor:
    """logits (B, V) -> the logits to sample from: penalties, temperature, top-k, top-p, min-p applied
    row by row (masked tokens get −inf). `counts` (B, V): generated occurrences; `seen` (B, V): in the text."""
    device = logits.device
    logits = logits.float()
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


def sample_next(logits: torch.Tensor, cfg: SamplingConfig, generator: torch.Generator | None) -> torch.Tensor:
    """logits (B, V) -> next token ids (B,), every row with the same config and generator."""
    logits = process_logits(logits, [cfg] * logits.size(0), None, None)
    if cfg.temperature < GREEDY_BELOW:
        return logits.argmax(dim=-1)
    return torch.multinomial(logits.softmax(dim=-1), 1, generator=generator).squeeze(-1)


@dataclass
class Step:
    """One decoding step for every row: the tokens (B,), and with logprobs on, their log-probabilities
    under the model (B,) and the top alternatives (B, k) ids and log-probabilities."""
    tokens: torch.Tensor
    logprobs: torch.Tensor | None = None
    top_ids: torch.Tensor | None = None
    top_logprobs: torch.Tensor | None = None


def _without_autograd(method):
    """Run a Decoder method under torch.inference_mode (fast path) or torch.no_grad (plain path)."""
    @functools.wraps(method)
    def run(self, *args, **kwargs):
        with torch.inference_mode() if self.fast else torch.no_grad():
            return method(self, *args, **kwargs)
    return run


class Decoder:
    """Batched step-by-step decoding of prompts of different lengths, each row with its own config.

    `step()` advances every row by one token; `keep(rows)` drops the others (finished requests, clients
    that left) from the batch, cache included. The server's scheduler and `generate_ids` both drive it.
    `fast` (default) runs every method under torch.inference_mode, which skips autograd's per-op
    bookkeeping (version counters, view tracking); the tokens are the same as with `fast=False`
    (torch.no_grad), and the tensors it returns cannot enter autograd later.
    """

    def __init__(self, model, prompts: Sequence[Sequence[int]], cfgs: Sequence[SamplingConfig] | SamplingConfig,
                 use_cache: bool = True, pad_id: int = 0, fast: bool = True):
        self.fast = fast
        self._start(model, prompts, cfgs, use_cache, pad_id)

    @_without_autograd
    def _start(self, model, prompts, cfgs, use_cache, pad_id) -> None:
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
            self.generators.append(None if c.seed is None else torch.Generator(device=device).manual_seed(c.seed + i))
        V = model.config.vocab_size
        penalised = [c.frequency_penalty or c.presence_penalty for c in self.cfgs]
        self.counts = torch.zeros(B, V, device=device) if any(penalised) else None
        self.seen = None
        if any(c.repetition_penalty != 1 for c in self.cfgs):
            in_prompt = torch.zeros(B, V, device=device).scatter_add_(1, self.idx, self.mask.float())
            self.seen = in_prompt > 0  # padding ids do not count
        self.want_logprobs = max((c.logprobs for c in self.cfgs if c.logprobs is not None), default=None)

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
        simple = self.counts is None and self.seen is None
        if simple and all(c.temperature < GREEDY_BELOW for c in self.cfgs):
            return logits.argmax(dim=-1)
        logits = process_logits(logits, self.cfgs, self.counts, self.seen)
        probs = logits.softmax(dim=-1)
        greedy = logits.argmax(dim=-1)
        draws = [greedy[i] if c.temperature < GREEDY_BELOW else
                 torch.multinomial(probs[i], 1, generator=self.generators[i])[0] for i, c in enumerate(self.cfgs)]
        return torch.stack(draws)

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
        if self.counts is not None:
            self.counts = self.counts[sel]
        if self.seen is not None:
            self.seen = self.seen[sel]
        if self.cache is not None:
            self.cache.select(sel)
        empty = int(self.mask.any(dim=0).long().argmax())  # leading columns that are padding in every row
        if empty:
            self.idx, self.mask = self.idx[:, empty:], self.mask[:, empty:]
            c = self.cache  # laid out by column, from column `before` of idx on: shift it too
            before = self.idx.size(1) + empty - self.fresh - c.pos if c is not None else 0
            n = max(0, empty - before)
            if c is not None and c.pos and n:
                c.drop_front(n)
        self.padded = not bool(self.mask.all())

    @_without_autograd
    def merge(self, other: "Decoder", pad_id: int = 0) -> None:
        """Append the rows of `other`, which has also just stepped, so both decode as one batch from now
        on (the server's scheduler lets new requests join this way). The narrower side gets columns of
        padding on the left; both caches move into one, right-aligned. Needs caches and no sliding yet."""
        a, b = self, other
        assert a.cache is not None and b.cache is not None and a.fresh == b.fresh == 1
        assert a.cache.pos == a.idx.size(1) - 1 and b.cache.pos == b.idx.size(1) - 1, "merge after sliding"
        C = max(a.idx.size(1), b.idx.size(1))
        wide = lambda t, value: torch.nn.functional.pad(t, (C - t.size(1), 0), value=value)
        cache = self.model.make_cache(a.batch_size + b.batch_size, self.block)
        for d, rows in ((a, slice(0, a.batch_size)), (b, slice(a.batch_size, None))):
            n = d.cache.pos
            cache.k[:, rows, :, :C - 1 - n].zero_()  # padding keys: masked, but must be finite (0 · NaN = NaN)
            cache.v[:, rows, :, :C - 1 - n].zero_()
            cache.k[:, rows, :, C - 1 - n:C - 1] = d.cache.k[:, :, :, :n]
            cache.v[:, rows, :, C - 1 - n:C - 1] = d.cache.v[:, :, :, :n]
        cache.pos = C - 1
        self.cache = cache
        self.idx = torch.cat([wide(a.idx, pad_id), wide(b.idx, pad_id)])
        self.mask = torch.cat([wide(a.mask, False), wide(b.mask, False)])
        self.padded = not bool(self.mask.all())
        for name, dtype in (("counts", torch.float32), ("seen", torch.bool)):
            x, y = getattr(a, name), getattr(b, name)
            if x is not None or y is not None:
                zeros = lambda d: torch.zeros(d.batch_size, self.model.config.vocab_size, dtype=dtype, device=self.device)
                setattr(self, name, torch.cat([x if x is not None else zeros(a), y if y is not None else zeros(b)]))
        self.cfgs, self.generators = a.cfgs + b.cfgs, a.generators + b.generators
        wants = [w for w in (a.want_logprobs, b.want_logprobs) if w is not None]
        self.want_logprobs = max(wants) if wants else None


def fit_to_context(ids: list[int], block_size: int, truncate: bool) -> list[int]:
    """A prompt longer than the context fails with a clear message, or keeps its last block_size tokens."""
    if len(ids) <= block_size:
        return ids
    if not truncate:
        raise LmkitError(f"prompt is {len(ids)} tokens, longer than the model's context of {block_size} tokens "
                         f"(shorten it, or pass truncate=True to keep the last {block_size})")
    return ids[-block_size:]


@torch.no_grad()
def generate_ids(model, idx: torch.Tensor | Sequence[Sequence[int]], cfg: SamplingConfig, eos_id: int | None = None,
                 use_cache: bool = True, pad_id: int = 0, fast: bool = True) -> Iterator[torch.Tensor]:
    """Yield the next token of every sequence, (B,), up to max_new_tokens or until all hit EOS.

    `idx` is a (B, T) tensor, or a list of prompts of different lengths (left-padded into one batch).
    Rows that reached EOS keep yielding EOS until every row is done."""
    prompts = idx.tolist() if isinstance(idx, torch.Tensor) else idx
    dec = Decoder(model, prompts, cfg, use_cache=use_cache, pad_id=pad_id, fast=fast)
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


class StopStrings:
    """Finds stop strings in streamed text even when one spans several tokens.

    Text is released only once it can no longer be the start of a stop string; `push` returns
    (text safe to show, whether a stop string was found — the text before it is then released)."""

    def __init__(self, stops: Sequence[str]):
        self.stops, self.held = tuple(stops), ""

    def push(self, piece: str) -> tuple[str, bool]:
        text = self.held + piece
        hits = [(text.find(s), s) for s in self.stops if s in text]
        if hits:
            self.held = ""
            return text[:min(hits)[0]], True
        keep = 0  # the longest tail of text that begins some stop string
        for s in self.stops:
            for n in range(min(len(s) - 1, len(text)), keep, -1):
                if text.endswith(s[:n]):
                    keep = n
                    break
        self.held = text[len(text) - keep:] if keep else ""
        return text[:len(text) - keep], False

    def flush(self) -> str:
        text, self.held = self.held, ""
        return text


@dataclass
class Piece:
    """What one row produced in one step: new text (may be empty while a character or a possible stop
    string is incomplete), the token, its log-probability and alternatives when asked, and the
    finish reason ("stop": EOS or a stop string, "length": max_new_tokens) on the row's last piece."""
    row: int
    text: str
    token_id: int
    logprob: float | None = None
    top_logprobs: list[tuple[int, float]] | None = None
    finish_reason: str | None = None


class RowText:
    """Token ids of one row -> text pieces with stop strings, EOS and max_new_tokens applied."""

    def __init__(self, tokenizer, cfg: SamplingConfig, eos_id: int | None):
        self.stream, self.stops = TextStream(tokenizer), StopStrings(cfg.stop)
        self.cfg, self.eos_id, self.n, self.finish_reason = cfg, eos_id, 0, None

    def push(self, row: int, step: Step, i: int) -> Piece:
        tok = int(step.tokens[i])
        piece = Piece(row, "", tok)
        if step.logprobs is not None and self.cfg.logprobs is not None:  # others in the batch may ask
            piece.logprob = float(step.logprobs[i])
            if step.top_ids is not None and self.cfg.logprobs:
                k = self.cfg.logprobs
                piece.top_logprobs = list(zip(step.top_ids[i, :k].tolist(), step.top_logprobs[i, :k].tolist()))
        self.n += 1
        if self.cfg.stop_at_eos and tok == self.eos_id:
            piece.text, piece.finish_reason = self.stops.flush() + self.stream.flush(), "stop"
        else:
            piece.text, hit = self.stops.push(self.stream.push(tok))
            if hit:
                piece.finish_reason = "stop"
            elif self.n >= self.cfg.max_new_tokens:
                more, hit = self.stops.push(self.stream.flush())
                piece.text += more if hit else more + self.stops.flush()
                piece.finish_reason = "stop" if hit else "length"
        self.finish_reason = piece.finish_reason
        return piece


def stream_pieces(model, tokenizer, prompts: Sequence[Sequence[int]], cfg: SamplingConfig,
                  use_cache: bool = True) -> Iterator[Piece]:
    """Generate for several prompts at once and yield every row's pieces as they come; finished rows
    leave the batch, so the others run faster."""
    eos = tokenizer.eot_id
    rows = [RowText(tokenizer, cfg, eos) for _ in prompts]
    if cfg.max_new_tokens == 0:
        for i in range(len(prompts)):
            yield Piece(i, "", -1, finish_reason="length")
        return
    dec = Decoder(model, prompts, cfg, use_cache=use_cache, pad_id=eos or 0)
    live = list(range(len(prompts)))  # original row index of each batch row
    while live:
        step = dec.step()
        for b, row in enumerate(live):
            yield rows[row].push(row, step, b)
        still = [b for b, row in enumerate(live) if rows[row].finish_reason is None]
        if len(still) < len(live):
            live = [live[b] for b in still]
            if live:
                dec.keep(still)
