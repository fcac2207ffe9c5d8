"""Shared bits of the benchmark scripts: machine description and appending a table to RESULTS.md."""
from __future__ import annotations

import datetime
import os
import platform
import subprocess
import sys
from pathlib import Path

RESULTS = Path(__file__).with_name("RESULTS.md")


def machine() -> str:
    import torch
    cpu = platform.processor() or "cpu"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, "
            f"CPU capability {torch.backends.cpu.get_cpu_capability()}")


def commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent).stdout.strip() or "uncommitted"
    except OSError:
        return "unknown"


def table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def report(title: str, header: list[str], rows: list[list], notes: str = "") -> None:
    """Print the table and append it to RESULTS.md with date, machine, commit and command
    (print only when the environment sets LMKIT_BENCH_PROBE=1: exploratory runs stay out of RESULTS.md)."""
    text = table(header, rows)
    print(text)
    if os.environ.get("LMKIT_BENCH_PROBE") == "1":
        return
    stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    cmd = "python " + " ".join([os.path.relpath(sys.argv[0])] + sys.argv[1:])
    with open(RESULTS, "a", encoding="utf-8") as f:
        f.write(f"\n## {title}\n{stamp} · {machine()} · commit {commit()} · `{cmd}`\n\n{text}\n")
        if notes:
            f.write(f"\n{notes}\n")
