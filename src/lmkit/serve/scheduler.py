"""The batching scheduler: one thread owns the model and decodes every live request in one batch.

Each loop iteration
  1. admits waiting requests while the batch has room (`max_batch` rows; a request with n choices is
     n rows): their prompts run through the model together (prefill) and give their first tokens;
  2. advances the running batch by one token;
  3. merges the newcomers into the running batch (`DecodeSession.merge`), so from the next step they are
     decoded together with everything else (continuous batching);
  4. drops rows whose request finished or was cancelled (a client that disconnected) — the slot is
     free for the next iteration.
Results go back to each request's asyncio queue through its event loop, piece by piece. Rows that ask
for structured output carry their own grammar matcher inside the session (engine.py, grammar.py).

With a `prefix_cache` (prefix_cache.py) every prefill reuses the cached K/V of its prompts' prefixes. A
wave of requests that share a prefix the cache does not hold yet (32 chats with one new system prompt) is
prefilled in two parts: first the jobs that would gain nothing from another job of the wave ("leaders"),
which store their blocks, then the others, which find them. Speculative sessions (`session` not
DecodeSession) do not reuse prefixes: the cache is then ignored.

`drain(grace)` (the server's SIGTERM) admits nothing more: waiting requests get a 503, running rows
decode on for `grace` seconds and are then ended with finish_reason "length", their text flushed, so
every stream closes with its last chunk and [DONE]. `metrics` (metrics.py) sees every step.
"""
from __future__ import annotations

import asyncio
import queue
import threading
import time
from dataclasses import dataclass, field

import torch

from ..engine import DecodeSession
from ..prefix_cache import PrefixCache
from ..sampling_config import SamplingConfig
from ..textstream import Piece, RowText
from .errors import ApiError
from .metrics import Metrics


@dataclass
class Job:
    """One HTTP request: its rows (prompt ids and config, one row per choice) and where results go.
    The queue receives Piece objects, then None when every row finished, or an Exception."""
    rows: list[tuple[list[int], SamplingConfig]]
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancelled: bool = False
    remaining: int = 0
    submitted: float = field(default_factory=time.monotonic)
    first_token: bool = False

    def emit(self, item) -> None:
        if not self.cancelled:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)

    def cancel(self) -> None:
        self.cancelled = True


