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

from typing import Any, Literal, Optional, Union

from pydantic import Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from ..sampling_config import SAMPLING_DEFAULTS, SamplingConfig
from .strict import StrictModel, ignored, unsupported

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
class StreamOptions(StrictModel):
    include_usage: bool = False
    include_obfuscation: Any = unsupported("no stream obfuscation", False)


class JsonSchemaFormat(StrictModel):
    name: str = Field(..., pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: Optional[str] = None  # for the model's reading in OpenAI's API; the grammar enforces the schema
    schema_: dict = Field(None, alias="schema")  # null: any JSON object
    strict: Optional[bool] = None  # the schema is always enforced while decoding (grammar.py)


class ResponseFormat(StrictModel):
    """`{"type": "json_object"}` (any JSON object) or `{"type": "json_schema", "json_schema": {...}}`,
    enforced while decoding by a token mask (grammar.py); "text" asks for nothing."""
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat = None

    @model_validator(mode="after")
    def _schema_for_json_schema(self):
        if (self.type == "json_schema") != (self.json_schema is not None):
            raise PydanticCustomError("json_schema", "json_schema is given exactly when type is \"json_schema\"")
        return self

    def spec(self):
        """SamplingConfig's json_schema: None (text), True (any object) or the schema."""
        if self.type == "text":
            return None
        return True if self.type == "json_object" or self.json_schema.schema_ is None else self.json_schema.schema_


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
    response_format: ResponseFormat = None
    logit_bias: dict[str, float] = Field(None, description="token id (as a string) -> bias in [-100, 100]")
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

    @field_validator("logit_bias")
    @classmethod
    def _token_ids(cls, bias):
        for k, v in bias.items():
            if not k.isdigit() or not k.isascii():
                raise PydanticCustomError("logit_bias", "keys are token ids (got {k!r})", {"k": k})
            if not -100 <= v <= 100:
                raise PydanticCustomError("logit_bias", "values are in [-100, 100] (got {v} for token {k})",
                                          {"k": k, "v": v})
        return {int(k): v for k, v in bias.items()}

    def tool_spec(self):
        """SamplingConfig's tools: (choice, [(name, parameters), …]), or None when no call is possible."""
        return None

    def sampling(self, max_new_tokens: int, stop: tuple[str, ...], logprobs: int | None) -> SamplingConfig:
        """The engine's config for this request (validated by the caller); null means the default."""
        rep = _D["repetition_penalty"] if self.repetition_penalty is None else self.repetition_penalty
        json_schema = self.response_format.spec() if self.response_format is not None else None
        return SamplingConfig(max_new_tokens=max_new_tokens, temperature=self.temperature, top_k=self.top_k or None,
                              top_p=self.top_p, min_p=self.min_p, repetition_penalty=rep, seed=self.seed,
                              frequency_penalty=self.frequency_penalty, presence_penalty=self.presence_penalty,
                              stop=stop, logprobs=logprobs, json_schema=json_schema, logit_bias=self.logit_bias or None,
                              tools=self.tool_spec())


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


FUNCTION_NAME = r"^[A-Za-z0-9_-]{1,64}$"  # as OpenAI


class FunctionCall(StrictModel):
    name: str = Field(..., pattern=FUNCTION_NAME)
    arguments: str  # JSON text, as OpenAI sends it


class ToolCall(StrictModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(StrictModel):
    role: Literal["system", "user", "assistant", "developer", "tool"]  # "function": the deprecated API, not here
    content: Union[str, list[TextPart]] = None  # null only for an assistant's message that calls tools
    tool_calls: list[ToolCall] = None  # an assistant's earlier calls
    tool_call_id: str = None  # a tool's result: the call it answers
    name: Any = unsupported("the chat template has no participant names")
    function_call: Any = unsupported("no function calling (the deprecated API; use tools)")
    refusal: Any = unsupported("no refusals")
    audio: Any = unsupported("no audio")

    @model_validator(mode="after")
    def _shape(self):
        if self.content is None and not (self.role == "assistant" and self.tool_calls):
            raise PydanticCustomError("content", "content is required (it may be null only for an assistant's "
                                                 "message with tool_calls)")
        if self.tool_calls and self.role != "assistant":
            raise PydanticCustomError("tool_calls", "only an assistant's message has tool_calls")
        if (self.role == "tool") != (self.tool_call_id is not None):
            raise PydanticCustomError("tool_call_id", "a message of role \"tool\" has a tool_call_id, and only it")
        return self

    def text(self) -> str:
        if self.content is None:
            return ""
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)

    def for_template(self) -> dict:
        out = {"role": self.role, "content": self.text()}
        if self.tool_calls:
            out["tool_calls"] = [c.model_dump() for c in self.tool_calls]
        if self.tool_call_id is not None:
            out["tool_call_id"] = self.tool_call_id
        return out


class FunctionDef(StrictModel):
    name: str = Field(..., pattern=FUNCTION_NAME)
    description: Optional[str] = None
    parameters: dict = None  # a JSON Schema; null: no arguments ({})
    strict: Optional[bool] = None  # the arguments always follow the schema (grammar.py)


class Tool(StrictModel):
    type: Literal["function"]
    function: FunctionDef


class NamedFunction(StrictModel):
    name: str


class NamedToolChoice(StrictModel):
    type: Literal["function"]
    function: NamedFunction


class ChatRequest(SamplingFields):
    messages: list[ChatMessage] = Field(..., min_length=1)
    max_tokens: int = Field(_D["max_new_tokens"], ge=0, le=MAX_INT)
    max_completion_tokens: int = Field(_D["max_new_tokens"], ge=0, le=MAX_INT)
    logprobs: bool = False
    top_logprobs: int = Field(None, ge=0, le=20)
    # lmkit extension: true = drop the oldest turns (never system/developer messages) that do not fit the context,
    # reported in the X-Lmkit-Dropped-Messages header; false (OpenAI's behaviour) = a 400 context_length_exceeded
    truncate_history: bool = False
    tools: list[Tool] = None
    tool_choice: Union[Literal["none", "auto", "required"], NamedToolChoice] = None  # default: auto with tools
    parallel_tool_calls: bool = None  # "auto" may make several calls; "required" and a named function make one
    functions: Any = unsupported("no function calling", [])
    function_call: Any = unsupported("no function calling", "none", "auto")
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

    def tool_problem(self) -> tuple[str, str] | None:
        """(field, what is wrong) when tools, tool_choice and response_format do not fit together."""
        names = [t.function.name for t in self.tools or []]
        choice = self.tool_choice
        if len(set(names)) < len(names):
            return "tools", "tools: two tools have the same name"
        if isinstance(choice, NamedToolChoice) and choice.function.name not in names:
            return "tool_choice", (f"tool_choice: names the function {choice.function.name!r}, "
                                   "which is not one of the tools")
        if choice == "required" and not names:
            return "tool_choice", 'tool_choice: "required" needs tools'
        if self.response_format is not None and self.response_format.type != "text" and self.tool_spec() is not None:
            return "response_format", ('response_format: JSON output and tool calls are not combined; send '
                                       'tool_choice "none" or no response_format')
        return None

    def choice(self) -> str:
        """"none", "auto", "required" or the named function."""
        if isinstance(self.tool_choice, NamedToolChoice):
            return self.tool_choice.function.name
        return self.tool_choice or ("auto" if self.tools else "none")

    def tool_spec(self):
        if not self.tools or self.choice() == "none":
            return None
        return self.choice(), [(t.function.name, t.function.parameters or {}) for t in self.tools]


class EmbeddingRequest(StrictModel):
    """POST /v1/embeddings: one text or a list of texts."""
    model: str
    input: Union[str, list[str]]
    encoding_format: Literal["float", "base64"] = "float"  # base64 (the openai client's default): little-endian float32
    dimensions: Any = unsupported("vectors have the encoder's size")
    user: Optional[str] = ignored("an end-user id for abuse monitoring")
