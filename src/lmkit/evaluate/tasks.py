"""`lmkit evaluate RUN --task {qa,summarization,translation} --data FILE`: generate an answer for every row
(greedy, through the run's chat template) and score it with the field's metrics.

    qa             exact match and token F1 after SQuAD's normalisation (lower case, no punctuation, no
                   articles a/an/the, single spaces); F1 = 2PR / (P + R) over the bag of tokens shared with
                   the reference; with several references, the best one counts. Chinese characters count
                   as one token each.
    summarization  ROUGE-1, ROUGE-2 (n-gram overlap) and ROUGE-L (longest common subsequence), F1 × 100,
                   Google's `rouge-score` with Porter stemming, averaged over rows.
    translation    corpus BLEU (`sacrebleu`; its "zh" tokenizer when the references are Chinese, else
                   "13a") and chrF (character n-gram F-score).

Rows (.json array or .jsonl): qa {"question", "context" (optional), "answers" (a string, a list, or
SQuAD's {"text": [...]})}; summarization {"document", "summary"}; translation {"source", "target",
"target_lang" (optional)}; or any task as {"messages": [..., {"role": "assistant", "content": reference}]}.
`task_messages` is also what the worked examples fine-tune on, so training and evaluation prompts agree.
"""
from __future__ import annotations

import re
import string
import sys
from collections import Counter

from tqdm.auto import tqdm

from ..api import load
from ..chat import check_messages
from ..errors import LmkitError
from ..finetune.sft_data import read_rows, warn
from ..runs import CAUSAL
from .lm import check_counts

TASKS = ("qa", "summarization", "translation")
MAX_NEW_TOKENS = {"qa": 32, "summarization": 64, "translation": 64}
LONG_FIELD = {"qa": "context", "summarization": "document", "translation": "source"}  # cut to fit the context
CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u3000-\u303f\uff00-\uffef]")


# ---- prompts ---------------------------------------------------------------------------------------
def task_messages(task: str, row: dict, long_text: str | None = None) -> tuple[list[tuple[str, str]], list[str]]:
    """A data row -> (the conversation that asks for the answer, the reference answers).
    `long_text` replaces the row's long field (the context, document or source) when it had to be cut."""
    if "messages" in row:
        msgs = check_messages(row["messages"])
        if msgs[-1][0] != "assistant":
            raise LmkitError("messages: the last turn must be the assistant's reference answer")
        return msgs[:-1], [msgs[-1][1]]
    need = {"qa": ("question", "answers"), "summarization": ("document", "summary"),
            "translation": ("source", "target")}[task]
    if task == "qa" and "answers" not in row and "answer" in row:
        row = {**row, "answers": row["answer"]}
    missing = [k for k in need if not row.get(k)]
    if missing:
        raise LmkitError(f"missing or empty '{missing[0]}' (a {task} row has {', '.join(need)})")
    text = long_text if long_text is not None else row.get(LONG_FIELD[task], "")
    if task == "qa":
        answers = row["answers"]
        answers = answers.get("text", []) if isinstance(answers, dict) else answers
        answers = [answers] if isinstance(answers, str) else [str(a) for a in answers]
        user = (f"Answer the question with a short phrase from the text.\n\n{text}\n\nQuestion: {row['question']}"
                if row.get("context") else f"Answer the question briefly.\n\nQuestion: {row['question']}")
        return [("user", user)], answers
    if task == "summarization":
        return [("user", f"Summarize the article in one sentence.\n\n{text}")], [row["summary"]]
    lang = row.get("target_lang")
    return [("user", f"Translate into {lang}.\n\n{text}" if lang else f"Translate.\n\n{text}")], [row["target"]]


