"""MLM sanity: pretrain a small BERT on tiny-shakespeare (objective = "mlm") for a few minutes, then
measure masked-token top-1 accuracy on the held-out split against the unigram baseline (always guess the
most frequent training token).

    python benchmarks/mlm_shakespeare.py [--set key=value ...]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from _common import report  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinyshakespeare" / "input.txt"
# pre-LN and rotary positions: with BERT's learned position table this small model sits near the unigram
# plateau for thousands of steps (RESULTS.md: 14-15% top-1 after 800-1500 steps); pos=learned shows it
SETTINGS = ["tokenizer=wordpiece", "data.vocab_size=4096", "type=bert", "objective=mlm", "n_layer=4", "n_head=4",
            "n_embd=128", "block_size=64", "norm_position=pre", "pos=rope", "batch_size=64", "learning_rate=3e-3",
            "min_lr=3e-4", "warmup_iters=100", "max_iters=600", "eval_interval=200", "eval_iters=10",
            "dtype=float32"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--set", dest="overrides", nargs="+", default=[])
    ap.add_argument("--eval-batches", type=int, default=50)
    a = ap.parse_args()
    from lmkit import load
    from lmkit.config import load_config
    from lmkit.data.batches import MLMBatches
    from lmkit.data.shards import open_split
    from lmkit.train.trainer import Trainer
    out = tempfile.mkdtemp(prefix="lmkit-mlm-")
    cfg = load_config(None, [f"data={DATA}", f"out_dir={out}", *SETTINGS, *a.overrides])
    t0 = time.perf_counter()
    result = Trainer(cfg, progress=True).fit()
    wall = time.perf_counter() - t0
    lm = load(out)
    train_tokens, val_tokens = open_split(Path(out) / "data", "train"), open_split(Path(out) / "data", "val")
    counts = np.bincount(np.asarray(train_tokens), minlength=lm.tokenizer.vocab_size)
    counts[[i for i in (lm.tokenizer.cls_id, lm.tokenizer.sep_id, lm.tokenizer.pad_id, lm.tokenizer.mask_id)]] = 0
    unigram = int(counts.argmax())
    batches = MLMBatches(val_tokens, cfg.model.block_size, cfg.train.batch_size, 0, lm.tokenizer, name="val")
    hits = base_hits = n = 0
    with torch.no_grad():
        for _ in range(a.eval_batches):
            x, y = batches.next()
            logits, _ = lm.model(x)
            sel = y != -100
            hits += (logits.argmax(-1)[sel] == y[sel]).sum().item()
            base_hits += (y[sel] == unigram).sum().item()
            n += sel.sum().item()
    report("MLM sanity: small BERT on tiny-shakespeare, held-out masked-token top-1 accuracy",
           ["model", "steps", "val MLM loss", "masked positions", "top-1 accuracy", "unigram baseline",
            "train wall s"],
           [[f"bert {cfg.model.n_layer}x{cfg.model.n_embd} ({cfg.model.norm_position} norm, {cfg.model.pos} positions), "
             f"WordPiece {lm.tokenizer.vocab_size}", result.step,
             f"{result.val_loss:.3f}", n, f"{hits / n:.4f}", f"{base_hits / n:.4f} ('{lm.tokenizer.decode([unigram])}')",
             f"{wall:.0f}"]],
           notes="Accuracy counts every selected position (80% [MASK], 10% random, 10% kept), as BERT's loss does.")


if __name__ == "__main__":
    main()
