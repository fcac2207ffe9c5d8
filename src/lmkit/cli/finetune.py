"""Commands that adapt a model to a task: finetune (classify, sft, merge), predict."""
# Handlers import the library when they run, so that `lmkit --help` and flag errors never load torch.
from __future__ import annotations

import os
from pathlib import Path

from ..errors import LmkitError
from . import flags


def register(g: flags.Group) -> None:
    p = g.command("finetune", None, "fine-tune a model for a task")
    tasks = flags.actions(p, "task", "TASK")
    _classify_flags(flags.bind(
        tasks, "classify", run_classify, "train a text classifier on a labelled csv/tsv/jsonl file",
        "Fine-tune a pretrained model (--base: an lmkit run or a Hugging Face BERT folder) or train a fresh "
        "one (--model) to classify texts. Reports accuracy, macro-F1 and the confusion matrix on --eval after "
        "every epoch and keeps the best checkpoint in --out."))
    _sft_flags(flags.bind(
        tasks, "sft", run_sft, "supervised fine-tuning on conversations or instructions (full or LoRA)",
        "Fine-tune a GPT (an lmkit run or a Hugging Face folder) on chat data: rows with 'messages' or Alpaca "
        "'instruction'/'input'/'output'. The loss covers the assistant's replies only; conversations are "
        "packed with attention kept inside each; a held-out share (val_fraction) gives the validation loss, "
        "and the best checkpoint is kept. The run's chat template is used by chat, generate --chat and serve."))
    f = flags.bind(tasks, "merge", run_merge, "fold a LoRA run's adapters into its weights (a plain run)",
                   "Write RUN (a LoRA fine-tune) as a plain run directory OUT: W + (alpha/r)·B·A in every adapted "
                   "layer; it loads, serves and exports like any run.")
    f.add_argument("run_dir", help="run directory written by lmkit finetune sft --lora-rank R")
    flags.out(f, "run directory to write", legacy="out_dir")
    flags.overwrite(f)

    p = g.command("predict", run_predict, "classify texts with a fine-tuned classifier",
                  "Print the predicted label and its probability for TEXT, or for every row of --file "
                  "(csv/tsv/jsonl; writes --out as jsonl when given).")
    p.add_argument("run_dir", help="directory written by lmkit finetune classify")
    p.add_argument("text", nargs="?", help="text to classify")
    p.add_argument("--file", help="classify every row of this csv/tsv/jsonl file instead")
    p.add_argument("--text-field", help="column holding the text (default: found)")
    p.add_argument("--out", help="write predictions to this .jsonl file")


def _classify_flags(f) -> None:
    f.add_argument("--train", required=True, help="labelled training file (.csv, .tsv or .jsonl)")
    f.add_argument("--eval", required=True, help="labelled evaluation file, same format")
    f.add_argument("--out", required=True, help="output run directory")
    src = f.add_mutually_exclusive_group(required=True)
    src.add_argument("--base", help="start from this lmkit run or Hugging Face BERT folder")
    src.add_argument("--model", choices=["bag-of-embeddings", "lstm", "gpt", "bert"], help="train this model from scratch")
    f.add_argument("--text-field", help="column holding the text (default: found: text, sentence, review, …)")
    f.add_argument("--label-field", help="column holding the label (default: found: label, sentiment, class, …)")
    flags.number(f, "--epochs", lo=1, default=3, help="passes over the training file (default 3)")
    flags.number(f, "--batch-size", lo=1, default=32, help="texts per step (default 32)")
    flags.number(f, "--learning-rate", type=float, lo=0, lo_open=True,
                 help="peak learning rate (default: the rate of the SST-2 figures in benchmarks/RESULTS.md: 3e-3 "
                      "for bag-of-embeddings and lstm, 5e-4 for gpt and bert, 1e-4 with --base)")
    flags.number(f, "--max-len", lo=3, hi=flags.MAX_LEN, default=128,
                 help="tokens per text; longer ones are truncated (default 128)")
    f.add_argument("--pooling", choices=["cls", "mean", "last"], help="default mean for encoders, last for gpt/lstm")
    flags.number(f, "--n-layer", lo=1, hi=flags.MAX_LAYERS, default=2, help="fresh model: layers (default 2)")
    flags.number(f, "--n-embd", lo=1, hi=flags.MAX_WIDTH, default=128, help="fresh model: width (default 128)")
    flags.number(f, "--n-head", lo=1, hi=flags.MAX_HEADS, default=4, help="fresh model: attention heads (default 4)")
    flags.number(f, "--vocab-size", lo=1, default=8000, help="fresh model: WordPiece vocabulary (default 8000)")
    flags.number(f, "--limit", lo=0, default=0, help="train on a random subset of this many rows (default all)")
    flags.number(f, "--eval-every", lo=0, default=0, help="also evaluate every N steps (default: per epoch)")
    flags.number(f, "--max-minutes", type=float, lo=0, default=0, help="stop training after this many minutes")
    flags.seed(f, default=1337)
    flags.device(f)
    flags.overwrite(f, "replace a classifier already in --out")
    flags.quiet(f)


