"""The strict request model every endpoint's body is built on (schemas.py has the policy it enforces):
unknown fields are 400s, `unsupported(...)` OpenAI fields accept only values that ask for nothing,
`ignored(...)` fields are type-checked and dropped, null means the default, no lone UTF-16 surrogates."""
from __future__ import annotations

import json
import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

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
