"""Temporary: the old home of the Hugging Face code, kept only until the CLI and the remaining importers
use lmkit.runs.hf (reading, import-hf) and lmkit.runs.hf_export (export-hf) directly. Delete it then."""
from .runs.hf import import_hf, read_hf, read_hf_tokenizer, resolve_hub  # noqa: F401
from .runs.hf_export import export_format, export_hf  # noqa: F401
