"""Malformed and hostile requests against a real uvicorn server on 127.0.0.1 (serve()'s own settings).

Every request is written byte by byte on a socket (no client library to tidy it up: raw paths, invalid
UTF-8, chunked bodies, huge heads): each must get a 4xx carrying an OpenAI error object — never a 5xx,
a reset or silence — and the server must answer a normal completion afterwards.
"""
import collections
import json
import socket
import time

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("uvicorn")
pytest.importorskip("fastapi")

import lmkit  # noqa: E402
from lmkit.serve import create_app  # noqa: E402
from test_serve import live_server  # noqa: E402

TIMEOUT = 20  # seconds for any one request


@pytest.fixture(scope="module")
def server(trained_run):
    lm = lmkit.load(trained_run)
    with live_server(create_app(lm)) as url:  # the default 1 MiB body limit
        yield url, lm.path.name


def exchange(url: str, pieces: list[bytes]) -> tuple[int, dict, bytes]:
    """Send `pieces` on a fresh connection; return the answer's status, headers and body."""
    host, port = url.removeprefix("http://").split(":")
    deadline = time.monotonic() + TIMEOUT
    with socket.create_connection((host, int(port)), timeout=TIMEOUT) as s:
        try:
            for piece in pieces:
                s.sendall(piece)
        except OSError:  # the server may answer before the request is over; the answer is still there to read
            pass
        data = b""
        while time.monotonic() < deadline:
            if b"\r\n\r\n" in data:
                head, _, body = data.partition(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                headers = dict(line.split(": ", 1) for line in lines[1:])
                headers = {k.lower(): v for k, v in headers.items()}
                if "content-length" in headers and len(body) >= int(headers["content-length"]):
                    return int(lines[0].split(" ")[1]), headers, body[:int(headers["content-length"])]
            chunk = s.recv(1 << 16)
            if not chunk:
                break
            data += chunk
    raise AssertionError(f"no complete answer: {data[:300]!r}")


def http(method: str, path: str, body: bytes = b"", content_type: str | None = "application/json",
         headers: dict | None = None, chunked: bool = False) -> list[bytes]:
    """A request as the bytes sent; `chunked` sends the body in 64 KiB chunks without Content-Length."""
    head = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
    head += [f"Content-Type: {content_type}"] * (content_type is not None)
    head += [f"{k}: {v}" for k, v in (headers or {}).items()]
    head.append("Transfer-Encoding: chunked" if chunked else f"Content-Length: {len(body)}")
    pieces = [("\r\n".join(head) + "\r\n\r\n").encode("latin-1")]
    if not chunked:
        return pieces + [body] * bool(body)
    for i in range(0, len(body), 1 << 16):
        part = body[i:i + (1 << 16)]
        pieces.append(b"%x\r\n%s\r\n" % (len(part), part))
    return pieces + [b"0\r\n\r\n"]


def cases(model: str) -> list[tuple[str, list[bytes], int | None, str | None]]:
    """(name, request bytes, the status expected or None for any 4xx, the `param` expected or None;
    a `param` ending in * is a prefix)."""
    out = []
    comp = {"model": model, "prompt": "To", "max_tokens": 2}
    chat = {"model": model, "messages": [{"role": "user", "content": "To be"}], "max_tokens": 2}

    def add(name, pieces, status=None, param=None):
        out.append((name, pieces, status, param))

    def post(path, obj, **kw):
        return http("POST", path, json.dumps(obj).encode(), **kw)  # ensure_ascii: "\ud800" goes as the JSON escape

    # bad JSON, and JSON that is not an object
    for raw in [b"{", b'{"model": ', b"not json", b'{"model": "m",}', b"[", b'{"model": "m" "prompt": 1}',
                b"{'model': 'm'}", b'{"model": "m"} trailing', b"\x00", b"[" * 100_000, b'{"prompt": ' + b"[" * 50_000,
                b"", b"null", b"true", b"42", b'"a string"', b"[1, 2]", b"{}"]:
        add(f"json {raw[:20]!r}", http("POST", "/v1/completions", raw), 400)
        add(f"chat json {raw[:20]!r}", http("POST", "/v1/chat/completions", raw), 400)
    # wrong types
    for field, value in [("model", 1), ("model", ["m"]), ("prompt", 1), ("prompt", {"a": 1}), ("prompt", [1, 2]),
                         ("prompt", [[1, 2]]), ("prompt", [True]), ("temperature", "hot"), ("temperature", [1]),
                         ("top_p", "1"), ("n", "2"), ("n", 2.5), ("n", True), ("stream", "yes"), ("stream", 1),
                         ("stop", 1), ("stop", [1]), ("stop", {"a": "b"}), ("seed", "1"), ("seed", 1.5),
                         ("max_tokens", "many"), ("max_tokens", 3.7), ("logprobs", "yes"), ("logprobs", True),
                         ("stream_options", "yes"), ("stream_options", {"include_usage": "yes"}), ("user", 5),
                         ("top_k", 1.5), ("min_p", "0.1"), ("repetition_penalty", [])]:
        add(f"type {field}={value!r}", post("/v1/completions", {**comp, field: value}), 400, field + "*")
    for field, value in [("messages", "hi"), ("messages", {"role": "user"}), ("messages", [1]),
                         ("messages", [{"role": "user"}]), ("messages", [{"role": "user", "content": 1}]),
                         ("messages", [{"role": "user", "content": [{"type": "text"}]}]),
                         ("messages", [{"role": "user", "content": [{"type": "text", "text": 1}]}]),
                         ("messages", [{"role": "user", "content": None}]), ("logprobs", 2), ("top_logprobs", "x"),
                         ("metadata", {"a": 1}), ("metadata", "x"), ("max_completion_tokens", "10")]:
        add(f"chat type {field}={value!r}", post("/v1/chat/completions", {**chat, field: value}), 400, field + "*")
    # huge, negative and non-finite numbers (Python's json reads NaN, Infinity and 1e999 as floats)
    for field, value in [("temperature", -1), ("temperature", 1e308), ("temperature", 2.5), ("top_p", 0),
                         ("top_p", -0.5), ("top_p", 1.0000001), ("n", 0), ("n", -1), ("n", 17), ("n", 10**30),
                         ("max_tokens", -1), ("max_tokens", 10**30), ("max_tokens", 2**31), ("seed", -1),
                         ("seed", 2**62), ("seed", 10**100), ("presence_penalty", 2.5), ("frequency_penalty", -1e300),
                         ("top_k", -1), ("top_k", 10**12), ("min_p", -0.1), ("min_p", 1.5), ("repetition_penalty", 0),
                         ("repetition_penalty", -1), ("repetition_penalty", 1e7), ("logprobs", -1), ("logprobs", 6),
                         ("logprobs", 10**9), ("temperature", float("nan")), ("top_p", float("inf")),
                         ("presence_penalty", float("-inf")), ("frequency_penalty", float("nan")),
                         ("min_p", float("nan")), ("repetition_penalty", float("inf"))]:
        add(f"number {field}={value!r}", post("/v1/completions", {**comp, field: value}), 400, field)
    add("number 1e999", http("POST", "/v1/completions", json.dumps(comp)[:-1].encode() + b', "temperature": 1e999}'),
        400, "temperature")
    for field, value in [("top_logprobs", 21), ("top_logprobs", -1), ("max_completion_tokens", -5)]:
        add(f"chat number {field}={value!r}", post("/v1/chat/completions", {**chat, field: value}), 400, field)
    # invalid UTF-8 (and a surrogate encoded in UTF-8 bytes, which Python's json decodes to a lone one)
    for raw in [b"\xff", b"\xe4\xb8", b"\xc0\xaf", b"\xed\xa0\x80", b"caf\xe9", b"\xf8\x88\x80\x80\x80"]:
        body = json.dumps(comp).encode().replace(b'"To"', b'"To' + raw + b'"')
        add(f"utf-8 {raw!r}", http("POST", "/v1/completions", body), 400)
        add(f"utf-8 in a key {raw!r}", http("POST", "/v1/completions", json.dumps(comp).encode()[:-1] + b', "k'
                                            + raw + b'": 1}'), 400)
    # a lone surrogate in every string field, streamed and not
    for lone in ["\ud800", "\udfff", "\ude00\ud83d"]:
        for stream in (False, True):
            for field, value, param in [("prompt", f"To{lone}", "prompt"), ("prompt", ["a", lone], "prompt[1]"),
                                        ("stop", lone, "stop"), ("stop", ["x", lone], "stop[1]"),
                                        ("model", lone, "model"),
                                        ("user", lone, "user"), ("suffix", lone, "suffix")]:
                add(f"surrogate {field} {lone!r} stream={stream}",
                    post("/v1/completions", {**comp, "stream": stream, field: value}), 400, param)
            for field, value, param in [
                    ("messages", [{"role": "user", "content": lone}], "messages[0].content"),
                    ("messages", [{"role": "user", "content": [{"type": "text", "text": lone}]}],
                     "messages[0].content[0].text"),
                    ("messages", [{"role": lone, "content": "x"}], "messages[0].role"),
                    ("messages", [{"role": "user", "content": [{"type": lone, "text": "x"}]}],
                     "messages[0].content[0].type"),
                    ("stop", lone, "stop"), ("user", lone, "user"), ("metadata", {"k": lone}, "metadata.k"),
                    ("prompt_cache_key", lone, "prompt_cache_key"), ("tool_choice", lone, "tool_choice")]:
                add(f"chat surrogate {field} {lone!r} stream={stream}",
                    post("/v1/chat/completions", {**chat, "stream": stream, field: value}), 400, param)
    add("surrogate in a field name", post("/v1/completions", {**comp, "\ud800": 1}), 400)
    add("surrogate in a message's field name",
        post("/v1/chat/completions", {**chat, "messages": [{"role": "user", "content": "x", "\udc00": 1}]}), 400)
    # oversized bodies, with Content-Length and chunked without it; a huge prompt under the limit
    big = json.dumps({**comp, "prompt": "x" * (2 << 20)}).encode()
    add("body 2 MiB", http("POST", "/v1/completions", big), 413)
    add("body 2 MiB chunked", http("POST", "/v1/completions", big, chunked=True), 413)
    add("body 1 MiB + 1 chunked", http("POST", "/v1/completions", b" " * ((1 << 20) + 1), chunked=True), 413)
    add("Content-Length 10 MiB, body short", [http("POST", "/v1/completions", b"{}")[0].replace(
        b"Content-Length: 2", b"Content-Length: 10485760"), b"{}"], 413)
    add("prompt 900 KB", post("/v1/completions", {**comp, "prompt": "To be " * 150_000}), 400, "prompt")
    add("prompt list of 5000", post("/v1/completions", {**comp, "prompt": ["a"] * 5000}), 400, "prompt")
    # huge headers: one, many, and one far past anything h11 buffers
    add("header 200 KB", http("GET", "/health", headers={"X-Big": "a" * 200_000}), 431)
    add("2000 headers", http("GET", "/health", headers={f"X-H{i}": "b" * 100 for i in range(2000)}), 431)
    add("cookie 40 KB", http("POST", "/v1/completions", json.dumps(comp).encode(), headers={"Cookie": "c" * 40_000}),
        431)
    add("header 4 MB", http("GET", "/health", headers={"X-Huge": "d" * 4_000_000}), 431)
    add("path 100 KB", http("GET", "/v1/models?" + "q" * 100_000), 431)
    # malformed HTTP heads
    add("header without colon", [b"GET /health HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n"], 400)
    add("header with NUL", [b"GET /health HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n"], 400)
    add("bad Content-Length", [b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n"], 400)
    add("two Content-Lengths", [b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n"
                                b"Content-Length: 2\r\n\r\nab"], 400)
    add("bad chunk size", [b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                           b"zz\r\n"], 400)
    add("space in the path", [b"GET /a b HTTP/1.1\r\nHost: x\r\n\r\n"], 400)
    add("no Host", [b"GET /health HTTP/1.1\r\n\r\n"], 400)
    # unknown fields, OpenAI fields this server does not implement, unknown model, empty and wrong messages
    for extra, param in [({"frobnicate": 1}, "frobnicate"), ({"max_new_tokens": 3}, "max_new_tokens"),
                         ({"messages": []}, "messages"), ({"stream_options": {"x": 1}}, "stream_options.x")]:
        add(f"unknown {extra}", post("/v1/completions", {**comp, **extra}), 400, param)
    for extra in [{"tool_choice": "required"}, {"tool_choice": {"type": "function", "function": {"name": "f"}}},
                  {"functions": [{"name": "f"}]}, {"function_call": {"name": "f"}}, {"parallel_tool_calls": "x"},
                  {"audio": {"voice": "x"}},
                  {"modalities": ["text", "audio"]}, {"prediction": {"type": "content", "content": "x"}},
                  {"reasoning_effort": "low"}, {"web_search_options": {}}, {"store": True}, {"service_tier": "flex"},
                  {"verbosity": "high"}, {"moderation": {"model": "m"}}, {"prompt": "To"}, {"dimensions": 3}]:
        add(f"chat unsupported {extra}", post("/v1/chat/completions", {**chat, **extra}), 400, next(iter(extra)))
    for extra in [{"echo": True}, {"best_of": 2}, {"suffix": "x"}]:
        add(f"unsupported {extra}", post("/v1/completions", {**comp, **extra}), 400, next(iter(extra)))
    for message, param in [({"role": "user", "content": "x", "name": "bob"}, "messages[0].name"),
                           ({"role": "assistant", "content": "x", "tool_calls": [{"id": "1"}]},
                            "messages[0].tool_calls[0].function"),
                           ({"role": "tool", "content": "x"}, "messages[0]"),
                           ({"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]},
                            "messages[0].content[0].type"),
                           ({"role": "function", "content": "x", "name": "f"}, "messages[0].role"),
                           ({"role": "robot", "content": "x"}, "messages[0].role"),
                           ({"role": "USER", "content": "x"}, "messages[0].role"),
                           ({"role": "", "content": "x"}, "messages[0].role"),
                           ({"role": 5, "content": "x"}, "messages[0].role"),
                           ({"content": "x"}, "messages[0].role")]:
        add(f"message {message}", post("/v1/chat/completions", {**chat, "messages": [message]}), 400, param)
    add("empty messages", post("/v1/chat/completions", {**chat, "messages": []}), 400, "messages")
    add("empty prompt list", post("/v1/completions", {**comp, "prompt": []}), 400, "prompt")
    add("unknown model", post("/v1/completions", {**comp, "model": "gpt-4"}), 404, "model")
    add("chat unknown model", post("/v1/chat/completions", {**chat, "model": "gpt-4"}), 404, "model")
    add("chat unknown model streamed", post("/v1/chat/completions", {**chat, "model": "../" + model, "stream": True}),
        404, "model")
    add("embeddings without an encoder", post("/v1/embeddings", {"model": model, "input": "x"}), 404)
    # path traversal and odd paths: nothing but the routes exists
    for path in ["/static/../../etc/passwd", "/%2e%2e/%2e%2e/etc/passwd", "/..%2f..%2fetc%2fpasswd",
                 "/static/%2e%2e/%2e%2e/etc/passwd", "//etc/passwd", "/.%2e/.%2e/etc/passwd",
                 "/index.html/../../../etc/passwd", "/static/..\\..\\windows\\win.ini", "/v1/../../etc/passwd",
                 "/%00", "/%ff%fe", "/static/index.html", "/serve/static/index.html", "/lmkit/serve/app.py"]:
        add(f"path {path}", http("GET", path, content_type=None), 404)
    # wrong methods and content types
    for method, path in [("GET", "/v1/completions"), ("PUT", "/v1/chat/completions"), ("DELETE", "/v1/models"),
                         ("PATCH", "/health"), ("POST", "/health"), ("POST", "/"), ("OPTIONS", "/v1/completions"),
                         ("TRACE", "/"), ("GET", "/v1/chat/completions")]:
        add(f"method {method} {path}", http(method, path, content_type=None), 405)
    for content_type in ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
                         "application/xml", None]:
        add(f"content type {content_type}", http("POST", "/v1/completions", json.dumps(comp).encode(),
                                                 content_type=content_type), 400)
    return out


def named(got: str | None, expected: str | None) -> bool:
    if expected is None:
        return True
    return (got or "").startswith(expected[:-1]) if expected.endswith("*") else got == expected


def test_hostile_requests_get_4xx_openai_errors_and_the_server_keeps_serving(server):
    url, model = server
    counts, failures = collections.Counter(), []
    started = time.monotonic()
    all_cases = cases(model)
    for name, pieces, status, param in all_cases:
        got, headers, body = exchange(url, pieces)
        counts[got] += 1
        try:
            err = json.loads(body)["error"]
            ok = (400 <= got < 500 and (status is None or got == status)
                  and set(err) == {"message", "type", "param", "code"}
                  and err["message"] and err["type"] and named(err["param"], param)
                  and b"root:" not in body)
        except (ValueError, KeyError, TypeError):
            ok, err = False, body[:200]
        if not ok:
            failures.append((name, got, err))
    print(f"\n{len(all_cases)} hostile requests in {time.monotonic() - started:.1f} s; by status: "
          + ", ".join(f"{s}: {n}" for s, n in sorted(counts.items())))
    assert len(all_cases) >= 100
    assert not failures, "\n".join(f"{n}: {s} {e}" for n, s, e in failures)
    r = httpx.post(url + "/v1/completions", json={"model": model, "prompt": "To be", "max_tokens": 5, "temperature": 0},
                   timeout=30)
    assert r.status_code == 200 and r.json()["choices"][0]["text"]
    r = httpx.post(url + "/v1/chat/completions", json={"model": model, "messages": [{"role": "user", "content": "To"}],
                                                       "max_tokens": 3, "stream": True}, timeout=30)
    assert r.status_code == 200 and r.text.rstrip().endswith("data: [DONE]")
