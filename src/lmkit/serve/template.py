"""How a conversation becomes a prompt for a model that has no chat template of its own.

Role markers are plain text, one turn per paragraph, and generation stops where the model starts
to write the next user turn. A run fine-tuned for chat will bring its own template (a later issue);
this is the one function to replace then.
"""
from __future__ import annotations

ROLES = {"system": "System", "developer": "System", "user": "User", "assistant": "Assistant"}


def chat_prompt(messages: list[tuple[str, str]]) -> tuple[str, tuple[str, ...]]:
    """[(role, content), …] -> (prompt text ending in "Assistant:", stop strings for the reply)."""
    turns = [f"{ROLES[role]}: {content.strip()}" for role, content in messages]
    return "\n\n".join(turns + ["Assistant:"]), ("\n\nUser:", "\nUser:")
