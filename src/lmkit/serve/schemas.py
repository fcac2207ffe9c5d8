"""Request bodies of the OpenAI-compatible endpoints, validated by pydantic at the edge.

Field names, defaults and ranges follow the OpenAI API, so any client library works unchanged;
`top_k`, `min_p` and `repetition_penalty` are extensions (as in vLLM). Every request model is strict:

- a field this server does not know is a 400 naming it (`extra="forbid"`);
- a field of the OpenAI API it does not implement (`tools`, `logit_bias`, …) is declared with
  `unsupported(...)`: accepted only as null or a value that asks for nothing (`tools: []`), any other
  value is a 400 naming it, never silently dropped;
- fields that by OpenAI's documented semantics never change the output (`user`, `metadata`, cache
  hints) are accepted, type-checked and ignored — each says why where it is declared;
- null means the default for every optional field (OpenAI's types are `Optional`);
- types are strict (`"stream": "yes"` and `"n": 2.5` are errors), floats finite (no NaN/Infinity), and
  no string anywhere may hold a lone UTF-16 surrogate ("\\ud800" is valid JSON but not text).
"""
from __future__ import annotations

import json
import re
from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from ..sampling_config import SAMPLING_DEFAULTS, SamplingConfig

# The server's request defaults, in this one place: SamplingConfig's, except where the OpenAI API
# documents its own (temperature 1, top_p 1, max_tokens 16 for /v1/completions; chat replies run until
# the context is full). top_k is an extension OpenAI does not have; its default request samples the
# whole distribution, so top_k is off here (SamplingConfig's 50 would change what an OpenAI client gets).
SERVER_DEFAULTS = {**SAMPLING_DEFAULTS, "temperature": 1.0, "top_p": 1.0, "top_k": None,
                   "max_new_tokens": None}  # chat: up to the context
COMPLETION_MAX_TOKENS = 16  # /v1/completions
MAX_INT = 2**31 - 1  # token counts: a larger max_tokens is a mistake (one within it is capped by the context)
MAX_STOPS = 4  # as OpenAI
_D = SERVER_DEFAULTS  # a short name for the fields below
_SURROGATE = re.compile("[\ud800-\udfff]")  # json.loads pairs valid surrogates, so any left is a lone one


def surrogate_at(value: Any) -> tuple[str, str] | None:
    """(path inside `value`, the surrogate) for the first string (or dict key) in a JSON value that holds
    a lone UTF-16 surrogate, or None. Iterative, so any nesting depth json.loads accepts is fine."""
    stack = [("", value)]
    while stack:
        at, v = stack.pop()
        if isinstance(v, str):
            if m := _SURROGATE.search(v):
                return at, m.group()
        elif isinstance(v, dict):
            for k, x in reversed(v.items()):
                stack += [(f"{at}.{k}", x), (f"{at}.{k}", k)]  # the key, then its value
        elif isinstance(v, (list, tuple)):
            stack += [(f"{at}[{i}]", x) for i, x in reversed(list(enumerate(v)))]
    return None


def _lone_surrogate(at: str, char: str, what: str = "") -> PydanticCustomError:
    return PydanticCustomError("lone_surrogate", what + "holds a lone UTF-16 surrogate (U+{code}), which is not text",
                               {"at": at.encode("utf-8", "backslashreplace").decode(),  # the error must be text
                                "code": f"{ord(char):04X}"})


def unsupported(why: str, *off: Any) -> Any:
    """The default of an OpenAI field this server does not implement: null, omitted or one of `off` (the
    values that ask for nothing) is accepted; anything else is a 400 naming the field (StrictModel checks)."""
    allowed = " or ".join(["null"] + [json.dumps(o) for o in off])
    return Field(None, description=f"not supported ({why}): only {allowed}",
                 json_schema_extra={"x-unsupported": {"why": why, "allowed": allowed, "off": list(off)}})


def ignored(why: str) -> Any:
    """The default of an OpenAI field that by its documented semantics never changes the output: its type
    is checked, its value ignored."""
    return Field(None, description=f"accepted and ignored: {why}")


def _check_unsupported(value, rule: dict):
    if value is None or any(type(value) is type(o) and value == o for o in rule["off"]):
        return None
    raise PydanticCustomError("unsupported_parameter", "not supported by this server ({why}); send {allowed} "
                              "or leave it out", {"why": rule["why"], "allowed": rule["allowed"]})


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _null_means_default(cls, data):
        if isinstance(data, dict):
            for key in data:  # the values are checked field by field, below
                if isinstance(key, str) and (m := _SURROGATE.search(key)):
                    raise _lone_surrogate(f".{key}", m.group(), "field name ")
            fields = cls.model_fields
            return {k: v for k, v in data.items() if v is not None or k not in fields or fields[k].is_required()}
        return data

    @field_validator("*", mode="before")
    @classmethod
    def _check_field(cls, value, info):
        if (found := surrogate_at(value)) is not None:
            raise _lone_surrogate(*found)
        extra = cls.model_fields[info.field_name].json_schema_extra
        if isinstance(extra, dict) and "x-unsupported" in extra:
            return _check_unsupported(value, extra["x-unsupported"])
        return value


class StreamOptions(StrictModel):
    include_usage: bool = False
    include_obfuscation: Any = unsupported("no stream obfuscation", False)


