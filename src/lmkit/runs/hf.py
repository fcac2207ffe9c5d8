"""Hugging Face model folders (kind "hf"): read one as a Run, download `hf:<id>`, import one as a native run.

    config.json           model_type gpt2, llama or bert; translated by models/gpt_hf.py, models/bert_hf.py
    model.safetensors     the weights (or model-*.safetensors shards with model.safetensors.index.json, or
                          pytorch_model.bin, read with torch.load(weights_only=True): never unpickled)
    tokenizer.json        the tokenizer (or GPT-2's vocab.json + merges.txt, or BERT's vocab.txt)
A PEFT LoRA adapter folder (adapter_config.json with peft_type) reads as its base model, named by its
base_model_name_or_path, with the adapters merged in (runs/peft.py).

The weights are renamed by the family's table (models/hf_names.py); nothing is approximated. import-hf
streams them, one tensor at a time, from the checkpoint into the run's model.safetensors (peak memory: about
the largest tensor, not the model). Export, the other direction, is in hf_export.py.
"""
from __future__ import annotations

import dataclasses
import json
import os
import pickle
import struct
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from ..chat import load_template
from ..config import Config, validate
from ..errors import LmkitError
from ..io import check_target, holds_files, user_mode
from ..models import bert_hf, build_model, gpt_hf
from ..models.classifier import Classifier
from ..models.hf_names import from_hf, join, plan
from ..tokenizer import Tokenizer
from .classifier import save_classifier
from .detect import HF_FAMILIES, PEFT_CONFIG, detect, read_json, refusal
from .native import check_fit, fit_weights, read_native, save_native
from .peft import base_folder, check_config, merge_peft
from .record import Run
from .target import clear

SUPPORTED = tuple(HF_FAMILIES)  # the model_types import-hf takes
PEFT_BASES = ("hf", "run", "pruned", "merged", "lora")  # what a PEFT adapter's base may be: a float model


# ---- the three parts of a folder --------------------------------------------------------------------
def weights_file(path: Path) -> Path:
    """The file the weights are read from (named in messages)."""
    for name in ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin"):
        if (path / name).is_file():
            return path / name
    raise LmkitError(f"{path}: no model.safetensors, model.safetensors.index.json or pytorch_model.bin")


def safetensors_files(path: Path) -> list[Path]:
    """model.safetensors, or the model-*.safetensors shards its index names."""
    file = weights_file(path)
    if file.suffix == ".json":
        return [path / shard for shard in sorted(set(read_json(file)["weight_map"].values()))]
    return [file]


@contextmanager
def reading(what: Path):
    """A damaged weights file as one line naming it (safetensors and torch raise several types)."""
    try:
        yield
    except LmkitError:
        raise
    except Exception as e:
        raise LmkitError(f"{what}: cannot read the weights ({str(e).splitlines()[0][:160]})") from None


def read_hf_weights(path: Path) -> dict[str, torch.Tensor]:
    """model.safetensors, sharded model-*.safetensors with an index, or pytorch_model.bin (weights only)."""
    file = weights_file(path)
    with reading(path):
        if file.name != "pytorch_model.bin":
            return {k: v for f in safetensors_files(path) for k, v in load_file(str(f)).items()}
        try:
            return torch.load(file, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            raise LmkitError(
                f"{file}: holds more than tensors, and lmkit never unpickles a file it is handed; if you trust it, "
                "convert it once to safetensors, e.g. with transformers: AutoModel.from_pretrained(DIR)"
                ".save_pretrained(DIR, safe_serialization=True)") from None


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
    try:
        validate(cfg)
    except LmkitError as e:  # the config edge, naming the file it came from
        raise LmkitError(f"{where}: {str(e).removeprefix('config: ')}") from None
    return hc, cfg


def hf_tokenizer(path: Path, cfg: Config) -> Tokenizer:
    tok = read_hf_tokenizer(path)
    if tok.vocab_size > cfg.model.vocab_size:
        raise LmkitError(f"{path}: the tokenizer has {tok.vocab_size} tokens but config.json's vocab_size is "
                         f"{cfg.model.vocab_size}: ids past the embedding table would fail")
    return tok


def table_for(hc: dict, cfg: Config):
    m, kind = cfg.model, hc["model_type"]
    return bert_hf.names(m) if kind == "bert" else gpt_hf.names(m, kind)


def fresh_parts(hc: dict, cfg: Config, names) -> dict[str, torch.Tensor]:
    """What lmkit's model has and the checkpoint lacks: a BertModel's masked-LM head, freshly initialised."""
    return bert_hf.fresh_mlm_head(cfg.model) if hc["model_type"] == "bert" and "mlm_bias" not in names else {}


def hf_state(path: Path, hc: dict, cfg: Config, weights: dict | None = None) -> dict[str, torch.Tensor]:
    """The folder's weights under lmkit's names, all in memory (what lmkit.load builds its model from)."""
    sd = from_hf(table_for(hc, cfg), read_hf_weights(path) if weights is None else weights, str(weights_file(path)))
    return {**sd, **fresh_parts(hc, cfg, sd)}


# ---- streaming: the checkpoint's tensors one at a time ------------------------------------------------
DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
          "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
          "BOOL": torch.bool}


