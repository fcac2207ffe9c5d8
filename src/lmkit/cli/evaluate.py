"""Commands that measure and show a model: evaluate, explain."""
# Handlers import the library when they run, so that `lmkit --help` and flag errors never load torch.
from __future__ import annotations

import json

from ..errors import LmkitError
from . import flags

MODEL_DIR = "run directory or Hugging Face model folder"


def register(g: flags.Group) -> None:
    p = g.command("evaluate", run_evaluate, "loss, perplexity, bits per byte and next-token accuracy on a text",
                  "Score a model on held-out text: every token predicted once from the tokens before it "
                  "(windows of block_size). With --bench: standard benchmarks (HellaSwag, ARC, MMLU, C-Eval, "
                  "CMMLU, LAMBADA, PIQA, WinoGrande, SST-2), scored as lm-evaluation-harness scores them.")
    p.add_argument("run_dir", help=MODEL_DIR)
    p.add_argument("--data", default=None,
                   help="file, folder, glob, .jsonl or built-in corpus to score; with --bench: a folder laid out "
                        "like ../shared/data (one sub-folder per benchmark), one benchmark's folder or file "
                        "(default: the Hugging Face hub through `datasets`, needs internet)")
    p.add_argument("--bench", default=None, metavar="NAME[,NAME...]",
                   help="benchmarks to run: hellaswag, arc-easy, arc-challenge, mmlu, ceval, cmmlu, lambada, "
                        "piqa, winogrande, sst2 (comma-separated)")
    flags.number(p, "--shots", lo=0, default=None,
                 help="--bench: solved exemplars before each MMLU/C-Eval/CMMLU question (default 5; "
                      "the other benchmarks are zero-shot, as reported)")
    flags.text_field(p)
    flags.number(p, "--max-tokens", lo=1, default=None, help="stop after about this many tokens")
    flags.number(p, "--batch-size", lo=1, default=None,
                 help="windows per forward pass (default 8); --bench: continuations per pass (default 32)")
    flags.renamed(p, "--json", p.add_argument("--out", dest="json_out", default=None, metavar="OUT.json",
                                              help="also write the scores (--task: and every prediction) as JSON"))
    flags.device(p)
    flags.errors(p)
    p.add_argument("--task", choices=["qa", "summarization", "translation"], default=None,
                   help="score generated answers instead of perplexity: qa (exact match, token F1), summarization "
                        "(ROUGE-1/2/L), translation (BLEU, chrF); --data is then a .json/.jsonl of rows")
    flags.number(p, "--limit", lo=0, default=0, help="--task: score only the first N rows; --bench: the first N "
                 "items of each benchmark (of each subject for MMLU/C-Eval/CMMLU) (default all)")
    flags.number(p, "--max-new-tokens", lo=1, default=None, help="--task: longest answer (default per task)")

    p = g.command("explain", run_explain, "an HTML page of surprisal, next-token choices and attention maps",
                  "lmkit explain RUN \"text\" --out page.html   or   lmkit explain --embeddings RUN")
    p.add_argument("run_dir", help=MODEL_DIR)
    p.add_argument("text", nargs="?", default=None, help="the text to look at")
    p.add_argument("--out", default=None, help="output page (default explain.html; embeddings.png with --embeddings)")
    flags.number(p, "--top-k", lo=1, default=10, help="next-token candidates shown per position (default 10)")
    p.add_argument("--embeddings", action="store_true", help="plot the token embeddings (PCA) instead")

    p = g.command("report", run_report, "one HTML page of a training run: curves, samples, data, model, machine",
                  "Write a self-contained HTML page of a run: config, data (sources, tokens, split), model "
                  "(parameters, FLOPs per token, memory), loss curves by step and by tokens, throughput and MFU, "
                  "the samples of each evaluation, the evaluation results in the run directory, the machine and "
                  "wall time per phase. Training writes RUN/report.html at its end too.")
    p.add_argument("run_dir", help="run directory made by lmkit train or lmkit finetune")
    p.add_argument("--out", default=None, help="output page (default RUN/report.html)")
    p.add_argument("--eval", dest="evals", action="append", default=[], metavar="FILE.json",
                   help="also show this evaluation result (lmkit evaluate --json); repeatable")