class SamplingFields(StrictModel):
    model: str
    temperature: float = Field(_D["temperature"], ge=0, le=2)
    top_p: float = Field(_D["top_p"], gt=0, le=1)
    n: int = Field(1, ge=1, le=16)
    stream: bool = False
    stop: Union[str, list[str]] = Field(None, description=f"up to {MAX_STOPS} strings")
    seed: int = _D["seed"]
    presence_penalty: float = Field(_D["presence_penalty"], ge=-2, le=2)
    frequency_penalty: float = Field(_D["frequency_penalty"], ge=-2, le=2)
    top_k: int = Field(_D["top_k"], ge=0, le=MAX_INT)
    min_p: float = Field(_D["min_p"], ge=0, le=1)
    repetition_penalty: float = Field(_D["repetition_penalty"], gt=0, le=1e6)  # past 1e6: logits / inf
    stream_options: StreamOptions = None
    logit_bias: Any = unsupported("the sampler has no per-token bias", {})
    # documented as an end-user id for OpenAI's abuse monitoring (`safety_identifier` replaces it); no output effect
    user: Optional[str] = ignored("an end-user id for abuse monitoring")
    safety_identifier: Optional[str] = ignored("an end-user id for abuse monitoring")

    @field_validator("stop")
    @classmethod
    def _few_stops(cls, stop):
        if isinstance(stop, list) and len(stop) > MAX_STOPS:
            raise PydanticCustomError("too_many_stops", "takes at most {n} strings", {"n": MAX_STOPS})
        return stop

    def stops(self) -> tuple[str, ...]:
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return tuple(s for s in stop if s)

    def sampling(self, max_new_tokens: int, stop: tuple[str, ...], logprobs: int | None) -> SamplingConfig:
        """The engine's config for this request (validated by the caller); null means the default."""
        rep = _D["repetition_penalty"] if self.repetition_penalty is None else self.repetition_penalty
        return SamplingConfig(max_new_tokens=max_new_tokens, temperature=self.temperature, top_k=self.top_k or None,
                              top_p=self.top_p, min_p=self.min_p, repetition_penalty=rep, seed=self.seed,
                              frequency_penalty=self.frequency_penalty, presence_penalty=self.presence_penalty,
                              stop=stop, logprobs=logprobs)


class CompletionRequest(SamplingFields):
    prompt: Union[str, list[str]] = Field(..., description="text to continue, or a list of texts")
    max_tokens: int = Field(COMPLETION_MAX_TOKENS, ge=0, le=MAX_INT)
    logprobs: int = Field(None, ge=0, le=5)
    echo: Any = unsupported("the reply never repeats the prompt", False)
    best_of: Any = unsupported("no server-side best-of", 1)
    suffix: Any = unsupported("no insertion", "")

    @field_validator("prompt", mode="before")
    @classmethod
    def _text_prompts(cls, prompt):
        if isinstance(prompt, list) and any(isinstance(p, (int, list)) and not isinstance(p, bool) for p in prompt):
            raise PydanticCustomError("token_prompt", "token-id prompts are not supported; send text")
        return prompt


class TextPart(StrictModel):
    type: Literal["text"] = "text"  # image, audio and file parts: a text model
    text: str
    prompt_cache_breakpoint: Optional[dict] = ignored("a prompt-cache hint")


class ChatMessage(StrictModel):
    role: Literal["system", "user", "assistant", "developer"]  # tool and function messages: no tool calling
    content: Union[str, list[TextPart]]
    name: Any = unsupported("the chat template has no participant names")
    tool_calls: Any = unsupported("no tool calling", [])
    function_call: Any = unsupported("no function calling")
    refusal: Any = unsupported("no refusals")
    audio: Any = unsupported("no audio")

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class ChatRequest(SamplingFields):
    messages: list[ChatMessage] = Field(..., min_length=1)
    max_tokens: int = Field(_D["max_new_tokens"], ge=0, le=MAX_INT)
    max_completion_tokens: int = Field(_D["max_new_tokens"], ge=0, le=MAX_INT)
    logprobs: bool = False
    top_logprobs: int = Field(None, ge=0, le=20)
    tools: Any = unsupported("no tool calling", [])
    tool_choice: Any = unsupported("no tool calling", "none", "auto")
    parallel_tool_calls: Any = unsupported("no tool calling", True, False)
    functions: Any = unsupported("no function calling", [])
    function_call: Any = unsupported("no function calling", "none", "auto")
    response_format: Any = unsupported("no structured output", {"type": "text"})
    modalities: Any = unsupported("text only", ["text"])
    audio: Any = unsupported("no audio")
    prediction: Any = unsupported("no predicted outputs")
    reasoning_effort: Any = unsupported("not a reasoning model")
    verbosity: Any = unsupported("no verbosity control", "medium")
    web_search_options: Any = unsupported("no web search")
    moderation: Any = unsupported("no moderation")
    service_tier: Any = unsupported("one tier", "auto", "default")
    store: Any = unsupported("completions are not stored for retrieval", False)
    # OpenAI documents these as never changing the output: tags on a stored object, and prompt-cache hints
    metadata: Optional[dict[str, str]] = ignored("tags for stored completions; nothing is stored")
    prompt_cache_key: Optional[str] = ignored("a prompt-cache hint")
    prompt_cache_retention: Optional[Literal["in_memory", "24h"]] = ignored("a prompt-cache hint")
    prompt_cache_options: Optional[dict] = ignored("a prompt-cache hint")


class EmbeddingRequest(StrictModel):
    """POST /v1/embeddings: one text or a list of texts."""
    model: str
    input: Union[str, list[str]]
    encoding_format: Literal["float", "base64"] = "float"  # base64 (the openai client's default): little-endian float32
    dimensions: Any = unsupported("vectors have the encoder's size")
    user: Optional[str] = ignored("an end-user id for abuse monitoring")
