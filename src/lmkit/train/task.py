"""What the training loop learns from: the `Task` interface, and `ShardTask` (language modelling on token
shards) with `prepare_data`, which makes those shards from raw text when a config names a corpus."""
from __future__ import annotations

from pathlib import Path

import torch

from ..config import Config
from ..data.batches import make_batches
from ..data.plan import matches, prepare_config
from ..data.shards import is_prepared, load_meta, open_split
from ..tokenizer import Tokenizer
from .checkpoint import fault
from .device import autocast_ctx

EVAL_SEED = 1234  # every evaluation draws the same windows, so that evaluations compare


def prepare_data(cfg: Config, out_dir: Path, progress: bool = True) -> Path:
    """The prepared-data folder for this run: cfg.data.data itself, or <out_dir>/data made from raw text."""
    if not cfg.data.sources and is_prepared(cfg.data.data):
        return Path(cfg.data.data)
    data_dir = out_dir / "data"
    if is_prepared(data_dir) and matches(load_meta(data_dir), cfg.data):
        return data_dir
    meta = prepare_config(cfg.data, data_dir, progress)  # sources, cleaning, streaming: data/plan.py
    if progress:
        print(f"prepared {meta['train_tokens']:,} train / {meta['val_tokens']:,} val tokens "
              f"(vocab {meta['vocab_size']}) in {data_dir}", flush=True)
    return data_dir


class Task:
    """What the loop learns from. The default, `ShardTask`, draws windows of the run's token shards
    (pretraining, clm or mlm); fine-tuning brings its own (classification, instruction tuning).

    tokenizer:      saved as the run's tokenizer.json.
    train_batches:  `.next()` -> a tuple of CPU tensors; the loop calls `model(*batch) -> (output, loss)`;
                    `.state_dict()` / `.load_state_dict(state)` make `--resume` exact.
    evaluate(trainer) -> dict with "val" (mean held-out loss), optionally "train" and other metrics.
    metric:         None: save the latest checkpoint at every evaluation. Else a key of evaluate()'s
                    dict: save only when it improves (keep the best), in the direction `higher_is_better`.
    save(trainer, out_dir): extra files written with every checkpoint (default: none).
    texts(result) -> {tag: text} for the trackers at each evaluation (default: none; e.g. a confusion matrix).
    """
    tokenizer: Tokenizer
    train_batches = None
    metric: str | None = None
    higher_is_better: bool = False

    def evaluate(self, trainer) -> dict:
        raise NotImplementedError

    def save(self, trainer, out_dir: Path) -> None:
        pass

    def texts(self, result: dict) -> dict:
        return {}


class ShardTask(Task):
    """Language modelling on a prepared-data folder: random windows of train.bin, loss means over
    `eval_iters` batches of each split drawn with a fixed seed so evaluations compare (under torchrun
    each rank takes its slice of every global batch and the means are averaged)."""

    def __init__(self, cfg: Config, data_dir: Path, rank: int = 0, world_size: int = 1):
        self.cfg, self.rank, self.world_size = cfg, rank, world_size
        self.tokenizer = Tokenizer.load(data_dir / "tokenizer.json")
        self.train_batches = make_batches(open_split(data_dir, "train"), cfg, cfg.train.seed, self.tokenizer,
                                          rank=rank, world_size=world_size)
        self.val_tokens = open_split(data_dir, "val")
        make_batches(self.val_tokens, cfg, 0, self.tokenizer, name="val")  # size check only

    def evaluate(self, trainer) -> dict:
        out = {}
        for split, tokens in (("train", self.train_batches.tokens), ("val", self.val_tokens)):
            batches = make_batches(tokens, self.cfg, EVAL_SEED, self.tokenizer, name=split, rank=self.rank,
                                   world_size=self.world_size)
            losses = torch.zeros(self.cfg.train.eval_iters)
            for i in range(self.cfg.train.eval_iters):
                fault("eval")
                x, y = batches.next()
                with autocast_ctx(trainer.device, trainer.dtype):
                    _, loss = trainer.forward(x.to(trainer.device), y.to(trainer.device))
                losses[i] = loss.item()
            out[split] = trainer.dist.mean(losses.mean())
        return out