class Scheduler:
    def __init__(self, model, tokenizer, max_batch: int = 32, metrics: Metrics | None = None,
                 session=DecodeSession, prefix_cache: PrefixCache | None = None):
        self.model, self.tokenizer, self.max_batch = model, tokenizer, max_batch
        self.session_class = session  # DecodeSession, or a factory with its arguments (speculative decoding)
        self.prefix_cache = prefix_cache if session is DecodeSession else None
        self.metrics = metrics or Metrics()
        self.drain_by: float | None = None  # set by drain(): when the running rows are ended
        self.inbox: queue.Queue[Job] = queue.Queue()
        self.waiting: list[Job] = []
        self.live: list[tuple[Job, int, RowText]] = []  # one entry per batch row
        self.session: DecodeSession | None = None
        self._admitted: list[Job] = []  # admitted this iteration, not yet in `live`
        self.steps, self.peak_rows = 0, 0  # decoding steps run, the most rows decoded together
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lmkit-scheduler", daemon=True)

    # ---- called from the server's event loop ------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def drain(self, grace: float) -> None:
        """Stop admitting; end the running rows once `grace` seconds have passed (thread-safe)."""
        self.drain_by = time.monotonic() + grace

    def submit(self, rows: list[tuple[list[int], SamplingConfig]]) -> Job:
        job = Job(rows, asyncio.get_running_loop(), remaining=len(rows))
        self.inbox.put(job)
        return job

    @property
    def active_rows(self) -> int:
        return len(self.live)

    # ---- the decoding thread ----------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._iteration()
            except Exception as e:  # a bug must not kill the server: fail the requests in flight, go on
                for job in {id(j): j for j in [j for j, _, _ in self.live] + self._admitted}.values():
                    job.emit(e)
                self.live, self.session, self._admitted = [], None, []

    def _admit(self) -> list[Job]:
        try:
            if self.session is None and not self.waiting:
                self.waiting.append(self.inbox.get(timeout=0.1))  # idle: wait for work
            while True:
                self.waiting.append(self.inbox.get_nowait())
        except queue.Empty:
            pass
        admitted, room = [], self.max_batch - len(self.live)
        if self.drain_by is not None:
            for job in self.waiting:
                job.emit(ApiError(503, "the server is shutting down", code="server_shutting_down", type="server_error"))
            self.waiting = []
            return admitted
        for job in list(self.waiting):
            if job.cancelled:
                self.waiting.remove(job)
            elif len(job.rows) <= room or (not admitted and not self.live):
                self.waiting.remove(job)
                admitted.append(job)
                room -= len(job.rows)
                self.metrics.admitted(time.monotonic() - job.submitted)
        return admitted

    @torch.no_grad()
    def _iteration(self) -> None:
        new_jobs = self._admitted = self._admit()
        newcomers, new_live = None, []
        eos = self.tokenizer.eot_id
        for jobs in self._parts(new_jobs):
            session, live = self._prefill(jobs)
            if newcomers is None:
                newcomers, new_live = session, live
            else:
                newcomers.merge(session, pad_id=eos or 0)
                new_live = new_live + live
        if self.session is not None:
            self._dispatch(self.session.step(), self.live)
        if newcomers is not None:
            if self.session is None:
                self.session, self.live = newcomers, new_live
            else:
                self.session.merge(newcomers, pad_id=eos or 0)
                self.live = self.live + new_live
        self.steps += 1
        self.peak_rows = max(self.peak_rows, len(self.live))
        if self.live:
            self.metrics.step(len(self.live))
        if self.drain_by is not None and time.monotonic() >= self.drain_by:
            self._end_all()
        keep = [b for b, (job, _, text) in enumerate(self.live) if text.finish_reason is None and not job.cancelled]
        if len(keep) < len(self.live):
            self.live = [self.live[b] for b in keep]
            if keep:
                self.session.keep(keep)
            else:
                self.session = None

    def _prefill(self, jobs: list[Job]):
        """A session for these jobs' rows, stepped once (the prefill): its first tokens are sent."""
        eos = self.tokenizer.eot_id
        prompts = [ids for job in jobs for ids, _ in job.rows]
        cfgs = [cfg for job in jobs for _, cfg in job.rows]
        live = [(job, i, RowText(self.tokenizer, cfg, eos)) for job in jobs for i, (_, cfg) in enumerate(job.rows)]
        extra = {} if self.prefix_cache is None else {"prefix_cache": self.prefix_cache}
        session = self.session_class(self.model, prompts, cfgs, pad_id=eos or 0, tokenizer=self.tokenizer, **extra)
        self._dispatch(session.step(), live)
        return session, live

    def _parts(self, jobs: list[Job]) -> list[list[Job]]:
        """The admitted jobs in the order their prefills run: one part, or with a prefix cache the leaders, then
        the jobs that share more full blocks with a leader's prompt than the cache holds for them now."""
        pc = self.prefix_cache
        if pc is None or len(jobs) < 2:
            return [jobs] if jobs else []
        n = pc.block_tokens
        leaders, followers, led = [], [], []  # led: the leaders' prompts
        for job in jobs:
            if any(max((_shared(ids, other) for other in led), default=0) // n * n > pc.cached_tokens(ids)
                   for ids, _ in job.rows):
                followers.append(job)
            else:
                leaders.append(job)
                led += [ids for ids, _ in job.rows]
        return [leaders, followers] if followers else [leaders]

    def _dispatch(self, step, live: list[tuple[Job, int, RowText]]) -> None:
        for b, (job, choice, text) in enumerate(live):
            if not job.first_token:
                job.first_token = True
                self.metrics.first_token(time.monotonic() - job.submitted)
            self._emit(job, text.push(choice, step, b))

    def _emit(self, job: Job, piece: Piece) -> None:
        job.emit(piece)
        if piece.finish_reason is not None:
            self.metrics.finish(piece.finish_reason)
            job.remaining -= 1
            if job.remaining == 0:
                job.emit(None)

    def _end_all(self) -> None:
        """The drain's grace is over: end every running row now, its held-back text flushed."""
        for job, choice, text in self.live:
            if text.finish_reason is None:
                text.finish_reason = "length"
                self._emit(job, Piece(choice, text.stops.flush() + text.stream.flush(), -1, finish_reason="length"))
        self.live, self.session = [], None


def _shared(a: list[int], b: list[int]) -> int:
    """How many tokens two prompts share from the start (at most all but a's last one)."""
    n = 0
    for x, y in zip(a[:-1], b):
        if x != y:
            break
        n += 1
    return n
