"""Benchmark files as shipped (the layout of ../shared/data), read into plain rows for bench.py.

Each reader returns a `Loaded`: rows (dicts with the fields bench.py's prompts use), and for the
letter-answer sets the few-shot exemplars and readable subject names per subject. A missing file, a row
that is not JSON/CSV, or a missing or malformed field is an LmkitError naming the file, row and field.

    hellaswag    hellaswag_val_full.txt[.bz2]: llama.cpp's 6 lines per item (ctx, label, 4 endings)
    arc-easy     ARC-Easy-Test.jsonl       (AI2's jsonl: question.stem, question.choices, answerKey)
    arc-challenge ARC-Challenge-Test.jsonl
    mmlu         test/<subject>_test.csv, dev/<subject>_dev.csv (no header), subjects.json (optional)
    ceval        val/<subject>_val.csv, dev/<subject>_dev.csv (header), subject_mapping.json (optional)
    cmmlu        test/<subject>.csv, dev/<subject>.csv (header), subjects.json (optional)
    lambada      lambada_test.jsonl        ({"text"})
    piqa         dev.jsonl + dev-labels.lst
    winogrande   dev.jsonl                 ({"sentence", "option1", "option2", "answer"})
    sst2         dev.tsv                   (sentence<TAB>label, header row)
"""
from __future__ import annotations

import bz2
import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import LmkitError

FOLDER = {"hellaswag": "hellaswag", "arc-easy": "arc", "arc-challenge": "arc", "mmlu": "mmlu", "ceval": "ceval",
          "cmmlu": "cmmlu", "lambada": "lambada", "piqa": "piqa", "winogrande": "winogrande", "sst2": "sst2"}
FILE = {"hellaswag": "hellaswag_val_full.txt.bz2", "arc-easy": "ARC-Easy-Test.jsonl",
        "arc-challenge": "ARC-Challenge-Test.jsonl", "lambada": "lambada_test.jsonl", "piqa": "dev.jsonl",
        "winogrande": "dev.jsonl", "sst2": "dev.tsv"}
LETTERS = "ABCD"


@dataclass
class Loaded:
    rows: list[dict]
    source: str  # the file or folder read (or the hub id)
    shots: dict[str, list[dict]] = field(default_factory=dict)  # subject -> exemplars, letter-answer sets
    names: dict[str, str] = field(default_factory=dict)  # subject -> readable name for the prompt header


def locate(bench: str, data: str | Path) -> Path:
    """The file or folder of `bench` under `data`: a folder laid out like ../shared/data, the benchmark's
    own folder, or (for the single-file sets and one MMLU-style subject) the file itself."""
    p = Path(data)
    if not p.exists():
        raise LmkitError(f"{p}: no such file or folder (--data)")
    if p.is_dir() and (p / FOLDER[bench]).is_dir():
        p = p / FOLDER[bench]
    if p.is_dir() and bench in FILE:
        f = p / FILE[bench]
        if bench == "hellaswag" and not f.is_file() and (p / f.stem).is_file():
            f = p / f.stem  # the uncompressed .txt
        if not f.is_file():
            raise LmkitError(f"{f}: missing ({bench} expects {FILE[bench]} in {p})")
        return f
    kinds = {"hellaswag": (".bz2", ".txt"), "sst2": (".tsv",)}.get(bench, (".jsonl",) if bench in FILE else (".csv",))
    if p.is_file() and p.suffix not in kinds:
        like = FILE.get(bench, "a <subject>.csv as shipped")
        raise LmkitError(f"{p}: not a {bench} file (expected {' or '.join(kinds)}, like {like})")
    return p


def read(bench: str, data: str | Path) -> Loaded:
    path = locate(bench, data)
    if bench in ("mmlu", "ceval", "cmmlu"):
        return read_letter(bench, path)
    return Loaded(READERS[bench.split("-")[0]](path), str(path))


# ---- helpers ----------------------------------------------------------------------------------------
def _text(path: Path) -> str:
    try:
        if path.suffix == ".bz2":
            return bz2.open(path, "rt", encoding="utf-8", newline="").read()
        return path.read_text(encoding="utf-8")
    except (OSError, EOFError, UnicodeDecodeError) as e:
        raise LmkitError(f"{path}: cannot be read ({e})")


