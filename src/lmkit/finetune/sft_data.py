"""Instruction / chat data for supervised fine-tuning: read, check, encode with loss masks, pack.

Rows (.json array or .jsonl) are either conversations or Alpaca-style instructions:

    {"messages": [{"role": "system", "content": …}, {"role": "user", …}, {"role": "assistant", …}, …]}
    {"instruction": "…", "input": "…" (optional), "output": "…", "system": "…" (optional)}

An instruction becomes the user turn (instruction, a blank line, input) and the output the assistant's.
Bad rows (missing fields, roles out of order) and conversations longer than the context are skipped
(or cut, with too_long = "truncate") and counted, each problem naming its row.

Packing: a training row of block_size tokens holds several conversations back to back. For each
conversation of ids w_1 … w_n the inputs are w_1 … w_{n-1} and the targets w_2 … w_n, with target −100
(ignored by the loss) wherever w_t is not part of a reply. Each token carries its conversation's index
in the row (document_ids), so attention never crosses from one conversation into another and positions
restart at each (models/gpt.py: document_positions_and_mask). Leftover room is padding (target −100).
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from ..chat import ChatTemplate, check_messages
from ..errors import LmkitError

IGNORE = -100


@dataclass
class Example:
    row: int  # 1-based row of the data file
    ids: list[int]
    reply: list[bool]  # per token: part of a reply (trained on)


def read_rows(path: str | Path) -> list[tuple[int, object]]:
    """[(row number from 1, parsed JSON value), …] of a .json array or a .jsonl file."""
    path = Path(path)
    if not path.is_file():
        raise LmkitError(f"{path}: no such file")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise LmkitError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})")
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except ValueError as e:
            raise LmkitError(f"{path}: not valid JSON ({e})")
        if not isinstance(data, list):
            raise LmkitError(f"{path}: a .json data file must hold a list of rows (or use .jsonl)")
        rows = list(enumerate(data, 1))
    elif path.suffix.lower() == ".jsonl":
        rows = []
        for i, line in enumerate(text.split("\n"), 1):
            if line.strip():
                try:
                    rows.append((i, json.loads(line)))
                except ValueError as e:
                    raise LmkitError(f"{path}: row {i} is not valid JSON ({e})")
    else:
        raise LmkitError(f"{path}: unknown file type '{path.suffix}' (use .json or .jsonl)")
    if not rows:
        raise LmkitError(f"{path}: no rows")
    return rows


def row_messages(row) -> list[tuple[str, str]]:
    """One data row -> a checked conversation [(role, content), …]; LmkitError says what is wrong."""
    if not isinstance(row, dict):
        raise LmkitError("not a JSON object")
    if "messages" in row:
        msgs = check_messages(row["messages"], "messages")
        if msgs[-1][0] != "assistant":
            raise LmkitError("messages: the conversation must end with an assistant reply")
        return msgs
    if "instruction" in row or "output" in row:
        missing = [k for k in ("instruction", "output") if not isinstance(row.get(k), str) or not row[k].strip()]
        if missing:
            raise LmkitError(f"missing or empty '{missing[0]}'")
        extra = row.get("input") or ""
        if not isinstance(extra, str):
            raise LmkitError("'input' must be a string")
        msgs = [("system", row["system"])] if isinstance(row.get("system"), str) and row["system"].strip() else []
        user = row["instruction"].strip() + ("\n\n" + extra.strip() if extra.strip() else "")
        return msgs + [("user", user), ("assistant", row["output"])]
    raise LmkitError("needs 'messages' or 'instruction' and 'output'")


def warn(msg: str) -> None:
    print(f"warning: {msg}", file=sys.stderr, flush=True)


def load_examples(path: str | Path, tokenizer, template: ChatTemplate, max_tokens: int,
                  too_long: str = "drop") -> tuple[list[Example], dict]:
    """Read, check and encode every row. Conversations over `max_tokens` tokens (block_size + 1: a
    training row's inputs plus the last target) are dropped, or cut to max_tokens with "truncate" (kept
    when some reply survives the cut). Returns the examples and counts {rows, bad, too_long, truncated}."""
    if too_long not in ("drop", "truncate"):
        raise LmkitError(f"--too-long must be 'drop' or 'truncate' (got {too_long!r})")
    rows = read_rows(path)
    examples, bad, long_rows, cut = [], [], [], 0
    for n, row in rows:
        try:
            msgs = row_messages(row)
        except LmkitError as e:
            bad.append(f"row {n}: {e}")
            continue
        ids, reply = template.encode(tokenizer, msgs)
        if len(ids) > max_tokens:
            if too_long == "drop" or not any(reply[1:max_tokens]):
                long_rows.append(n)
                continue
            ids, reply, cut = ids[:max_tokens], reply[:max_tokens], cut + 1
        examples.append(Example(n, ids, reply))
    if bad:
        warn(f"{path}: skipped {len(bad)} of {len(rows)} rows with problems: " + "; ".join(bad[:5])
             + (f"; … ({len(bad) - 5} more)" if len(bad) > 5 else ""))
    if long_rows:
        why = ("no reply starts within them" if too_long == "truncate" else
               "--too-long truncate keeps their beginning")
        warn(f"{path}: dropped {len(long_rows)} of {len(rows)} conversations longer than {max_tokens} tokens "
             f"(the model's context + 1; rows {', '.join(map(str, long_rows[:10]))}"
             f"{', …' if len(long_rows) > 10 else ''}); {why}")
    if cut:
        warn(f"{path}: cut {cut} conversations to {max_tokens} tokens (--too-long truncate)")
    if not examples:
        raise LmkitError(f"{path}: no usable rows ({len(bad)} with problems, {len(long_rows)} too long"
                         + (f"; first problem: {bad[0]}" if bad else "") + ")")
    return examples, {"rows": len(rows), "bad": len(bad), "too_long": len(long_rows), "truncated": cut}


def split_examples(examples: list[Example], val_fraction: float, seed: int) -> tuple[list[Example], list[Example]]:
    """A held-out share of the conversations (at least one) for the validation loss."""
    if len(examples) < 2:
        raise LmkitError(f"SFT needs at least 2 usable conversations (one held out for validation), got {len(examples)}")
    order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(seed)).tolist()
    n_val = min(len(examples) - 1, max(1, round(val_fraction * len(examples))))
    return [examples[i] for i in sorted(order[n_val:])], [examples[i] for i in sorted(order[:n_val])]


def pack(examples: list[Example], order: list[int], block_size: int, pad_id: int) -> list[tuple[torch.Tensor, ...]]:
    """Conversations in `order`, packed first-come into rows of block_size tokens -> one (x, y, document_ids)
    triple of 1-D tensors per row. A conversation that does not fit the current row starts the next."""
    rows, x, y, doc = [], [], [], []

    def close():
        pad = block_size - len(x)
        rows.append((torch.tensor(x + [pad_id] * pad), torch.tensor(y + [IGNORE] * pad),
                     torch.tensor(doc + [len(set(doc))] * pad)))  # padding: one more "document"
        x.clear(), y.clear(), doc.clear()

    for i in order:
        e = examples[i]
        n = len(e.ids) - 1
        if x and len(x) + n > block_size:
            close()
        d = len(set(doc))
        x.extend(e.ids[:-1])
        y.extend(t if r else IGNORE for t, r in zip(e.ids[1:], e.reply[1:]))
        doc.extend([d] * n)
    if x:
        close()
    return rows


class PackedBatches:
    """Batches of packed rows for the Trainer: each epoch shuffles the conversations (seed, epoch) and packs
    them again; `.next()` -> (x, y, document_ids), each (batch_size, block_size). The state (epoch, next row)
    makes --resume exact."""

    def __init__(self, examples: list[Example], block_size: int, batch_size: int, pad_id: int, seed: int,
                 shuffle: bool = True):
        self.examples, self.block_size, self.batch_size = examples, block_size, batch_size
        self.pad_id, self.seed, self.shuffle = pad_id, seed, shuffle
        self.epoch, self.pos = 0, 0
        self.rows = self._pack(0)

    def _pack(self, epoch: int):
        order = list(range(len(self.examples)))
        if self.shuffle:
            order = torch.randperm(len(order), generator=torch.Generator().manual_seed(self.seed + epoch)).tolist()
        return pack(self.examples, order, self.block_size, self.pad_id)

    def next(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        picked = []
        while len(picked) < self.batch_size:
            if self.pos >= len(self.rows):
                self.epoch, self.pos = self.epoch + 1, 0
                self.rows = self._pack(self.epoch)
            picked.append(self.rows[self.pos])
            self.pos += 1
        return tuple(torch.stack(t) for t in zip(*picked))

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.pos = int(state["epoch"]), int(state["pos"])
        self.rows = self._pack(self.epoch)
