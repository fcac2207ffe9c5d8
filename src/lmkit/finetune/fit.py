"""`lmkit finetune classify`: train a classifier on a labelled file, evaluate it each epoch, keep the best.

Each step: a shuffled batch, right-padded → Classifier → cross-entropy → AdamW (lmkit's optimizer and
warm-up + cosine schedule from train/optim.py). After every epoch (or every `eval_every` steps):
accuracy, macro-F1 and the confusion matrix on the eval file; the best checkpoint so far is saved.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from tqdm.auto import tqdm

from ..config import TrainConfig
from ..errors import LmkitError
from ..tokenizer import Tokenizer
from ..train.optim import lr_at, make_optimizer
from .classify import (BACKBONES, POOLINGS, BagOfEmbeddings, Classifier, default_pooling, encode_texts,
                       fresh_backbone, load_base, model_meta, pad_batch, save_classifier, warn)
from .metrics import classification_report, format_confusion
from .tabular import read_labeled


@dataclass
class ClassifyConfig:
    train: str  # labelled .csv / .tsv / .jsonl
    eval: str
    out: str  # run directory to write
    base: Optional[str] = None  # an lmkit run or a Hugging Face BERT folder to start from
    model: Optional[str] = None  # or a fresh backbone: bag-of-embeddings, lstm, gpt, bert
    text_field: Optional[str] = None  # None = find it (text, sentence, review, …)
    label_field: Optional[str] = None  # None = find it (label, sentiment, class, …)
    epochs: int = 3
    batch_size: int = 32
    learning_rate: Optional[float] = None  # None = 5e-5 with a pretrained base, 1e-3 from scratch
    weight_decay: float = 0.01
    max_len: int = 128  # tokens per text, longer ones are truncated
    pooling: Optional[str] = None  # cls, mean, last; None = mean for encoders, last for gpt/lstm
    # a fresh backbone's size and its WordPiece vocabulary (trained on the training texts)
    n_layer: int = 2
    n_head: int = 4
    n_embd: int = 128
    vocab_size: int = 8000
    dropout: float = 0.1
    limit: int = 0  # train on a random subset of this many rows (0 = all)
    eval_every: int = 0  # evaluate every this many steps (0 = after each epoch)
    max_minutes: float = 0  # stop training after this much time (0 = no limit); evaluates before leaving
    seed: int = 1337
    device: str = "cpu"
    overwrite: bool = False
    progress: bool = True

    def validate(self) -> "ClassifyConfig":
        if (self.base is None) == (self.model is None):
            raise LmkitError("finetune classify: give exactly one of --base RUN_OR_HF_DIR or --model KIND")
        if self.model is not None and self.model not in BACKBONES:
            raise LmkitError(f"--model {self.model!r} is not one of {', '.join(BACKBONES)}")
        if self.pooling is not None and self.pooling not in POOLINGS:
            raise LmkitError(f"--pooling {self.pooling!r} is not one of {', '.join(POOLINGS)}")
        for name in ("epochs", "batch_size", "max_len", "n_layer", "n_head", "n_embd"):
            if getattr(self, name) <= 0:
                raise LmkitError(f"--{name.replace('_', '-')} must be positive (got {getattr(self, name)})")
        if self.max_len < 3:
            raise LmkitError(f"--max-len must be >= 3 (got {self.max_len})")
        if self.learning_rate is not None and self.learning_rate <= 0:
            raise LmkitError(f"--learning-rate must be positive (got {self.learning_rate})")
        if self.n_embd % self.n_head:
            raise LmkitError(f"--n-embd ({self.n_embd}) must be divisible by --n-head ({self.n_head})")
        return self


def _check_labels(c: ClassifyConfig, train, evalset) -> list[str]:
    numeric = all(l.lstrip("-").isdigit() for l in train.labels)
    labels = sorted(set(train.labels), key=int if numeric else str)  # "2" before "10"
    if len(labels) < 2:
        raise LmkitError(f"{c.train}: field {train.label_field!r} has a single class ({labels[0]!r}); "
                         "a classifier needs at least two")
    known = set(labels)
    for row, label in zip(evalset.rows, evalset.labels):
        if label not in known:
            raise LmkitError(f"{c.eval}: row {row}: {evalset.label_field!r} = {label!r} never occurs in {c.train} "
                             f"(labels: {', '.join(labels)})")
    return labels


def length_bucketed(seqs: list[list[int]], batch_size: int, generator: torch.Generator,
                    pool: int = 50) -> list[list[int]]:
    """Shuffled batches of row indices whose texts have similar lengths, so little of each batch is padding:
    shuffle, sort each pool of `pool` batches' worth of rows by length, cut into batches, shuffle the batches."""
    order = torch.randperm(len(seqs), generator=generator).tolist()
    batches = []
    for start in range(0, len(order), batch_size * pool):
        chunk = sorted(order[start:start + batch_size * pool], key=lambda i: len(seqs[i]))
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    return [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]


