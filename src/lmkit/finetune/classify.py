"""Text classifiers as a task: the backbone a classifier starts from (a fresh one with a WordPiece
tokenizer trained on the training texts, or `--base`: an lmkit run or a Hugging Face BERT folder), texts
turned into ids, and a trained classifier's `predict`. The model itself (backbone → pooling → head) is
in models/classifier.py; its directory is read by runs/classifier.py.
"""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import torch
import torch.nn as nn

from ..config import ModelConfig
from ..models import build_model
from ..models.classifier import BACKBONES, BagOfEmbeddings, Classifier
from ..data.batches import pad_batch
from ..runs import FLOAT, open_run
from ..tokenizer import Tokenizer

# ---- building the backbone ----------------------------------------------------------------------
def fresh_backbone(kind: str, tokenizer: Tokenizer, max_len: int, n_layer: int, n_embd: int, n_head: int,
                   dropout: float) -> nn.Module:
    cfg = ModelConfig(type="bert" if kind == "bert" else "lstm" if kind == "lstm" else "gpt",
                      vocab_size=tokenizer.vocab_size, block_size=max_len, n_layer=n_layer, n_head=n_head,
                      n_embd=n_embd, dropout=dropout, norm_eps=1e-12 if kind == "bert" else 1e-5)
    if kind == "bag-of-embeddings":
        return BagOfEmbeddings(cfg)
    return build_model(cfg)


def open_base(base: str | Path) -> tuple[nn.Module, str, Tokenizer]:
    """--base: a model directory with float weights (an lmkit run, a Hugging Face BERT folder, a pruned or
    merged run) -> (backbone with its weights, in training mode; family; tokenizer)."""
    run = open_run(base, accept=FLOAT, families=BACKBONES, purpose="finetune classify --base")
    return run.model.train(), run.family, run.tokenizer


# ---- turning texts into padded batches ---------------------------------------------------------------
def encode_texts(tokenizer: Tokenizer, texts: list[str], kind: str, max_len: int) -> tuple[list[list[int]], int]:
    """-> (ids per text, how many texts were cut to max_len). bert: [CLS] text [SEP]; gpt, lstm: text then
    the end-of-text token (the last position then summarises the whole text); bag-of-embeddings: text."""
    head = [tokenizer.cls_id] if kind == "bert" else []
    tail = [tokenizer.sep_id] if kind == "bert" else [tokenizer.eot_id] if kind in ("gpt", "lstm") else []
    tail = [t for t in tail if t is not None]
    room = max_len - len(head) - len(tail)
    out, truncated = [], 0
    for ids in tokenizer.encode_batch(texts):
        if len(ids) > room:
            truncated += 1
            ids = ids[:room]
        ids = head + ids + tail
        out.append(ids or [tokenizer.pad_id or 0])  # a text of unknown characters only: one placeholder
    return out, truncated


# ---- a trained classifier -----------------------------------------------------------------------------
class TextClassifier:
    """A fine-tuned classifier loaded from its run directory: `predict(["great film"])`."""

    def __init__(self, model: Classifier, tokenizer: Tokenizer, meta: dict, path: Path | None = None):
        self.model, self.tokenizer, self.meta, self.path = model.eval(), tokenizer, meta, path
        self.labels: list[str] = meta["labels"]

    @torch.no_grad()
    def predict_proba(self, texts: list[str], batch_size: int = 64) -> torch.Tensor:
        """(N, n_classes) class probabilities."""
        seqs, _ = encode_texts(self.tokenizer, texts, self.meta["backbone"], self.meta["max_len"])
        out = []
        for i in range(0, len(seqs), batch_size):
            idx, mask = pad_batch(seqs[i:i + batch_size], self.tokenizer.pad_id or 0)
            out.append(self.model(idx, mask)[0].float().softmax(dim=-1))
        return torch.cat(out) if out else torch.zeros(0, len(self.labels))

    def predict(self, texts: str | list[str]) -> list[tuple[str, float]] | tuple[str, float]:
        """The most likely label of each text with its probability."""
        single = isinstance(texts, str)
        probs = self.predict_proba([texts] if single else texts)
        best = probs.max(dim=-1)
        out = [(self.labels[i], round(p, 6)) for p, i in zip(best.values.tolist(), best.indices.tolist())]
        return out[0] if single else out


def load_classifier(path: str | Path) -> TextClassifier:
    """Load a directory written by `lmkit finetune classify` (or imported from a Hugging Face
    BertForSequenceClassification)."""
    run = open_run(path, accept=("classifier",), purpose="predict")
    return TextClassifier(run.model, run.tokenizer, run.meta, run.path)


def warn(msg: str) -> None:
    print(f"warning: {msg}", file=sys.stderr)


def model_meta(model: Classifier, labels: list[str], max_len: int, fields: dict) -> dict:
    return {"backbone": model.kind, "pooling": model.pooling, "labels": labels, "max_len": max_len,
            "model": dataclasses.asdict(model.backbone.config), **fields}
