"""The OpenAI-compatible server, driven by the official `openai` client against a live server on 127.0.0.1."""
import concurrent.futures
import contextlib
import json
import socket
import threading
import time

import pytest

openai = pytest.importorskip("openai", reason="the server tests need the `openai` package (pip install -e '.[test]')")
httpx = pytest.importorskip("httpx")
uvicorn = pytest.importorskip("uvicorn")

import lmkit  # noqa: E402
from lmkit.serve import create_app  # noqa: E402
from lmkit.serve.protocol import uvicorn_config  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def live_server(app):
    """Run `app` with uvicorn in a background thread; yield its base URL; stop it within seconds."""
    port = free_port()
    server = uvicorn.Server(uvicorn_config(app, host="127.0.0.1", port=port))  # serve()'s own settings
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started:
        assert time.time() < deadline and thread.is_alive(), "server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)


@pytest.fixture(scope="module")
def lm(trained_run):
    return lmkit.load(trained_run)


@pytest.fixture(scope="module")
def base_url(lm):
    with live_server(create_app(lm, max_body_bytes=20_000)) as url:
        yield url


@pytest.fixture(scope="module")
def client(base_url):
    return openai.OpenAI(base_url=base_url + "/v1", api_key="unused", timeout=60, max_retries=0)


def test_models_health_and_schema(client, base_url, lm):
    assert [m.id for m in client.models.list().data] == [lm.path.name]
    health = httpx.get(base_url + "/health").json()
    assert health["status"] == "ok" and health["model"] == lm.path.name
    schema = httpx.get(base_url + "/openapi.json").json()
    assert {"/v1/completions", "/v1/chat/completions", "/v1/models"} <= set(schema["paths"])


def test_completion_equals_the_engine_and_streams_the_same_text(client, lm):
    model = lm.path.name
    expected = lm.generate("To be", max_new_tokens=12, temperature=0)
    r = client.completions.create(model=model, prompt="To be", max_tokens=12, temperature=0)
    assert r.choices[0].text == expected and r.choices[0].finish_reason in ("length", "stop")
    assert r.usage.prompt_tokens == 5 and r.usage.completion_tokens == len(expected)
    pieces = [c.choices[0].text for c in client.completions.create(model=model, prompt="To be", max_tokens=12,
                                                                     temperature=0, stream=True) if c.choices]
    assert len(pieces) > 1 and "".join(pieces) == expected
    two = client.completions.create(model=model, prompt=["To be", "床前"], max_tokens=6, temperature=0)
    assert [c.text for c in two.choices] == [expected[:6], lm.generate("床前", max_new_tokens=6, temperature=0)]


def test_sampling_seed_n_stop_and_logprobs(client, lm):
    model = lm.path.name
    kw = dict(model=model, prompt="T", max_tokens=10, temperature=1.0, top_p=0.95, seed=5, n=3)
    a, b = client.completions.create(**kw), client.completions.create(**kw)
    assert [c.text for c in a.choices] == [c.text for c in b.choices]
    assert len({c.text for c in a.choices}) > 1  # the n choices differ (seeds 5, 6, 7)
    full = lm.generate("To be", max_new_tokens=20, temperature=0)
    cut = full[4:7]
    r = client.completions.create(model=model, prompt="To be", max_tokens=20, temperature=0, stop=[cut])
    assert r.choices[0].text == full[:full.index(cut)] and r.choices[0].finish_reason == "stop"
    r = client.completions.create(model=model, prompt="To be", max_tokens=4, temperature=0, logprobs=2)
    lp = r.choices[0].logprobs
    assert "".join(lp.tokens) == full[:4] and len(lp.token_logprobs) == 4
    assert all(lp_ <= 0 for lp_ in lp.token_logprobs)
    assert all(max(top.values()) == pytest.approx(v) for top, v in zip(lp.top_logprobs, lp.token_logprobs))