def lazy_weights(path: Path) -> tuple[dict[str, torch.Tensor], Callable[[str], torch.Tensor]]:
    """(every tensor of the folder's weights as a meta tensor: name, shape and dtype, no data; a function that
    reads one tensor). safetensors files are read by their headers, then tensor by tensor, each through a
    fresh safe_open, so no mapping of the whole file stays resident; pytorch_model.bin is read whole."""
    if weights_file(path).name == "pytorch_model.bin":
        sd = read_hf_weights(path)
        return {k: v.to("meta") for k, v in sd.items()}, sd.__getitem__
    specs, where = {}, {}
    for f in safetensors_files(path):
        with reading(f), safe_open(str(f), framework="pt") as st:
            for name in st.keys():
                s = st.get_slice(name)
                if s.get_dtype() not in DTYPES:
                    raise LmkitError(f"{f}: {name} has dtype {s.get_dtype()}, which lmkit does not read")
                specs[name] = torch.empty(s.get_shape(), dtype=DTYPES[s.get_dtype()], device="meta")
                where[name] = f

    def read(name: str) -> torch.Tensor:
        with reading(where[name]), safe_open(str(where[name]), framework="pt") as st:
            return st.get_tensor(name)
    return specs, read


def write_streamed(file: Path, specs: dict[str, torch.Tensor], produce: Callable[[str], torch.Tensor],
                   metadata: dict[str, str]) -> None:
    """A safetensors file written tensor by tensor: the header from `specs` (meta tensors: shape and dtype),
    then each tensor's bytes as `produce(name)` makes it, one alive at a time."""
    names = {v: k for k, v in DTYPES.items()}
    header, offset = {"__metadata__": metadata}, 0
    for name, t in specs.items():
        n = t.numel() * t.element_size()
        header[name] = {"dtype": names[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + n]}
        offset += n
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned
    with open(file, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text)
        for name, spec in specs.items():
            t = produce(name)
            assert t.shape == spec.shape and t.dtype == spec.dtype, name
            f.write(t.contiguous().reshape(-1).view(torch.uint8).numpy().data)


def read_hf(path: str | Path) -> Run:
    """A Hugging Face folder as a Run (kind "hf"), the model built from config.json with the renamed weights."""
    path = Path(path)
    if (path / PEFT_CONFIG).is_file() and "peft_type" in read_json(path / PEFT_CONFIG):
        return read_peft(path)
    hc, cfg = hf_config(path)
    tok = hf_tokenizer(path, cfg)
    model = build_model(cfg.model)
    fit_weights(model, hf_state(path, hc, cfg), weights_file(path))
    return Run(path, "hf", cfg, model, tok, load_template(path, tok), {"model_type": hc["model_type"]})


def read_peft(path: Path) -> Run:
    """A PEFT LoRA adapter folder as a Run (kind "hf"): its base model, a Hugging Face folder or an lmkit run,
    with every adapter merged into the weights; the base's tokenizer and chat template."""
    meta = check_config(path)
    base = resolve_hub(base_folder(path, meta))
    found = detect(base, "base model folder")
    if found.kind not in PEFT_BASES or "peft_type" in found.meta or found.family != "gpt":
        raise LmkitError(f"{path / PEFT_CONFIG}: base_model_name_or_path {base} is {found.describe()}; a PEFT "
                         "adapter here goes on a GPT's float weights (a Hugging Face folder or an lmkit run)")
    run = read_hf(base) if found.kind == "hf" else read_native(base, found.kind)
    merge_peft(run.model, run.config.model, path, meta)
    return Run(path, "hf", run.config, run.model, run.tokenizer, run.chat_template, {**meta, "base": str(base)})


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
    classifier directory). The renamed weights stream into model.safetensors one tensor at a time; names and
    shapes are checked first, against the model built on the meta device, so nothing is written for a
    checkpoint that does not fit and the whole model is never in memory."""
    check_target(out, overwrite, source=src)  # before downloading or reading anything
    src = resolve_hub(src)
    found = detect(src)
    if found.kind != "hf":
        raise LmkitError(refusal(found, "import-hf", None, ("hf",)))
    if "peft_type" in found.meta:  # a PEFT adapter: its base with the adapters merged in, as a plain run
        run = read_peft(src)
        return save_native(out, run.config, run.tokenizer, model=run.model, chat_template=run.chat_template,
                           overwrite=overwrite)
    hc, cfg = hf_config(src)
    if "BertForSequenceClassification" in (hc.get("architectures") or []):
        return import_bert_classifier(src, out, hc, cfg)
    tok = hf_tokenizer(src, cfg)
    file = weights_file(src)
    specs, read = lazy_weights(src)
    steps = plan(table_for(hc, cfg), specs, str(file))  # lmkit name -> (rule, its parts in the file)
    shapes = {ours: join(rule, [specs[n] for n in parts]) for ours, (rule, parts) in steps.items()}
    fresh = fresh_parts(hc, cfg, shapes)
    shapes.update({k: v.to("meta") for k, v in fresh.items()})
    with torch.device("meta"):
        check_fit(build_model(cfg.model), shapes, file)

    def produce(ours: str) -> torch.Tensor:  # one lmkit tensor, read (and fused) when it is written
        if ours in fresh:
            return fresh[ours]
        rule, parts = steps[ours]
        return join(rule, [read(n) for n in parts])
    parent = Path(out).absolute().parent
    parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{Path(out).name}.", suffix=".safetensors.tmp", dir=parent)
    os.close(fd)
    try:  # the weights first (the slow part; nothing at `out` until they are complete), then the run around them
        write_streamed(Path(tmp), shapes, produce, {"format": "pt", "step": "0"})
        user_mode(tmp)
        out = save_native(out, cfg, tok, state_dict={}, chat_template=load_template(src, tok), overwrite=overwrite,
                          weights_file=Path(tmp))  # moved into the new folder before it is renamed into place
    finally:
        Path(tmp).unlink(missing_ok=True)
    return out


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
