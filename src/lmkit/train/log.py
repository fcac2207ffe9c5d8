"""What one `Trainer.fit()` records as it goes: metrics.jsonl (and the trackers each record also goes to, see
trackers.py), samples.jsonl (the texts generated at each evaluation), the progress bar, the history of
records, and the clocks (wall time since the start; tokens/s over training time only, evaluations left out;
wall time per phase, see Phases)."""
from __future__ import annotations

import contextlib
import json
import math
import os
import time
from pathlib import Path

from tqdm.auto import tqdm

from ..io import atomic_write_text
from .resources import current_rss
from .trackers import EVENTS, IDS

METRICS, SAMPLES, SUMMARY, REPORT = "metrics.jsonl", "samples.jsonl", "summary.json", "report.html"


def keep_records_before(metrics: Path, step: int, redo_eval: bool, is_eval=lambda r: "val_loss" in r) -> list[dict]:
    """A resumed run continues at `step`: the records written after that checkpoint (by the run that was stopped)
    go, and the evaluation at `step` too when the run redoes it; so do lines a kill cut short. Returns the
    records kept."""
    if not metrics.is_file():
        return []
    kept, records = [], []
    for line in metrics.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
            at = record["step"]
        except (ValueError, TypeError, KeyError):
            continue
        if at < step or (at == step and not (redo_eval and is_eval(record))):
            kept.append(line + "\n")
            records.append(record)
    atomic_write_text(metrics, "".join(kept))
    return records


def keep_logs_before(out: Path, step: int, redo_eval: bool) -> list[dict]:
    """keep_records_before for metrics.jsonl and samples.jsonl (every line of which is an evaluation's);
    returns the metrics records kept."""
    keep_records_before(out / SAMPLES, step, redo_eval, is_eval=lambda r: True)
    return keep_records_before(out / METRICS, step, redo_eval)


def remove_run_files(out: Path) -> None:
    """A run starts afresh (a new run, --overwrite, a failed start): the files of this module and of the
    trackers that an earlier run left (event files, tracker ids, samples, summary, report)."""
    for f in list(out.glob(EVENTS + "*")) + [out / n for n in (IDS, SAMPLES, SUMMARY, REPORT)]:
        f.unlink(missing_ok=True)


class Phases:
    """Wall time per phase of a run: `with phases("evaluate"): ...`; `seconds` maps each phase to its total."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self.started = time.time()
        self.rss_at_start = current_rss()  # what the process held before the run (Python, torch): for the report

    @contextlib.contextmanager
    def __call__(self, name: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0


class RunLog:
    def __init__(self, metrics: Path, total: int, initial: int, show: bool, write: bool, tokens: int = 0,
                 trackers=None):
        """`metrics`: the JSON-lines file appended to when `write` (the main process); `show`: the bar;
        `tokens`: tokens seen before this fit() (a resumed run); `trackers`: a trackers.Trackers that gets
        every record too (None: none)."""
        self.file = open(metrics if write else os.devnull, "a", encoding="utf-8")
        self.samples_file = metrics.parent / SAMPLES if write else None
        self.trackers = trackers
        self.bar = tqdm(total=total, initial=initial, desc="training", unit="it", disable=not show,
                        dynamic_ncols=True)
        self.history: list[dict] = []
        self.loss = math.nan  # the last logged training loss
        self.t0 = time.perf_counter()
        self.restart_lap(tokens)

    def write(self, record: dict) -> None:
        """One line of metrics.jsonl (flushed at once: a crash keeps everything logged), of the history, and
        of the trackers."""
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        self.history.append(record)
        if self.trackers is not None:
            self.trackers.scalars(record)

    def samples(self, step: int, samples: list[dict], texts: dict | None = None) -> None:
        """The texts generated at an evaluation ({"prompt", "text"} each): a line of samples.jsonl, and text
        for the trackers; `texts` ({tag: text}, e.g. a task's confusion matrix) go to the trackers alone."""
        if self.samples_file is None:
            return
        if samples:
            with open(self.samples_file, "a", encoding="utf-8") as f:
                f.write(json.dumps({"step": step, "samples": samples}, ensure_ascii=False) + "\n")
        if self.trackers is not None:
            shown = {f"samples/{i}": f"prompt: `{s['prompt']}`\n\n" + "\n".join(
                "    " + line for line in (s["prompt"] + s["text"]).splitlines()) for i, s in enumerate(samples)}
            for tag, text in {**shown, **(texts or {})}.items():
                self.trackers.text(step, tag, text)
            self.trackers.flush()

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
        if self.trackers is not None:
            self.trackers.close()