def _jsonl(path: Path) -> list[dict]:
    rows = []
    for n, line in enumerate(_text(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise LmkitError(f"{path}: row {n}: not valid JSON ({e.msg})")
        if not isinstance(row, dict):
            raise LmkitError(f"{path}: row {n}: expected a JSON object")
        rows.append(row | {"_row": n})
    if not rows:
        raise LmkitError(f"{path}: no rows")
    return rows


def need(path, n, row: dict, key: str, kind=str):
    """row[key], which must be a non-empty `kind`; else an error naming file, row and field."""
    v = row.get(key)
    if not isinstance(v, kind) or (kind is str and not v.strip()):
        what = "missing" if key not in row else f"not a non-empty {kind.__name__} ({v!r:.40})"
        raise LmkitError(f"{path}: row {n}: field '{key}' {what}")
    return v


# ---- one reader per format ------------------------------------------------------------------------
def read_hellaswag(path: Path) -> list[dict]:
    lines = _text(path).split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if len(lines) % 6:
        raise LmkitError(f"{path}: {len(lines)} lines, not a multiple of 6 (context, label, 4 endings per item)")
    rows = []
    for i in range(0, len(lines), 6):
        n = i // 6 + 1
        if not lines[i].strip():
            raise LmkitError(f"{path}: item {n} (line {i + 1}): field 'ctx' is empty")
        if lines[i + 1].strip() not in ("0", "1", "2", "3"):
            raise LmkitError(f"{path}: item {n} (line {i + 2}): field 'label' must be 0-3 (got {lines[i + 1]!r:.20})")
        rows.append({"ctx": lines[i], "label": int(lines[i + 1]), "endings": lines[i + 2:i + 6], "_row": n})
    if not rows:
        raise LmkitError(f"{path}: no items")
    return rows


def read_arc(path: Path) -> list[dict]:
    rows = []
    for r in _jsonl(path):
        n = r["_row"]
        q = need(path, n, r, "question", dict)
        stem = need(path, n, q, "stem") if "stem" in q else need(path, n, r, "question.stem")
        choices = need(path, n, q, "choices", list)
        try:
            labels, texts = [c["label"] for c in choices], [c["text"] for c in choices]
        except (TypeError, KeyError):
            raise LmkitError(f"{path}: row {n}: field 'question.choices' needs objects with 'label' and 'text'")
        key = need(path, n, r, "answerKey")
        if key not in labels:
            raise LmkitError(f"{path}: row {n}: field 'answerKey' {key!r} is none of the labels {labels}")
        rows.append({"id": r.get("id", str(n)), "question": stem, "choices": texts, "gold": labels.index(key),
                     "_row": n})
    return rows


def read_lambada(path: Path) -> list[dict]:
    rows = []
    for r in _jsonl(path):
        text = need(path, r["_row"], r, "text")
        if " " not in text.strip():
            raise LmkitError(f"{path}: row {r['_row']}: field 'text' has no last word to predict")
        rows.append({"text": text, "_row": r["_row"]})
    return rows


def read_piqa(path: Path) -> list[dict]:
    rows = _jsonl(path)
    lab_path = path.with_name(path.stem + "-labels.lst")
    if not lab_path.is_file():
        raise LmkitError(f"{lab_path}: missing (piqa's labels, one 0/1 per line of {path.name})")
    labels = _text(lab_path).split()
    if len(labels) != len(rows):
        raise LmkitError(f"{lab_path}: {len(labels)} labels for {len(rows)} rows of {path.name}")
    for r, (i, lab) in zip(rows, enumerate(labels, 1)):
        for k in ("goal", "sol1", "sol2"):
            need(path, r["_row"], r, k)
        if lab not in ("0", "1"):
            raise LmkitError(f"{lab_path}: row {i}: label must be 0 or 1 (got {lab!r:.20})")
        r["label"] = int(lab)
    return rows


def read_winogrande(path: Path) -> list[dict]:
    rows = _jsonl(path)
    for r in rows:
        n = r["_row"]
        s = need(path, n, r, "sentence")
        if s.count("_") != 1:
            raise LmkitError(f"{path}: row {n}: field 'sentence' must hold exactly one '_' (the blank)")
        need(path, n, r, "option1"), need(path, n, r, "option2")
        if str(r.get("answer")) not in ("1", "2"):
            raise LmkitError(f"{path}: row {n}: field 'answer' must be \"1\" or \"2\" (got {r.get('answer')!r:.20})")
        r["gold"] = int(r["answer"]) - 1
    return rows


def read_sst2(path: Path) -> list[dict]:
    rows = []
    lines = _text(path).splitlines()
    if not lines or lines[0].split("\t")[:2] != ["sentence", "label"]:
        raise LmkitError(f"{path}: row 1: expected the header 'sentence<TAB>label'")
    for n, line in enumerate(lines[1:], 2):
        parts = line.split("\t")
        if len(parts) < 2 or parts[1].strip() not in ("0", "1"):
            raise LmkitError(f"{path}: row {n}: field 'label' must be 0 or 1")
        rows.append({"sentence": parts[0].strip(), "label": int(parts[1]), "_row": n})
    return rows


READERS = {"hellaswag": read_hellaswag, "arc": read_arc, "lambada": read_lambada, "piqa": read_piqa,
           "winogrande": read_winogrande, "sst2": read_sst2}


# ---- MMLU, C-Eval, CMMLU: one CSV per subject ---------------------------------------------------------
SPLITS = {"mmlu": ("test", "dev"), "ceval": ("val", "dev"), "cmmlu": ("test", "dev")}


def _subject(bench: str, f: Path) -> str:
    stem = f.stem
    for suffix in ("_test", "_val", "_dev"):
        if bench != "cmmlu" and stem.endswith(suffix):
            return stem[: -len(suffix)]
    return stem


def read_csv_rows(bench: str, f: Path, subject: str) -> list[dict]:
    try:
        with open(f, encoding="utf-8", newline="") as fh:
            table = list(csv.reader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise LmkitError(f"{f}: cannot be read as CSV ({e})")
    if bench == "mmlu":  # question, A, B, C, D, answer; no header
        cols, start = {"question": 0, "A": 1, "B": 2, "C": 3, "D": 4, "answer": 5}, 0
    else:
        head = [h.strip() for h in table[0]] if table else []
        low = [h.lower() for h in head]
        if "question" not in low or "answer" not in low or not all(x in head for x in LETTERS):
            raise LmkitError(f"{f}: row 1: expected a header with question, A, B, C, D and answer columns")
        cols, start = {k: (low.index(k.lower()) if k in ("question", "answer") else head.index(k))
                       for k in ("question", *LETTERS, "answer")}, 1
    rows = []
    for n, r in enumerate(table[start:], start + 1):
        if not any(c.strip() for c in r):
            continue
        if len(r) <= max(cols.values()):
            raise LmkitError(f"{f}: row {n}: {len(r)} fields, expected at least {max(cols.values()) + 1}")
        answer = r[cols["answer"]].strip()
        if answer not in LETTERS:
            raise LmkitError(f"{f}: row {n}: field 'answer' must be one of A B C D (got {answer!r:.20})")
        rows.append({"question": r[cols["question"]], "choices": [r[cols[k]] for k in LETTERS],
                     "gold": LETTERS.index(answer), "subject": subject, "_row": n})
    return rows


def subject_names(bench: str, folder: Path) -> dict[str, str]:
    """subject -> the name its prompt header uses (MMLU: English with spaces; C-Eval/CMMLU: Chinese)."""
    try:
        if bench == "ceval" and (folder / "subject_mapping.json").is_file():
            m = json.loads((folder / "subject_mapping.json").read_text(encoding="utf-8"))
            return {k: v[1] for k, v in m.items()}
        if bench == "cmmlu" and (folder / "subjects.json").is_file():
            m = json.loads((folder / "subjects.json").read_text(encoding="utf-8"))
            return {k: v["name_zh"] for k, v in m.items()}
    except (ValueError, KeyError, TypeError, IndexError) as e:
        raise LmkitError(f"{folder}: the subject table cannot be read ({e})")
    return {}


def read_letter(bench: str, path: Path) -> Loaded:
    main, dev = SPLITS[bench]
    if path.is_file():  # one subject's file; its exemplars from the sibling dev/ folder when there is one
        files, folder = [path], path.parent.parent
    else:
        folder = path
        files = sorted((path / main).glob("*.csv"))
        if not files:
            raise LmkitError(f"{path / main}: no <subject>.csv files ({bench} expects {main}/ and {dev}/ "
                             f"folders as shipped)")
    loaded = Loaded([], str(path), names=subject_names(bench, folder))
    for f in files:
        subject = _subject(bench, f)
        loaded.rows += read_csv_rows(bench, f, subject)
        d = folder / dev / (f"{subject}.csv" if bench == "cmmlu" else f"{subject}_{dev}.csv")
        loaded.shots[subject] = read_csv_rows(bench, d, subject) if d.is_file() else []
        loaded.names.setdefault(subject, subject.replace("_", " "))
    return loaded
