"""Train examples/shakespeare_char.toml (nanoGPT's CPU recipe on tiny-shakespeare, character level)
and report final val loss, training tokens/s, wall time and peak RSS.

    python benchmarks/shakespeare_char.py [--set key=value ...]
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import report  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--config", default="examples/shakespeare_char.toml")
    ap.add_argument("--set", dest="overrides", nargs="+", default=[])
    a = ap.parse_args()
    out = tempfile.mkdtemp(prefix="lmkit-bench-")
    cmd = [sys.executable, "-m", "lmkit", "train", a.config, "--quiet", "--set", f"out_dir={out}", *a.overrides]
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, check=True)
    wall = time.perf_counter() - t0
    rss_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    recs = [json.loads(l) for l in open(Path(out) / "metrics.jsonl")]
    val = [r for r in recs if "val_loss" in r][-1]
    steps = [r for r in recs if "tok_per_s" in r]
    tps = sum(r["tok_per_s"] for r in steps[1:]) / max(1, len(steps) - 1)
    ms_per_it = 1000 * steps[-1]["tokens"] / tps / steps[-1]["step"]
    report(f"shakespeare_char ({a.config} {' '.join(a.overrides)})",
           ["iters", "final val loss", "train loss", "tokens/s (train steps)", "ms/iter", "wall s (incl. data prep, evals)",
            "peak RSS MiB"],
           [[val["step"], f"{val['val_loss']:.4f}", f"{val['train_loss']:.4f}", f"{tps:,.0f}", f"{ms_per_it:.1f}",
             f"{wall:.0f}", f"{rss_mib:.0f}"]])


if __name__ == "__main__":
    main()
