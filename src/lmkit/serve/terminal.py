"""`lmkit chat RUN_DIR`: a conversation in the terminal, the reply streamed as it is generated.

Uses the run's chat template (chat.py), as the server's chat endpoint does; when the conversation outgrows the model's
context, the oldest turns are dropped (a system prompt stays) and the terminal says so. Commands: /reset starts over, /quit (or Ctrl-D) leaves.
"""
from __future__ import annotations

import sys

from ..sampling_config import SAMPLING_DEFAULTS, sampling_config


def fit_turns(lm, messages: list[tuple[str, str]], min_reply: int) -> tuple[str, tuple[str, ...], int, int]:
    """Drop the oldest turns (never a system message, never the last one) until the prompt leaves `min_reply`
    tokens of context for the reply; a conversation left starting with an assistant turn loses that turn too.
    Returns (prompt, stop strings, prompt tokens, messages dropped); `messages` is shortened in place."""
    block, dropped = lm.model.config.block_size, 0
    while True:
        text, stops = lm.chat_prompt(messages)
        n = len(lm.encode_prompt(text))
        turns = [i for i, (role, _) in enumerate(messages) if role not in ("system", "developer")]
        if n + min_reply <= block or len(turns) <= 1:
            return text, stops, n, dropped
        messages.pop(turns[0])
        dropped += 1
        if len(turns) > 2 and messages[turns[1] - 1][0] == "assistant":
            messages.pop(turns[1] - 1)
            dropped += 1


def dropped_note(dropped: int, block: int) -> str:
    """What the terminal and the chat page say when older turns were left out."""
    return (f"(the {dropped} oldest message{'s' if dropped != 1 else ''} left out to fit the model's context of "
            f"{block} tokens; the system prompt stays)")


def chat(lm, input=input, out=None, system: str | None = None, **sampling) -> None:
    """Converse until /quit or end of input; `sampling` options as for lm.generate (SamplingConfig's
    defaults), the reply capped by the room left in the context. `system`: a system prompt, kept when older
    turns are dropped. `out` defaults to sys.stdout as it is when called (not as it was at import)."""
    out = out or sys.stdout
    max_new_tokens = sampling.pop("max_new_tokens", SAMPLING_DEFAULTS["max_new_tokens"])
    sampling_config(max_new_tokens=max_new_tokens, **sampling)  # a bad option fails before the first message
    start = [("system", system)] if system else []
    messages: list[tuple[str, str]] = list(start)
    block = lm.model.config.block_size
    out.write(f"chatting with {lm.path.name if lm.path else 'the model'} (context {block} tokens); "
              "/reset starts over, /quit leaves\n")
    while True:
        try:
            line = input("you> ")
        except EOFError:
            out.write("\n")
            return
        if line.strip() in ("/quit", "/exit"):
            return
        if line.strip() == "/reset":
            messages[:] = start
            out.write("(conversation cleared)\n")
            continue
        if not line.strip():
            continue
        messages.append(("user", line))
        text, stops, n, dropped = fit_turns(lm, messages, min_reply=min(32, block // 4))
        room = block - n
        if room < 1:
            out.write("(that message alone fills the model's context; try a shorter one)\n")
            messages.pop()
            continue
        if dropped:
            out.write(dropped_note(dropped, block) + "\n")
        out.write("model> ")
        reply = ""
        for piece in lm.stream(text, **{**sampling, "max_new_tokens": min(max_new_tokens, room), "truncate": True,
                                        "stop": tuple(sampling.get("stop", ())) + stops}):
            reply += piece
            out.write(piece)
            out.flush()
        out.write("\n")
        messages.append(("assistant", reply.strip()))
