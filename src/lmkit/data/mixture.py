"""Weighted mixtures of sources: what a config's [[data.sources]] tables say, and a sampler that draws
training windows from each source in proportion to its weight.

    [[data.sources]]
    path = "hf:roneneldan/TinyStories"      # any source data.sources reads
    weight = 0.7                            # > 0; weights are relative (0.7 / 0.3 = 7 / 3)
    [[data.sources]]
    path = "notes/*.md"
    weight = 0.3
    text_field = "body"                     # optional: this source's own field
    max_tokens = 5_000_000                  # optional: prepare at most about this many of its tokens

`prepare` writes the sources one after another into train.bin / val.bin and records each one's token
counts in meta.json ("sources"); `open_split` hands their ranges to the batches. `CausalBatches` (data.batches)
then picks, for every global batch of N windows, how many
come from each source by systematic sampling (N points spaced 1/N apart from one random start, through
the cumulative weights: each source gets floor or ceil of N·weight, exactly N·weight on average) and where
in that source each window starts, all from one torch.Generator, whose state is the checkpoint's: resume
is exact. A window never crosses from one source into the next.
"""
from __future__ import annotations

from dataclasses import dataclass
from numbers import Real

from ..errors import LmkitError

KEYS = ("path", "weight", "text_field", "max_tokens")


@dataclass
class Source:
    spec: str
    weight: float = 1.0
    text_field: str | None = None  # None: the config's text_field
    max_tokens: int = 0  # 0: the run's max_tokens (or all)

    def describe(self) -> dict:
        return {"path": self.spec, "weight": self.weight, "text_field": self.text_field, "max_tokens": self.max_tokens}


def parse_sources(entries, where: str = "data.sources") -> list[Source]:
    """[[data.sources]] tables (dicts) -> Sources, each checked: a path, a weight > 0, known keys only."""
    if not isinstance(entries, list):
        raise LmkitError(f"{where}: expected a list of tables ([[data.sources]] path = … weight = …)")
    out = []
    for i, e in enumerate(entries):
        name = f"{where}[{i}]"
        if not isinstance(e, dict):
            raise LmkitError(f"{name}: expected a table with path and weight (got {e!r})")
        unknown = sorted(set(e) - set(KEYS))
        path = e.get("path")
        if not isinstance(path, str) or not path:
            raise LmkitError(f"{name}: needs path = \"…\" (a file, folder, glob, hf:NAME or built-in corpus)")
        name = f"{name} ({path})"
        if unknown:
            raise LmkitError(f"{name}: unknown key '{unknown[0]}' (use {', '.join(KEYS)})")
        weight = e.get("weight", 1.0)
        if isinstance(weight, bool) or not isinstance(weight, Real) or not weight > 0 or weight == float("inf"):
            raise LmkitError(f"{name}: weight must be a number > 0 (got {weight!r})")
        field = e.get("text_field")
        if field is not None and not isinstance(field, str):
            raise LmkitError(f"{name}: text_field must be a string (got {field!r})")
        max_tokens = e.get("max_tokens", 0)
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 0:
            raise LmkitError(f"{name}: max_tokens must be an integer >= 0 (got {max_tokens!r})")
        out.append(Source(path, float(weight), field, max_tokens))
    return out


def ranges(meta: dict, split: str) -> list[tuple[int, int, float]] | None:
    """(start, end, weight) of each source's tokens in `split`.bin of a prepared mixture, None for one source."""
    sources = meta.get("sources")
    if not sources:
        return None
    out, start = [], 0
    for s in sources:
        n = s[f"{split}_tokens"]
        out.append((start, start + n, s["weight"]))
        start += n
    return out