def test_chat_streaming_and_not(client, lm):
    model = lm.path.name
    msgs = [{"role": "user", "content": "To be"}]
    r = client.chat.completions.create(model=model, messages=msgs, max_tokens=8, temperature=0, logprobs=True,
                                       top_logprobs=2)
    reply = r.choices[0].message
    assert reply.role == "assistant" and len(r.choices[0].logprobs.content) == r.usage.completion_tokens
    assert r.usage.completion_tokens <= 8
    stream = client.chat.completions.create(model=model, messages=msgs, max_tokens=8, temperature=0, stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == reply.content
    prompt_room = client.chat.completions.create(model=model, messages=msgs, temperature=0)  # max_tokens: context
    assert prompt_room.usage.prompt_tokens + prompt_room.usage.completion_tokens <= lm.config.model.block_size


def test_logit_bias_stops_and_logprobs(client, base_url, lm):
    model, tok = lm.path.name, lm.tokenizer
    msgs = [{"role": "user", "content": "To be"}]
    greedy = client.completions.create(model=model, prompt="To be", max_tokens=6, temperature=0).choices[0].text
    first = tok.encode(greedy)[0]
    banned = client.completions.create(model=model, prompt="To be", max_tokens=6, temperature=0,
                                       logit_bias={str(first): -100}).choices[0].text
    assert first not in tok.encode(banned) and banned != greedy
    forced_id = tok.encode("q")[0]
    forced = client.chat.completions.create(model=model, messages=msgs, max_tokens=5, temperature=1.0, seed=1,
                                            logit_bias={str(forced_id): 100}, logprobs=True, top_logprobs=3)
    choice = forced.choices[0]
    assert choice.message.content == "qqqqq" and [e.token for e in choice.logprobs.content] == ["q"] * 5
    assert all(len(e.top_logprobs) == 3 and e.logprob <= 0 for e in choice.logprobs.content)  # the model's own
    # up to four stop strings, as OpenAI allows; a fifth is a 400 naming `stop`
    full = lm.generate("To be", max_new_tokens=20, temperature=0)
    stops = ["zzz", "yyy", full[9:11], full[5:7]]
    r = client.completions.create(model=model, prompt="To be", max_tokens=20, temperature=0, stop=stops)
    cut = min(full.find(s) for s in stops if s in full)
    assert cut <= 5 and r.choices[0].text == full[:cut] and r.choices[0].finish_reason == "stop"
    for extra, param in [({"stop": ["a", "b", "c", "d", "e"]}, "stop"), ({"logit_bias": {"x": 1}}, "logit_bias"),
                         ({"logit_bias": {"1": 101}}, "logit_bias"), ({"logit_bias": {"99999": 1}}, "logit_bias"),
                         ({"top_logprobs": 2}, "top_logprobs")]:
        r = httpx.post(f"{base_url}/v1/chat/completions", json={"model": model, "messages": msgs, **extra})
        assert r.status_code == 400 and r.json()["error"]["param"] == param, (extra, r.text)


def test_request_defaults_are_samplingconfigs_but_where_openai_documents_its_own():
    from lmkit.sampling import SamplingConfig
    from lmkit.serve.schemas import ChatRequest, CompletionRequest
    msgs = [{"role": "user", "content": "hi"}]
    chat = ChatRequest(model="m", messages=msgs)
    assert chat.max_tokens is None and chat.max_completion_tokens is None  # a reply may fill the context
    assert CompletionRequest(model="m", prompt="x").max_tokens == 16
    openai_defaults = dict(temperature=1.0, top_p=1.0, top_k=None)  # the whole distribution at T = 1
    assert chat.sampling(10, (), None) == SamplingConfig(max_new_tokens=10, **openai_defaults)
    explicit_nulls = ChatRequest(model="m", messages=msgs, repetition_penalty=None, top_k=None, min_p=None)
    assert explicit_nulls.sampling(10, (), None) == chat.sampling(10, (), None)


def test_invalid_requests_get_openai_errors_and_the_server_keeps_serving(client, base_url, lm):
    model = lm.path.name
    cases = [
        (dict(temperature=-1), 400, "temperature"),
        (dict(top_p=0), 400, "top_p"),
        (dict(top_p=1.5), 400, "top_p"),
        (dict(max_tokens="many"), 400, "max_tokens"),
        (dict(n=0), 400, "n"),
        (dict(seed=2**64), 400, "seed"),
        (dict(stop=[1, 2]), 400, "stop"),
        (dict(model="gpt-4"), 404, "gpt-4"),
        (dict(prompt="x" * 40), 400, "context"),
    ]
    for extra, status, fragment in cases:
        body = {"model": model, "prompt": "To", "max_tokens": 3, **extra}
        r = httpx.post(base_url + "/v1/completions", json=body)
        assert r.status_code == status, (extra, r.text)
        err = r.json()["error"]
        assert fragment in err["message"] and err["type"], err
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model=model, prompt="To", temperature=-0.5)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "hi"}])
    r = httpx.post(base_url + "/v1/chat/completions", content=b'{"model": "x", "messages": [', 
                   headers={"content-type": "application/json"})
    assert r.status_code == 400 and "malformed JSON" in r.json()["error"]["message"]
    r = httpx.post(base_url + "/v1/chat/completions", json={"model": model, "messages": [{"role": "robot", "content": 1}]})
    assert r.status_code == 400 and r.json()["error"]["param"].startswith("messages")
    r = httpx.post(base_url + "/v1/completions", json={"model": model, "prompt": "x" * 30_000})
    assert r.status_code == 413 and "larger than 20000 bytes" in r.json()["error"]["message"]
    assert httpx.get(base_url + "/v1/nothing").status_code == 404
    assert client.completions.create(model=model, prompt="To", max_tokens=2, temperature=0).choices[0].text


