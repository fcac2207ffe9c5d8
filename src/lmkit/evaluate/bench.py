"""`lmkit evaluate RUN --bench hellaswag,arc-easy,mmlu,...`: the standard benchmarks, scored as
lm-evaluation-harness scores them (docs/principles.md, "Benchmarks", has every formula).

Each item becomes (context, continuation) pairs, one per choice; bench_score.py gives each pair its
log-likelihood ll_i = Σ ln p(tokens of continuation i | context). Then
    acc       = [argmax_i ll_i = gold]
    acc_norm  = [argmax_i ll_i / bytes_i = gold]     bytes_i = UTF-8 length of choice i's text
    stderr    = sqrt(Σ (x − x̄)² / (n − 1)) / sqrt(n)  over the items' 0/1 scores
MMLU, C-Eval, CMMLU ask for the answer letter after K solved exemplars of the same subject (default 5);
they report per subject and the macro average over subjects (stderr sqrt(Σ se_s²) / S) beside the micro
average over questions. LAMBADA scores the last word: acc = the word is the greedy continuation,
perplexity = exp(−mean ll).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

from ..errors import LmkitError
from . import bench_data
from .bench_hub import read_hub
from .bench_score import score_pairs

BENCHMARKS = ("hellaswag", "arc-easy", "arc-challenge", "mmlu", "ceval", "cmmlu", "lambada", "piqa", "winogrande",
              "sst2")
LETTER_SETS = ("mmlu", "ceval", "cmmlu")
DEFAULT_SHOTS = 5  # the letter-answer sets; the others are zero-shot, as reported
LETTERS = "ABCD"


@dataclass
class Item:
    pairs: list[tuple[str, str]]  # (context, continuation) per choice
    gold: int
    lengths: list[int]  # UTF-8 bytes of each choice's text, for acc_norm
    row: int
    subject: str = ""


def parse_names(text: str) -> list[str]:
    """'hellaswag,arc-easy' -> the names; an unknown one is an error that lists the known ones."""
    names = [n.strip().lower().replace("_", "-") for n in text.split(",") if n.strip()]
    aliases = {"arc": "arc-easy", "arc-e": "arc-easy", "arc-c": "arc-challenge", "lambada-openai": "lambada"}
    names = [aliases.get(n, n) for n in names]
    bad = [n for n in names if n not in BENCHMARKS]
    if bad or not names:
        raise LmkitError(f"--bench: unknown benchmark '{bad[0] if bad else text}' (known: {', '.join(BENCHMARKS)})")
    return list(dict.fromkeys(names))


# ---- prompts: rows -> items ------------------------------------------------------------------------
def hellaswag_clean(text: str) -> str:
    """lm-evaluation-harness's HellaSwag preprocess: WikiHow's [title]/[step] tags out, single spaces."""
    text = text.strip().replace(" [title]", ". ")
    return re.sub(r"\[.*?\]", "", text).replace("  ", " ")


def choice_item(ctx: str, choices: list[str], gold: int, row: int) -> Item:
    return Item([(ctx, " " + c) for c in choices], gold, [len(c.encode("utf-8")) for c in choices], row)


def letter_prompt(bench: str, name: str, row: dict, shots: list[dict]) -> str:
    def block(r):
        opts = "".join(f"\n{k}. {c}" for k, c in zip(LETTERS, r["choices"]))
        if bench == "mmlu":
            return f"{r['question'].strip()}{opts}\nAnswer:"
        if bench == "ceval":
            return f"{r['question'].strip()}{opts}\n答案："
        return f"题目：{r['question'].strip()}{opts}\n答案是："
    sep = " " if bench == "mmlu" else ""  # hendrycks: "Answer: B"; the Chinese sets: "答案：B"
    head = {"mmlu": f"The following are multiple choice questions (with answers) about {name}.\n\n",
            "ceval": f"以下是中国关于{name}考试的单项选择题，请选出其中的正确答案。\n\n",
            "cmmlu": f"以下是关于{name}的单项选择题，请直接给出正确答案的选项。\n\n"}[bench]
    solved = "".join(f"{block(s)}{sep}{LETTERS[s['gold']]}\n\n" for s in shots)
    return head + solved + block(row)


def build_items(bench: str, loaded: bench_data.Loaded, shots: int) -> list[Item]:
    items = []
    for r in loaded.rows:
        n = r.get("_row", len(items) + 1)
        if bench == "hellaswag":
            items.append(choice_item(hellaswag_clean(r["ctx"]), [hellaswag_clean(e) for e in r["endings"]],
                                     r["label"], n))
        elif bench.startswith("arc"):
            items.append(choice_item(f"Question: {r['question']}\nAnswer:", r["choices"], r["gold"], n))
        elif bench == "piqa":
            items.append(choice_item(f"Question: {r['goal']}\nAnswer:", [r["sol1"], r["sol2"]], r["label"], n))
        elif bench == "sst2":
            items.append(choice_item(f"{r['sentence']}\nQuestion: Is this sentence positive or negative?\nAnswer:",
                                     ["negative", "positive"], r["label"], n))
        elif bench == "winogrande":
            s = r["sentence"]
            i = s.index("_")
            post = s[i + 1:].strip()
            items.append(Item([(s[:i] + r["option1"], " " + post), (s[:i] + r["option2"], " " + post)], r["gold"],
                              [len(post.encode("utf-8"))] * 2, n))
        elif bench == "lambada":
            ctx, word = r["text"].rsplit(" ", 1)
            items.append(Item([(ctx, " " + word)], 0, [len(word.encode("utf-8"))], n))
        else:
            subject = r["subject"]
            prompt = letter_prompt(bench, loaded.names.get(subject, subject), r, loaded.shots.get(subject, [])[:shots])
            sep = " " if bench == "mmlu" else ""
            items.append(Item([(prompt, sep + k) for k in LETTERS], r["gold"], [1] * 4, n, subject))
    return items


# ---- metrics ---------------------------------------------------------------------------------------
def mean_stderr(xs: list[float]) -> tuple[float, float]:
    n = len(xs)
    m = sum(xs) / n
    if n < 2:
        return m, float("nan")
    return m, math.sqrt(sum((x - m) ** 2 for x in xs) / (n - 1) / n)


def argmax(xs):
    return max(range(len(xs)), key=lambda i: xs[i])  # the first of equals, as numpy's argmax


def run_benchmark(lm, bench: str, data: str | None = None, limit: int = 0, shots: int | None = None,
                  batch_size: int = 32, progress: bool = True) -> dict:
    """Score `lm` on one benchmark; returns the report (metrics, per-subject figures, every example)."""
    shots = DEFAULT_SHOTS if shots is None else shots
    if data:
        loaded = bench_data.read(bench, data)
    else:
        loaded = read_hub(bench)
    if limit:  # the letter-answer sets: the first `limit` questions of every subject
        if bench in LETTER_SETS:
            kept, seen = [], {}
            for r in loaded.rows:
                seen[r["subject"]] = seen.get(r["subject"], 0) + 1
                if seen[r["subject"]] <= limit:
                    kept.append(r)
            loaded.rows = kept
        else:
            loaded.rows = loaded.rows[:limit]
    items = build_items(bench, loaded, shots)
    pairs = [p for it in items for p in it.pairs]
    scored = score_pairs(lm, pairs, batch_size=batch_size, progress=progress, desc=bench)
    examples, k = [], 0
    for it in items:
        s = scored[k:k + len(it.pairs)]
        k += len(it.pairs)
        ll = [x.logprob for x in s]
        ex = {"row": it.row, "gold": it.gold, "logprobs": ll, "tokens": [x.tokens for x in s],
              "truncated": any(x.truncated for x in s)}
        if it.subject:
            ex["subject"] = it.subject
        if bench == "lambada":
            ex["acc"] = float(s[0].greedy)
        else:
            ex["pred"] = argmax(ll)
            ex["acc"] = float(ex["pred"] == it.gold)
            if bench not in LETTER_SETS and bench != "winogrande":
                ex["pred_norm"] = argmax([x / max(1, n) for x, n in zip(ll, it.lengths)])
                ex["acc_norm"] = float(ex["pred_norm"] == it.gold)
        examples.append(ex)
    return summarise(bench, loaded.source, examples, [1 / len(it.pairs) for it in items],
                     shots if bench in LETTER_SETS else 0)


def summarise(bench: str, source: str, examples: list[dict], chance: list[float], shots: int) -> dict:
    if not examples:
        raise LmkitError(f"{bench}: no items to score")
    metrics = {}
    for name in ("acc", "acc_norm"):
        if name in examples[0]:
            v, se = mean_stderr([e[name] for e in examples])
            metrics[name] = {"value": v, "stderr": se}
    if bench == "lambada":
        m, se = mean_stderr([e["logprobs"][0] for e in examples])
        ppl = math.exp(-m)
        metrics["perplexity"] = {"value": ppl, "stderr": ppl * se}  # delta method: d exp(−m) = exp(−m) dm
    report = {"bench": bench, "source": source, "items": len(examples), "shots": shots,
              "chance": 0.0 if bench == "lambada" else sum(chance) / len(chance),
              "truncated": sum(e["truncated"] for e in examples), "metrics": metrics}
    if bench in LETTER_SETS:
        subjects: dict[str, list[float]] = {}
        for e in examples:
            subjects.setdefault(e["subject"], []).append(e["acc"])
        per = {s: dict(zip(("acc", "stderr"), mean_stderr(xs)), items=len(xs)) for s, xs in sorted(subjects.items())}
        ses = [p["stderr"] for p in per.values()]  # NaN when a subject has one question: no estimate
        report["subjects"] = per
        report["metrics"]["acc_macro"] = {"value": sum(p["acc"] for p in per.values()) / len(per),
                                          "stderr": math.sqrt(sum(x * x for x in ses)) / len(per)}
    for m in [*report["metrics"].values(), *report.get("subjects", {}).values()]:
        if math.isnan(m["stderr"]):
            m["stderr"] = None  # one item: no estimate (JSON has no NaN)
    report["examples"] = examples
    return report


def format_report(r: dict) -> str:
    lines = [f"{r['bench']}: {r['items']:,} items, {r['shots']}-shot, from {r['source']}"]
    rows = [(m, v["value"], v["stderr"]) for m, v in r["metrics"].items()]
    for name, value, se in rows:
        if name == "perplexity":
            lines.append(f"  {name:<12} {value:>10.3f}   ± " + ("n/a" if se is None else f"{se:.3f}"))
        else:
            lines.append(f"  {name:<12} {100 * value:>9.2f}%   ± " + ("n/a" if se is None else f"{100 * se:.2f}"))
    if r["bench"] != "lambada":
        lines.append(f"  {'chance':<12} {100 * r['chance']:>9.2f}%")
    for s, p in r.get("subjects", {}).items():
        lines.append(f"    {s:<40} {100 * p['acc']:>7.2f}%  (n={p['items']})")
    if r["truncated"]:
        lines.append(f"  {r['truncated']:,} item(s) had a context longer than the model's window: cut from the left")
    return "\n".join(lines)