@torch.no_grad()
def evaluate(model: Classifier, seqs: list[list[int]], y: list[int], n_classes: int, pad_id: int,
             device, batch_size: int = 128) -> dict:
    model.eval()
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))  # similar lengths together: less padding
    preds = [0] * len(seqs)
    for i in range(0, len(order), batch_size):
        rows = order[i:i + batch_size]
        idx, mask = pad_batch([seqs[r] for r in rows], pad_id)
        for r, p in zip(rows, model(idx.to(device), mask.to(device))[0].argmax(dim=-1).tolist()):
            preds[r] = p
    model.train()
    return classification_report(y, preds, n_classes)


def finetune_classify(c: ClassifyConfig) -> dict:
    """Train, evaluate and save a classifier; returns the best evaluation (accuracy, macro_f1, confusion …)."""
    c.validate()
    out = Path(c.out)
    if (out / "classifier.json").exists() and not c.overwrite:
        raise LmkitError(f"{out}: already holds a classifier (use --overwrite to replace it)")
    torch.manual_seed(c.seed)
    train = read_labeled(c.train, c.text_field, c.label_field)
    evalset = read_labeled(c.eval, c.text_field, c.label_field)
    labels = _check_labels(c, train, evalset)
    if c.limit and c.limit < len(train.texts):
        keep = torch.randperm(len(train.texts), generator=torch.Generator().manual_seed(c.seed))[:c.limit].tolist()
        train.texts, train.labels = [train.texts[i] for i in keep], [train.labels[i] for i in keep]

    if c.base is not None:
        backbone, kind, tokenizer = load_base(c.base)
        lr = c.learning_rate or 5e-5
    else:
        kind = c.model
        if c.progress:
            print(f"training a WordPiece tokenizer ({c.vocab_size} tokens) on {c.train} …", flush=True)
        tokenizer = Tokenizer.train(train.texts, kind="wordpiece", vocab_size=c.vocab_size)
        backbone = fresh_backbone(kind, tokenizer, c.max_len, c.n_layer, c.n_embd, c.n_head, c.dropout)
        lr = c.learning_rate or 1e-3
    if kind not in BACKBONES:
        raise LmkitError(f"{c.base}: a '{kind}' model cannot be fine-tuned for classification")
    max_len = c.max_len if isinstance(backbone, BagOfEmbeddings) else min(c.max_len, backbone.config.block_size)
    model = Classifier(backbone, kind, c.pooling or default_pooling(kind), len(labels), c.dropout).to(c.device)

    index = {l: i for i, l in enumerate(labels)}
    x_train, cut = encode_texts(tokenizer, train.texts, kind, max_len)
    y_train = [index[l] for l in train.labels]
    x_eval, cut_eval = encode_texts(tokenizer, evalset.texts, kind, max_len)
    y_eval = [index[l] for l in evalset.labels]
    for path, n, total, field in ((c.train, cut, len(x_train), train.text_field),
                                  (c.eval, cut_eval, len(x_eval), evalset.text_field)):
        if n:
            warn(f"{path}: {n} of {total} texts in field {field!r} are longer than {max_len} tokens "
                 "(the model's context or --max-len) and were truncated")

    steps_per_epoch = math.ceil(len(x_train) / c.batch_size)
    total = steps_per_epoch * c.epochs
    sched = TrainConfig(learning_rate=lr, min_lr=0.0, warmup_iters=max(1, total // 10), max_iters=total,
                        weight_decay=c.weight_decay, beta2=0.999)
    optimizer = make_optimizer(model, sched, torch.device(c.device).type)
    pad_id = tokenizer.pad_id or 0
    fields = {"text_field": train.text_field, "label_field": train.label_field}
    meta = model_meta(model, labels, max_len, fields)
    out.mkdir(parents=True, exist_ok=True)
    metrics = open(out / "metrics.jsonl", "w", encoding="utf-8")
    best, history, step, t0 = None, [], 0, time.perf_counter()
    if c.progress:
        n_params = sum(p.numel() for p in model.parameters())
        print(f"{kind} classifier, {n_params / 1e6:.2f}M parameters, {len(x_train):,} training texts, "
              f"{len(labels)} classes, {c.epochs} epoch(s) of {steps_per_epoch} steps, lr {lr:g}", flush=True)

    def check(epoch: int, loss: float) -> None:
        nonlocal best
        r = evaluate(model, x_eval, y_eval, len(labels), pad_id, c.device)
        rec = {"epoch": epoch, "step": step, "train_loss": round(loss, 5), "accuracy": r["accuracy"],
               "macro_f1": r["macro_f1"], "confusion": r["confusion"], "time": round(time.perf_counter() - t0, 1)}
        metrics.write(json.dumps(rec) + "\n")
        metrics.flush()
        history.append(rec)
        is_best = best is None or r["accuracy"] > best["accuracy"]
        if is_best:
            best = rec
            save_classifier(model, tokenizer, meta, out)
        if c.progress:
            tqdm.write(f"epoch {epoch} step {step}: train loss {loss:.4f}, eval accuracy {r['accuracy']:.4f}, "
                       f"macro-F1 {r['macro_f1']:.4f}{'  (best, saved)' if is_best else ''}\n"
                       + format_confusion(r["confusion"], labels))

    generator = torch.Generator().manual_seed(c.seed)
    model.train()
    out_of_time = False
    try:
        for epoch in range(1, c.epochs + 1):
            batches = length_bucketed(x_train, c.batch_size, generator)
            bar = tqdm(batches, desc=f"epoch {epoch}/{c.epochs}", unit="batch", disable=not c.progress,
                       dynamic_ncols=True)
            running = math.nan
            for b, rows in enumerate(bar):
                idx, mask = pad_batch([x_train[i] for i in rows], pad_id)
                y = torch.tensor([y_train[i] for i in rows])
                for group in optimizer.param_groups:
                    group["lr"] = lr_at(step, sched)
                _, loss = model(idx.to(c.device), mask.to(c.device), y.to(c.device))
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                running = loss.item() if math.isnan(running) else 0.95 * running + 0.05 * loss.item()
                bar.set_postfix(loss=f"{running:.4f}", refresh=False)
                out_of_time = c.max_minutes and time.perf_counter() - t0 > 60 * c.max_minutes
                if out_of_time or (c.eval_every and step % c.eval_every == 0 and b < steps_per_epoch - 1):
                    check(epoch, running)
                if out_of_time:
                    break
            bar.close()
            if out_of_time:
                warn(f"stopped after {c.max_minutes:g} minutes (--max-minutes), in epoch {epoch} at step {step}")
                break
            check(epoch, running)
    finally:
        metrics.close()
    return {**best, "best_epoch": best["epoch"], "out_dir": out, "wall_s": time.perf_counter() - t0,
            "history": history, "labels": labels}

