"""The sampling options: their one set of defaults and their one check.

`SamplingConfig`'s field defaults are the defaults of the Python API (`lm.generate`, `lm.chat`), of the
CLI's `generate` and `chat` flags (read from `SAMPLING_DEFAULTS`) and of the terminal chat; the server
keeps OpenAI's documented defaults where that API defines them (serve/schemas.py, `SERVER_DEFAULTS`).
This module imports nothing heavy (no torch), so the CLI can build its `--help` from it.
"""
from __future__ import annotations

import json
import math
from dataclasses import MISSING, dataclass, fields

from .errors import LmkitError

GREEDY_BELOW = 1e-4  # temperatures under this are greedy (logits / 1e-30 would overflow to inf)
MAX_SEED = 2**62


@dataclass
class SamplingConfig:
    max_new_tokens: int = 256
    temperature: float = 0.8  # 0 = greedy (as is anything below GREEDY_BELOW)
    top_k: int | None = 50  # None or 0 = off
    top_p: float | None = None  # nucleus mass in (0, 1]
    min_p: float | None = None  # keep tokens with p >= min_p * p_max
    repetition_penalty: float = 1.0  # > 1 discourages any token already in prompt or output
    frequency_penalty: float = 0.0  # subtracted once per earlier occurrence in the output
    presence_penalty: float = 0.0  # subtracted once if the token occurred in the output
    seed: int | None = None
    stop_at_eos: bool = True
    stop: tuple[str, ...] = ()  # stop strings, matched in the text across token boundaries
    logprobs: int | None = None  # report the chosen token's log-probability and this many alternatives
    truncate: bool = False  # a prompt longer than the context keeps its last tokens instead of failing
    json_schema: object = None  # constrain the output: a JSON Schema (dict or JSON text), True = any JSON object
    logit_bias: dict | None = None  # token id -> added to its logit before sampling (-100..100, as OpenAI)
    tools: tuple | None = None  # tool calls: (choice, [(name, parameters schema), …]); choice auto/required/a name

    def validate(self) -> "SamplingConfig":
        """Check every field once, at the edge; raises LmkitError naming the field and value."""
        def bad(name, rule):
            raise LmkitError(f"{name} must be {rule} (got {getattr(self, name)!r})")
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 0:
            bad("max_new_tokens", "an integer >= 0")
        for name in ("temperature", "top_p", "min_p", "repetition_penalty", "frequency_penalty", "presence_penalty"):
            value = getattr(self, name)
            if value is not None and not math.isfinite(value):
                bad(name, "a finite number")
        if self.temperature < 0:
            bad("temperature", ">= 0")
        if self.top_k is not None and self.top_k < 0:
            bad("top_k", ">= 0")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            bad("top_p", "in (0, 1]")
        if self.min_p is not None and not 0 <= self.min_p <= 1:
            bad("min_p", "in [0, 1]")
        if self.repetition_penalty <= 0:
            bad("repetition_penalty", "> 0")
        for name in ("frequency_penalty", "presence_penalty"):
            if not -2 <= getattr(self, name) <= 2:
                bad(name, "in [-2, 2]")
        if self.logprobs is not None and not 0 <= self.logprobs <= 20:
            bad("logprobs", "in [0, 20]")
        if self.seed is not None and not 0 <= self.seed < MAX_SEED:
            bad("seed", "in [0, 2**62)")
        if self.json_schema is not None and self.json_schema is not True:
            if isinstance(self.json_schema, str):
                try:
                    self.json_schema = json.loads(self.json_schema)
                except ValueError as e:
                    raise LmkitError(f"json_schema must be a JSON Schema (got text that is not JSON: {e})") from None
            if not isinstance(self.json_schema, dict):
                bad("json_schema", "a JSON Schema (a dict), or True for any JSON object")
        if self.logit_bias is not None:
            if not isinstance(self.logit_bias, dict):
                bad("logit_bias", "a dict of token id -> bias")
            for k, v in self.logit_bias.items():
                if isinstance(k, bool) or not isinstance(k, int) or k < 0:
                    raise LmkitError(f"logit_bias keys must be token ids >= 0 (got {k!r})")
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not -100 <= v <= 100:
                    raise LmkitError(f"logit_bias values must be numbers in [-100, 100] (got {v!r} for token {k})")
        if isinstance(self.stop, str):
            self.stop = (self.stop,)
        self.stop = tuple(s for s in self.stop if s)
        return self


SAMPLING_FIELDS = {f.name for f in fields(SamplingConfig)}
# field name -> default, for flags and request bodies that take their defaults from here
SAMPLING_DEFAULTS = {f.name: f.default for f in fields(SamplingConfig) if f.default is not MISSING}


def sampling_config(**kw) -> SamplingConfig:
    """SamplingConfig from keyword arguments, with a clear error for an unknown name."""
    unknown = sorted(set(kw) - SAMPLING_FIELDS)
    if unknown:
        raise LmkitError(f"unknown sampling option {unknown[0]!r} (known: {', '.join(sorted(SAMPLING_FIELDS))})")
    return SamplingConfig(**kw).validate()
