"""OpenAI response objects, built piece by piece from the engine's output.

Completions:  {"object": "text_completion", "choices": [{"index", "text", "logprobs", "finish_reason"}], "usage"}
Chat:         {"object": "chat.completion", "choices": [{"index", "message": {"role", "content"}, …}], "usage"}
Streams send the same choices as chunks ("text_completion" / "chat.completion.chunk") with the new text
only (`text`, or `delta.content`), then `data: [DONE]`. With tools, a chat choice's text goes through a
ToolCallParser (tools.py): each complete call is one `delta.tool_calls` entry (id, name and arguments
whole), the message gets `tool_calls`, and the finish reason is "tool_calls".
"""
from __future__ import annotations

from ..textstream import Piece
from .tools import ToolCallParser


class ChoiceBuilder:
    def __init__(self, tokenizer, kind: str, model_id: str, id: str, created: int, n_choices: int,
                 tool_names: list[str] | None = None):
        self.tokenizer, self.chat, self.model_id, self.id, self.created = \
            tokenizer, kind == "chat.completion", model_id, id, created
        self.parsers = [ToolCallParser(tool_names) for _ in range(n_choices)] if tool_names else None
        self.calls: list[list[dict]] = [[] for _ in range(n_choices)]
        self.texts = [""] * n_choices
        self.finish: list[str | None] = [None] * n_choices
        self.n_tokens = [0] * n_choices
        self.logprobs: list[list[dict] | None] = [None] * n_choices

    def token(self, token_id: int) -> str:
        return self.tokenizer.decode([token_id])

    def _logprob_entry(self, piece: Piece):
        """One token's log-probability in the format of this endpoint (chat or legacy completions)."""
        tok = self.token(piece.token_id)
        alts = [(self.token(i), lp) for i, lp in (piece.top_logprobs or [])]
        if self.chat:
            return {"token": tok, "logprob": piece.logprob, "bytes": list(tok.encode()),
                    "top_logprobs": [{"token": t, "logprob": lp, "bytes": list(t.encode())} for t, lp in alts]}
        return {"token": tok, "logprob": piece.logprob, "top": dict(alts)}

    def add(self, piece: Piece) -> dict | None:
        """Record one piece; return the stream chunk for it (None when there is nothing to send)."""
        i, text, calls = piece.row, piece.text, []
        if self.parsers is not None:
            text, calls = self.parsers[i].push(text)
            if piece.finish_reason is not None:
                text += self.parsers[i].flush()
            calls = [{"index": len(self.calls[i]) + k, **c} for k, c in enumerate(calls)]
            self.calls[i] += calls
        self.texts[i] += text
        self.n_tokens[i] += piece.token_id >= 0  # a row ended by the server's shutdown adds no token
        self.finish[i] = self._finish(i, piece.finish_reason)
        entry = None
        if piece.logprob is not None:
            entry = self._logprob_entry(piece)
            self.logprobs[i] = (self.logprobs[i] or []) + [entry]
        if not text and not calls and piece.finish_reason is None and entry is None:
            return None
        return chunk(self, [self._choice(i, text, self.finish[i], [entry] if entry else None, delta=True, calls=calls)])

    def _finish(self, i: int, reason: str | None) -> str | None:
        return "tool_calls" if reason == "stop" and self.calls[i] else reason

    def opening_chunks(self) -> list[dict]:
        """Chat streams open each choice with the assistant role, as OpenAI does."""
        if not self.chat:
            return []
        return [chunk(self, [{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                              "finish_reason": None}]) for i in range(len(self.texts))]

    def _choice(self, i: int, text: str, finish: str | None, entries: list[dict] | None, delta: bool,
                calls: list[dict] | None = None) -> dict:
        if self.chat:
            logprobs = None if entries is None else {"content": entries}
            if delta:
                body = {"delta": {**({"content": text} if text else {}), **({"tool_calls": calls} if calls else {})}}
            elif self.calls[i]:
                body = {"message": {"role": "assistant", "content": text.strip() or None,
                                    "tool_calls": [{k: v for k, v in c.items() if k != "index"} for c in self.calls[i]]}}
            else:
                body = {"message": {"role": "assistant", "content": text}}
            return {"index": i, **body, "logprobs": logprobs, "finish_reason": finish}
        logprobs = None
        if entries is not None:
            offsets, pos = [], 0
            for e in entries:
                offsets.append(pos)
                pos += len(e["token"])
            logprobs = {"tokens": [e["token"] for e in entries], "token_logprobs": [e["logprob"] for e in entries],
                        "top_logprobs": [e["top"] for e in entries], "text_offset": offsets}
        return {"index": i, "text": text, "logprobs": logprobs, "finish_reason": finish}


def chunk(b: ChoiceBuilder, choices: list[dict], usage: dict | None = None) -> dict:
    out = {"id": b.id, "object": "chat.completion.chunk" if b.chat else "text_completion", "created": b.created,
           "model": b.model_id, "choices": choices}
    if usage is not None:
        out["usage"] = usage
    return out


def completion_body(b: ChoiceBuilder, prompt_tokens: int) -> dict:
    choices = [b._choice(i, b.texts[i], b.finish[i] or "length", b.logprobs[i], delta=False)
               for i in range(len(b.texts))]
    completion_tokens = sum(b.n_tokens)
    return {"id": b.id, "object": "chat.completion" if b.chat else "text_completion", "created": b.created,
            "model": b.model_id, "choices": choices,
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens}}
