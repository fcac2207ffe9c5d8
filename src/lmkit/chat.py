"""Chat templates: how a conversation becomes tokens, one way for fine-tuning (`lmkit finetune sft`),
`lmkit chat`, `lmkit generate --chat`, `LM.chat` and the server's /v1/chat/completions.

A run fine-tuned for chat keeps its template in chat_template.json, and its role markers are special
tokens of its tokenizer.json:

    <|system|>Be brief.<|end|><|user|>Hi!<|end|><|assistant|>Hello.<|end|>

The tokenizer splits text at special tokens before anything else, so a conversation encodes as the
concatenation of its pieces: the ids a model is trained on are exactly those it sees when it chats.
SFT trains only on the replies: the assistant's content and the <|end|> that closes it (the model learns
to stop). A prompt for a reply ends with <|assistant|>; the reply stops at <|end|>.

A model with a Jinja chat template of its own (a Hugging Face folder's, or chat_template.jinja in a run
imported from one) is prompted with that template instead: chat_jinja.py.

A run with neither (a pretrained base) gets plain-text role markers, one turn per
paragraph ("User: …\\n\\nAssistant:"), and stops where it starts to write the next user turn.

Tools (the server's `tools`): lmkit's templates write them into the system turn and a tool's result as
a user turn (chat_tools.py); a Jinja template that takes `tools` renders them its own way.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from .chat_jinja import JINJA_FILE, load_hf_template, load_run_template
from .chat_tools import with_tools
from .errors import LmkitError
from .io import atomic_write_text

TEMPLATE_FILE = "chat_template.json"
ROLES = ("system", "user", "assistant")
ALIASES = {"developer": "system"}  # OpenAI's newer name for the system role


@dataclass(frozen=True)
class ChatTemplate:
    system: str  # marker that opens a turn of each role
    user: str
    assistant: str
    end: str  # closes every turn
    reply: str  # what a prompt for the model's reply ends with
    special: bool  # markers are special tokens of the tokenizer (else plain text)

    @property
    def markers(self) -> list[str]:
        return [self.system, self.user, self.assistant, self.end]

    def marker(self, role: str) -> str:
        return getattr(self, ALIASES.get(role, role))

    def pieces(self, messages: list[tuple[str, str]], add_reply_prompt: bool) -> list[tuple[str, bool]]:
        """[(role, content), …] -> [(text, is_reply), …]: the conversation as text pieces, each marked
        when it is what the model must learn to write (an assistant's content and its closing marker)."""
        out = []
        for role, content in messages:
            reply = ALIASES.get(role, role) == "assistant"
            out += [(self.marker(role), False), (content if self.special else content.strip(), reply),
                    (self.end, reply)]
        if add_reply_prompt:
            out.append((self.reply, False))
        return out

    def prompt(self, messages: list[tuple[str, str]], tools: list[dict] | None = None) -> tuple[str, tuple[str, ...]]:
        """[(role, content), …] -> (prompt text that asks for the assistant's reply, stop strings). With
        `tools` (OpenAI's tool objects), or messages that are dicts with tool calls and tool results, the
        tools section goes into the system turn (chat_tools.py)."""
        if tools or any(isinstance(m, dict) for m in messages):
            messages = with_tools(messages, tools)
        text = "".join(t for t, _ in self.pieces(messages, add_reply_prompt=True))
        stops = (self.end,) if self.special else ("\n\nUser:", "\nUser:")
        return text, stops

    def encode(self, tokenizer, messages: list[tuple[str, str]]) -> tuple[list[int], list[bool]]:
        """Token ids of a whole conversation and, per token, whether SFT trains on it (reply tokens)."""
        ids, reply = [], []
        for text, is_reply in self.pieces(messages, add_reply_prompt=False):
            if text:
                piece = tokenizer.encode(text)
                ids += piece
                reply += [is_reply] * len(piece)
        return ids, reply

    def jinja(self) -> str:
        """The same template in the Jinja form Hugging Face's `apply_chat_template` reads (for export)."""
        m = {r: getattr(self, r) for r in ROLES}
        return ("{% for message in messages %}{% set role = 'system' if message['role'] == 'developer' else "
                "message['role'] %}{{ " + json.dumps(m) + "[role] + message['content'] + "
                + json.dumps(self.end) + " }}{% endfor %}{% if add_generation_prompt %}{{ "
                + json.dumps(self.reply) + " }}{% endif %}")

    def save(self, run_dir: str | Path) -> None:
        atomic_write_text(Path(run_dir) / TEMPLATE_FILE, json.dumps(asdict(self), indent=2) + "\n")


# role tokens added to a tokenizer by `lmkit finetune sft`
TOKENS = ChatTemplate(system="<|system|>", user="<|user|>", assistant="<|assistant|>", end="<|end|>",
                      reply="<|assistant|>", special=True)
# what a model without a template of its own is prompted with
PLAIN = ChatTemplate(system="System: ", user="User: ", assistant="Assistant: ", end="\n\n", reply="Assistant:",
                     special=False)


def load_template(run_dir: str | Path | None, tokenizer):
    """The run's chat template: lmkit's own (chat_template.json), else the model's Jinja template
    (chat_template.jinja, or a Hugging Face folder's tokenizer_config.json: chat_jinja.py), else PLAIN."""
    path = Path(run_dir) / TEMPLATE_FILE if run_dir is not None else None
    if path is None:
        return PLAIN
    if not path.is_file():
        if (path.parent / JINJA_FILE).is_file():
            return load_run_template(path.parent, tokenizer)
        return load_hf_template(path.parent, tokenizer) or PLAIN
    try:
        t = ChatTemplate(**json.loads(path.read_text(encoding="utf-8")))
    except (ValueError, TypeError) as e:
        raise LmkitError(f"{path}: not a valid chat template ({str(e).splitlines()[0]})")
    if t.special:
        missing = [m for m in t.markers if tokenizer.hf.token_to_id(m) is None]
        if missing:
            raise LmkitError(f"{path}: role marker {missing[0]!r} is not a token of the run's tokenizer.json")
    return t


def add_role_tokens(tokenizer, template: ChatTemplate = TOKENS) -> list[int]:
    """Make the template's markers special tokens of `tokenizer` (those it lacks); return their ids."""
    tokenizer.hf.add_special_tokens([m for m in dict.fromkeys(template.markers)])
    return [tokenizer.hf.token_to_id(m) for m in dict.fromkeys(template.markers)]


def check_messages(messages, where: str = "messages") -> list[tuple[str, str]]:
    """Validate a conversation: a list of {"role", "content"} with an optional system turn first, then
    user and assistant turns alternating, starting with the user. Raises LmkitError naming the problem."""
    if not isinstance(messages, list) or not messages:
        raise LmkitError(f"{where}: must be a non-empty list of {{'role', 'content'}} objects")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise LmkitError(f"{where}[{i}]: needs 'role' and 'content'")
        role, content = ALIASES.get(m["role"], m["role"]), m["content"]
        if role not in ROLES:
            raise LmkitError(f"{where}[{i}]: unknown role {m['role']!r} (system, user, assistant)")
        if not isinstance(content, str) or not content.strip():
            raise LmkitError(f"{where}[{i}]: {role} content must be a non-empty string")
        expected = ("system", "user") if i == 0 else ("user",) if out[-1][0] != "user" else ("assistant",)
        if role not in expected:
            after = f"after {out[-1][0]}" if out else "first"
            raise LmkitError(f"{where}[{i}]: roles out of order ({role} {after}; expected {' or '.join(expected)})")
        out.append((role, content))
    return out
