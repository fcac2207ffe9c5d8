"""Where and in which precision the training loop runs: the device, the autocast dtype, the CPU threads."""
from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass

import torch

from ..models.precision import DTYPES, resolve_dtype  # noqa: F401 (re-exported: the trainer's names)


def pick_device(name: str) -> torch.device:
    """'auto' -> cuda when there is one, else cpu; any other name as given."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def autocast_ctx(device: torch.device, dtype: str):
    """Mixed precision for a forward pass: a no-op for float32."""
    if dtype == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=DTYPES[dtype])


@dataclass
class ThreadChoice:
    threads: int
    note: str  # one line for the user: the count and why
    seconds: float = 0.0  # time of one call of the probe's work at that count (0: not timed)
    told: bool = False  # the note was shown (the trainer does not repeat it)

    def tell(self) -> str:
        self.told = True
        return self.note


_chosen: ThreadChoice | None = None  # the probe runs once per process; later callers get its answer
_asked: ThreadChoice | None = None  # the last count given as num_threads


def usable_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _default_work():
    """A matmul the size of one MLP layer of a small model's step (3,072 tokens x 128 -> 512): ~0.4 GFLOP."""
    a, b = torch.randn(3072, 128), torch.randn(128, 512)
    return lambda: a @ b


def _seconds(work, threads: int, reps: int) -> float:
    """Median time of `work()` at `threads` threads, after one untimed call."""
    torch.set_num_threads(threads)
    work()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        work()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def _fixed(n: int, why: str, work, reps: int) -> ThreadChoice:
    torch.set_num_threads(n)
    return ThreadChoice(n, f"threads: {n} ({why})", _seconds(work, n, reps) if work is not None else 0.0)


def choose_threads(requested: int = 0, work=None, reps: int = 5) -> ThreadChoice:
    """The CPU thread count to compute with, set in torch. `requested` > 0 (num_threads): that many. Else,
    once per process: time `work()` (default: one small-model matmul) at 1 thread, half the cores and every
    core this process may use, and take the fastest (fewer threads on a tie within 10%). On a machine where
    another job keeps a core busy, all-core OpenMP waits for the busy core at every op and can run 3x slower
    than one thread; the probe sees that and picks fewer. OMP_NUM_THREADS set in the environment wins too.
    Given `work`, the result's `seconds` is its time at the chosen count (a caller's ETA)."""
    global _chosen, _asked
    if requested > 0:
        if work is None and _asked is not None and _asked.threads == requested:
            torch.set_num_threads(requested)
            return _asked
        _asked = _fixed(requested, f"num_threads = {requested}", work, reps)
        return _asked
    if _chosen is not None and work is None:
        torch.set_num_threads(_chosen.threads)
        return _chosen
    cores = usable_cores()
    if os.environ.get("OMP_NUM_THREADS"):
        _chosen = _fixed(torch.get_num_threads(), f"OMP_NUM_THREADS = {os.environ['OMP_NUM_THREADS']}", work, reps)
    elif cores == 1:
        _chosen = _fixed(1, "one core", work, reps)
    else:
        timed = {n: _seconds(work or _default_work(), n, reps) for n in sorted({1, max(1, cores // 2), cores})}
        best = min(timed.values())
        n = min(k for k, v in timed.items() if v <= 1.1 * best)
        torch.set_num_threads(n)
        shown = ", ".join(f"{k}: {1000 * v:.0f} ms" for k, v in timed.items())
        _chosen = ThreadChoice(n, f"threads: {n} of {cores} cores, the fastest now (a probe step at {shown}; "
                                  f"num_threads = N sets it)", timed[n])
    return _chosen


def forget_threads() -> None:
    """Probe again at the next choose_threads (tests; a long-lived process whose load changed)."""
    global _chosen, _asked
    _chosen = _asked = None