def fit_prompt(lm, task: str, row: dict, max_new_tokens: int) -> tuple[str, tuple[str, ...], list[str], bool]:
    """The prompt for `row` in the run's chat template, its long field cut (by tokens) so that the prompt
    and the answer fit the context. -> (prompt, stop strings, references, whether it was cut)."""
    msgs, refs = task_messages(task, row)
    text, stops = lm.chat_prompt(msgs)
    block = lm.model.config.block_size
    if len(lm.encode_prompt(text)) + max_new_tokens <= block or "messages" in row:
        return text, stops, refs, False
    overhead = len(lm.encode_prompt(lm.chat_prompt(task_messages(task, row, "")[0])[0]))
    budget = block - max_new_tokens - overhead
    if budget < 1:
        raise LmkitError(f"the {task} prompt alone leaves no room in the model's context ({block} tokens) "
                         f"for a {max_new_tokens}-token answer")
    ids = lm.tokenizer.encode(row[LONG_FIELD[task]])[:budget]
    msgs, _ = task_messages(task, row, lm.tokenizer.decode(ids))
    text, stops = lm.chat_prompt(msgs)
    return text, stops, refs, True


# ---- metrics ---------------------------------------------------------------------------------------
def normalize_answer(s: str) -> str:
    """SQuAD v1.1: lower case, drop punctuation, drop the articles a/an/the, collapse whitespace."""
    s = "".join(ch for ch in s.lower() if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def answer_tokens(s: str) -> list[str]:
    """Normalised tokens: words split on whitespace, every Chinese character its own token."""
    return CJK.sub(lambda m: f" {m.group(0)} ", normalize_answer(s)).split()


def exact_match(prediction: str, references: list[str]) -> float:
    return float(max(normalize_answer(prediction) == normalize_answer(r) for r in references))


def token_f1(prediction: str, references: list[str]) -> float:
    def f1(p: list[str], r: list[str]) -> float:
        common = sum((Counter(p) & Counter(r)).values())
        if not p or not r:
            return float(p == r)
        if common == 0:
            return 0.0
        precision, recall = common / len(p), common / len(r)
        return 2 * precision * recall / (precision + recall)
    return max(f1(answer_tokens(prediction), answer_tokens(r)) for r in references)


class _CharTokenizer:
    """rouge-score's default tokenizer keeps only [a-z0-9]; for Chinese, characters and words instead."""
    def tokenize(self, text: str) -> list[str]:
        return CJK.sub(lambda m: f" {m.group(0)} ", text.lower()).split()


def _import(name: str, package: str):
    try:
        return __import__(name, fromlist=["_"])
    except ImportError:
        raise LmkitError(f"this metric needs the '{package}' package (pip install -e \".[tasks]\")")


def rouge(predictions: list[str], references: list[str]) -> dict:
    """Mean ROUGE-1/2/L F1 × 100 (rouge-score, Porter stemmer; Chinese text split into characters)."""
    rouge_scorer = _import("rouge_score.rouge_scorer", "rouge-score")
    chinese = any(CJK.search(r) for r in references)
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=not chinese,
                                      tokenizer=_CharTokenizer() if chinese else None)
    sums = Counter()
    for p, r in zip(predictions, references):
        for k, s in scorer.score(r, p).items():  # score(target, prediction)
            sums[k] += s.fmeasure
    return {k: 100 * sums[k] / max(1, len(predictions)) for k in ("rouge1", "rouge2", "rougeL")}


def bleu_chrf(predictions: list[str], references: list[str]) -> dict:
    """Corpus BLEU and chrF (sacrebleu); the zh tokenizer for Chinese references."""
    sacrebleu = _import("sacrebleu", "sacrebleu")
    tokenize = "zh" if any(CJK.search(r) for r in references) else "13a"
    return {"bleu": sacrebleu.corpus_bleu(predictions, [references], tokenize=tokenize).score,
            "chrf": sacrebleu.corpus_chrf(predictions, [references]).score, "bleu_tokenize": tokenize}


