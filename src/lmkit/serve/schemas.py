"""Request bodies of the OpenAI-compatible endpoints, validated by pydantic at the edge.

Field names, defaults and ranges follow the OpenAI API, so any client library works unchanged;
`top_k`, `min_p` and `repetition_penalty` are extensions (as in vLLM). Unknown fields are ignored.
"""
from __future__ import annotations

from typing import Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field


class SamplingFields(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    n: int = Field(1, ge=1, le=16)
    stream: bool = False
    stop: Optional[Union[str, list[str]]] = Field(None)
    seed: Optional[int] = None
    presence_penalty: float = Field(0.0, ge=-2, le=2)
    frequency_penalty: float = Field(0.0, ge=-2, le=2)
    top_k: Optional[int] = Field(None, ge=0)
    min_p: Optional[float] = Field(None, ge=0, le=1)
    repetition_penalty: Optional[float] = Field(None, gt=0)
    stream_options: Optional[dict] = None

    def stops(self) -> tuple[str, ...]:
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return tuple(s for s in stop if s)


class CompletionRequest(SamplingFields):
    prompt: Union[str, list[str]] = Field(..., description="text to continue, or a list of texts")
    max_tokens: Optional[int] = Field(16, ge=0)
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
    max_tokens: Optional[int] = Field(None, ge=0)
    max_completion_tokens: Optional[int] = Field(None, ge=0)
    logprobs: bool = False
    top_logprobs: Optional[int] = Field(None, ge=0, le=20)


class EmbeddingRequest(BaseModel):
    """POST /v1/embeddings: one text or a list of texts."""
    model_config = ConfigDict(extra="ignore")
    model: str
    input: Union[str, list[str]]
    encoding_format: Literal["float", "base64"] = "float"  # base64: little-endian float32 bytes (the openai client's default)
