"""`lmkit chat RUN_DIR`: a conversation in the terminal, the reply streamed as it is generated.

Uses the run's chat template (chat.py), as the server's chat endpoint does; when the conversation outgrows the model's
context, the oldest turns are dropped. Commands: /reset starts over, /quit (or Ctrl-D) leaves.
"""
from __future__ import annotations

import sys


def fit_turns(lm, messages: list[tuple[str, str]], min_reply: int) -> tuple[str, tuple[str, ...], int]:
    """Drop the oldest turns until the prompt leaves `min_reply` tokens of context for the reply."""
    block = lm.model.config.block_size
    while True:
        text, stops = lm.chat_prompt(messages)
        n = len(lm.encode_prompt(text))
        if n + min_reply <= block or len(messages) == 1:
            return text, stops, n
        messages.pop(0)


def chat(lm, max_new_tokens: int = 256, temperature: float = 0.8, top_k: int | None = 50,
         top_p: float | None = None, seed: int | None = None, input=input, out=sys.stdout) -> None:
    messages: list[tuple[str, str]] = []
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
            messages.clear()
            out.write("(conversation cleared)\n")
            continue
        if not line.strip():
            continue
        messages.append(("user", line))
        text, stops, n = fit_turns(lm, messages, min_reply=min(32, block // 4))
        room = block - n
        if room < 1:
            out.write("(that message alone fills the model's context; try a shorter one)\n")
            messages.pop()
            continue
        out.write("model> ")
        reply = ""
        for piece in lm.stream(text, max_new_tokens=min(max_new_tokens, room), temperature=temperature,
                               top_k=top_k, top_p=top_p, seed=seed, stop=stops, truncate=True):
            reply += piece
            out.write(piece)
            out.flush()
        out.write("\n")
        messages.append(("assistant", reply.strip()))
