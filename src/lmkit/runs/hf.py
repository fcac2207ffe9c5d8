"""Hugging Face model folders (kind "hf"): read one as a Run, download `hf:<id>`, import one as a native run.

    config.json           model_type gpt2, llama or bert; translated by models/gpt_hf.py, models/bert_hf.py
    model.safetensors     the weights (or model-*.safetensors shards with model.safetensors.index.json, or
                          pytorch_model.bin, read with torch.load(weights_only=True): never unpickled)
    tokenizer.json        the tokenizer (or GPT-2's vocab.json + merges.txt, or BERT's vocab.txt)

The weights are renamed by the family's table (models/hf_names.py); nothing is approximated. Export, the
other direction, is in hf_export.py.
"""
from __future__ import annotations

import dataclasses
import json
import pickle
from pathlib import Path

import torch
from safetensors.torch import load_file

from ..chat import load_template
from ..config import Config
from ..errors import LmkitError
from ..models import bert_hf, build_model, gpt_hf
from ..models.classifier import Classifier
from ..models.hf_names import from_hf
from ..tokenizer import Tokenizer
from .classifier import save_classifier
from .detect import detect, read_json, refusal
from .native import check_fit, fit_weights, save_native
from .record import Run
from .target import check_target, clear, holds_files

SUPPORTED = ("gpt2", "llama", "bert")


# ---- the three parts of a folder --------------------------------------------------------------------
def weights_file(path: Path) -> Path:
    """The file the weights are read from (named in messages)."""
    for name in ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin"):
        if (path / name).is_file():
            return path / name
    raise LmkitError(f"{path}: no model.safetensors, model.safetensors.index.json or pytorch_model.bin")


