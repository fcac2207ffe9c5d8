"""Operations: GET /metrics in the Prometheus text format, and the graceful shutdown on SIGTERM."""
import json
import signal
import threading
import time

import httpx
import pytest

import lmkit
from lmkit.serve import create_app
from lmkit.serve.app import GracefulServer
from lmkit.serve.protocol import uvicorn_config
from test_serve import free_port, live_server


def _samples(text: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def test_metrics_count_requests_tokens_batches_and_latencies(trained_run):
    lm = lmkit.load(trained_run)
    with live_server(create_app(lm)) as url:
        model = lm.path.name
        usage = []
        for i in range(3):
            r = httpx.post(f"{url}/v1/completions", json={"model": model, "prompt": "To", "max_tokens": 5 + i,
                                                          "temperature": 0}).json()
            usage.append(r["usage"])
        r = httpx.post(f"{url}/v1/chat/completions", json={"model": model, "n": 2, "max_tokens": 4, "seed": 1,
                                                           "messages": [{"role": "user", "content": "To"}]}).json()
        usage.append(r["usage"])
        httpx.post(f"{url}/v1/completions", json={"model": model, "prompt": "To", "top_p": 7})  # a 400: not counted
        m = httpx.get(f"{url}/metrics")
        assert m.status_code == 200 and m.headers["content-type"].startswith("text/plain; version=0.0.4")
        assert "# TYPE lmkit_time_to_first_token_seconds histogram" in m.text
        s = _samples(m.text)
    assert s['lmkit_requests_total{endpoint="completions"}'] == 3 and s['lmkit_requests_total{endpoint="chat"}'] == 1
    assert s["lmkit_generation_tokens_total"] == sum(u["completion_tokens"] for u in usage)
    assert s["lmkit_prompt_tokens_total"] == sum(u["prompt_tokens"] for u in usage[:3]) + 2 * usage[3]["prompt_tokens"]
    assert sum(v for k, v in s.items() if k.startswith("lmkit_choices_total")) == 5
    assert s["lmkit_time_to_first_token_seconds_count"] == 4 and s["lmkit_queue_wait_seconds_count"] == 4
    assert s['lmkit_time_to_first_token_seconds_bucket{le="+Inf"}'] == 4
    assert 0 < s["lmkit_time_to_first_token_seconds_sum"] < 30
    assert s["lmkit_batch_size_count"] > 0 and s['lmkit_batch_size_bucket{le="2"}'] == s["lmkit_batch_size_count"]
    assert s["lmkit_generation_tokens_per_second"] > 0 and s["lmkit_batch_rows"] == 0


def _slow(lm, seconds: float):
    forward = lm.model.forward

    def slow(*a, **kw):
        time.sleep(seconds)
        return forward(*a, **kw)
    lm.model.forward = slow
    return lm


def _stream(url, body, started: threading.Event, out: list):
    text, finish, done = "", None, False
    with httpx.stream("POST", f"{url}/v1/completions", json={**body, "stream": True}, timeout=60) as r:
        for line in r.iter_lines():
            if line == "data: [DONE]":
                done = True
            elif line.startswith("data: "):
                c = json.loads(line[6:])["choices"][0]
                text, finish = text + c["text"], c["finish_reason"] or finish
                started.set()
    out.append((text, finish, done))


@pytest.mark.parametrize("drain", [0.3, 20.0], ids=["ended", "finished"])
def test_sigterm_finishes_or_cleanly_ends_running_streams(trained_run, drain):
    lm = _slow(lmkit.load(trained_run), 0.03)  # ~1 s for a 30-token reply
    app = create_app(lm)
    port = free_port()
    server = GracefulServer(uvicorn_config(app, port=port, timeout_graceful_shutdown=drain + 10),
                            app.state.scheduler, drain)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    url, body = f"http://127.0.0.1:{port}", {"model": lm.path.name, "prompt": "To", "max_tokens": 28, "temperature": 0}
    started, out = threading.Event(), []
    client = threading.Thread(target=_stream, args=(url, body, started, out))
    client.start()
    assert started.wait(30)
    t0 = time.monotonic()
    server.handle_exit(signal.SIGTERM, None)  # what uvicorn's SIGTERM handler calls
    client.join(30)
    thread.join(30)
    assert not thread.is_alive()  # the server exited once the stream was out
    (text, finish, done), = out
    assert done, "the stream ended without [DONE]"
    full = lm.generate("To", max_new_tokens=28, temperature=0)
    if drain < 1:
        assert finish == "length" and full.startswith(text) and len(text) < len(full)
        assert time.monotonic() - t0 < 5
    else:
        assert text == full and finish in ("stop", "length")
    with pytest.raises(httpx.ConnectError):  # no new connections after the signal
        httpx.get(f"{url}/health", timeout=2)
