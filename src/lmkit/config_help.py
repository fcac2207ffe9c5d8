"""One line for every config key: what it means. `lmkit config` prints it beside the key's value, default and
type; tests/test_cli.py checks that every field of config.py has a line here and that no line is left over.
Adding a field to config.py: add its line here too (section.name: meaning, in the words of its comment).
"""
from __future__ import annotations

import dataclasses
import json
import typing

MEANINGS = {
    # [model]
    "model.type": "model family: gpt (decoder-only Transformer), bert (bidirectional encoder, masked LM), "
                  "lstm (recurrent LM)",
    "model.vocab_size": "vocabulary size; 0 = take it from the tokenizer",
    "model.block_size": "context length in tokens",
    "model.n_layer": "number of blocks (layers)",
    "model.n_head": "attention heads per block",
    "model.n_kv_head": "key/value heads (grouped-query attention); none = n_head",
    "model.n_embd": "width of the residual stream (embedding size)",
    "model.mlp_hidden": "MLP hidden width; none = 4 x n_embd (gelu) or 8/3 x n_embd (swiglu)",
    "model.dropout": "dropout probability in training",
    "model.bias": "biases in Linear and norm layers, as GPT-2",
    "model.pos": "positions: learned table, fixed sinusoidal, or rotary (rope)",
    "model.rope_theta": "rope base frequency",
    "model.norm": "normalisation: layernorm or rmsnorm",
    "model.norm_eps": "epsilon of the normalisation",
    "model.mlp": "MLP: gelu, gelu_tanh (GPT-2's approximation), swiglu (Llama), relu2 (Primer)",
    "model.tie_embeddings": "the output head shares the token-embedding matrix",
    "model.qk_norm": "normalise each head's queries and keys before the dot product",
    "model.logit_softcap": "> 0: logits = cap * tanh(logits / cap) (Gemma 2); 0 = off",
    "model.head_size": "width of each q/k/v head; none = n_embd / n_head",
    "model.qkv_bias": "biases on the q/k/v projection even with bias = false (Qwen2)",
    "model.sliding_window": "each token sees at most this many tokens, itself included (Mistral); none = all",
    "model.rope_scaling": "rope frequencies remapped for long contexts: none or llama3 (Llama 3.1)",
    "model.rope_factor": "llama3 rope scaling: the context extension factor",
    "model.rope_low_freq_factor": "llama3 rope scaling: low-frequency factor",
    "model.rope_high_freq_factor": "llama3 rope scaling: high-frequency factor",
    "model.rope_original_context": "llama3 rope scaling: the context the model was trained with",
    "model.type_vocab_size": "bert: segment (token type) embeddings, sentence A / B",
    "model.norm_position": "where blocks normalise: auto (gpt pre-LN, bert post-LN), pre or post",
    "model.rnn": "lstm family: the recurrent cell, lstm or gru",
    # [data]
    "data.data": "what to train on: a prepared folder, a text/.jsonl file, folder, glob or built-in corpus",
    "data.text_field": "the field holding the text in .jsonl rows",
    "data.tokenizer": "char, bpe, wordpiece (trained on the data), or a tokenizer.json / vocab.txt path",
    "data.vocab_size": "vocabulary size when training a bpe or wordpiece tokenizer",
    "data.val_fraction": "share of the documents held out for validation",
    "data.errors": "bytes that are not UTF-8: strict (fail) or replace",
    "data.normalize_newlines": "drop a leading byte-order mark and read CRLF / CR line ends as LF",
    "data.sources": "several sources mixed by weight ([[data.sources]]: path, weight, ...); replace data",
    "data.normalize": "text normalisations in order: nfc, nfkc, t2s, s2t",
    "data.dedup": "drop repeated documents: none, exact (identical) or minhash (near)",
    "data.min_chars": "drop documents shorter than this many characters; 0 = keep all",
    "data.streaming": "read hf: datasets as a stream while preparing",
    "data.max_tokens": "stop preparing each source after about this many tokens; 0 = all",
    # [train]
    "train.out_dir": "run directory (lmkit train --out)",
    "train.max_iters": "training steps (optimizer steps)",
    "train.batch_size": "sequences per micro-batch",
    "train.gradient_accumulation_steps": "micro-batches per optimizer step",
    "train.learning_rate": "peak learning rate (AdamW)",
    "train.min_lr": "learning rate at the end of the decay",
    "train.warmup_iters": "steps of linear warm-up",
    "train.lr_decay_iters": "step where the decay ends; 0 = max_iters",
    "train.weight_decay": "AdamW weight decay on matrices",
    "train.beta1": "AdamW beta1",
    "train.beta2": "AdamW beta2",
    "train.grad_clip": "clip the gradient norm to this; 0 = no clipping",
    "train.optimizer": "adamw, or muon for the hidden matrices with AdamW for the rest",
    "train.muon_lr": "Muon's peak learning rate (same schedule as learning_rate)",
    "train.muon_momentum": "Muon's momentum",
    "train.lr_schedule": "cosine (warm-up, cosine decay) or wsd (warm-up, stable, linear decay at the end)",
    "train.decay_fraction": "wsd: share of lr_decay_iters spent decaying",
    "train.init_from": "a run directory whose weights start this run (e.g. from lmkit grow)",
    "train.eval_interval": "evaluate (and checkpoint) every this many steps",
    "train.eval_iters": "batches per split in each evaluation",
    "train.log_interval": "log the training loss every this many steps",
    "train.checkpoint_interval": "also checkpoint every this many steps; 0 = at every evaluation",
    "train.max_minutes": "time budget: stop (evaluate and save) after this many minutes; 0 = none",
    "train.dtype": "autocast compute dtype: auto (bfloat16 where fast, else float32), float32, bfloat16, float16",
    "train.device": "auto (cuda if there is one, else cpu), cpu, cuda, cuda:N",
    "train.compile": "torch.compile the model",
    "train.seed": "random seed (weights, batches, dropout)",
    "train.num_threads": "CPU threads; 0 = the fastest count right now (timed at the start)",
    "train.objective": "clm (next-token prediction) or mlm (masked LM, for bert)",
    "train.mlm_probability": "mlm: share of tokens selected for the loss",
    "train.parallel": "several processes under torchrun: none, ddp or fsdp",
    "train.fsdp_mixed_precision": "FSDP2 parameter dtype in compute: none, bfloat16 or float16",
    "train.fsdp_cpu_offload": "FSDP2 keeps sharded parameters, gradients and optimizer state in CPU memory",
    "train.dist_timeout": "seconds a rank waits in a collective before the job stops",
    "train.logger": "where the metrics also go: tensorboard, trackio, wandb, mlflow; none = metrics.jsonl only",
    "train.eval_samples": "texts a causal model generates at each evaluation",
    "train.peak_tflops": "the accelerator's peak TFLOP/s for MFU; 0 = a known GPU's, else no MFU",
    "train.activation_checkpointing": "recompute each block's activations in backward (less memory)",
}


