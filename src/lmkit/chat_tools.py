"""Tools in a conversation, for a chat template that has no tools of its own (lmkit's ChatTemplate, and Jinja
templates that ignore a `tools` variable): the tools' JSON goes into the system turn, an assistant's calls are
written as the model writes them, and a tool's result comes back as a user turn:

    system     …the system prompt…\\n\\nYou can call these functions. To call one, reply with
               <tool_call>{"name": "NAME", "arguments": {…}}</tool_call>
               Functions:
               {"type": "function", "function": {"name": "get_weather", "parameters": {…}}}
    assistant  <tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>
    user       <tool_response>{"temperature": 21}</tool_response>      (a message of role "tool")

The reply's calls are enforced by grammar.py's tool grammar (arguments valid under the function's schema)
and parsed back by the server (serve/tools.py).
"""
from __future__ import annotations

import json

TOOL_OPEN, TOOL_CLOSE = "<tool_call>", "</tool_call>"
RESPONSE_OPEN, RESPONSE_CLOSE = "<tool_response>", "</tool_response>"
INTRO = (f"You can call these functions. To call one, reply with\n{TOOL_OPEN}"
         '{"name": "NAME", "arguments": {…}}' + f"{TOOL_CLOSE}\nFunctions:\n")


def tools_text(tools: list[dict]) -> str:
    """The tools section of the system turn."""
    return INTRO + "\n".join(json.dumps(t, ensure_ascii=False) for t in tools)


def _arguments(value):
    """A call's arguments as a JSON value: OpenAI sends them as JSON text."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def call_text(calls: list[dict]) -> str:
    """An assistant's tool calls ([{"function": {"name", "arguments"}}, …]) as the model writes them."""
    return "".join(f'{TOOL_OPEN}{{"name": {json.dumps(c["function"]["name"], ensure_ascii=False)}, "arguments": '
                   f'{json.dumps(_arguments(c["function"].get("arguments", {})), ensure_ascii=False)}}}{TOOL_CLOSE}'
                   for c in calls)


def with_tools(messages, tools: list[dict] | None) -> list[tuple[str, str]]:
    """Messages (dicts with tool_calls / role "tool", or (role, content) pairs) -> plain (role, content) turns."""
    out = []
    for m in messages:
        if not isinstance(m, dict):
            out.append(tuple(m))
            continue
        role, content = m["role"], m.get("content") or ""
        if role == "tool":
            out.append(("user", f"{RESPONSE_OPEN}{content}{RESPONSE_CLOSE}"))
        elif role == "assistant" and m.get("tool_calls"):
            out.append(("assistant", content + call_text(m["tool_calls"])))
        else:
            out.append((role, content))
    if tools:
        if out and out[0][0] in ("system", "developer"):
            out[0] = ("system", f"{out[0][1]}\n\n{tools_text(tools)}")
        else:
            out.insert(0, ("system", tools_text(tools)))
    return out


def for_jinja(m: dict) -> dict:
    """A message for a Jinja template that takes tools: as transformers documents, a call's arguments are a dict."""
    m = {k: v for k, v in m.items() if v is not None}
    if m.get("tool_calls"):
        m["tool_calls"] = [{**c, "function": {**c["function"], "arguments": _arguments(c["function"].get("arguments"))}}
                           for c in m["tool_calls"]]
    return m
