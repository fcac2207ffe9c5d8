"""Text classification: a backbone turns token ids into hidden states, a pooling step turns those into one
vector per text, and a small head maps it to class logits.

    h = backbone(x) (B, T, C);  v = pool(h);  logits = W_2 tanh(W_1 v);  loss = cross-entropy(logits, y)

Backbones: `bert` (bidirectional, [CLS] or mean pooling), `gpt` (causal: the last non-pad token is the
only one that has seen the whole text), `lstm` (the same, last non-pad state), `bag-of-embeddings`
(embedding → mean over the tokens, the classic IMDB baseline). Each starts from scratch with a WordPiece
tokenizer trained on the training texts, or from `base`: an lmkit run directory or a Hugging Face BERT
folder (config.json + model.safetensors / pytorch_model.bin + vocab.txt / tokenizer.json).
"""
from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import torch
import torch.nn as nn

from ..config import ModelConfig
from ..errors import LmkitError
from ..models import build_model
from ..tokenizer import Tokenizer

BACKBONES = ("bag-of-embeddings", "lstm", "gpt", "bert")
POOLINGS = ("cls", "mean", "last")


class BagOfEmbeddings(nn.Module):
    """Token embeddings only; order is ignored once the classifier averages them."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)


class Classifier(nn.Module):
    def __init__(self, backbone: nn.Module, kind: str, pooling: str, n_classes: int, dropout: float = 0.1):
        super().__init__()
        self.backbone, self.kind, self.pooling = backbone, kind, pooling
        c = backbone.config.n_embd
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(c, c), nn.Tanh(), nn.Dropout(dropout),
                                  nn.Linear(c, n_classes))

    def features(self, idx: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """idx, attention_mask (B, T), right-padded -> one vector per text (B, C)."""
        b = self.backbone
        if self.kind == "bert":
            h = b.encode(idx, attention_mask)
        elif self.kind == "bag-of-embeddings":
            h = b.wte(idx)
        else:  # gpt, lstm: causal, so padding on the right never reaches the real tokens
            h = b.encode(idx)
        if self.pooling == "cls":
            return h[:, 0]
        if self.pooling == "last":
            last = attention_mask.sum(dim=1) - 1  # (B,) index of the last real token
            return h[torch.arange(h.size(0), device=h.device), last]
        m = attention_mask.unsqueeze(-1).to(h.dtype)  # mean over the real tokens: Σ_t m_t h_t / Σ_t m_t
        return (h * m).sum(dim=1) / m.sum(dim=1).clamp(min=1)

    def forward(self, idx, attention_mask, labels=None):
        logits = self.head(self.features(idx, attention_mask))  # (B, n_classes)
        loss = None if labels is None else nn.functional.cross_entropy(logits, labels)
        return logits, loss


def default_pooling(kind: str) -> str:
    return {"bert": "mean", "bag-of-embeddings": "mean"}.get(kind, "last")


# ---- building the backbone ----------------------------------------------------------------------
def fresh_backbone(kind: str, tokenizer: Tokenizer, max_len: int, n_layer: int, n_embd: int, n_head: int,
                   dropout: float) -> nn.Module:
    cfg = ModelConfig(type="bert" if kind == "bert" else "lstm" if kind == "lstm" else "gpt",
                      vocab_size=tokenizer.vocab_size, block_size=max_len, n_layer=n_layer, n_head=n_head,
                      n_embd=n_embd, dropout=dropout, norm_eps=1e-12 if kind == "bert" else 1e-5)
    if kind == "bag-of-embeddings":
        return BagOfEmbeddings(cfg)
    return build_model(cfg)


def load_base(base: str | Path) -> tuple[nn.Module, str, Tokenizer]:
    """An lmkit run directory or a Hugging Face BERT folder -> (backbone with its weights, kind, tokenizer)."""
    base = Path(base)
    cfg_path = base / "config.json"
    if not base.is_dir() or not cfg_path.is_file():
        raise LmkitError(f"{base}: not a model directory (no config.json)")
    try:
        raw = json.loads(cfg_path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise LmkitError(f"{cfg_path}: not valid JSON ({e})")
    if "model" in raw and "train" in raw:  # an lmkit run
        from ..api import load
        lm = load(base)
        return lm.model.train(), lm.config.model.type, lm.tokenizer
    if raw.get("model_type") == "bert":  # the one Hugging Face reader, hf.py
        from ..hf import load_hf
        lm = load_hf(base)
        return lm.model.train(), "bert", lm.tokenizer
    raise LmkitError(f"{base}: config.json is neither an lmkit run nor a Hugging Face BERT model "
                     f"(model_type {raw.get('model_type')!r})")


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


def pad_batch(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad to the longest sequence -> ids (B, T), attention_mask (B, T) with 1 on real tokens."""
    T = max(len(s) for s in seqs)
    idx = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), T), dtype=torch.long)
    for i, s in enumerate(seqs):
        idx[i, :len(s)] = torch.tensor(s)
        mask[i, :len(s)] = 1
    return idx, mask


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


def save_classifier(model: Classifier, tokenizer: Tokenizer, meta: dict, out_dir: Path) -> None:
    from safetensors.torch import save_model
    from ..io import atomic_path, atomic_write_text
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_dir / "model.safetensors") as tmp:
        save_model(model, str(tmp))
    tokenizer.save(out_dir / "tokenizer.json")
    atomic_write_text(out_dir / "classifier.json", json.dumps(meta, indent=2) + "\n")


def load_classifier(path: str | Path) -> TextClassifier:
    """Load a directory written by `lmkit finetune classify`."""
    from safetensors.torch import load_model
    path = Path(path)
    if not (path / "classifier.json").is_file():
        raise LmkitError(f"{path}: not a classifier run directory (no classifier.json; made by lmkit finetune classify)")
    meta = json.loads((path / "classifier.json").read_text(encoding="utf-8"))
    cfg = ModelConfig(**meta["model"])
    kind = meta["backbone"]
    backbone = BagOfEmbeddings(cfg) if kind == "bag-of-embeddings" else build_model(cfg)
    model = Classifier(backbone, kind, meta["pooling"], len(meta["labels"]))
    try:
        load_model(model, str(path / "model.safetensors"))
    except Exception as e:
        raise LmkitError(f"{path / 'model.safetensors'}: cannot load ({str(e).splitlines()[0][:160]})")
    return TextClassifier(model, Tokenizer.load(path / "tokenizer.json"), meta, path)


def warn(msg: str) -> None:
    print(f"warning: {msg}", file=sys.stderr)


def model_meta(model: Classifier, labels: list[str], max_len: int, fields: dict) -> dict:
    return {"backbone": model.kind, "pooling": model.pooling, "labels": labels, "max_len": max_len,
            "model": dataclasses.asdict(model.backbone.config), **fields}
