"""Tool calls in a chat reply: the streamed text split into content and OpenAI `tool_calls`.

The model writes a call as `<tool_call>{"name": …, "arguments": {…}}</tool_call>` (chat_tools.py; the
grammar in grammar.py enforces it, arguments valid under the function's schema). `ToolCallParser` holds
back text that may be the start of a call, and turns each complete call into
{"id", "type": "function", "function": {"name", "arguments": JSON text}}; text outside calls is content.
"""
from __future__ import annotations

import json
import uuid

from ..chat_tools import TOOL_CLOSE, TOOL_OPEN


def _call(body: str, names: set[str]) -> dict | None:
    try:
        value = json.loads(body, strict=False)  # a raw control character in a string: read, then escaped below
    except ValueError:
        return None
    if not isinstance(value, dict) or value.get("name") not in names or not isinstance(value.get("arguments"), dict):
        return None
    return {"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
            "function": {"name": value["name"], "arguments": json.dumps(value["arguments"], ensure_ascii=False)}}


class ToolCallParser:
    def __init__(self, names):
        self.names, self.held = set(names), ""

    def push(self, text: str) -> tuple[str, list[dict]]:
        """(content that is safe to show now, the calls completed by `text`)."""
        self.held += text
        content, calls = "", []
        while True:
            start = self.held.find(TOOL_OPEN)
            if start < 0:
                keep = next((n for n in range(min(len(TOOL_OPEN) - 1, len(self.held)), 0, -1)
                             if self.held.endswith(TOOL_OPEN[:n])), 0)  # a tail that may begin a call
                content += self.held[:len(self.held) - keep]
                self.held = self.held[len(self.held) - keep:]
                return content, calls
            content, rest = content + self.held[:start], self.held[start:]
            end = rest.find(TOOL_CLOSE)
            if end < 0:
                self.held = rest
                return content, calls
            self.held = rest[end + len(TOOL_CLOSE):]
            call = _call(rest[len(TOOL_OPEN):end], self.names)
            if call is None:  # not a call of these tools: it stays text
                content += rest[:end + len(TOOL_CLOSE)]
            else:
                calls.append(call)

    def flush(self) -> str:
        """The end of the reply: what is held back (an unfinished call) is content."""
        text, self.held = self.held, ""
        return text
