"""A model's own chat template: the Jinja `chat_template` a Hugging Face folder ships, rendered as
transformers' `tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)` renders
it, so the model is prompted exactly as it was trained.

Where it comes from (in a Hugging Face folder):

    chat_template.jinja     the template (takes priority, as in transformers)
    tokenizer_config.json   "chat_template": a string, or a list of {"name", "template"} ("default" is used);
                            bos_token, eos_token, … which the template reads as variables
    generation_config.json  eos_token_id (an int or a list; else config.json's): every one ends a reply

An lmkit run imported from such a folder keeps chat_template.jinja and, in generation.json, the special
tokens and eos ids. The environment is the one transformers builds: jinja2's sandbox, trim_blocks and
lstrip_blocks, the loopcontrols extension ({% break %}, {% continue %}), a `{% generation %}` block that
just renders its body, `raise_exception(msg)` (here: an LmkitError carrying the template's message, one
line), `strftime_now(fmt)`, and a `tojson` that does not escape HTML and keeps non-ASCII text.
A reply stops at the text of any eos token (the stop strings).
"""
from __future__ import annotations

import json
import re
from datetime import datetime
from pathlib import Path

import jinja2
import jinja2.ext
from jinja2 import nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

from .chat_tools import for_jinja, with_tools
from .errors import LmkitError
from .io import atomic_write_text, read_json

JINJA_FILE = "chat_template.jinja"
TOKENS_FILE = "generation.json"  # a run's special tokens (the template's variables) and eos ids
SPECIAL_NAMES = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
ALIASES = {"developer": "system"}
MARKS = "\ue000\ue001"  # wrap the replies in a second rendering, to find them


class TemplateRaised(jinja2.TemplateError):
    """What the template's own raise_exception(message) raises."""


class Generation(jinja2.ext.Extension):
    """`{% generation %}…{% endgeneration %}` marks what the assistant writes; rendered as its body."""
    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

    def _body(self, caller):
        return caller()


