"""Request bodies of the OpenAI-compatible endpoints, validated by pydantic at the edge.

Field names, defaults and ranges follow the OpenAI API, so any client library works unchanged;
`top_k`, `min_p` and `repetition_penalty` are extensions (as in vLLM). Unknown fields are ignored.
"""
from __future__ import annotations

from typing import Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field

from ..sampling_config import SAMPLING_DEFAULTS, SamplingConfig

# The server's request defaults, in this one place: SamplingConfig's, except where the OpenAI API
# documents its own (temperature 1, top_p 1, max_tokens 16 for /v1/completions; chat replies run until
# the context is full). top_k is an extension OpenAI does not have; its default request samples the
# whole distribution, so top_k is off here (SamplingConfig's 50 would change what an OpenAI client gets).
SERVER_DEFAULTS = {**SAMPLING_DEFAULTS, "temperature": 1.0, "top_p": 1.0, "top_k": None,
                   "max_new_tokens": None}  # chat: up to the context
COMPLETION_MAX_TOKENS = 16  # /v1/completions
_D = SERVER_DEFAULTS  # a short name for the fields below


class SamplingFields(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str
    temperature: float = Field(_D["temperature"], ge=0, le=2)
    top_p: float = Field(_D["top_p"], gt=0, le=1)
    n: int = Field(1, ge=1, le=16)
    stream: bool = False
    stop: Optional[Union[str, list[str]]] = Field(None)
    seed: Optional[int] = _D["seed"]
    presence_penalty: float = Field(_D["presence_penalty"], ge=-2, le=2)
    frequency_penalty: float = Field(_D["frequency_penalty"], ge=-2, le=2)
    top_k: Optional[int] = Field(_D["top_k"], ge=0)
    min_p: Optional[float] = Field(_D["min_p"], ge=0, le=1)
    repetition_penalty: Optional[float] = Field(_D["repetition_penalty"], gt=0)
    stream_options: Optional[dict] = None

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
    max_tokens: Optional[int] = Field(COMPLETION_MAX_TOKENS, ge=0)
    logprobs: Optional[int] = Field(None, ge=0, le=5)


class TextPart(BaseModel):
    type: Literal["text"] = "text"
    text: str


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant", "developer"]
    content: Union[str, list[TextPart]]

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class ChatRequest(SamplingFields):
    messages: list[ChatMessage] = Field(..., min_length=1)
    max_tokens: Optional[int] = Field(_D["max_new_tokens"], ge=0)
    max_completion_tokens: Optional[int] = Field(_D["max_new_tokens"], ge=0)
    logprobs: bool = False
    top_logprobs: Optional[int] = Field(None, ge=0, le=20)


class EmbeddingRequest(BaseModel):
    """POST /v1/embeddings: one text or a list of texts."""
    model_config = ConfigDict(extra="ignore")
    model: str
    input: Union[str, list[str]]
    encoding_format: Literal["float", "base64"] = "float"  # base64: little-endian float32 bytes (the openai client's default)
