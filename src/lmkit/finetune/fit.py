"""`lmkit finetune classify`: train a classifier on a labelled file, evaluate it each epoch, keep the best.

The classifier trains in lmkit's one training loop (train/trainer.py) as a `ClassifyTask`: each step a
length-bucketed, shuffled batch, right-padded → Classifier → cross-entropy → AdamW with warm-up + cosine.
After every epoch (or every `eval_every` steps): eval loss, accuracy, macro-F1 and the confusion matrix on
the eval file; the checkpoint is saved only when accuracy improves. The run directory is a normal lmkit
run (config.json = the backbone's config, tokenizer.json, model.safetensors, metrics.jsonl, loss.png) plus
classifier.json (labels, pooling, fields) that `lmkit predict` reads.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from tqdm.auto import tqdm

from ..config import Config, DataConfig, TrainConfig, apply_env
from ..errors import LmkitError
from ..io import atomic_write_text
from ..tokenizer import Tokenizer
from ..train.trainer import Task, Trainer
from ..models.classifier import BACKBONES, POOLINGS, BagOfEmbeddings, Classifier, default_pooling
from ..runs import check_target
from ..data.batches import pad_batch
from .classify import encode_texts, fresh_backbone, model_meta, open_base, warn
from .metrics import classification_report, format_confusion
from .tabular import read_labeled


# the peak learning rate when --learning-rate is not given: the rate of each model's SST-2 figure in
# benchmarks/RESULTS.md (bag-of-embeddings 80.96% and lstm with 3e-3, fresh BERT with 5e-4, all-MiniLM-L6-v2 as
# --base with 1e-4)
DEFAULT_LR = {"base": 1e-4, "bag-of-embeddings": 3e-3, "lstm": 3e-3, "gpt": 5e-4, "bert": 5e-4}


@dataclass
class ClassifyConfig:
    """`lmkit finetune classify`'s settings; the defaults are those of the SST-2 figures in benchmarks/RESULTS.md."""
    train: str  # labelled .csv / .tsv / .jsonl
    eval: str
    out: str  # run directory to write
    base: Optional[str] = None  # an lmkit run or a Hugging Face BERT folder to start from
    model: Optional[str] = None  # or a fresh backbone: bag-of-embeddings, lstm, gpt, bert
    text_field: Optional[str] = None  # None = find it (text, sentence, review, …)
    label_field: Optional[str] = None  # None = find it (label, sentiment, class, …)
    epochs: int = 3
    batch_size: int = 32
    learning_rate: Optional[float] = None  # None = DEFAULT_LR of the base / fresh model
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


class LabeledBatches:
    """Epoch after epoch of length-bucketed batches -> (ids, attention_mask, labels). The state (the
    generator at the start of the epoch and the position in it) lets `--resume` redraw the same batches."""

    def __init__(self, seqs: list[list[int]], labels: list[int], batch_size: int, seed: int, pad_id: int):
        self.seqs, self.labels, self.batch_size, self.pad_id = seqs, labels, batch_size, pad_id
        self.generator = torch.Generator().manual_seed(seed)
        self.epoch, self.pos, self.order, self.epoch_start = 0, 0, [], self.generator.get_state()
        self.steps_per_epoch = math.ceil(len(seqs) / batch_size)

    def _new_epoch(self) -> None:
        self.epoch_start = self.generator.get_state()
        self.order, self.pos, self.epoch = length_bucketed(self.seqs, self.batch_size, self.generator), 0, self.epoch + 1

    def next(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.pos >= len(self.order):
            self._new_epoch()
        rows = self.order[self.pos]
        self.pos += 1
        idx, mask = pad_batch([self.seqs[i] for i in rows], self.pad_id)
        return idx, mask, torch.tensor([self.labels[i] for i in rows])

    def state_dict(self) -> dict:
        return {"generator": self.epoch_start, "epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self.epoch, self.pos, self.order = state["epoch"] - 1, 0, []
        if state["epoch"]:
            self._new_epoch()
            self.pos = state["pos"]


class ClassifyTask(Task):
    """Classification in the training loop: accuracy on the eval file decides which checkpoint is kept."""
    metric, higher_is_better = "accuracy", True

    def __init__(self, tokenizer: Tokenizer, train: LabeledBatches, x_eval, y_eval, labels: list[str],
                 meta: dict, progress: bool):
        self.tokenizer, self.train_batches = tokenizer, train
        self.x_eval, self.y_eval, self.labels, self.meta, self.progress = x_eval, y_eval, labels, meta, progress

    def evaluate(self, trainer: Trainer) -> dict:
        r = evaluate(trainer.model, self.x_eval, self.y_eval, len(self.labels), self.train_batches.pad_id,
                     trainer.device)
        epoch = self.train_batches.epoch  # 0: before training, the base's own accuracy with a fresh head
        improved = r["accuracy"] > trainer.best_metric
        if self.progress:
            tqdm.write(f"epoch {epoch} step {trainer.step}: eval loss {r['loss']:.4f}, accuracy {r['accuracy']:.4f}, "
                       f"macro-F1 {r['macro_f1']:.4f}{'  (best, saved)' if improved else ''}\n"
                       + format_confusion(r["confusion"], self.labels))
        return {"val": r["loss"], "epoch": epoch, "accuracy": r["accuracy"], "macro_f1": r["macro_f1"],
                "confusion": r["confusion"]}

    def texts(self, result: dict) -> dict:
        """Text for the trackers at each evaluation (TensorBoard's text tab): the confusion matrix."""
        table = format_confusion(result["confusion"], self.labels)
        return {"eval/confusion": "\n".join("    " + line for line in table.splitlines())}

    def save(self, trainer: Trainer, out_dir: Path) -> None:
        atomic_write_text(out_dir / "classifier.json", json.dumps(self.meta, indent=2) + "\n")


@torch.no_grad()
def evaluate(model: Classifier, seqs: list[list[int]], y: list[int], n_classes: int, pad_id: int,
             device, batch_size: int = 128) -> dict:
    """Accuracy, macro-F1, confusion matrix and mean cross-entropy of `model` on (seqs, y)."""
    was_training = model.training
    model.eval()
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))  # similar lengths together: less padding
    preds, loss_sum = [0] * len(seqs), 0.0
    for i in range(0, len(order), batch_size):
        rows = order[i:i + batch_size]
        idx, mask = pad_batch([seqs[r] for r in rows], pad_id)
        labels = torch.tensor([y[r] for r in rows], device=device)
        logits, loss = model(idx.to(device), mask.to(device), labels)
        loss_sum += loss.item() * len(rows)
        for r, p in zip(rows, logits.argmax(dim=-1).tolist()):
            preds[r] = p
    model.train(was_training)
    return {**classification_report(y, preds, n_classes), "loss": loss_sum / max(1, len(seqs))}


