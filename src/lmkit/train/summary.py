"""summary.json: what a run's report needs that metrics.jsonl does not hold, kept up to date at every evaluation.

    model     parameters, the ones FLOPs are counted on, FLOPs per token, the peak MFU divides by
    memory    the estimate printed at the start (resources.memory_estimate) and the measured peak
    sessions  one per fit() (a resumed run adds one): start and end, steps from and to, wall time per phase
              (data, setup, train, evaluate, samples, checkpoint, report), world size, the machine

At the end of fit() the main process also writes report.html (lmkit.report) and prints the memory figures.
"""
from __future__ import annotations

import json
import sys
import time
from datetime import datetime, timezone

from ..io import atomic_write_text
from ..models.lora import count_parameters
from ..report import write_report
from . import resources
from .log import REPORT, SUMMARY


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class RunRecord:
    def __init__(self, tr, note):
        """`tr`: the Trainer (its model built, its step the one this fit() starts at); `note`: prints a line."""
        self.tr, self.note, t = tr, note, tr.cfg.train
        self.flops = resources.flops_per_token(tr.model, tr.cfg.model)
        self.parameters = {"parameters": count_parameters(tr.model)[1],  # fixed for the run: counted once
                           "counted_parameters": resources.counted_parameters(tr.model)}
        self.peak_flops = resources.peak_flops(t, tr.device, tr.dtype)
        shards = tr.dist.world_size if tr.dist.mode == "fsdp" else 1
        self.estimate = resources.memory_estimate(tr.model, tr.cfg, tr.dtype, shards)
        self.path = tr.out_dir / SUMMARY
        old = {}
        if tr.run_dir.resume and self.path.is_file():
            try:
                old = json.loads(self.path.read_text(encoding="utf-8"))
            except ValueError:
                pass
        self.sessions = [s for s in old.get("sessions", []) if isinstance(s, dict)]
        self.session = {"started": _now(), "ended": None, "from_step": tr.step, "to_step": tr.step,
                        "resumed": tr.run_dir.resume, "world_size": tr.dist.world_size, "parallel": tr.dist.mode,
                        "dtype": str(tr.dtype).removeprefix("torch."), "machine": resources.machine(tr.device),
                        "phases": tr.phases.seconds}
        tr.phases.seconds["setup"] = max(0.0, time.time() - tr.phases.started - tr.phases.seconds.get("data", 0.0))
        if tr.progress:
            note(resources.describe_estimate(self.estimate, tr.cfg))

    def extra(self, tokens_per_s: float) -> dict:
        """The figures added to a training record: mfu (when the peak is known) and the peak memory so far."""
        out = {}
        if self.peak_flops:
            out["mfu"] = round(self.flops * tokens_per_s / self.peak_flops, 5)
        peak, _ = resources.peak_memory(self.tr.device)
        if peak is not None:
            out["memory_gb"] = round(peak / resources.GB, 4)
        return out

    def save(self) -> None:
        """summary.json as of now (main process)."""
        tr = self.tr
        if not tr.dist.is_main:
            return
        peak, measured = resources.peak_memory(tr.device)
        self.session.update(to_step=tr.step, ended=_now())
        summary = {"model": {**self.parameters, "flops_per_token": self.flops, "peak_flops": self.peak_flops},
                   "memory": {"estimate": self.estimate, "peak": peak, "measured": measured,
                              "before_run": tr.phases.rss_at_start if tr.device.type == "cpu" else None,
                              "activation_checkpointing": tr.cfg.train.activation_checkpointing},
                   "sessions": self.sessions + [self.session]}
        atomic_write_text(self.path, json.dumps(summary, indent=2, ensure_ascii=False) + "\n")

    def finish(self) -> None:
        """The end of fit(): the measured peak beside the estimate, summary.json, report.html."""
        tr = self.tr
        peak, measured = resources.peak_memory(tr.device)
        if tr.progress and peak is not None:
            before = tr.phases.rss_at_start if tr.device.type == "cpu" else None
            print(f"memory: {resources.size(peak)} measured ({measured}"
                  f"{f', {resources.size(before)} of it held before the run started' if before else ''}), "
                  f"{resources.size(self.estimate['total'])} estimated", flush=True)  # the bar is closed now
        if not tr.dist.is_main:
            return
        t0 = time.perf_counter()
        self.save()
        try:
            write_report(tr.out_dir, tr.out_dir / REPORT)
        except Exception as e:  # the report is a view of the run: a failure is said, the run stands
            print(f"warning: could not write {tr.out_dir / REPORT} ({type(e).__name__}: {e})", file=sys.stderr)
        tr.phases.seconds["report"] = time.perf_counter() - t0
        self.save()