def score(task: str, predictions: list[str], references: list[list[str]]) -> dict:
    if task == "qa":
        n = max(1, len(predictions))
        return {"exact_match": 100 * sum(exact_match(p, r) for p, r in zip(predictions, references)) / n,
                "f1": 100 * sum(token_f1(p, r) for p, r in zip(predictions, references)) / n}
    first = [r[0] for r in references]
    return rouge(predictions, first) if task == "summarization" else bleu_chrf(predictions, first)


# ---- the command -----------------------------------------------------------------------------------
def evaluate_task(run: str, task: str, data: str, limit: int = 0, max_new_tokens: int | None = None,
                  batch_size: int = 8, progress: bool = True, lm=None) -> dict:
    """Answer every row of `data` with the model (greedy) and score the answers; returns the metrics, the
    settings and every prediction with its references."""
    if task not in TASKS:
        raise LmkitError(f"--task must be one of {', '.join(TASKS)} (got {task!r})")
    check_counts(batch_size=batch_size, max_new_tokens=max_new_tokens)
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        raise LmkitError(f"limit must be an integer >= 0 (got {limit!r})")
    lm = lm or load(run, families=CAUSAL, purpose=f"evaluate --task {task}")
    max_new = max_new_tokens or MAX_NEW_TOKENS[task]
    rows = read_rows(data)[:limit or None]
    prompts, bad, cut = [], [], 0
    for n, row in rows:
        try:
            if not isinstance(row, dict):
                raise LmkitError("not a JSON object")
            text, stops, refs, was_cut = fit_prompt(lm, task, row, max_new)
        except LmkitError as e:
            bad.append(f"row {n}: {e}")
            continue
        if len(lm.encode_prompt(text)) >= lm.model.config.block_size:
            bad.append(f"row {n}: the conversation is longer than the model's context")
            continue
        prompts.append((n, text, stops, refs))
        cut += was_cut
    if bad:
        warn(f"{data}: skipped {len(bad)} of {len(rows)} rows: " + "; ".join(bad[:5]))
    if not prompts:
        raise LmkitError(f"{data}: no usable {task} rows" + (f" (first problem: {bad[0]})" if bad else ""))
    if cut:
        warn(f"{data}: cut the {LONG_FIELD[task]} of {cut} rows to fit the model's context "
             f"({lm.model.config.block_size} tokens with {max_new} for the answer)")
    predictions = []
    bar = tqdm(total=len(prompts), desc=f"{task}", unit="row", disable=not progress, file=sys.stderr)
    for i in range(0, len(prompts), batch_size):
        chunk = prompts[i:i + batch_size]
        stops = tuple(dict.fromkeys(s for _, _, st, _ in chunk for s in st))
        outs = lm.generate([t for _, t, _, _ in chunk], max_new_tokens=max_new, temperature=0, stop=stops)
        predictions += [o.strip() for o in outs]
        bar.update(len(chunk))
    bar.close()
    references = [refs for *_, refs in prompts]
    metrics = score(task, predictions, references)
    return {"run": str(run), "task": task, "data": str(data), "rows": len(prompts), "skipped": len(bad),
            "cut": cut, "max_new_tokens": max_new, "chat_template": "run" if lm.chat_template.special else "plain",
            "metrics": metrics,
            "predictions": [{"row": n, "prediction": p, "references": refs}
                            for (n, _, _, refs), p in zip(prompts, predictions)]}


def format_table(r: dict) -> str:
    names = {"exact_match": "exact match", "f1": "token F1", "rouge1": "ROUGE-1", "rouge2": "ROUGE-2",
             "rougeL": "ROUGE-L", "bleu": "BLEU", "chrf": "chrF"}
    lines = [f"{r['task']} on {r['data']}: {r['rows']} rows ({r['chat_template']} chat template)"]
    for k, v in r["metrics"].items():
        if k in names:
            lines.append(f"  {names[k]:<12} {v:8.2f}")
    if "bleu_tokenize" in r["metrics"]:
        lines.append(f"  (BLEU tokenizer: {r['metrics']['bleu_tokenize']})")
    return "\n".join(lines)