def finetune_classify(c: ClassifyConfig) -> dict:
    """Train, evaluate and save a classifier; returns the best evaluation (accuracy, macro_f1, confusion …)."""
    c.validate()
    out = Path(c.out)
    check_target(out, c.overwrite, source=c.base)
    torch.manual_seed(c.seed)
    train = read_labeled(c.train, c.text_field, c.label_field)
    evalset = read_labeled(c.eval, c.text_field, c.label_field)
    labels = _check_labels(c, train, evalset)
    if c.limit and c.limit < len(train.texts):
        keep = torch.randperm(len(train.texts), generator=torch.Generator().manual_seed(c.seed))[:c.limit].tolist()
        train.texts, train.labels = [train.texts[i] for i in keep], [train.labels[i] for i in keep]

    if c.base is not None:
        backbone, kind, tokenizer = open_base(c.base)
        lr = c.learning_rate or DEFAULT_LR["base"]
    else:
        kind = c.model
        if c.progress:
            print(f"training a WordPiece tokenizer ({c.vocab_size} tokens) on {c.train} …", flush=True)
        tokenizer = Tokenizer.train(train.texts, kind="wordpiece", vocab_size=c.vocab_size)
        backbone = fresh_backbone(kind, tokenizer, c.max_len, c.n_layer, c.n_embd, c.n_head, c.dropout)
        lr = c.learning_rate or DEFAULT_LR[kind]
    if kind not in BACKBONES:
        raise LmkitError(f"{c.base}: a '{kind}' model cannot be fine-tuned for classification")
    max_len = c.max_len if isinstance(backbone, BagOfEmbeddings) else min(c.max_len, backbone.config.block_size)
    model = Classifier(backbone, kind, c.pooling or default_pooling(kind), len(labels), c.dropout)

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

    batches = LabeledBatches(x_train, y_train, c.batch_size, c.seed, tokenizer.pad_id or 0)
    total = batches.steps_per_epoch * c.epochs
    fields = {"text_field": train.text_field, "label_field": train.label_field}
    task = ClassifyTask(tokenizer, batches, x_eval, y_eval, labels, model_meta(model, labels, max_len, fields),
                        c.progress)
    cfg = Config(model=backbone.config, data=DataConfig(data=str(c.train)), train=TrainConfig(
        out_dir=str(out), max_iters=total, batch_size=c.batch_size, learning_rate=lr, min_lr=0.0,
        warmup_iters=max(1, total // 10), weight_decay=c.weight_decay, beta2=0.999, grad_clip=1.0,
        eval_interval=c.eval_every or batches.steps_per_epoch, log_interval=min(10, total), dtype="float32",
        device=c.device, seed=c.seed, max_minutes=c.max_minutes))
    apply_env(cfg, ("train",))  # LMKIT_SET (the README test's tiny runs)
    if c.progress:
        n_params = sum(p.numel() for p in model.parameters())
        print(f"{kind} classifier, {n_params / 1e6:.2f}M parameters, {len(x_train):,} training texts, "
              f"{len(labels)} classes, {c.epochs} epoch(s) of {batches.steps_per_epoch} steps, lr {lr:g}", flush=True)
    result = Trainer(cfg, overwrite=c.overwrite, progress=c.progress, init_model=model, task=task).fit()
    history = [h for h in result.history if "accuracy" in h]
    best = max(history, key=lambda h: h["accuracy"])  # the first of equals: the one that was saved
    return {**best, "best_epoch": best["epoch"], "out_dir": out, "wall_s": result.wall_s, "history": history,
            "labels": labels}
