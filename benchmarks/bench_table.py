"""Every benchmark of `lmkit evaluate --bench` for lmkit's own small models, beside an untrained model of the
same shape, chance, and the published figures the data's SOURCE.md files give (RESULTS.md table).

    flock -s /tmp/lmkit-bench.lock python benchmarks/bench_table.py --run char=runs/shakespeare_char \\
        --run bpe=runs/tinystories_bpe [--limit 200] [--subject-limit 2]

Each --run gets an untrained twin, a fresh initialisation (seed 0) of its config with its tokenizer, so the
two share a vocabulary: where the trained model beats it (LAMBADA perplexity above all) the
scorer separates training from none even while every accuracy sits near chance.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import report  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
PUBLISHED = {  # from the SOURCE.md of each folder of ../shared/data
    "hellaswag": "GPT-2 124M 28.92 / 31.14 (harness)",
    "arc-easy": "OPT-125M 43.52 / 39.98 (harness)",
    "arc-challenge": "OPT-125M 18.94 / 22.78 (harness)",
    "mmlu": "GPT-2 124M 25.57 (llm.c, 0-shot); GPT-3 175B 43.9 (few-shot)",
    "ceval": "Chinese-LLaMA-13B 33.1, GPT-4 69.9 (5-shot, val)",
    "cmmlu": "Chinese-LLaMA-13B 32.63, GPT4 70.95 (5-shot)",
    "lambada": "OPT-125M acc 37.90, ppl 26.02 (harness)",
    "piqa": "OPT-125M 63.00 / 62.02 (harness)",
    "winogrande": "OPT-125M 50.28 (harness)",
    "sst2": "majority class 50.9",
}


def cell(r: dict) -> str:
    m = r["metrics"]
    if r["bench"] == "lambada":
        lls = [e["logprobs"][0] for e in r["examples"]]
        mean = sum(lls) / len(lls)
        se = (sum((x - mean) ** 2 for x in lls) / (len(lls) - 1) / len(lls)) ** 0.5
        return f"{100 * m['acc']['value']:.1f} / ppl {m['perplexity']['value']:.3g} (ll {mean:.2f} ± {se:.2f})"
    if "acc_macro" in m:
        se = m["acc_macro"]["stderr"]
        return f"{100 * m['acc_macro']['value']:.1f} ± " + ("n/a" if se is None else f"{100 * se:.1f}")
    s = f"{100 * m['acc']['value']:.1f}"
    if "acc_norm" in m:
        s += f" / {100 * m['acc_norm']['value']:.1f}"
    return s + f" ± {100 * m['acc']['stderr']:.1f}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", action="append", required=True, metavar="NAME=DIR")
    ap.add_argument("--limit", type=int, default=200, help="items per benchmark")
    ap.add_argument("--subject-limit", type=int, default=2, help="items per subject, MMLU/C-Eval/CMMLU")
    ap.add_argument("--json", default=None, help="also write every report here")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: least waste on a shared machine)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import lmkit
    from lmkit.api import LM
    from lmkit.evaluate.bench import BENCHMARKS, LETTER_SETS, run_benchmark
    from lmkit.models import build_model

    models = {}
    for spec in args.run:
        name, path = spec.split("=", 1)
        models[name] = lmkit.load(path)
    for name, trained in list(models.items()):  # the same shape and tokenizer, fresh weights
        torch.manual_seed(0)
        models[f"untrained {name}"] = LM(build_model(trained.config.model).eval(), trained.tokenizer, trained.config)
    rows, reports, truncated = [], {}, {}
    t0 = time.time()
    for bench in BENCHMARKS:
        limit = args.subject_limit if bench in LETTER_SETS else args.limit
        line, chance, items = [], None, None
        for name, lm in models.items():
            r = run_benchmark(lm, bench, str(DATA), limit=limit, progress=False)
            reports.setdefault(name, []).append(r)
            line.append(cell(r))
            chance, items = r["chance"], r["items"]
            truncated.setdefault(bench, []).append(f"{name} {r['truncated']}")
            print(f"{bench:<14} {name:<10} {cell(r)}  ({r['truncated']} truncated)", flush=True)
        rows.append([bench, f"{items:,}", "—" if bench == "lambada" else f"{100 * chance:.1f}", *line,
                     PUBLISHED[bench]])
    if args.json:
        Path(args.json).write_text(json.dumps(reports, indent=1, ensure_ascii=False))
    desc = "; ".join(f"{n}: {m.config.model.type} {m.config.model.n_layer}x{m.config.model.n_embd}, block "
                     f"{m.config.model.block_size}, {m.tokenizer.kind} vocab {m.tokenizer.vocab_size}"
                     for n, m in models.items())
    notes = (f"acc / acc_norm in % ± stderr of acc (MMLU, C-Eval, CMMLU: macro average over subjects, "
             f"{args.subject_limit} questions per subject, 5-shot; LAMBADA: last-word acc and per-word "
             f"perplexity, and in brackets the mean log-likelihood of the last word in nats ± its stderr). Items per benchmark: the first {args.limit} (every subject's first "
             f"{args.subject_limit}). Models: {desc}. Contexts cut from the left to fit the window: "
             + "; ".join(f"{b} ({', '.join(t)})" for b, t in truncated.items())
             + f". Wall time {time.time() - t0:.0f} s, with other work on the machine (shared lock).")
    report("Standard benchmarks for lmkit's own small models (lmkit evaluate --bench)",
           ["benchmark", "items", "chance %", *models, "published (SOURCE.md)"], rows, notes)
    print(notes)


if __name__ == "__main__":
    main()