def post_raw(url: str, body: bytes, **kw):
    """POST bytes as they are: JSON escapes like "\ud800" reach the server unchanged."""
    return httpx.post(url, content=body, headers={"content-type": "application/json"}, timeout=30, **kw)


def test_lone_surrogates_are_400_naming_the_field(base_url, lm):
    model = lm.path.name
    user = {"role": "user", "content": "To be"}
    cases = [  # (endpoint, body with the surrogate, the param named)
        ("completions", {"prompt": "To \ud800"}, "prompt"),
        ("completions", {"prompt": ["To", "be\udfff"]}, "prompt[1]"),
        ("completions", {"prompt": "To", "stop": "\ud800"}, "stop"),
        ("completions", {"prompt": "To", "stop": ["a", "\udc00b"]}, "stop[1]"),
        ("completions", {"prompt": "To", "user": "\ud800"}, "user"),
        ("chat/completions", {"messages": [{"role": "user", "content": "\ud800"}]}, "messages[0].content"),
        ("chat/completions", {"messages": [user, {"role": "user", "content": [{"type": "text", "text": "x\ud800"}]}]},
         "messages[1].content[0].text"),
        ("chat/completions", {"messages": [user], "stop": "\ud800"}, "stop"),
        ("chat/completions", {"messages": [user], "metadata": {"k": "\ud800"}}, "metadata.k"),
    ]
    for endpoint, extra, param in cases:
        for stream in (False, True):
            body = json.dumps({"model": model, "max_tokens": 2, "stream": stream, **extra}).encode()
            assert b"\\ud" in body or b"\\udc" in body or b"\\udf" in body  # sent as the JSON escape
            r = post_raw(f"{base_url}/v1/{endpoint}", body)
            assert r.status_code == 400, (endpoint, extra, r.text)
            err = r.json()["error"]
            assert err["param"] == param and err["type"] == "invalid_request_error" and err["code"] == "lone_surrogate"
            assert param in err["message"] and "surrogate" in err["message"]
    r = post_raw(f"{base_url}/v1/completions", json.dumps({"model": "\ud800", "prompt": "To"}).encode())
    assert r.status_code == 400 and r.json()["error"]["param"] == "model"
    pair = json.dumps({"model": model, "prompt": "To \U0001f600", "max_tokens": 2}).encode()  # a valid pair is text
    assert b"\\ud83d\\ude00" in pair and post_raw(f"{base_url}/v1/completions", pair).status_code == 200


def test_a_chunked_body_over_the_limit_is_413_and_huge_headers_431(base_url, lm):
    """Against the real uvicorn server with serve()'s settings (protocol.uvicorn_config)."""
    def chunks():
        for _ in range(30):  # 30 KB in 1 KB chunks, no Content-Length, over the fixture's 20 000 bytes
            yield b" " * 1000
    r = httpx.post(base_url + "/v1/completions", content=chunks(), headers={"content-type": "application/json"})
    assert "content-length" not in r.request.headers and r.request.headers["transfer-encoding"] == "chunked"
    assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"
    small = json.dumps({"model": lm.path.name, "prompt": "To", "max_tokens": 2}).encode()
    r = httpx.post(base_url + "/v1/completions", content=iter([small[:10], small[10:]]),
                   headers={"content-type": "application/json"})
    assert r.status_code == 200  # a chunked body under the limit is read whole
    for headers in ({"x-big": "a" * 200_000}, {f"x-h{i}": "b" * 100 for i in range(1000)}):
        r = httpx.get(base_url + "/health", headers=headers, timeout=30)
        assert r.status_code == 431, r.text
        assert r.json()["error"]["code"] == "headers_too_large"
    assert httpx.get(base_url + "/health", headers={"x-fine": "c" * 20_000}).status_code == 200
    # a head arriving in pieces stops at h11's buffer limit (protocol.Protocol answers, then closes lingering:
    # the client's remaining 200 KB are read and dropped, so it gets the answer, not a reset) ...
    host, port = base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as s:
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 40_000)
        time.sleep(0.3)
        s.sendall(b"a" * 200_000 + b"\r\n\r\n")
        answer, deadline = b"", time.time() + 30
        while time.time() < deadline and (data := s.recv(65536)):
            answer += data
    assert answer.startswith(b"HTTP/1.1 431 ") and b'"code": "headers_too_large"' in answer, answer
    # ... and one that arrives whole reaches the app, where errors.RequestLimits answers it
    from fastapi.testclient import TestClient
    r = TestClient(create_app(lm)).get("/health", headers={"x-big": "a" * 40_000})
    assert r.status_code == 431 and r.json()["error"]["code"] == "headers_too_large"


