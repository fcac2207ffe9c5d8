"""Structured output: a token mask, from a grammar, applied where the sampler draws (xgrammar).

`json_grammar(tokenizer, vocab_size, spec)` compiles a JSON grammar for a tokenizer: `spec` True means
any JSON object (OpenAI's `json_object` mode), a dict (or JSON text) is a JSON Schema. Each row of a
`DecodeSession` that asks for one gets its own `Constraint` (an xgrammar GrammarMatcher): before every
draw the matcher fills a bitmask of the tokens that keep the text a prefix of a valid answer, the
masked logits become −inf (`RowMasks.apply`), and after the draw the token is fed to the matcher. Once
the answer is complete the only allowed token is end-of-text, so the row ends there.

xgrammar needs the bytes each token stands for (`token_bytes`): for byte-level BPE the byte-to-unicode
alphabet is undone, for a byte-fallback (SentencePiece-style) vocabulary `<0x0A>` is a byte and `▁` a
space, for a character vocabulary each token is its character's UTF-8. Special tokens (and the unused
ids of a model whose vocabulary is padded past the tokenizer's) are empty, which xgrammar never allows.
"""
from __future__ import annotations

import json
import re
import weakref

import torch

from .chat_tools import TOOL_CLOSE, TOOL_OPEN  # a call: TOOL_OPEN{"name": …, "arguments": {…}}TOOL_CLOSE
from .errors import LmkitError

__all__ = ["token_bytes", "json_grammar", "tool_grammar", "grammar_for", "check_json_spec", "Constraint",
           "RowMasks", "TOOL_OPEN", "TOOL_CLOSE"]

_infos: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # tokenizer -> {vocab_size: compiler}
_BYTE = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")
_NOISE = re.compile(r"\[[\d:]+\] \S+:\d+: |Check failed: \(.*?\) is false: ")  # xgrammar's C++ log prefix
JSON_SYNTAX = '{}":,'  # what a JSON object needs; a character vocabulary without them cannot write one


def _byte_alphabet() -> dict[str, int]:
    """Byte-level BPE's printable stand-in for each byte (GPT-2's alphabet), reversed: char -> byte."""
    kept = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    table, extra = {}, 0
    for b in range(256):
        if b in kept:
            table[chr(b)] = b
        else:
            table[chr(256 + extra)] = b
            extra += 1
    return table


def _decoder_kinds(tokenizer) -> str:
    decoder = tokenizer.hf.decoder
    return decoder.__getstate__().decode() if decoder is not None else ""


def token_bytes(tokenizer, vocab_size: int) -> list[bytes]:
    """The bytes of the text each token id stands for, `vocab_size` entries (b"" for specials)."""
    hf = tokenizer.hf
    kinds = _decoder_kinds(tokenizer)
    byte_level, fallback = '"ByteLevel"' in kinds, '"ByteFallback"' in kinds or '"Metaspace"' in kinds
    alphabet = _byte_alphabet() if byte_level else {}
    specials = {i for i, t in hf.get_added_tokens_decoder().items() if t.special}
    out = []
    for i in range(vocab_size):
        tok = hf.id_to_token(i) if i < hf.get_vocab_size() else None
        if tok is None or i in specials:
            out.append(b"")
        elif byte_level and all(c in alphabet for c in tok):
            out.append(bytes(alphabet[c] for c in tok))
        elif fallback and (m := _BYTE.match(tok)):
            out.append(bytes([int(m.group(1), 16)]))
        elif fallback:
            out.append(tok.replace("\u2581", " ").encode("utf-8"))
        else:
            out.append(tok.encode("utf-8"))
    return out


def _xgr():
    try:
        import xgrammar  # the `structured` extra, imported when a grammar is first asked for
    except ImportError:
        raise LmkitError("json_schema: structured output needs xgrammar (pip install 'lmkit[structured]')") from None
    return xgrammar