def run_evaluate(a) -> None:
    from ..io import check_file_target
    out = a.json_out  # written only when asked for
    if a.bench and a.task:
        raise LmkitError("evaluate: give --bench or --task, not both")
    if not a.bench and not a.data:
        raise LmkitError("evaluate: --data is required (or --bench NAME to run a standard benchmark)")
    if a.bench:
        from ..evaluate.bench import parse_names
        names = parse_names(a.bench)  # an unknown name fails before the model loads
    if out:
        check_file_target(out)  # before the work
    if a.bench:
        return _evaluate_bench(a, names)
    if a.task:
        return _evaluate_task(a)
    from ..api import load
    from ..evaluate.lm import evaluate_lm, evaluate_mlm
    lm = load(a.run_dir, device=a.device, purpose="evaluate")
    if lm.config.model.type == "bert":
        s = evaluate_mlm(lm, a.data, a.text_field, a.errors, batch_size=a.batch_size or 8, max_tokens=a.max_tokens)
        rows = [("masked tokens", f"{s.masked_tokens:,}"), ("loss (nats/masked token)", f"{s.loss:.4f}"),
                ("pseudo-perplexity", f"{s.perplexity:.3f}"),
                ("masked top-1 accuracy", f"{100 * s.masked_top1_accuracy:.2f}%"),
                ("masked top-5 accuracy", f"{100 * s.masked_top5_accuracy:.2f}%")]
    else:
        s = evaluate_lm(lm, a.data, a.text_field, a.errors, batch_size=a.batch_size or 8, max_tokens=a.max_tokens)
        rows = [("tokens", f"{s.tokens:,}"), ("bytes", f"{s.bytes:,}"), ("loss (nats/token)", f"{s.loss:.4f}"),
                ("perplexity", f"{s.perplexity:.3f}"), ("bits per byte", f"{s.bits_per_byte:.4f}"),
                ("top-1 accuracy", f"{100 * s.top1_accuracy:.2f}%"),
                ("top-5 accuracy", f"{100 * s.top5_accuracy:.2f}%")]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v:>12}")
    if a.json_out:
        _write_json(a.json_out, {"run": str(a.run_dir), "data": a.data, **s.to_dict()})


def _evaluate_task(a) -> None:
    from ..api import load
    from ..evaluate.tasks import evaluate_task, format_table
    from ..runs import CAUSAL
    lm = load(a.run_dir, device=a.device, families=CAUSAL, purpose=f"evaluate --task {a.task}")
    r = evaluate_task(a.run_dir, a.task, a.data, limit=a.limit, max_new_tokens=a.max_new_tokens,
                      batch_size=a.batch_size or 8, lm=lm)
    print(format_table(r))
    if a.json_out:
        _write_json(a.json_out, r)


def _evaluate_bench(a, names: list[str]) -> None:
    from ..api import load
    from ..evaluate.bench import format_report, run_benchmark
    from ..runs import CAUSAL
    lm = load(a.run_dir, device=a.device, families=CAUSAL, purpose="evaluate --bench")
    reports = []
    for name in names:
        r = run_benchmark(lm, name, a.data, limit=a.limit, shots=a.shots, batch_size=a.batch_size or 32)
        print(format_report(r))
        reports.append(r)
    if a.json_out:
        _write_json(a.json_out, {"run": str(a.run_dir), "benchmarks": reports})


def _write_json(path: str, scores: dict) -> None:
    from ..io import atomic_write_text
    atomic_write_text(path, json.dumps(scores, indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {path}")


def run_explain(a) -> None:
    from ..api import load
    from ..explain import embeddings_png, write_page
    from ..io import check_file_target
    if not a.embeddings and not a.text:
        raise LmkitError("explain: give the text to look at, or --embeddings")
    check_file_target(a.out or ("embeddings.png" if a.embeddings else "explain.html"))
    lm = load(a.run_dir, purpose="explain")
    if a.embeddings:
        print(f"wrote {embeddings_png(lm, a.out or 'embeddings.png')}")
        return
    out = write_page(lm, a.text, a.out or "explain.html", top_k=a.top_k)
    print(f"wrote {out} (and {out.stem}_layer*.png); open it in a browser")


def run_report(a) -> None:
    from ..io import check_file_target
    from ..report import write_report
    if a.out:
        check_file_target(a.out)
    print(f"wrote {write_report(a.run_dir, a.out, a.evals)}; open it in a browser")