def test_unimplemented_fields_are_400_and_harmless_metadata_is_accepted(client, base_url, lm):
    model = lm.path.name
    msgs = [{"role": "user", "content": "To be"}]
    tool = {"type": "function", "function": {"name": "f", "parameters": {}}}
    unsupported = [  # never silently dropped
        ("chat/completions", {"functions": [tool["function"]]}, "functions"),
        ("chat/completions", {"function_call": {"name": "f"}}, "function_call"),
        ("chat/completions", {"modalities": ["text", "audio"]}, "modalities"),
        ("chat/completions", {"audio": {"voice": "alloy", "format": "wav"}}, "audio"),
        ("chat/completions", {"reasoning_effort": "low"}, "reasoning_effort"),
        ("chat/completions", {"store": True}, "store"),
        ("chat/completions", {"messages": [{"role": "user", "content": "hi", "name": "bob"}]}, "messages[0].name"),
        ("chat/completions", {"stream": True, "stream_options": {"include_obfuscation": True}},
         "stream_options.include_obfuscation"),
        ("completions", {"echo": True}, "echo"),
        ("completions", {"best_of": 3}, "best_of"),
        ("completions", {"suffix": "end"}, "suffix"),
    ]
    for endpoint, extra, param in unsupported:
        base = {"prompt": "To"} if endpoint == "completions" else {"messages": msgs}
        body = {"model": model, "max_tokens": 2, **base, **extra}
        r = httpx.post(f"{base_url}/v1/{endpoint}", json=body)
        assert r.status_code == 400, (extra, r.text)
        err = r.json()["error"]
        assert err["param"] == param and err["code"] == "unsupported_parameter" and "not supported" in err["message"]
    for extra, param in [({"frobnicate": 1}, "frobnicate"), ({"max_new_tokens": 3}, "max_new_tokens"),
                         ({"messages": [{"role": "user", "content": "hi", "mood": "x"}]}, "messages[0].mood")]:
        r = httpx.post(f"{base_url}/v1/chat/completions", json={"model": model, "messages": msgs, **extra})
        assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text
        assert r.json()["error"]["code"] == "unknown_parameter"
    with pytest.raises(openai.BadRequestError, match="tool_choice"):  # tools work: test_structured.py
        client.chat.completions.create(model=model, messages=msgs, tool_choice="required")
    # values that ask for nothing, metadata that changes no output, and nulls meaning the default are fine
    greedy = client.chat.completions.create(model=model, messages=msgs, max_tokens=4, temperature=0)
    same = client.chat.completions.create(
        model=model, messages=msgs, max_tokens=4, temperature=0, tools=[], tool_choice="none", logit_bias={}, n=1,
        response_format={"type": "text"}, parallel_tool_calls=False, store=False, user="u1", metadata={"k": "v"},
        prompt_cache_key="c", safety_identifier="s", extra_body={"top_p": None, "seed": None})
    assert same.choices[0].message.content == greedy.choices[0].message.content


