"""export-hf: write a model as a Hugging Face folder that transformers loads.

    GPT    -> GPT2LMHeadModel, LlamaForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM or MistralForCausalLM
              (the first format that holds its options; see export_format)
    BERT   -> BertForMaskedLM
    a BERT classifier with [CLS] pooling -> BertForSequenceClassification

The source is opened through the loading layer, so it may be any float model directory (a run, pruned,
LoRA (merged on read), merged, or a Hugging Face folder); an int8 run is refused in one line. The weights
are renamed by the family's table (models/gpt_hf.py, models/bert_hf.py), the inverse of import.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..config import Config
from ..errors import LmkitError
from ..io import atomic_path, atomic_write_text, check_target, holds_files
from ..models import bert_hf, gpt_hf
from ..models.hf_names import to_hf
from .open import FLOAT, open_run
from .record import Run
from .target import clear

EXPORTABLE = (*FLOAT, "classifier")
BERT_TOKENS = {"pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]", "sep_token": "[SEP]",
               "mask_token": "[MASK]"}


def export_format(cfg: Config, fmt: str = "auto") -> str:
    """Which format can hold this model: gpt2 or a Llama-style one (llama, qwen2, qwen3, mistral) for a GPT,
    bert for a BERT. Refused, naming the options, when none can."""
    m = cfg.model
    if m.type == "bert":
        if fmt not in ("auto", "bert"):
            raise LmkitError(f"export-hf: a BERT model exports as 'bert' (BertForMaskedLM), not '{fmt}'")
        return "bert"
    if m.type != "gpt":
        raise LmkitError(f"export-hf: model type '{m.type}' has no Hugging Face format here (gpt and bert do)")
    if fmt == "auto":
        fmt = gpt_hf.fitting_format(m) or ""
        if not fmt:
            raise LmkitError(f"export-hf: no Hugging Face format holds this model: GPT-2 cannot hold "
                             f"{', '.join(gpt_hf.misfits(m, 'gpt2'))}; Llama-style cannot hold "
                             f"{', '.join(gpt_hf.misfits(m, 'llama'))}")
    if fmt not in gpt_hf.FORMATS:
        raise LmkitError(f"export-hf: unknown format '{fmt}' ({', '.join(gpt_hf.FORMATS)}, auto)")
    if misfits := gpt_hf.misfits(m, fmt):
        if fits := gpt_hf.fitting_format(m):
            raise LmkitError(f"export-hf: the {fmt} format cannot hold {', '.join(misfits)}; "
                             f"this model exports as {fits} (--format {fits} or auto)")
        other = "Llama-style (pos = rope, norm = rmsnorm, mlp = swiglu)" if fmt == "gpt2" else \
            "GPT-2 (pos = learned, norm = layernorm, mlp = gelu, bias = true)"
        raise LmkitError(f"export-hf: the {fmt} format cannot hold {', '.join(misfits)}; "
                         f"a model with those options exports as {other}")
    return fmt


def export_hf(src: str | Path, out: str | Path, fmt: str = "auto", overwrite: bool = False) -> Path:
    """Write config.json, model.safetensors, tokenizer.json and tokenizer_config.json that transformers
    loads. Everything is checked before the target is touched."""
    out = check_target(out, overwrite, source=src)
    run = open_run(src, accept=EXPORTABLE, families=("gpt", "bert", "classifier"), purpose="export-hf",
                   hints={"lstm": "a recurrent LM has no Hugging Face format here; GPT and BERT runs do"})
    sd, hc, tc = classifier_files(run) if run.kind == "classifier" else model_files(run, fmt)
    hc["torch_dtype"] = "float32"
    if holds_files(out):  # --overwrite: lmkit's own files go, anything else of the user's stays
        clear(out)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "model.safetensors") as tmp:
        save_file(sd, str(tmp), metadata={"format": "pt"})
    atomic_write_text(out / "config.json", json.dumps(hc, indent=2, ensure_ascii=False) + "\n")
    run.tokenizer.save(out / "tokenizer.json")
    tc = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": run.config.model.block_size,
          "clean_up_tokenization_spaces": False, **tc}
    atomic_write_text(out / "tokenizer_config.json", json.dumps(tc, indent=2, ensure_ascii=False) + "\n")
    return out


def weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


def model_files(run: Run, fmt: str) -> tuple[dict, dict, dict]:
    """A GPT or BERT -> (Hugging Face state dict, config.json, tokenizer_config.json entries)."""
    m, tok = run.config.model, run.tokenizer
    fmt = export_format(run.config, fmt)
    if fmt == "bert":
        hc = bert_hf.config_to_hf(m)
        hc["pad_token_id"] = tok.pad_id or 0
        return to_hf(bert_hf.names(m), weights(run.model)), hc, dict(BERT_TOKENS)
    hc = gpt_hf.config_to_hf(m, fmt)
    hc.update(bos_token_id=tok.eot_id, eos_token_id=tok.eot_id)
    eot = tok.hf.id_to_token(tok.eot_id) if tok.eot_id is not None else None
    tc = {"bos_token": eot, "eos_token": eot}
    template = run.chat_template
    if template is not None and template.special:  # a chat fine-tune or a model's own: apply_chat_template
        tc["chat_template"] = template.jinja()
    tokens, eos_ids = getattr(template, "tokens", None), getattr(template, "eos_ids", None)
    if tokens:  # a model's own (Jinja) template: its special tokens and end-of-turn ids, as it shipped them
        tc.update(tokens)
        for name in ("bos_token", "eos_token"):
            i = tok.hf.token_to_id(tokens[name]) if tokens.get(name) else None
            if i is not None:
                hc[f"{name}_id"] = i
    if eos_ids:
        hc["eos_token_id"] = eos_ids if len(eos_ids) > 1 else eos_ids[0]
    return to_hf(gpt_hf.names(m, fmt), weights(run.model)), hc, tc


def classifier_files(run: Run) -> tuple[dict, dict, dict]:
    """A BERT classifier with [CLS] pooling -> BertForSequenceClassification: the encoder's names from the
    BERT table, the head as pooler dense (+ tanh) and classifier."""
    meta, clf = run.meta, run.model
    if meta["backbone"] != "bert" or meta["pooling"] != "cls":
        raise LmkitError(f"{run.path} is a text classifier; export-hf: only BERT classifiers with [CLS] pooling "
                         f"have a Hugging Face form "
                         f"(this one: {meta['backbone']}, {meta['pooling']} pooling)")
    m = clf.backbone.config
    hc = bert_hf.config_to_hf(m)
    sd = {k: v for k, v in to_hf(bert_hf.names(m), weights(clf.backbone)).items() if k.startswith("bert.")}
    head = weights(clf.head)  # Dropout, Linear, Tanh, Dropout, Linear
    sd.update({"bert.pooler.dense.weight": head["1.weight"], "bert.pooler.dense.bias": head["1.bias"],
               "classifier.weight": head["4.weight"], "classifier.bias": head["4.bias"]})
    labels = meta["labels"]
    hc.update({"architectures": ["BertForSequenceClassification"], "num_labels": len(labels),
               "id2label": {str(i): label for i, label in enumerate(labels)},
               "label2id": {label: i for i, label in enumerate(labels)}, "pad_token_id": run.tokenizer.pad_id or 0})
    return sd, hc, dict(BERT_TOKENS)