class SafeNamespace(jinja2.utils.Namespace):
    """namespace(...) that refuses underscore names (no way to reach Python internals through one)."""

    def __init__(*args, **kwargs):  # noqa: N805  (Namespace's own signature, so namespace(self=…) works)
        self, attrs = args[0], dict(*args[1:], **kwargs)
        for name in attrs:
            SafeNamespace._check(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name, value):
        SafeNamespace._check(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check(name):
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(f"a namespace attribute may not start with '_' ({name!r})")


def _raise(message):
    raise TemplateRaised(str(message))


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def environment() -> ImmutableSandboxedEnvironment:
    """The sandbox transformers renders chat templates in (a template from the Hub is untrusted code)."""
    if tuple(int(x) for x in re.findall(r"\d+", jinja2.__version__)[:3]) < (3, 1, 6):
        raise LmkitError(f"chat templates need jinja2 >= 3.1.6 (older ones have sandbox escapes; this is "
                         f"{jinja2.__version__}): pip install -U jinja2")
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[Generation, jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals.update(raise_exception=_raise, strftime_now=lambda fmt: datetime.now().strftime(fmt),
                       namespace=SafeNamespace)
    return env


def as_dict(m) -> dict:
    """A message as the template sees it: {"role", "content"} (from a (role, content) pair)."""
    if isinstance(m, dict):  # tool calls, tool_call_id and the like pass through
        return {**m, "role": ALIASES.get(m["role"], m["role"]), "content": m.get("content")}
    role, content = m
    return {"role": ALIASES.get(role, role), "content": content}


def one_line(text: str) -> str:
    return " ".join(str(text).split())


class JinjaTemplate:
    """A Jinja chat template with the interface of chat.ChatTemplate (prompt, encode, jinja, save)."""
    special = True  # its markers are the tokenizer's own added tokens

    def __init__(self, source: str, tokens: dict[str, str], eos_ids: list[int], stops: tuple[str, ...],
                 where: str = "chat template"):
        self.source, self.tokens, self.eos_ids, self.stops, self.where = source, dict(tokens), list(eos_ids), stops, where
        try:
            self.compiled = environment().from_string(source)
        except jinja2.TemplateError as e:
            raise LmkitError(f"{where}: the chat template does not compile ({one_line(e)})") from None

    def render(self, messages, add_generation_prompt: bool, tools: list[dict] | None = None) -> str:
        """[(role, content), …] (or role/content dicts) -> the text transformers' apply_chat_template gives."""
        msgs = [as_dict(m) for m in messages]
        try:
            return self.compiled.render(messages=msgs, tools=tools or None, documents=None,
                                        add_generation_prompt=add_generation_prompt, **self.tokens)
        except TemplateRaised as e:
            raise LmkitError(f"{self.where}: the chat template refused the conversation: {one_line(e)}") from None
        except Exception as e:  # jinja2's errors, and methods a template calls failing on odd input (TypeError…)
            raise LmkitError(f"{self.where}: the chat template failed ({type(e).__name__}: {one_line(e)})") from None

    def prompt(self, messages, tools: list[dict] | None = None) -> tuple[str, tuple[str, ...]]:
        """The prompt that asks for the assistant's reply, and the stop strings (eos tokens' texts). Tools and
        tool messages go to a template that reads `tools` as they are (Qwen's, Llama 3's); one that does not
        gets `tools` as chat_tools.py writes them (and its calls and results with them)."""
        if "tools" in self.source:
            messages = [for_jinja(m) if isinstance(m, dict) else m for m in messages]
            return self.render(messages, add_generation_prompt=True, tools=tools), self.stops
        if tools:
            messages = with_tools(messages, tools)
        return self.render(messages, add_generation_prompt=True), self.stops

    def reply_spans(self, messages) -> tuple[str, list[tuple[int, int]]]:
        """(the whole conversation's text, [(start, end) of each assistant reply in it]). The replies are found
        by rendering them once more wrapped in two private-use characters; a reply runs from where the prompt for
        it ends (when the template renders that prompt as the start of the whole) through its content and the
        eos that closes it."""
        msgs = [as_dict(m) for m in messages]
        if any(MARKS[0] in m["content"] or MARKS[1] in m["content"] for m in msgs):
            raise LmkitError("messages may not contain the characters U+E000 or U+E001 (fine-tuning uses them)")
        text = self.render(msgs, add_generation_prompt=False)
        replies = [i for i, m in enumerate(msgs) if m["role"] == "assistant"]
        marked = [dict(m, content=MARKS[0] + m["content"] + MARKS[1]) if i in replies else m
                  for i, m in enumerate(msgs)]
        parts = re.split(f"[{MARKS}]", self.render(marked, add_generation_prompt=False))
        if "".join(parts) != text or len(parts) != 2 * len(replies) + 1:
            raise LmkitError(f"{self.where}: the chat template changes the assistant's messages as it renders them, "
                             "so fine-tuning cannot tell where the replies are")
        spans, at = [], 0
        for k, part in enumerate(parts):
            if k % 2:
                spans.append((at, at + len(part)))
            at += len(part)
        out = []
        for i, (start, end) in zip(replies, spans):
            head = self.render(msgs[:i], add_generation_prompt=True) if i else ""
            if text.startswith(head) and len(head) <= start:  # what the model writes before the content too
                start = len(head)
            end += next((len(s) for s in self.stops if s and text.startswith(s, end)), 0)
            out.append((start, end))
        return text, out

    def encode(self, tokenizer, messages) -> tuple[list[int], list[bool]]:
        """Token ids of a whole conversation, and per token whether SFT trains on it (a reply's tokens)."""
        text, spans = self.reply_spans(messages)
        enc = tokenizer.hf.encode(text, add_special_tokens=False)
        reply = [any(a < e and b > s for s, e in spans) for a, b in enc.offsets]
        return list(enc.ids), reply

    def jinja(self) -> str:
        return self.source

    def save(self, run_dir: str | Path) -> None:
        d = Path(run_dir)
        atomic_write_text(d / JINJA_FILE, self.source)
        atomic_write_text(d / TOKENS_FILE, json.dumps({"special_tokens": self.tokens, "eos_token_id": self.eos_ids},
                                                      indent=2, ensure_ascii=False) + "\n")

    def __repr__(self) -> str:
        return f"JinjaTemplate({self.where!r}, stops={self.stops!r})"


# ---- reading ------------------------------------------------------------------------------------------
def _json(path: Path) -> dict:
    return read_json(path) if path.is_file() else {}


def _ids(value, where: Path) -> list[int]:
    """eos_token_id as config files write it: an int, a list of ints, or nothing."""
    if value is None:
        return []
    ids = value if isinstance(value, list) else [value]
    if not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise LmkitError(f"{where}: eos_token_id must be an integer or a list of integers (got {value!r})")
    return ids


def _token_text(value) -> str | None:
    """A special token as tokenizer_config.json writes it: a string, or an AddedToken {"content": …}."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def special_tokens(folder: Path) -> dict[str, str]:
    """The named special tokens transformers passes to the template (special_tokens_map.json, then
    tokenizer_config.json over it)."""
    out = {}
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        data = _json(folder / name)
        out.update({k: t for k in SPECIAL_NAMES if (t := _token_text(data.get(k))) is not None})
    return out


def template_source(folder: Path) -> str | None:
    """chat_template.jinja, else tokenizer_config.json's chat_template (a list: the one named "default")."""
    if (folder / JINJA_FILE).is_file():
        return (folder / JINJA_FILE).read_text(encoding="utf-8")
    where = folder / "tokenizer_config.json"
    t = _json(where).get("chat_template")
    if isinstance(t, list):
        named = {d.get("name"): d.get("template") for d in t if isinstance(d, dict)}
        if "default" not in named:
            raise LmkitError(f"{where}: chat_template lists templates {sorted(map(str, named))} but none named "
                             "'default'")
        t = named["default"]
    if t is not None and not isinstance(t, str):
        raise LmkitError(f"{where}: chat_template must be a string or a list of named templates")
    return t


def stop_texts(tokenizer, eos_ids: list[int], tokens: dict[str, str]) -> tuple[str, ...]:
    """The texts of every eos id (and of the eos token): a reply ends at any of them."""
    texts = [tokenizer.decode([i]) for i in eos_ids if 0 <= i < tokenizer.vocab_size]
    if tokens.get("eos_token"):
        texts.append(tokens["eos_token"])
    if not texts and tokenizer.eot_id is not None:
        texts.append(tokenizer.decode([tokenizer.eot_id]))
    return tuple(dict.fromkeys(t for t in texts if t))


def load_hf_template(folder: str | Path, tokenizer) -> JinjaTemplate | None:
    """The chat template of a Hugging Face folder, or None when it ships none."""
    folder = Path(folder)
    source = template_source(folder)
    if source is None:
        return None
    tokens = special_tokens(folder)
    gen = folder / "generation_config.json"
    eos = _ids(_json(gen).get("eos_token_id"), gen) if gen.is_file() else \
        _ids(_json(folder / "config.json").get("eos_token_id"), folder / "config.json")
    return JinjaTemplate(source, tokens, eos, stop_texts(tokenizer, eos, tokens), str(folder))


def load_run_template(run_dir: str | Path, tokenizer) -> JinjaTemplate:
    """A run's chat_template.jinja with the special tokens and eos ids kept beside it (generation.json)."""
    run_dir = Path(run_dir)
    saved = _json(run_dir / TOKENS_FILE)
    if not saved:  # a folder from elsewhere (a Hugging Face folder): its own files
        return load_hf_template(run_dir, tokenizer)
    tokens = {k: v for k, v in (saved.get("special_tokens") or {}).items() if isinstance(v, str)}
    eos = _ids(saved.get("eos_token_id"), run_dir / TOKENS_FILE)
    source = (run_dir / JINJA_FILE).read_text(encoding="utf-8")
    return JinjaTemplate(source, tokens, eos, stop_texts(tokenizer, eos, tokens), str(run_dir / JINJA_FILE))
