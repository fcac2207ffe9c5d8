"""Data for the worked fine-tuning examples, from ../shared/data (nothing is downloaded or copied into the repo).

    python examples/sft/prepare.py --out runs/sft_data

writes into --out:
    pretrain.jsonl        text for a small base model: Alpaca instructions and outputs (EN + ZH), the XSum
                          training articles, the cmn-eng training sentences (no evaluation row appears in it)
    chat.jsonl            Alpaca EN + ZH instruction rows (alpaca_demo), shuffled
    summarize_train.jsonl XSum rows as conversations (the prompt of evaluate/tasks.py, article cut to
                          --summary-doc-words words), summarize_eval.jsonl the last 100 as {"document", "summary"}
    translate_train.jsonl cmn-eng English -> Chinese pairs as conversations, translate_eval.jsonl held-out
                          pairs as {"source", "target", "target_lang"}
The training conversations are built by `lmkit.evaluate.tasks.task_messages`, the same prompt
`lmkit evaluate --task` asks with, so fine-tuning and evaluation agree.
"""
from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from lmkit.evaluate.tasks import task_messages

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"


def conversation(task: str, row: dict) -> dict:
    msgs, refs = task_messages(task, row)
    return {"messages": [{"role": r, "content": c} for r, c in msgs] + [{"role": "assistant", "content": refs[0]}]}


def write_jsonl(path: Path, rows) -> int:
    rows = list(rows)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return len(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/sft_data")
    ap.add_argument("--data", default=str(SHARED), help="the shared data folder")
    ap.add_argument("--doc-words", type=int, default=120, help="XSum articles in pretrain.jsonl: the first N words")
    ap.add_argument("--summary-doc-words", type=int, default=50,
                    help="XSum articles to summarise: the first N words (article + summary fit 192 tokens)")
    ap.add_argument("--pairs", type=int, default=6000, help="cmn-eng training pairs")
    ap.add_argument("--eval-pairs", type=int, default=200, help="cmn-eng held-out pairs")
    a = ap.parse_args()
    out, data = Path(a.out), Path(a.data)
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)

    alpaca = [r for f in ("alpaca_en_demo.json", "alpaca_zh_demo.json")
              for r in json.loads((data / "alpaca_demo" / f).read_text(encoding="utf-8"))]
    rng.shuffle(alpaca)
    n_chat = write_jsonl(out / "chat.jsonl", alpaca)

    xsum = [json.loads(l) for l in (data / "xsum_sample" / "test.jsonl").read_text(encoding="utf-8").splitlines() if l]
    xsum = [r for r in xsum if r["document"].strip() and r["summary"].strip()]  # a few rows have no article
    for r in xsum:
        r["document"] = " ".join(r["document"].split()[:a.doc_words])
    xs_train, xs_eval = xsum[:-100], xsum[-100:]
    cut = lambda r: {"document": " ".join(r["document"].split()[:a.summary_doc_words]), "summary": r["summary"]}  # noqa: E731
    write_jsonl(out / "summarize_train.jsonl", (conversation("summarization", cut(r)) for r in xs_train))
    write_jsonl(out / "summarize_eval.jsonl", (cut(r) for r in xs_eval))

    lines = (data / "cmn_eng" / "cmn.txt").read_text(encoding="utf-8-sig").split("\n")
    pairs = [l.split("\t")[:2] for l in lines if l]
    rng.shuffle(pairs)  # the file is sorted by length
    tr_eval, tr_train = pairs[:a.eval_pairs], pairs[a.eval_pairs:a.eval_pairs + a.pairs]
    row = lambda en, zh: {"source": en, "target": zh, "target_lang": "Chinese"}  # noqa: E731
    write_jsonl(out / "translate_train.jsonl", (conversation("translation", row(en, zh)) for en, zh in tr_train))
    write_jsonl(out / "translate_eval.jsonl", (row(en, zh) for en, zh in tr_eval))

    text = [f"{r['instruction']}\n{r['input']}\n{r['output']}" for r in alpaca]
    text += [f"{r['document']}\n{r['summary']}" for r in xs_train]
    text += [f"{en}\n{zh}" for en, zh in pairs[a.eval_pairs:]]
    rng.shuffle(text)
    write_jsonl(out / "pretrain.jsonl", ({"text": t} for t in text))
    print(f"{out}: {n_chat} chat rows, {len(xs_train)}/{len(xs_eval)} XSum train/eval, "
          f"{len(tr_train)}/{len(tr_eval)} cmn-eng train/eval, pretrain.jsonl {sum(map(len, text)):,} characters")


if __name__ == "__main__":
    main()
