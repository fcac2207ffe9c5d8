"""Hugging Face `datasets` as a source: hub datasets and local parquet / arrow / csv files.

    hf:NAME                   split "train" of the hub dataset NAME (e.g. hf:roneneldan/TinyStories)
    hf:NAME:SPLIT             SPLIT when it is a split name (train, validation, valid, test, dev, or a slice
                              such as train[:10%]); otherwise the second part names a CONFIG
    hf:NAME:CONFIG:SPLIT      both (CONFIG may be empty: hf:NAME::test)
    data.parquet, x.arrow, rows.csv, a folder written by Dataset.save_to_disk
                              local files, read through `datasets` without copying them into its cache

Rows are read in batches of ROWS_PER_BATCH, only the text column decoded; each row is one document named
`SOURCE#ROW`. With `streaming` a hub dataset is read as it downloads (IterableDataset), for corpora larger
than the disk or memory; local files are always read that way. A stream that fails part-way raises
`StreamBroken`, which says how many rows arrived, so that `prepare` can keep them and continue later.
`datasets` is imported only when such a source is read.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator

from ..errors import LmkitError

DATASET_SUFFIXES = {".parquet": "parquet", ".arrow": "arrow", ".csv": "csv"}
SPLIT_NAMES = ("train", "validation", "valid", "test", "dev")
ROWS_PER_BATCH = 1000


class StreamBroken(LmkitError):
    """A source that stopped part-way (e.g. the network went): `rows` rows of it were read before."""

    def __init__(self, spec: str, rows: int, cause: BaseException):
        self.spec, self.rows, self.cause = spec, rows, cause
        super().__init__(f"{spec}: the stream broke after {rows:,} rows ({_reason(cause)})")


def is_hub(spec: str) -> bool:
    return spec.startswith("hf:")


def is_saved_dataset(path: Path) -> bool:
    """A folder written by `Dataset.save_to_disk` (one split)."""
    return path.is_dir() and (path / "state.json").is_file() and (path / "dataset_info.json").is_file()


def parse(spec: str) -> tuple[str, str | None, str]:
    """'hf:NAME[:CONFIG][:SPLIT]' -> (name, config or None, split)."""
    parts = re.split(r":(?![^\[]*\])", spec[3:])  # a slice's colon (train[:10%]) does not separate
    if not parts[0] or len(parts) > 3:
        raise LmkitError(f"{spec}: expected hf:NAME, hf:NAME:SPLIT or hf:NAME:CONFIG:SPLIT")
    name, config, split = parts[0], None, "train"
    if len(parts) == 2:
        if parts[1].split("[")[0] in SPLIT_NAMES:
            split = parts[1]
        else:
            config = parts[1] or None
    elif len(parts) == 3:
        config, split = parts[1] or None, parts[2] or "train"
    return name, config, split


def iter_hub(spec: str, text_field: str, streaming: bool = False, skip: int = 0) -> Iterator[tuple[str, str]]:
    import datasets
    import huggingface_hub
    name, config, split = parse(spec)
    datasets.logging.set_verbosity_error()  # their retry chatter; what fails comes back as one line below
    huggingface_hub.utils.logging.set_verbosity_error()
    try:
        ds = datasets.load_dataset(name, config, split=split, streaming=streaming)
    except Exception as e:  # datasets raises many types (not found, no such split / config, offline, network)
        raise LmkitError(f"{spec}: {_load_reason(e, name, config, split)}") from None
    yield from _rows(ds, spec, text_field, skip)


def iter_local(path: Path, text_field: str, skip: int = 0) -> Iterator[tuple[str, str]]:
    import datasets
    try:
        if is_saved_dataset(path):
            ds = datasets.load_from_disk(str(path))
        else:
            builder = DATASET_SUFFIXES[path.suffix]
            ds = datasets.load_dataset(builder, data_files=[str(path)], split="train", streaming=True)
    except Exception as e:
        raise LmkitError(f"{path}: cannot read it as a {path.suffix or 'saved'} dataset ({_reason(e)})") from None
    if isinstance(ds, datasets.DatasetDict):
        raise LmkitError(f"{path}: holds the splits {', '.join(ds)}; name one of their folders")
    yield from _rows(ds, str(path), text_field, skip)


def _rows(ds, spec: str, field: str, skip: int) -> Iterator[tuple[str, str]]:
    columns = ds.column_names  # None for a stream whose features are not known before the first row
    if columns is not None:
        if field not in columns:
            raise LmkitError(f"{spec}: no field '{field}' (fields: {', '.join(columns)}; set --text-field / "
                             "text_field)")
        if len(columns) > 1:
            ds = ds.select_columns([field])
    if skip:
        ds = ds.skip(skip)
    batches, row = ds.iter(batch_size=ROWS_PER_BATCH), skip
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except Exception as e:  # a download that fails part-way: what came so far stays usable
            raise StreamBroken(spec, row, e) from None
        if field not in batch:
            raise LmkitError(f"{spec}: no field '{field}' (fields: {', '.join(batch)}; set --text-field / "
                             "text_field)")
        for value in batch[field]:
            text = _text(value, spec, row, field)
            if text:
                yield f"{spec}#{row}", text
            row += 1


def _text(value, spec: str, row: int, field: str) -> str:
    if value is None or isinstance(value, str):
        return value or ""
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return "\n".join(value)
    raise LmkitError(f"{spec}#{row}: field '{field}' is not a string or a list of strings")


def _reason(e: BaseException) -> str:
    first = (str(e).strip().splitlines() or [""])[0]
    return f"{type(e).__name__}: {first}" if first else type(e).__name__


def _load_reason(e: BaseException, name: str, config: str | None, split: str) -> str:
    text, kind = str(e), type(e).__name__
    if kind in ("DatasetNotFoundError", "FileNotFoundDatasetsError", "DataFilesNotFoundError", "RepositoryNotFoundError"):
        return (f"no dataset '{name}' found on the Hugging Face hub (check the name; private or gated ones need "
                f"HF_TOKEN; offline, only datasets already in the cache load)")
    if "Unknown split" in text or "split" in text.lower() and "should be one of" in text.lower():
        return f"no split '{split}' ({_reason(e).split(': ', 1)[-1]})"
    if "BuilderConfig" in text or "Config name is missing" in text or "config" in text.lower() and "available" in text.lower():
        return (f"no config '{config}' ({_reason(e)})" if config
                else f"name a config: hf:{name}:CONFIG:{split} ({_reason(e)})")
    if isinstance(e, (ConnectionError, TimeoutError, OSError)):
        return f"cannot reach the Hugging Face hub ({_reason(e)})"
    return f"cannot load it ({_reason(e)})"
