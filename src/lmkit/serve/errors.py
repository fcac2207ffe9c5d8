"""Every error the server answers is an OpenAI error object with a 4xx status (a 5xx only for a bug):

    {"error": {"message": "messages[0].content: ...", "type": "invalid_request_error",
               "param": "messages[0].content", "code": null}}

`install(app, models)` registers the handlers that turn FastAPI's and pydantic's errors into that
object, naming the offending field as `param`; `RequestLimits` answers 413 for an oversized body
(chunked or not) and 431 for oversized headers. Errors the HTTP layer answers before the app sees a
request (a head too large to parse, a malformed request line) are protocol.py's.
"""
from __future__ import annotations

import json

from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

MAX_BODY_BYTES = 1 << 20
MAX_HEADER_BYTES = 32 * 1024  # the request line and all headers together
_BODY_PARSE_FAILED = "There was an error parsing the body"  # FastAPI's detail when json.loads raised


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type: str = "invalid_request_error"):
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type


def _text(s: str | None) -> str | None:
    """A string safe to send as UTF-8: a lone surrogate echoed from a request becomes a visible \\udXXX."""
    return None if s is None else s.encode("utf-8", "backslashreplace").decode("utf-8")


def error_response(status: int, message: str, param=None, code=None, type="invalid_request_error") -> JSONResponse:
    return JSONResponse({"error": {"message": _text(message), "type": type, "param": _text(param), "code": code}},
                        status_code=status)


def headers_too_large(limit: int) -> str:
    return f"request headers are larger than {limit} bytes"


def _field_names(model) -> set[str]:
    names = set(model.model_fields)
    for sub in model.__subclasses__():
        names |= _field_names(sub)
    return names


def _shown(value) -> str:
    text = json.dumps(value, ensure_ascii=False, default=repr)  # as the client wrote it
    return text if len(text) <= 80 else text[:77] + "..."


def validation_error(errors: list[dict], field_names: set[str]) -> JSONResponse:
    """The first field's error, as OpenAI names fields: `messages[0].content[1].text`. Of a union's errors
    (one per branch) the deepest is the informative one; the branches' tags ('str', 'list[str]') are dropped."""
    first = errors[0]
    if first.get("type") == "json_invalid":
        return error_response(400, f"malformed JSON body: {first.get('ctx', {}).get('error', first['msg'])}",
                              code="invalid_json")
    loc = tuple(first.get("loc", ()))
    if loc == ("body",) and first.get("type") != "lone_surrogate":  # no object: empty, not JSON, another JSON type
        return error_response(400, "the request body must be a JSON object (sent as Content-Type: application/json)")
    same_field = [e for e in errors if tuple(e.get("loc", ()))[:2] == loc[:2]]
    err = max(same_field, key=lambda e: len(e.get("loc", ())))  # max() keeps the first of equal depth
    kind, loc = err.get("type"), err.get("loc", ())
    parts = []
    for i, x in enumerate(loc):
        if isinstance(x, int):
            parts.append(f"[{x}]")
        elif x in field_names or (kind == "extra_forbidden" and i == len(loc) - 1):
            parts.append(("." if parts else "") + str(x))
    param = ("".join(parts) + (err.get("ctx", {}).get("at", "") if kind == "lone_surrogate" else "")).lstrip(".")
    if kind == "extra_forbidden":
        return error_response(400, f"{param}: unknown field (not a field of this endpoint of the OpenAI API)",
                              param=param, code="unknown_parameter")
    code = kind if kind in ("unsupported_parameter", "lone_surrogate") else None
    shown = "input" in err and not isinstance(err["input"], dict) and kind not in ("missing", "lone_surrogate")
    got = f" (got {_shown(err['input'])})" if shown else ""
    return error_response(400, f"{param or 'body'}: {err['msg']}{got}", param=param or None, code=code)


def install(app, *models) -> None:
    """Answer every error of `app` as an OpenAI error object; `models` are the request models (param names)."""
    field_names = set().union(*(_field_names(m) for m in models))

    @app.exception_handler(ApiError)
    async def api_error(request, e: ApiError):
        return error_response(e.status, e.message, e.param, e.code, e.type)

    @app.exception_handler(RequestValidationError)
    async def invalid(request, e: RequestValidationError):
        return validation_error(list(e.errors()), field_names)

    @app.exception_handler(HTTPException)
    async def http_error(request, e: HTTPException):
        if e.status_code == 400 and e.detail == _BODY_PARSE_FAILED:
            return error_response(400, "the request body is not JSON text: not UTF-8, or nested too deeply",
                                  code="invalid_json")
        return error_response(e.status_code, str(e.detail), type="not_found_error" if e.status_code == 404
                              else "invalid_request_error")

    @app.exception_handler(Exception)
    async def internal(request, e: Exception):
        return error_response(500, f"internal error: {type(e).__name__}", type="server_error")


def head_bytes(scope) -> int:
    """The size of a request's head as sent: request line and header lines."""
    line = len(scope["method"]) + len(scope.get("raw_path") or b"") + len(scope.get("query_string") or b"") + 12
    return line + sum(len(k) + len(v) + 4 for k, v in scope["headers"])


class RequestLimits:
    """ASGI middleware. A request head over `max_head` bytes gets 431 (uvicorn's h11 limit catches a head
    that arrives in pieces, protocol.py; one that arrives in a single read reaches the app and is caught
    here). The app gets a request's body whole, read here up to `limit` bytes; a longer one gets 413 as
    soon as that is known: from Content-Length before anything is read, or — for a chunked body, which
    has none — once the bytes read pass the limit. uvicorn reads and drops the rest of it."""

    def __init__(self, app, limit: int = MAX_BODY_BYTES, max_head: int = MAX_HEADER_BYTES):
        self.app, self.limit, self.max_head = app, limit, max_head

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if head_bytes(scope) > self.max_head:
            return await error_response(431, headers_too_large(self.max_head), code="headers_too_large")(
                scope, receive, send)
        too_big = error_response(413, f"request body is larger than {self.limit} bytes", code="body_too_large")
        length = dict(scope["headers"]).get(b"content-length", b"")  # uvicorn's h11 has checked it is a number
        if length.isdigit() and int(length) > self.limit:
            return await too_big(scope, receive, send)
        chunks, seen = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away: no one to answer
                return
            chunks.append(message.get("body", b""))
            seen += len(chunks[-1])
            if seen > self.limit:
                return await too_big(scope, receive, send)
            if not message.get("more_body", False):
                break
        body, given = b"".join(chunks), False

        async def replay():
            nonlocal given
            if given:
                return await receive()  # after the body: the disconnect a streaming response waits for
            given = True
            return {"type": "http.request", "body": body, "more_body": False}
        await self.app(scope, replay, send)
