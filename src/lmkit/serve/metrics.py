"""GET /metrics: the server's counters, gauges and histograms in the Prometheus text format (version 0.0.4).

    lmkit_requests_total{endpoint}            requests accepted for decoding (completions, chat)
    lmkit_choices_total{finish_reason}        choices finished: stop (EOS, a stop string, a complete tool call or
                                              JSON answer), length (max_tokens, the context, or ended by a shutdown)
    lmkit_prompt_tokens_total                 prompt tokens of the requests (those found in the prefix cache too)
    lmkit_generation_tokens_total             tokens generated
    lmkit_generation_tokens_per_second        tokens generated per second over the last WINDOW seconds
    lmkit_batch_rows / lmkit_waiting_requests the running batch's rows, requests waiting for room (gauges)
    lmkit_batch_size                          rows decoded together, one observation per decoding step
    lmkit_queue_wait_seconds                  from a request's arrival to its prefill
    lmkit_time_to_first_token_seconds         from a request's arrival to its first token
    lmkit_prefix_cache_lookup_tokens_total    prompt tokens looked up in the prefix cache (prefix_cache.py)
    lmkit_prefix_cache_hit_tokens_total       prompt tokens whose keys/values came from it, not from a prefill
    lmkit_prefix_cache_bytes                  what its blocks hold (gauge; all three 0 without a prefix cache)
The scheduler's thread records, the server's event loop renders: every access holds one lock (the prefix
cache's counters are plain integers the scheduler's thread updates, read as they are).
"""
from __future__ import annotations

import threading
import time
from collections import deque

WINDOW = 10.0  # seconds of tokens behind the tokens/s gauge
SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
ROWS = (1, 2, 4, 8, 16, 32, 64, 128)


class Histogram:
    def __init__(self, bounds):
        self.bounds, self.counts, self.sum, self.n = tuple(bounds), [0] * len(bounds), 0.0, 0

    def observe(self, x: float) -> None:
        for i, b in enumerate(self.bounds):
            if x <= b:
                self.counts[i] += 1
        self.sum += x
        self.n += 1

    def lines(self, name: str) -> list[str]:
        out = [f'{name}_bucket{{le="{b:g}"}} {c}' for b, c in zip(self.bounds, self.counts)]
        return out + [f'{name}_bucket{{le="+Inf"}} {self.n}', f"{name}_sum {self.sum:.6f}", f"{name}_count {self.n}"]


class Metrics:
    def __init__(self):
        self.lock = threading.Lock()
        self.requests: dict[str, int] = {}
        self.finished: dict[str, int] = {}
        self.prompt_tokens = self.generated = 0
        self.recent: deque[tuple[float, int]] = deque()  # (time, tokens) of recent decoding steps
        self.batch, self.queue_wait, self.ttft = Histogram(ROWS), Histogram(SECONDS), Histogram(SECONDS)

    def request(self, endpoint: str, prompt_tokens: int) -> None:
        with self.lock:
            self.requests[endpoint] = self.requests.get(endpoint, 0) + 1
            self.prompt_tokens += prompt_tokens

    def admitted(self, waited: float) -> None:
        with self.lock:
            self.queue_wait.observe(waited)

    def first_token(self, after: float) -> None:
        with self.lock:
            self.ttft.observe(after)

    def step(self, rows: int, now: float | None = None) -> None:
        """One decoding step of `rows` rows (each gave one token)."""
        now = time.monotonic() if now is None else now
        with self.lock:
            self.batch.observe(rows)
            self.generated += rows
            self.recent.append((now, rows))
            while self.recent and self.recent[0][0] < now - WINDOW:
                self.recent.popleft()

    def finish(self, reason: str) -> None:
        with self.lock:
            self.finished[reason] = self.finished.get(reason, 0) + 1

    def render(self, rows: int, waiting: int, prefix_cache=None) -> str:
        now = time.monotonic()
        with self.lock:
            rate = sum(n for t, n in self.recent if t >= now - WINDOW) / WINDOW
            out = []

            def metric(name, kind, help, lines):
                out.extend([f"# HELP {name} {help}", f"# TYPE {name} {kind}", *lines])
            metric("lmkit_requests_total", "counter", "Requests accepted for decoding, by endpoint.",
                   [f'lmkit_requests_total{{endpoint="{k}"}} {v}' for k, v in sorted(self.requests.items())])
            metric("lmkit_choices_total", "counter", "Choices finished, by finish reason.",
                   [f'lmkit_choices_total{{finish_reason="{k}"}} {v}' for k, v in sorted(self.finished.items())])
            metric("lmkit_prompt_tokens_total", "counter", "Prompt tokens of the requests.",
                   [f"lmkit_prompt_tokens_total {self.prompt_tokens}"])
            metric("lmkit_generation_tokens_total", "counter", "Tokens generated.",
                   [f"lmkit_generation_tokens_total {self.generated}"])
            metric("lmkit_generation_tokens_per_second", "gauge",
                   f"Tokens generated per second over the last {WINDOW:g} seconds.",
                   [f"lmkit_generation_tokens_per_second {rate:.3f}"])
            metric("lmkit_batch_rows", "gauge", "Rows in the running batch.", [f"lmkit_batch_rows {rows}"])
            metric("lmkit_waiting_requests", "gauge", "Requests waiting for room in the batch.",
                   [f"lmkit_waiting_requests {waiting}"])
            metric("lmkit_batch_size", "histogram", "Rows decoded together, per decoding step.",
                   self.batch.lines("lmkit_batch_size"))
            metric("lmkit_queue_wait_seconds", "histogram", "Seconds from a request's arrival to its prefill.",
                   self.queue_wait.lines("lmkit_queue_wait_seconds"))
            metric("lmkit_time_to_first_token_seconds", "histogram",
                   "Seconds from a request's arrival to its first token.",
                   self.ttft.lines("lmkit_time_to_first_token_seconds"))
        pc = prefix_cache
        looked_up, hit, held = (pc.lookup_tokens, pc.hit_tokens, pc.bytes) if pc is not None else (0, 0, 0)
        metric("lmkit_prefix_cache_lookup_tokens_total", "counter", "Prompt tokens looked up in the prefix cache.",
               [f"lmkit_prefix_cache_lookup_tokens_total {looked_up}"])
        metric("lmkit_prefix_cache_hit_tokens_total", "counter",
               "Prompt tokens whose keys and values came from the prefix cache instead of a prefill.",
               [f"lmkit_prefix_cache_hit_tokens_total {hit}"])
        metric("lmkit_prefix_cache_bytes", "gauge", "Bytes of keys and values held by the prefix cache.",
               [f"lmkit_prefix_cache_bytes {held}"])
        return "\n".join(out) + "\n"