def test_api_key_is_required(lm):
    with live_server(create_app(lm, api_key="s3cret")) as url:
        assert httpx.get(url + "/v1/models").status_code == 401
        r = httpx.get(url + "/health", headers={"Authorization": "Bearer wrong"})
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        bad = openai.OpenAI(base_url=url + "/v1", api_key="wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            bad.models.list()
        good = openai.OpenAI(base_url=url + "/v1", api_key="s3cret", max_retries=0)
        assert good.models.list().data[0].id == lm.path.name
        assert httpx.get(url + "/").status_code == 200  # the page itself holds no data


def test_concurrent_streams_give_single_request_outputs(base_url, lm):
    model = lm.path.name
    prompts = ["To be", "T", "床前明月", "or not", "that is the", "q"]
    expected = [lm.generate(p, max_new_tokens=15, temperature=0) for p in prompts]

    def one(p):
        c = openai.OpenAI(base_url=base_url + "/v1", api_key="x", max_retries=0, timeout=60)
        return "".join(ch.choices[0].text for ch in c.completions.create(
            model=model, prompt=p, max_tokens=15, temperature=0, stream=True) if ch.choices)
    with concurrent.futures.ThreadPoolExecutor(len(prompts)) as pool:
        assert list(pool.map(one, prompts)) == expected


def test_concurrent_requests_are_batched_and_a_disconnect_frees_the_slot(trained_run, lm):
    slow = lmkit.load(trained_run)
    forward = slow.model.forward
    slow.model.forward = lambda *a, **k: (time.sleep(0.05), forward(*a, **k))[1]  # 25 tokens take > 1.2 s
    app = create_app(slow)
    with live_server(app) as url:
        prompts = ["To be", "T", "床前明月", "that is the"]
        expected = [lm.generate(p, max_new_tokens=8, temperature=0) for p in prompts]

        def one(p):
            c = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=60)
            return "".join(ch.choices[0].text for ch in c.completions.create(
                model=slow.path.name, prompt=p, max_tokens=8, temperature=0, stream=True) if ch.choices)
        with concurrent.futures.ThreadPoolExecutor(len(prompts)) as pool:
            assert list(pool.map(one, prompts)) == expected
        assert app.state.scheduler.peak_rows >= 3  # they were decoded together
        app.state.scheduler.steps = 0
        body = {"model": slow.path.name, "prompt": "To", "max_tokens": 25, "stream": True, "temperature": 0}
        with httpx.stream("POST", url + "/v1/completions", json=body) as r:
            for line in r.iter_lines():
                if line.startswith("data: {") and json.loads(line[6:])["choices"][0]["text"]:
                    break  # one piece of text, then hang up
        deadline = time.time() + 10
        while app.state.scheduler.active_rows and time.time() < deadline:
            time.sleep(0.02)
        assert app.state.scheduler.active_rows == 0
        assert app.state.scheduler.steps < 15  # dropped long before its 25 tokens


def test_cli_serve_chat_and_generate_flags(trained_run, tmp_path, capsys, monkeypatch):
    import io
    import subprocess
    import sys
    from lmkit.cli import main
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "lmkit", "serve", str(trained_run), "--port", str(port),
                             "--api-key", "k"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline, status = time.time() + 60, None
        while time.time() < deadline and proc.poll() is None:
            try:
                status = httpx.get(f"http://127.0.0.1:{port}/health", headers={"Authorization": "Bearer k"}).json()
                break
            except httpx.TransportError:
                time.sleep(0.2)
        assert status and status["status"] == "ok", proc.stderr.read() if proc.poll() is not None else "no answer"
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    assert main(["serve", str(tmp_path), "--port", "8000"]) == 2
    assert "not a run directory" in capsys.readouterr().err
    assert main(["serve", str(trained_run), "--port", "70000"]) == 2
    assert "--port must be in 1..65535" in capsys.readouterr().err
    monkeypatch.setattr("sys.stdin", io.StringIO("To be\n/reset\n床前\n/quit\n"))
    assert main(["chat", str(trained_run), "--temperature", "0", "--max-new-tokens", "5"]) == 0
    out = capsys.readouterr().out
    assert out.count("model> ") == 2 and "(conversation cleared)" in out
    assert main(["generate", str(trained_run), "--prompt", "To be", "--temperature", "0", "--max-new-tokens", "8",
                 "--beams", "1"]) == 0
    assert capsys.readouterr().out == "To be" + lmkit.load(trained_run).generate("To be", max_new_tokens=8,
                                                                                  temperature=0) + "\n"
    assert main(["generate", str(trained_run), "--min-p", "2"]) == 2
    assert "min_p must be in [0, 1] (got 2.0)" in capsys.readouterr().err
    assert main(["generate", str(trained_run), "--prompt", "To be, or not to be, that is the question."]) == 2
    assert "prompt is 42 tokens" in capsys.readouterr().err
