"""LoRA vs full fine-tuning through `lmkit finetune sft`: trainable parameters, peak memory, step time.

The same base (a GPT of --n-layer × --n-embd with a character tokenizer, random weights: cost does not
depend on what the weights know) is fine-tuned on the Alpaca English demo rows for --steps steps, fully
and with LoRA rank --rank on every block Linear. Each run is a fresh process (peak RSS = ru_maxrss);
the two alternate --repeats times and the table gives the median of each.

    flock /tmp/lmkit-bench.lock python benchmarks/lora_vs_full.py [--n-layer 6 --n-embd 384 --steps 20]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import report  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "alpaca_demo" / "alpaca_en_demo.json"


def make_base(out: Path, n_layer: int, n_embd: int, block_size: int) -> None:
    from lmkit.config import Config, save_json
    from lmkit.models import build_model
    from lmkit.tokenizer import Tokenizer
    from lmkit.runs.native import save_weights
    rows = json.loads(DATA.read_text(encoding="utf-8"))
    tok = Tokenizer.train([r["instruction"] + r["input"] + r["output"] for r in rows], kind="char")
    cfg = Config()
    m = cfg.model
    m.n_layer, m.n_embd, m.n_head, m.block_size, m.vocab_size = n_layer, n_embd, max(1, n_embd // 64), block_size, tok.vocab_size
    cfg.train.dtype = "float32"
    out.mkdir(parents=True)
    save_weights(build_model(m), out / "model.safetensors", 0)
    save_json(cfg, out / "config.json")
    tok.save(out / "tokenizer.json")


def child(a) -> None:
    """One fine-tuning run; prints its figures as JSON."""
    from lmkit.finetune.sft import SFTConfig, finetune_sft
    rss_before = int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    out = Path(a.work) / f"run-{a.child}"
    r = finetune_sft(SFTConfig(base=str(Path(a.work) / "base"), data=str(DATA), out=str(out),
                               lora_rank=a.rank if a.child == "lora" else 0, overwrite=True, progress=False,
                               overrides=[f"max_iters={a.steps}", f"eval_interval={a.steps}", "eval_iters=1",
                                          "log_interval=1", f"batch_size={a.batch_size}", "dtype=float32",
                                          f"num_threads={a.threads}"]))
    steps = [h for h in r.history if "tok_per_s" in h][2:]  # the first steps warm up
    tokens_per_step = a.batch_size * a.block_size
    step_s = statistics.median(tokens_per_step / h["tok_per_s"] for h in steps)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    from lmkit.api import load
    from lmkit.models import lora
    model = load(out).model
    if a.child == "lora":
        lora.add_lora(model, lora.DEFAULT_TARGETS, a.rank, 2 * a.rank)
    trainable, total = lora.count_parameters(model)
    print(json.dumps({"trainable": trainable, "total": total, "step_s": step_s, "peak_mib": peak,
                      "rss_before_mib": rss_before, "val_loss": r.val_loss}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-layer", type=int, default=6)
    ap.add_argument("--n-embd", type=int, default=384)
    ap.add_argument("--block-size", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--child", choices=["full", "lora"], help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        return child(a)
    load_at_start = os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix="lmkit-lora-bench-"))
    make_base(work / "base", a.n_layer, a.n_embd, a.block_size)
    results = {"full": [], "lora": []}
    args = [f"--{k.replace('_', '-')}={getattr(a, k)}" for k in
            ("n_layer", "n_embd", "block_size", "batch_size", "rank", "steps", "threads")]
    for _ in range(a.repeats):
        for kind in ("full", "lora"):  # alternate, so load from other processes hits both alike
            out = subprocess.run([sys.executable, __file__, "--child", kind, "--work", str(work), *args],
                                 capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
            if out.returncode:
                sys.exit(out.stderr[-2000:])
            results[kind].append(json.loads(out.stdout.strip().splitlines()[-1]))
    rows = []
    med = {k: {f: statistics.median(r[f] for r in v) for f in v[0]} for k, v in results.items()}
    for kind, m in med.items():
        rows.append([kind if kind == "full" else f"LoRA r={a.rank}", f"{m['trainable']:,.0f}",
                     f"{100 * m['trainable'] / m['total']:.2f}%", f"{m['peak_mib']:.0f}",
                     f"{m['peak_mib'] - m['rss_before_mib']:.0f}", f"{1000 * m['step_s']:.0f}"])
    ratio = med["lora"]["step_s"] / med["full"]["step_s"]
    report(f"LoRA vs full fine-tuning (GPT {a.n_layer}x{a.n_embd}, block {a.block_size}, batch {a.batch_size}, "
           f"{a.steps} steps, {a.threads} threads)",
           ["method", "trainable params", "of all", "peak RSS MiB", "peak RSS over start MiB", "ms/step (median)"],
           rows, notes=f"LoRA/full step time ratio {ratio:.2f}; medians of {a.repeats} alternating runs each; "
                       f"load average at start {load_at_start:.1f} (shared 2-core machine).")


if __name__ == "__main__":
    main()
