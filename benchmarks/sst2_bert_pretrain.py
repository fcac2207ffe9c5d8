"""What pretraining buys: a from-scratch BERT pretrained with objective = "mlm" on the SST-2 training
sentences (no labels), then fine-tuned on SST-2 like any other --base, next to the same BERT (same
tokenizer, architecture and initial weights: the step-0 checkpoint of the same run) fine-tuned with the
same budget and no pretraining. Dev accuracy of both.

    python benchmarks/sst2_bert_pretrain.py [--mlm-iters 400] [--set key=value ...] [finetune flags,
        e.g. --limit 30000 --epochs 1]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from _common import report  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "sst2"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--mlm-iters", type=int, default=600)
    ap.add_argument("--set", dest="overrides", nargs="+", default=[], help="pretraining config overrides")
    a, rest = ap.parse_known_args()
    from lmkit.config import load_config
    from lmkit.finetune.fit import ClassifyConfig, finetune_classify
    from lmkit.finetune.tabular import read_labeled
    from lmkit.train.trainer import Trainer
    tmp = Path(tempfile.mkdtemp(prefix="lmkit-sst2-mlm-"))
    text = tmp / "sst2_train_sentences.txt"  # the unlabelled text, one sentence per line, outside the repo
    text.write_text("\n".join(read_labeled(DATA / "train.tsv").texts) + "\n", encoding="utf-8")
    def pretrain(out: Path, iters: int):
        cfg = load_config(None, [f"data={text}", f"out_dir={out}", "tokenizer=wordpiece", "data.vocab_size=8000",
                                 "type=bert", "objective=mlm", "n_layer=4", "n_head=4", "n_embd=128",
                                 "block_size=64", "norm_position=pre", "pos=rope", "batch_size=64",
                                 "learning_rate=3e-3", "min_lr=3e-4", "warmup_iters=100", f"max_iters={iters}", f"eval_interval={max(1, iters)}",
                                 "eval_iters=10", "dropout=0.1", *a.overrides])
        t0 = time.perf_counter()
        return Trainer(cfg).fit(), time.perf_counter() - t0, cfg

    kw = dict(epochs=1, limit=20000, learning_rate=5e-4, max_len=64)
    for flag, value in zip(rest[::2], rest[1::2]):
        name = flag.lstrip("-").replace("-", "_")
        kw[name] = type(kw.get(name, value))(value)
    rows = []
    for name, iters in (("none (step-0 weights)", 0), (f"MLM, {a.mlm_iters} steps", a.mlm_iters)):
        pre, t_pre, cfg = pretrain(tmp / f"bert{iters}", iters)
        t1 = time.perf_counter()
        r = finetune_classify(ClassifyConfig(train=str(DATA / "train.tsv"), eval=str(DATA / "dev.tsv"),
                                             out=str(tmp / f"cls{iters}"), base=str(tmp / f"bert{iters}"), **kw))
        t_ft = time.perf_counter() - t1
        m = cfg.model
        rows.append([f"bert {m.n_layer}x{m.n_embd} ({m.norm_position} norm, {m.pos} positions), WordPiece 8000", name,
                     f"{pre.val_loss:.3f}", ", ".join(f"{k}={v}" for k, v in kw.items()), f"{r['accuracy']:.4f}",
                     f"{r['macro_f1']:.4f}", f"{t_pre:.0f}", f"{t_ft:.0f}"])
    report("SST-2 dev accuracy: BERT from scratch, with and without MLM pretraining on SST-2 train text",
           ["model", "pretraining", "MLM val loss", "fine-tune (same for both)", "dev accuracy", "dev macro-F1",
            "pretrain s", "fine-tune s"], rows,
           notes=f"pretraining overrides: {' '.join(a.overrides) or 'none'}")


if __name__ == "__main__":
    main()