def read_hf_weights(path: Path) -> dict[str, torch.Tensor]:
    """model.safetensors, sharded model-*.safetensors with an index, or pytorch_model.bin (weights only)."""
    file = weights_file(path)
    try:
        if file.name == "model.safetensors":
            return load_file(str(file))
        if file.suffix == ".json":
            out = {}
            for shard in sorted(set(json.loads(file.read_text())["weight_map"].values())):
                out.update(load_file(str(path / shard)))
            return out
        try:
            return torch.load(file, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            raise LmkitError(
                f"{file}: holds more than tensors, and lmkit never unpickles a file it is handed; if you trust it, "
                "convert it once to safetensors, e.g. with transformers: AutoModel.from_pretrained(DIR)"
                ".save_pretrained(DIR, safe_serialization=True)") from None
    except LmkitError:
        raise
    except Exception as e:  # safetensors / torch raise several types on damaged files
        raise LmkitError(f"{path}: cannot read the weights ({str(e).splitlines()[0][:160]})")


def read_hf_tokenizer(path: Path) -> Tokenizer:
    """tokenizer.json, GPT-2's vocab.json + merges.txt, or BERT's vocab.txt."""
    if (path / "tokenizer.json").is_file():
        return Tokenizer.load(path / "tokenizer.json")
    if (path / "vocab.txt").is_file():
        return Tokenizer.load(path / "vocab.txt")
    if (path / "vocab.json").is_file() and (path / "merges.txt").is_file():
        from tokenizers import Tokenizer as HFTokenizer, decoders, models, pre_tokenizers
        hf = HFTokenizer(models.BPE.from_file(str(path / "vocab.json"), str(path / "merges.txt")))
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        hf.decoder = decoders.ByteLevel()
        if hf.token_to_id("<|endoftext|>") is not None:
            hf.add_special_tokens(["<|endoftext|>"])
        return Tokenizer(hf)
    raise LmkitError(f"{path}: no tokenizer.json, vocab.json + merges.txt, or vocab.txt")


def hf_config(path: Path) -> tuple[dict, Config]:
    """(the raw config.json, the lmkit Config it describes); unsupported options refused, naming them."""
    where = str(path / "config.json")
    hc = read_json(path / "config.json")
    kind = hc.get("model_type")
    if kind not in SUPPORTED:
        raise LmkitError(f"{where}: model_type '{kind}' is not supported (supported: {', '.join(SUPPORTED)})")
    try:
        model = bert_hf.config_from_hf(hc, where) if kind == "bert" else gpt_hf.config_from_hf(hc, where)
    except KeyError as e:
        raise LmkitError(f"{where}: no {e} (a {kind} config.json names it)")
    cfg = Config(model=model)
    cfg.train.dtype = "float32"
    if kind == "bert":
        cfg.train.objective = "mlm"
    return hc, cfg


def hf_tokenizer(path: Path, cfg: Config) -> Tokenizer:
    tok = read_hf_tokenizer(path)
    if tok.vocab_size > cfg.model.vocab_size:
        raise LmkitError(f"{path}: the tokenizer has {tok.vocab_size} tokens but config.json's vocab_size is "
                         f"{cfg.model.vocab_size}: ids past the embedding table would fail")
    return tok


def hf_state(path: Path, hc: dict, cfg: Config, weights: dict | None = None) -> dict[str, torch.Tensor]:
    """The folder's weights under lmkit's names (a BertModel's missing masked-LM head: freshly initialised)."""
    m, kind = cfg.model, hc["model_type"]
    table = bert_hf.names(m) if kind == "bert" else gpt_hf.names(m, kind)
    sd = from_hf(table, read_hf_weights(path) if weights is None else weights, str(weights_file(path)))
    if kind == "bert" and "mlm_bias" not in sd:
        sd.update(bert_hf.fresh_mlm_head(m))
    return sd


def read_hf(path: str | Path) -> Run:
    """A Hugging Face folder as a Run (kind "hf"), the model built from config.json with the renamed weights."""
    path = Path(path)
    hc, cfg = hf_config(path)
    tok = hf_tokenizer(path, cfg)
    model = build_model(cfg.model)
    fit_weights(model, hf_state(path, hc, cfg), weights_file(path))
    return Run(path, "hf", cfg, model, tok, load_template(path, tok), {"model_type": hc["model_type"]})


def resolve_hub(path: str | Path) -> Path:
    """`hf:<repo id>` downloads the model's files through huggingface_hub (needs internet)."""
    s = str(path)
    if not s.startswith("hf:"):
        return Path(path)
    try:  # an optional extra, imported only when a hub id is given
        from huggingface_hub import snapshot_download
    except ImportError:
        raise LmkitError("hf: ids need the huggingface_hub package (pip install huggingface_hub)")
    try:
        return Path(snapshot_download(s[3:], allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model"]))
    except Exception as e:  # network, unknown repo, auth: one line for the user
        raise LmkitError(f"{s}: download failed ({str(e).splitlines()[0][:160]})")


# ---- import-hf ------------------------------------------------------------------------------------------
def import_hf(src: str | Path, out: str | Path, overwrite: bool = False) -> Path:
    """Write a Hugging Face checkpoint as an lmkit run directory (a BertForSequenceClassification: as a
    classifier directory). The renamed weights go straight to model.safetensors; the model is built on the
    meta device only to check names and shapes, so no second full copy is allocated."""
    check_target(out, overwrite, source=src)  # before downloading or reading anything
    src = resolve_hub(src)
    found = detect(src)
    if found.kind != "hf":
        raise LmkitError(refusal(found, "import-hf", None, ("hf",)))
    hc, cfg = hf_config(src)
    if "BertForSequenceClassification" in (hc.get("architectures") or []):
        return import_bert_classifier(src, out, hc, cfg)
    tok = hf_tokenizer(src, cfg)
    sd = hf_state(src, hc, cfg)
    with torch.device("meta"):
        check_fit(build_model(cfg.model), sd, weights_file(src))
    return save_native(out, cfg, tok, state_dict=sd, overwrite=overwrite)


def import_bert_classifier(src: Path, out: str | Path, hc: dict, cfg: Config) -> Path:
    """BertForSequenceClassification -> what `lmkit finetune classify` writes: BERT encoder, [CLS] pooling,
    head = pooler dense + tanh + classifier, labels from id2label."""
    sd = read_hf_weights(src)
    head = {"1.weight": sd.get("bert.pooler.dense.weight"), "1.bias": sd.get("bert.pooler.dense.bias"),
            "4.weight": sd.get("classifier.weight"), "4.bias": sd.get("classifier.bias")}
    if any(v is None for v in head.values()):
        raise LmkitError(f"{src}: a BertForSequenceClassification checkpoint needs bert.pooler.dense and "
                         "classifier weights")
    m = dataclasses.replace(cfg.model, dropout=0.0)
    backbone = build_model(m)
    fit_weights(backbone, hf_state(src, hc, cfg, weights=sd), weights_file(src))  # the table drops the head
    n = head["4.weight"].size(0)
    id2label = hc.get("id2label") or {str(i): f"LABEL_{i}" for i in range(n)}
    labels = [str(id2label[str(i)] if str(i) in id2label else id2label[i]) for i in range(n)]
    model = Classifier(backbone, "bert", "cls", n)
    model.head.load_state_dict(head)
    meta = {"backbone": "bert", "pooling": "cls", "labels": labels, "max_len": m.block_size,
            "model": dataclasses.asdict(m), "text_field": "sentence", "label_field": "label"}
    tok = hf_tokenizer(src, cfg)
    if holds_files(Path(out)):  # --overwrite (checked by import_hf): lmkit's own files go first
        clear(Path(out))
    return save_classifier(model, tok, meta, out)
