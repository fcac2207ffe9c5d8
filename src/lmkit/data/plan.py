"""From a config's [data] section to a prepared folder: which source(s) it names, the cleaning it asks for,
and whether a folder prepared earlier (a run's <out_dir>/data) still matches it."""
from __future__ import annotations

from pathlib import Path

from .clean import Cleaner
from .mixture import parse_sources
from .shards import build_tokenizer, mixture_key, prepare


def source_of(d):
    """The spec `data`, or the mixture's Sources when [[data.sources]] are given."""
    return parse_sources(d.sources) if d.sources else d.data


def cleaner_of(d) -> Cleaner:
    return Cleaner(d.normalize, d.dedup, d.min_chars)


def matches(meta: dict, d) -> bool:
    """Was this prepared folder made from what `d` asks for (source, weights, line ends, cleaning, caps)?"""
    source = source_of(d)
    key = source if isinstance(source, str) else mixture_key(source)
    cleaning = meta.get("cleaning", {})
    return (meta.get("source") == key and meta.get("normalize_newlines", True) == d.normalize_newlines
            and cleaning.get("normalize", []) == list(d.normalize) and cleaning.get("dedup", "none") == d.dedup
            and cleaning.get("min_chars", 0) == d.min_chars and meta.get("max_tokens", 0) == d.max_tokens
            and meta.get("complete", True))


def prepare_config(d, data_dir: Path, progress: bool = True) -> dict:
    """Train (or load) the tokenizer and prepare the corpus `d` names into data_dir (replacing it)."""
    source, cleaner = source_of(d), cleaner_of(d)
    tok = build_tokenizer(d.tokenizer, source, d.text_field, d.errors, d.vocab_size, progress, d.normalize_newlines,
                          cleaner, d.streaming)
    return prepare(source, data_dir, tok, d.val_fraction, d.text_field, d.errors, overwrite=True, progress=progress,
                   normalize_newlines=d.normalize_newlines, cleaner=cleaner, streaming=d.streaming,
                   max_tokens=d.max_tokens)