def _compiler(tokenizer, vocab_size: int, text: bool = False):
    """xgrammar's compiler for this vocabulary, and the tokens it may use. JSON alone (`text` False) never holds
    a raw control character; a tool-calling reply (`text` True) is free text around its calls, newlines included."""
    xgr = _xgr()
    per_size = _infos.setdefault(tokenizer, {})
    if (vocab_size, text) not in per_size:
        if tokenizer.eot_id is None:
            raise LmkitError("json_schema: constrained output needs an end-of-text token, and this tokenizer has none")
        vocab = token_bytes(tokenizer, vocab_size)
        # a raw control character is never part of the JSON written here (inside a string it is escaped, between
        # values the layout is json.dumps's), so tokens holding one are left out, as specials are: this also
        # keeps them out of length-bounded strings, whose character class in xgrammar 0.2.9 lets them through
        allowed = vocab if text else [b"" if any(x < 0x20 for x in v) else v for v in vocab]
        info = xgr.TokenizerInfo(allowed, xgr.VocabType.RAW, vocab_size=vocab_size, stop_token_ids=[tokenizer.eot_id])
        per_size[vocab_size, text] = (xgr.GrammarCompiler(info, max_threads=1), set(allowed) - {b""})
    return per_size[vocab_size, text]


def _literals(schema) -> list[str]:
    """The texts a schema fixes: property names, enum and const strings (a character vocabulary must spell them)."""
    out, stack = [], [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if isinstance(node.get("properties"), dict):
                out += [k for k in node["properties"] if isinstance(k, str)]
            out += [v for v in [*(node.get("enum") or []), node.get("const")] if isinstance(v, str)]
            stack += list(node.values())
        elif isinstance(node, list):
            stack += node
    return out


def _unspellable(text: str, tokens: set[bytes]) -> str | None:
    """The first character of `text` no token (or run of one-byte tokens) of the vocabulary can write."""
    for c in text:
        b = c.encode("utf-8")
        if b not in tokens and not all(bytes([x]) in tokens for x in b):
            return c
    return None


def check_json_spec(spec) -> object:
    """True (any JSON object) or a JSON Schema (a dict, or JSON text of one); raises LmkitError otherwise."""
    if spec is True:
        return spec
    if isinstance(spec, str):
        try:
            spec = json.loads(spec)
        except ValueError as e:
            raise LmkitError(f"json_schema: not JSON text ({e})") from None
    if not isinstance(spec, dict):
        raise LmkitError(f"json_schema must be a JSON Schema object, or True for any JSON object "
                         f"(got {type(spec).__name__})")
    return spec


def _message(e: Exception) -> str:
    """xgrammar's error, without its C++ log prefix: its first line, or the exception's type."""
    return _NOISE.sub("", str(e)).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def json_grammar(tokenizer, vocab_size: int, spec):
    """The compiled grammar for `spec` (check_json_spec), cached per tokenizer; LmkitError if it cannot be."""
    spec = check_json_spec(spec)
    compiler, tokens = _compiler(tokenizer, vocab_size)
    schema = {"type": "object"} if spec is True else spec
    for text in [JSON_SYNTAX, *_literals(schema)]:
        if (c := _unspellable(text, tokens)) is not None:
            where = "JSON's syntax" if text is JSON_SYNTAX else f"the schema's {text!r}"
            raise LmkitError(f"json_schema: this model's vocabulary has no token for {c!r} (in {where}), "
                             "so it cannot write the answer")
    try:
        # one layout, json.dumps's ({"a": 1, "b": 2}; without spaces when the vocabulary has none): free
        # whitespace lets a small model spend its whole budget on blanks. strict: no properties beyond the schema's
        seps = (", ", ": ") if b" " in tokens else (",", ":")
        return compiler.compile_json_schema(json.dumps(schema), any_whitespace=False, separators=seps,
                                            strict_mode=spec is not True)
    except (RuntimeError, ValueError, TypeError) as e:
        raise LmkitError(f"json_schema: the grammar library cannot compile this schema: {_message(e)}") from None


def tool_grammar(tokenizer, vocab_size: int, tools, choice: str = "auto"):
    """The grammar of a reply that calls tools: `tools` is [(name, parameters schema), …]; `choice` is
    "auto" (free text, in which every TOOL_OPEN starts a call whose arguments follow its function's schema),
    "required" (the reply is one call, of any of the tools) or a tool's name (one call of that tool)."""
    compiler, tokens = _compiler(tokenizer, vocab_size, text=True)  # the parser reads the calls leniently
    tags = []
    for name, params in tools:
        begin, end = f'{TOOL_OPEN}{{"name": {json.dumps(name)}, "arguments": ', f"}}{TOOL_CLOSE}"
        for text in (begin, end, *_literals(params or {})):
            if (c := _unspellable(text, tokens)) is not None:
                raise LmkitError(f"tools: this model's vocabulary has no token for {c!r} (in {text!r}), "
                                 "so it cannot write the call")
        tags.append({"type": "tag", "begin": begin, "end": end,
                     "content": {"type": "json_schema", "json_schema": params or {"type": "object"},
                                 "max_whitespace_cnt": 1}})
    if choice == "auto":
        fmt = {"type": "triggered_tags", "triggers": [TOOL_OPEN], "tags": tags}
    else:
        chosen = [t for t, (name, _) in zip(tags, tools) if choice in ("required", name)]
        fmt = chosen[0] if len(chosen) == 1 else {"type": "or", "elements": chosen}
    try:
        return compiler.compile_structural_tag({"type": "structural_tag", "format": fmt})
    except (RuntimeError, ValueError, TypeError) as e:
        raise LmkitError(f"tools: the grammar library cannot compile the functions' parameters: "
                         f"{_message(e)}") from None


def grammar_for(tokenizer, vocab_size: int, cfg):
    """A SamplingConfig's grammar: its json_schema's, or its tools' (cfg.tools = (choice, [(name, schema), …]))."""
    if cfg.tools is not None:
        choice, tools = cfg.tools
        return tool_grammar(tokenizer, vocab_size, tools, choice)
    return json_grammar(tokenizer, vocab_size, cfg.json_schema)


class Constraint:
    """One row's grammar state: which tokens may come next, fed every token drawn."""

    def __init__(self, compiled):
        self.matcher = _xgr().GrammarMatcher(compiled)
        self.dead_end = False  # the vocabulary had no token to continue: the row was ended with end-of-text

    @property
    def finished(self) -> bool:
        return self.matcher.is_terminated()

    def accept(self, token: int) -> None:
        if not self.finished and not self.matcher.accept_token(token):
            self.dead_end = True  # only reached when a dead end forced end-of-text in place of the grammar


class RowMasks:
    """The constraints of a batch, one per row (None: unconstrained); `apply` masks logits in place."""

    def __init__(self, constraints: list, eos_id: int | None):
        self.rows, self.eos_id = list(constraints), eos_id
        self._bitmask = None

    def __bool__(self) -> bool:
        return any(c is not None for c in self.rows)

    def apply(self, logits: torch.Tensor) -> None:
        xgr = _xgr()
        B, V = logits.shape
        if self._bitmask is None or self._bitmask.shape[0] < B:
            self._bitmask = xgr.allocate_token_bitmask(B, V)
        bitmask = self._bitmask[:B]
        active = [i for i, c in enumerate(self.rows) if c is not None and not c.finished]
        for i in active:
            self.rows[i].matcher.fill_next_token_bitmask(bitmask, i)
            if not bool(bitmask[i].any()):  # nothing the vocabulary has continues the answer: end the row
                self.rows[i].dead_end = True
                bitmask[i, self.eos_id // 32] = 1 << (self.eos_id % 32) if self.eos_id % 32 < 31 else -(1 << 31)
        if active:
            xgr.apply_token_bitmask_inplace(logits, bitmask.to(logits.device), indices=active)

    def accept(self, tokens: torch.Tensor) -> None:
        for c, t in zip(self.rows, tokens.tolist()):
            if c is not None:
                c.accept(t)

    def keep(self, rows) -> None:
        self.rows = [self.rows[i] for i in rows]
