"""Hugging Face weight names: one declarative table per model family, applied in both directions.

A table is a list of rules, each pairing an lmkit name with the Hugging Face name(s) of the same tensor.
Patterns hold `{i}` (a layer number) and `{p}` (weight or bias):

    Rule("h.{i}.attn.proj.{p}", "model.layers.{i}.self_attn.o_proj.{p}")               renamed only
    Rule("h.{i}.attn.qkv.{p}", "transformer.h.{i}.attn.c_attn.{p}", conv1d=True)       and transposed
    Rule("h.{i}.attn.qkv.{p}", "….q_proj.{p}", "….k_proj.{p}", "….v_proj.{p}",
         sizes=(512, 128, 128))                                                           fused along dim 0

`from_hf` applies a table to a Hugging Face state dict (import); `to_hf` inverts it (export), so
from_hf(t, to_hf(t, sd)) == sd exactly. Nothing is approximated: tensors are renamed, transposed,
concatenated or split. The tables themselves live next to each model: gpt_hf.py, bert_hf.py.
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field

import torch

from ..errors import LmkitError


class Rule:
    """One tensor: its lmkit name pattern and its Hugging Face name pattern(s); several Hugging Face names
    are fused into the one lmkit tensor along dim 0, `sizes` being each part's length (to split it again).
    `conv1d`: GPT-2's Conv1D stores a weight as (in, out), so it is transposed both ways (a bias is 1-D
    and stays as it is)."""

    def __init__(self, ours: str, *theirs: str, sizes: tuple[int, ...] = (), conv1d: bool = False):
        assert len(theirs) == 1 or len(sizes) == len(theirs), "a fused rule needs one size per part"
        self.ours, self.theirs, self.sizes, self.conv1d = ours, theirs, sizes, conv1d


@dataclass
class Table:
    rules: list[Rule]
    base: str = ""  # the prefix of the base model's names in a checkpoint with a head ("transformer.")
    heads: tuple[str, ...] = ()  # names of the head(s), outside `base`; a base-model checkpoint has no prefix
    ignored: tuple[str, ...] = ()  # Hugging Face names that hold nothing lmkit keeps (buffers, unused heads)
    tied: dict[str, str] = field(default_factory=dict)  # lmkit name -> the one it shares its matrix with

    def with_base(self, name: str) -> str:
        """A name as the checkpoint with the head spells it: GPT2Model / LlamaModel / BertModel files
        have `h.0.…`, `layers.0.…`, `encoder.…` where the LM's have `transformer.h.0.…` and so on."""
        return name if name.startswith((self.base, *self.heads)) else self.base + name


@functools.cache
def pattern(name: str) -> re.Pattern:
    """"h.{i}.attn.qkv.{p}" -> a regex with named groups i (digits) and p (weight|bias)."""
    text = re.escape(name).replace(r"\{i\}", r"(?P<i>\d+)").replace(r"\{p\}", r"(?P<p>weight|bias)")
    return re.compile(text + "$")


def match(name: str, patterns) -> tuple[int, dict] | None:
    """(index of the first pattern that `name` matches, its {i, p} values), or None."""
    for j, pat in enumerate(patterns):
        if m := pattern(pat).match(name):
            return j, m.groupdict()
    return None


def plan(table: Table, names, where: str = "") -> dict[str, tuple[Rule, list[str]]]:
    """Hugging Face names (as a file spells them) -> {lmkit name: (its rule, the file names of its parts, in
    order)}. A name no rule knows is an error, and so is a fused weight with a part missing. Import streams by
    this plan (runs/hf.py); `from_hf` applies it to a whole state dict."""
    out, fused = {}, {}
    for name in names:
        full = table.with_base(name)
        if match(full, table.ignored):
            continue
        for rule in table.rules:
            if found := match(full, rule.theirs):
                part, fill = found
                break
        else:
            raise LmkitError(f"{where}: unexpected weight '{full}' (no lmkit name for it)")
        ours = rule.ours.format(**fill)
        parts = out.setdefault(ours, (rule, [None] * len(rule.theirs)))[1]
        parts[part] = name
        if len(parts) > 1:
            fused[ours] = fill
    for ours, fill in fused.items():
        rule, parts = out[ours]
        missing = [theirs.format(**fill) for theirs, n in zip(rule.theirs, parts) if n is None]
        if missing:
            raise LmkitError(f"{where}: '{missing[0]}' is missing ({ours} is fused from {len(parts)} weights)")
    return out


def join(rule: Rule, parts: list[torch.Tensor]) -> torch.Tensor:
    """The lmkit tensor from its Hugging Face part(s): transposed (Conv1D), concatenated (fused)."""
    parts = [t.t() for t in parts] if rule.conv1d else parts
    return (parts[0] if len(parts) == 1 else torch.cat(parts)).contiguous()


def from_hf(table: Table, state: dict[str, torch.Tensor], where: str = "") -> dict[str, torch.Tensor]:
    """A Hugging Face state dict -> lmkit names (import). A name no rule knows is an error."""
    out = {ours: join(rule, [state[n] for n in names]) for ours, (rule, names) in plan(table, state, where).items()}
    for alias, target in table.tied.items():  # one matrix under two names, as in the model itself
        if target in out:
            out[alias] = out[target]
    return out


def to_hf(table: Table, state: dict[str, torch.Tensor], where: str = "export-hf") -> dict[str, torch.Tensor]:
    """lmkit names -> a Hugging Face state dict (export): `from_hf` inverted, rule by rule."""
    out = {}
    for name, tensor in state.items():
        if name in table.tied:  # stored once, under the name it is tied to
            continue
        for rule in table.rules:
            if found := match(name, [rule.ours]):
                fill = found[1]
                break
        else:
            raise LmkitError(f"{where}: no Hugging Face name for lmkit weight '{name}'")
        parts = tensor.split(list(rule.sizes)) if len(rule.theirs) > 1 else [tensor]
        for theirs, part in zip(rule.theirs, parts):
            out[theirs.format(**fill)] = (part.t() if rule.conv1d else part).contiguous()
    return out
