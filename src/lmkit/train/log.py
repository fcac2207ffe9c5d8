"""What one `Trainer.fit()` records as it goes: metrics.jsonl, the progress bar, the history of records,
and the clocks (wall time since the start; tokens/s over training time only, evaluations left out)."""
from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

from tqdm.auto import tqdm

from ..io import atomic_write_text


def keep_records_before(metrics: Path, step: int, redo_eval: bool) -> None:
    """A resumed run continues at `step`: the records written after that checkpoint (by the run that was stopped)
    go, and the evaluation at `step` too when the run redoes it; so do lines a kill cut short."""
    if not metrics.is_file():
        return
    kept = []
    for line in metrics.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
            at = record["step"]
        except (ValueError, TypeError, KeyError):
            continue
        if at < step or (at == step and not (redo_eval and "val_loss" in record)):
            kept.append(line + "\n")
    atomic_write_text(metrics, "".join(kept))


class RunLog:
    def __init__(self, metrics: Path, total: int, initial: int, show: bool, write: bool, tokens: int = 0):
        """`metrics`: the JSON-lines file appended to when `write` (the main process); `show`: the bar;
        `tokens`: tokens seen before this fit() (a resumed run)."""
        self.file = open(metrics if write else os.devnull, "a", encoding="utf-8")
        self.bar = tqdm(total=total, initial=initial, desc="training", unit="it", disable=not show,
                        dynamic_ncols=True)
        self.history: list[dict] = []
        self.loss = math.nan  # the last logged training loss
        self.t0 = time.perf_counter()
        self.restart_lap(tokens)

    def write(self, record: dict) -> None:
        """One line of metrics.jsonl (flushed at once: a crash keeps everything logged) and of the history."""
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        self.history.append(record)

    def restart_lap(self, tokens: int) -> None:
        """Start timing training afresh (after an evaluation: its time is not training time)."""
        self.lap_t0, self.lap_tokens = time.perf_counter(), tokens

    def lap(self, tokens: int) -> tuple[float, float]:
        """(seconds since the start, tokens/s since the last lap), given the tokens seen so far; starts the next lap."""
        now = time.perf_counter()
        rate = (tokens - self.lap_tokens) / (now - self.lap_t0)
        self.lap_t0, self.lap_tokens = now, tokens
        return now - self.t0, rate

    def show(self, val: float, tokens_per_s: float | None = None) -> None:
        """The bar's postfix: last training loss, last validation loss (and the training speed)."""
        speed = {} if tokens_per_s is None else {"tok_s": f"{tokens_per_s:,.0f}"}
        self.bar.set_postfix(loss=f"{self.loss:.4f}", val=f"{val:.4f}", **speed, refresh=False)

    def note(self, text: str) -> None:
        """A line above the bar, when the bar is shown."""
        if not self.bar.disable:
            tqdm.write(text)

    def tokens_per_s(self) -> float:
        """The mean of the logged training speeds (0 when nothing was logged)."""
        speeds = [h["tok_per_s"] for h in self.history if "tok_per_s" in h]
        return sum(speeds) / len(speeds) if speeds else 0.0

    def wall(self) -> float:
        return time.perf_counter() - self.t0

    def close(self) -> None:
        self.bar.close()
        self.file.close()