def _sft_flags(f) -> None:
    f.add_argument("--base", required=True, help="lmkit run directory or Hugging Face model folder to start from")
    f.add_argument("--data", required=True, help=".json (a list of rows) or .jsonl")
    f.add_argument("--out", required=True, help="output run directory")
    flags.number(f, "--lora-rank", lo=0, default=0, help="train LoRA adapters of this rank only (default 0: "
                   "full fine-tuning); a base with its own chat template also gets them in PEFT's format, OUT/peft")
    flags.number(f, "--lora-alpha", type=float, lo=0, default=0.0,
                 help="LoRA scale alpha (update × alpha/rank; default 2 × rank)")
    f.add_argument("--lora-targets", nargs="+", default=None, metavar="NAME",
                   help="Linear modules to adapt, by name suffix (default: attn.qkv attn.proj mlp.fc mlp.proj)")
    flags.number(f, "--lora-dropout", type=float, lo=0, hi=1, hi_open=True, default=0.0,
                 help="dropout on the adapters' input (default 0)")
    f.add_argument("--too-long", choices=["drop", "truncate"], default="drop",
                   help="conversations longer than the context: drop them (default) or keep their beginning")
    flags.overrides(f, "training settings, e.g. --set max_iters=300 learning_rate=2e-4 batch_size=8")
    flags.train_settings(f, out_key=None)
    f.add_argument("--merge", action="store_true", help="LoRA: also write OUT/merged, a plain run with the "
                   "adapters folded into the weights")
    f.add_argument("--resume", action="store_true", help="continue the fine-tuning run in --out")
    flags.overwrite(f, "replace a run already in --out")
    flags.quiet(f)


def _check_fresh_size(a) -> None:
    """A fresh model (--model) whose float32 weights, gradients and AdamW moments (16 bytes a parameter)
    would not fit in this machine's memory is refused before anything is allocated."""
    params = (a.vocab_size + a.max_len) * a.n_embd + a.n_layer * 12 * a.n_embd ** 2  # a Transformer at most
    need = 16 * params
    try:
        have = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # no sysconf (Windows): nothing to compare with
        return
    if need > have:
        raise LmkitError(f"--n-layer {a.n_layer} --n-embd {a.n_embd} --vocab-size {a.vocab_size}: a fresh model of "
                         f"about {params / 1e9:.1f}B parameters needs ~{need / 2**30:,.0f} GiB to train, more than "
                         f"this machine's {have / 2**30:,.0f} GiB")


def run_classify(a) -> None:
    from ..finetune.fit import ClassifyConfig, finetune_classify
    if a.model:
        _check_fresh_size(a)
    c = ClassifyConfig(train=a.train, eval=a.eval, out=a.out, base=a.base, model=a.model, text_field=a.text_field,
                       label_field=a.label_field, epochs=a.epochs, batch_size=a.batch_size,
                       learning_rate=a.learning_rate, max_len=a.max_len, pooling=a.pooling, n_layer=a.n_layer,
                       n_head=a.n_head, n_embd=a.n_embd, vocab_size=a.vocab_size, limit=a.limit,
                       eval_every=a.eval_every, max_minutes=a.max_minutes, seed=a.seed, device=a.device,
                       overwrite=a.overwrite, progress=not a.quiet)
    r = finetune_classify(c)
    print(f"best: epoch {r['best_epoch']} step {r['step']}: accuracy {r['accuracy']:.4f}, macro-F1 {r['macro_f1']:.4f} "
          f"on {a.eval} ({r['wall_s']:.0f} s)")
    print(f"classifier saved in {r['out_dir']}  (predict: lmkit predict {r['out_dir']} \"some text\")")


def run_sft(a) -> int:
    from ..finetune.sft import SFTConfig, finetune_sft
    if (a.lora_alpha or a.lora_targets or a.merge) and not a.lora_rank:
        raise LmkitError("--lora-alpha, --lora-targets and --merge need --lora-rank R (LoRA)")
    targets = {"lora_targets": tuple(a.lora_targets)} if a.lora_targets else {}  # else SFTConfig's default
    c = SFTConfig(base=a.base, data=a.data, out=a.out, lora_rank=a.lora_rank, lora_alpha=a.lora_alpha,
                  lora_dropout=a.lora_dropout, too_long=a.too_long, overrides=a.overrides + flags.settings_of(a), merge=a.merge,
                  resume=a.resume, overwrite=a.overwrite, progress=not a.quiet, **targets)
    r = finetune_sft(c)
    print(f"step {r.step}: val loss {r.val_loss:.4f} (best {r.best_metric:.4f}, kept), train loss "
          f"{r.train_loss:.4f}, {r.wall_s:.0f} s")
    print(f"run directory: {r.out_dir}  (try: lmkit chat {r.out_dir})")
    if a.merge:
        print(f"merged run: {Path(r.out_dir) / 'merged'}")
    if a.lora_rank and (Path(r.out_dir) / "peft" / "adapter_config.json").is_file():
        print(f"PEFT adapter: {Path(r.out_dir) / 'peft'}  (peft.PeftModel.from_pretrained(base_model, that folder); "
              "lmkit reads it too)")
    return 130 if r.interrupted else 0


def run_merge(a) -> None:
    from ..finetune.sft import merge_run
    print(f"wrote {merge_run(a.run_dir, a.out, overwrite=a.overwrite)} (adapters merged)")


def run_predict(a) -> None:
    import json
    from ..finetune.classify import load_classifier
    from ..finetune.tabular import read_labeled
    from ..io import atomic_write_text, check_file_target
    if (a.text is None) == (a.file is None):
        raise LmkitError("predict: give a TEXT or --file FILE (not both)")
    if a.out:
        check_file_target(a.out)
    clf = load_classifier(a.run_dir)
    if a.text is not None:
        label, p = clf.predict(a.text)
        print(f"{label}\t{p:.4f}")
        return
    data = read_labeled(a.file, a.text_field or None, need_labels=False)
    results = clf.predict(data.texts)
    if not a.out:
        for t, (label, p) in zip(data.texts, results):
            print(f"{label}\t{p:.4f}\t{t}")
        return
    atomic_write_text(a.out, "".join(json.dumps({"row": r, "text": t, "label": l, "probability": p}) + "\n"
                                     for r, t, (l, p) in zip(data.rows, data.texts, results)))
    print(f"wrote {len(results)} predictions to {a.out}")