def type_name(tp) -> str:
    """A field's type in words: int, float, str, bool, 'int or none', 'gpt | bert | lstm', 'list of str'."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Union:
        return " or ".join("none" if a is type(None) else type_name(a) for a in args)
    if origin is typing.Literal:
        return " | ".join(map(str, args))
    if origin is list:
        return "list of " + ("tables" if args and args[0] is dict else type_name(args[0]) if args else "values")
    return getattr(tp, "__name__", str(tp))


def shown(value) -> str:
    """A value as it is written in a TOML file (strings quoted, true/false, none)."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value, ensure_ascii=False) if isinstance(value, (str, list, dict)) else f"{value:g}" \
        if isinstance(value, float) else str(value)


def rows(cfg) -> list[tuple[str, str, str, str, str]]:
    """(section.key, value in cfg, default, type, meaning) for every field of a config.Config, in file order."""
    out = []
    for section in ("model", "data", "train"):
        obj = getattr(cfg, section)
        hints = typing.get_type_hints(type(obj))
        default = type(obj)()
        for f in dataclasses.fields(obj):
            key = f"{section}.{f.name}"
            out.append((key, shown(getattr(obj, f.name)), shown(getattr(default, f.name)), type_name(hints[f.name]),
                        MEANINGS.get(key, "")))
    return out
