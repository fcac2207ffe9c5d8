"""Wall time and final val loss of `lmkit quickstart`, on the machine as it is or beside CPU-bound busy loops.

    flock -x /tmp/lmkit-bench.lock python benchmarks/quickstart.py              # idle (nothing else running)
    flock -x /tmp/lmkit-bench.lock python benchmarks/quickstart.py --busy 1     # beside one `while True: pass`

Runs the command as a user does (a subprocess, fresh --out), with --busy N processes spinning on the CPU for
the whole run, and appends one row to RESULTS.md: wall time, the thread choice it printed, its plan (ETA),
steps and final val loss, and the load average before the start.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

from _common import report


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--busy", type=int, default=0, help="CPU-bound processes beside the quickstart")
    ap.add_argument("--args", default="", help="extra quickstart flags, e.g. '--minutes 5'")
    a = ap.parse_args()
    load = os.getloadavg()[0]
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(a.busy)]
    out = tempfile.mkdtemp(prefix="qs-bench-")
    try:
        time.sleep(2 if busy else 0)  # the loops are spinning before the quickstart starts
        t0 = time.perf_counter()
        p = subprocess.run([sys.executable, "-m", "lmkit", "quickstart", "--out", f"{out}/run", *a.args.split()],
                           capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
        wall = time.perf_counter() - t0
    finally:
        for b in busy:
            b.kill()
            b.wait()
        shutil.rmtree(out, ignore_errors=True)
    if p.returncode != 0:
        sys.exit(f"quickstart failed ({p.returncode}):\n{p.stderr[-2000:]}")
    threads = re.search(r"^threads: (\d+)[^\n]*", p.stdout, re.M)
    plan = re.search(r"^plan: ([\d,]+) steps at (\d+) ms each, about ([^\n]*?) of training", p.stdout, re.M)
    final = re.search(r"^val loss ([\d.]+) after ([\d,]+) steps", p.stdout, re.M)
    print(p.stdout[-3000:])
    report(f"quickstart ({'idle' if not a.busy else f'beside {a.busy} busy loop(s)'})",
           ["setting", "wall time (all of it)", "threads chosen", "plan: steps, ms/step, ETA", "final val loss",
            "load before"],
           [[f"`lmkit quickstart {a.args}`".replace(" `", "`") + (f" + {a.busy} × `python -c 'while True: pass'`"
                                                                 if a.busy else ""),
             f"{wall:.0f} s", threads.group(0) if threads else "?",
             f"{plan.group(1)}, {plan.group(2)} ms, {plan.group(3)}" if plan else "?",
             f"{final.group(1)} after {final.group(2)} steps" if final else "?", f"{load:.2f}"]])


if __name__ == "__main__":
    main()
