"""Text classification: a backbone turns token ids into hidden states, a pooling step turns those into one
vector per text, and a small head maps it to class logits.

    h = backbone(x) (B, T, C);  v = pool(h);  logits = W_2 tanh(W_1 v);  loss = cross-entropy(logits, y)

Backbones: `bert` (bidirectional, [CLS] or mean pooling), `gpt` (causal: the last non-pad token is the
only one that has seen the whole text), `lstm` (the same, last non-pad state), `bag-of-embeddings`
(embedding → mean over the tokens, the classic IMDB baseline).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..config import ModelConfig
from . import build_model


def masked_mean(h: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The mean over the real tokens, Σ_t m_t h_t / Σ_t m_t: (B, T, C), mask (B, T) -> (B, C)."""
    m = attention_mask.unsqueeze(-1).to(h.dtype)
    return (h * m).sum(dim=1) / m.sum(dim=1).clamp(min=1)


def mean_pool(h: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """A sentence embedding: the masked mean of the hidden states, L2-normalised to a unit vector."""
    return nn.functional.normalize(masked_mean(h, attention_mask), dim=-1)


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
        return masked_mean(h, attention_mask)

    def forward(self, idx, attention_mask, labels=None):
        logits = self.head(self.features(idx, attention_mask))  # (B, n_classes)
        loss = None if labels is None else nn.functional.cross_entropy(logits, labels)
        return logits, loss


def default_pooling(kind: str) -> str:
    return {"bert": "mean", "bag-of-embeddings": "mean"}.get(kind, "last")


def build_classifier(meta: dict) -> Classifier:
    """The (untrained) classifier described by a classifier.json record."""
    cfg = ModelConfig(**meta["model"])
    kind = meta["backbone"]
    backbone = BagOfEmbeddings(cfg) if kind == "bag-of-embeddings" else build_model(cfg)
    return Classifier(backbone, kind, meta["pooling"], len(meta["labels"]))
