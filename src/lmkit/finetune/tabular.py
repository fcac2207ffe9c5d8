"""Labelled text files for classification: .csv, .tsv or .jsonl, one example per row.

With no field names given, the text column is the first of TEXT_FIELDS present and the label column the
first of LABEL_FIELDS (so GLUE SST-2's `sentence` / `label` are found by themselves).
"""
from __future__ import annotations

import csv
import sys
from dataclasses import dataclass
from pathlib import Path

from ..errors import LmkitError
from .sft_data import read_rows as read_json_rows

TEXT_FIELDS = ("text", "sentence", "review", "content", "document", "sentence1")
LABEL_FIELDS = ("label", "labels", "sentiment", "class", "target", "category")


def read_rows(path: str | Path) -> tuple[list[str], list[dict]]:
    """-> (column names, rows as dicts). Rows are numbered from 1 (the header is row 0) in messages."""
    path = Path(path)
    if not path.is_file():
        raise LmkitError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix == ".jsonl":  # the one JSON-rows reader (sft_data.py), then each row must be an object
        numbered = read_json_rows(path)
        for i, row in numbered:
            if not isinstance(row, dict):
                raise LmkitError(f"{path}: row {i} is not a JSON object")
        rows = [row for _, row in numbered]
        return list(dict.fromkeys(k for r in rows for k in r)), rows
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:  # -sig: a leading BOM is not in the header
            if suffix in (".csv", ".tsv"):
                # SST-2 holds bare quotes inside sentences, so tsv is read without quote handling
                reader = csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ",",
                                        quoting=csv.QUOTE_NONE if suffix == ".tsv" else csv.QUOTE_MINIMAL)
                rows, columns = list(reader), list(reader.fieldnames or [])
                _check_widths(path, rows, columns, suffix)
            else:
                raise LmkitError(f"{path}: unknown file type '{suffix}' (use .csv, .tsv or .jsonl)")
    except UnicodeDecodeError as e:
        raise LmkitError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})")
    if not rows:
        raise LmkitError(f"{path}: no rows")
    return columns, rows


def _check_widths(path: Path, rows: list[dict], columns: list[str], suffix: str) -> None:
    """A row with more fields than the header (an unquoted comma, a tab inside a .tsv text) is refused: its text
    would be cut at the separator without a word."""
    wide = [i for i, row in enumerate(rows, 1) if None in row]  # DictReader keeps the extra fields under None
    if wide:
        fix = ('quote a text that holds a comma: "like, this"' if suffix == ".csv" else
               "a .tsv text cannot hold a tab (use .csv with quotes, or .jsonl)")
        raise LmkitError(f"{path}: row {wide[0]} has {len(columns) + len(rows[wide[0] - 1][None])} fields, the header "
                         f"{len(columns)} ({len(wide)} such row{'s' if len(wide) > 1 else ''}); {fix}")


def pick_field(path, columns: list[str], given: str | None, candidates: tuple[str, ...], what: str) -> str:
    if given:
        if given not in columns:
            raise LmkitError(f"{path}: no {what} field '{given}' (columns: {', '.join(columns)})")
        return given
    for name in candidates:
        if name in columns:
            return name
    raise LmkitError(f"{path}: no {what} column found among {', '.join(columns)} "
                     f"(name it with --{what}-field)")


@dataclass
class Labeled:
    texts: list[str]
    labels: list[str] | None  # as strings, the way the file spells them
    rows: list[int]  # the file row of each text, for messages
    text_field: str
    label_field: str | None


def read_labeled(path, text_field: str | None = None, label_field: str | None = None,
                 need_labels: bool = True) -> Labeled:
    """Rows with an empty text are skipped with a warning; a row without a label is an error."""
    columns, rows = read_rows(path)
    text_field = pick_field(path, columns, text_field, TEXT_FIELDS, "text")
    if need_labels:
        label_field = pick_field(path, columns, label_field, LABEL_FIELDS, "label")
    out = Labeled([], [] if need_labels else None, [], text_field, label_field if need_labels else None)
    empty = []
    for i, row in enumerate(rows, 1):
        text = row.get(text_field)
        text = "" if text is None else str(text).strip()
        if not text:
            empty.append(i)
            continue
        if need_labels:
            label = row.get(label_field)
            if label is None or str(label).strip() == "":
                raise LmkitError(f"{path}: row {i}: empty {label_field!r} field")
            out.labels.append(str(label).strip())
        out.texts.append(text)
        out.rows.append(i)
    if empty:
        shown = ", ".join(map(str, empty[:5])) + (" …" if len(empty) > 5 else "")
        print(f"warning: {path}: skipped {len(empty)} row(s) with an empty {text_field!r} field (rows {shown})",
              file=sys.stderr)
    if not out.texts:
        raise LmkitError(f"{path}: every row has an empty {text_field!r} field")
    return out
