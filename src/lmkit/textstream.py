"""From token ids to text: streamed pieces with whole characters, stop strings, EOS and max_new_tokens.

`TextStream` holds back a piece that ends inside a multi-byte character, `StopStrings` finds stop
strings that span tokens, `RowText` applies both (and EOS, max_new_tokens, logprobs) to one row of a
`DecodeSession`, and `stream_pieces` drives a session for the Python API. The server's scheduler uses
`RowText` and `Piece` the same way.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

from .engine import DecodeSession, Step
from .sampling import SamplingConfig

__all__ = ["TextStream", "StopStrings", "Piece", "RowText", "stream_pieces"]


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
                  use_cache: bool = True, session=DecodeSession) -> Iterator[Piece]:
    """Generate for several prompts at once and yield every row's pieces as they come; finished rows
    leave the batch, so the others run faster. `session`: the DecodeSession class (or a factory taking its
    arguments), e.g. speculative.py's with a draft model."""
    eos = tokenizer.eot_id
    rows = [RowText(tokenizer, cfg, eos) for _ in prompts]
    if cfg.max_new_tokens == 0:
        for i in range(len(prompts)):
            yield Piece(i, "", -1, finish_reason="length")
        return
    dec = session(model, prompts, cfg, use_cache=use_cache, pad_id=eos or 0, tokenizer=tokenizer)
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
