"""Configuration: plain dataclasses, read from TOML files and `key=value` overrides, validated once here.

A config file may be flat (nanoGPT style) or use sections:

    n_layer = 4              # flat: the key belongs to whichever section owns the name
    [model]
    n_head = 4               # sectioned: the same thing, spelled out

Overrides on the command line use the same names: `--set max_iters=600 model.n_embd=256`.
The environment variable LMKIT_SET (same `key=value` form, space-separated) is applied after both; the
README test uses it to run every documented training command at a tiny size.
Everything deeper in lmkit trusts the config it is handed.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import os
import sys
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
import typing
from typing import Any, get_args, get_origin, Literal, Optional, Union

from . import config_rules
from .errors import LmkitError
from .io import atomic_write_text


@dataclass
class ModelConfig:
    # model family: gpt = decoder-only causal Transformer; bert = bidirectional encoder (post-LN, masked LM);
    # lstm = recurrent language model (cell chosen by `rnn`)
    type: Literal["gpt", "bert", "lstm"] = "gpt"
    vocab_size: int = 0  # 0 = take it from the tokenizer
    block_size: int = 256  # context length in tokens
    n_layer: int = 6
    n_head: int = 6
    n_kv_head: Optional[int] = None  # grouped-query attention; None = n_head (plain multi-head)
    n_embd: int = 384
    mlp_hidden: Optional[int] = None  # None = 4*n_embd (gelu) or the Llama-style 8/3*n_embd (swiglu)
    dropout: float = 0.0
    bias: bool = True  # biases in Linear and LayerNorm layers, as GPT-2
    pos: Literal["learned", "sinusoidal", "rope"] = "learned"
    rope_theta: float = 10000.0
    norm: Literal["layernorm", "rmsnorm"] = "layernorm"
    norm_eps: float = 1e-5
    # gelu_tanh = GPT-2's approximation; relu2 = ReLU(x W_1)² W_2 (So et al., 2021, "Primer")
    mlp: Literal["gelu", "gelu_tanh", "swiglu", "relu2"] = "gelu"
    tie_embeddings: bool = True  # the output head shares the token-embedding matrix
    qk_norm: bool = False  # normalise each head's queries and keys (with `norm`) before the dot product
    logit_softcap: float = 0.0  # > 0: logits = cap · tanh(logits / cap) (Gemma 2); 0 = off
    head_size: Optional[int] = None  # width of each q/k/v head; None = n_embd / n_head (Qwen3 sets its own)
    qkv_bias: bool = False  # biases on the q/k/v projection even with bias = false (Qwen2)
    sliding_window: Optional[int] = None  # each token sees at most this many tokens, itself included (Mistral)
    # rope frequencies remapped for long contexts: llama3 = Llama 3.1's, with the four rope_* fields below
    rope_scaling: Literal["none", "llama3"] = "none"
    rope_factor: float = 8.0
    rope_low_freq_factor: float = 1.0
    rope_high_freq_factor: float = 4.0
    rope_original_context: int = 8192
    type_vocab_size: int = 2  # bert: segment (token type) embeddings, sentence A / B
    # where each block normalises: auto = as the family's paper (gpt: pre-LN, bert: post-LN);
    # bert with "pre" (x + Attn(LN(x)), a final LN) trains faster from scratch (Xiong et al., 2020)
    norm_position: Literal["auto", "pre", "post"] = "auto"
    rnn: Literal["lstm", "gru"] = "lstm"  # lstm: the recurrent cell

    @property
    def head_dim(self) -> int:
        return self.head_size or self.n_embd // self.n_head

    @property
    def hidden_dim(self) -> int:
        if self.mlp_hidden:
            return self.mlp_hidden
        if self.mlp == "swiglu":  # keep parameters equal to a 4x GELU MLP: 3 matrices of 8/3 d
            return 64 * ((8 * self.n_embd // 3 + 63) // 64)
        return 4 * self.n_embd


@dataclass
class DataConfig:
    # What to train on: a folder made by `lmkit prepare` (holds meta.json), or raw text that `train`
    # prepares itself: a .txt/.md/.jsonl file, a folder, a glob, or a built-in corpus
    # ("shakespeare", "python-stdlib").
    data: str = "shakespeare"
    text_field: str = "text"  # the field that holds the text in .jsonl rows
    tokenizer: str = "char"  # "char", "bpe", "bpe-chars", "wordpiece" (BERT), or a path to a tokenizer.json / vocab.txt
    vocab_size: int = 4096  # for tokenizer = "bpe" or "wordpiece"
    val_fraction: float = 0.1
    errors: Literal["strict", "replace"] = "strict"  # what to do with bytes that are not UTF-8
    # drop a text file's leading byte-order mark and read CRLF / lone CR line ends as LF (false: keep them)
    normalize_newlines: bool = True
    # hub datasets, mixtures, cleaning (data/hub.py, data/mixture.py, data/clean.py)
    # several sources mixed by weight, [[data.sources]] tables: path, weight (> 0), optional text_field and
    # max_tokens; when given they replace `data`, and training draws windows in proportion to the weights
    sources: list[dict] = field(default_factory=list)
    normalize: list[str] = field(default_factory=list)  # text normalisations in order: nfc, nfkc, t2s, s2t
    dedup: Literal["none", "exact", "minhash"] = "none"  # drop repeated documents: identical, or near (MinHash)
    min_chars: int = 0  # drop documents shorter than this many characters (after normalising); 0 = keep all
    streaming: bool = False  # read hf: datasets as a stream while preparing (corpora larger than disk/memory)
    max_tokens: int = 0  # stop preparing each source after about this many tokens; 0 = all of it


@dataclass
class TrainConfig:
    out_dir: str = "runs/default"
    max_iters: int = 2000
    batch_size: int = 12  # sequences per micro-batch
    gradient_accumulation_steps: int = 1
    learning_rate: float = 1e-3
    min_lr: float = 1e-4
    warmup_iters: int = 100
    lr_decay_iters: int = 0  # 0 = max_iters
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0  # 0 = no clipping
    # adamw = AdamW for every parameter; muon = Muon for the hidden 2-D matrices (attention and MLP),
    # AdamW for embeddings, the output head, norm gains and biases (see train/optim.py)
    optimizer: Literal["adamw", "muon"] = "adamw"
    muon_lr: float = 0.02  # Muon's peak learning rate; follows the same schedule as learning_rate
    muon_momentum: float = 0.95
    # cosine = warm-up, cosine decay to min_lr at lr_decay_iters; wsd = warm-up, stable at learning_rate,
    # then a linear decay to min_lr over the last decay_fraction of lr_decay_iters
    lr_schedule: Literal["cosine", "wsd"] = "cosine"
    decay_fraction: float = 0.2
    init_from: str = ""  # a run directory whose weights start this run (e.g. one made by `lmkit grow`)
    eval_interval: int = 250
    eval_iters: int = 20
    log_interval: int = 10
    checkpoint_interval: int = 0  # 0 = at every eval
    max_minutes: float = 0  # time budget: stop (evaluate and save) once training has run this long; 0 = none
    # autocast compute dtype; auto = bfloat16 where the hardware computes it fast (CUDA with bf16,
    # CPUs with AVX-512 BF16 / AMX), else float32. Weights and optimizer state stay float32.
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    device: str = "auto"  # auto = cuda if available, else cpu
    compile: bool = False
    seed: int = 1337
    num_threads: int = 0  # CPU threads; 0 = the fastest count right now (1, half or all cores, timed at start)
    # clm = next-token prediction; mlm = masked LM (BERT): mlm_probability of the tokens are selected,
    # of those 80% become [MASK], 10% a random token, 10% stay; the loss covers the selected ones only
    objective: Literal["clm", "mlm"] = "clm"
    mlm_probability: float = 0.15
    # several processes (launched by torchrun; see docs/distributed.md): "ddp" = DistributedDataParallel,
    # "fsdp" = FSDP2 fully_shard per block then the root. "none" trains one process; under torchrun with
    # more than one rank it means "ddp", since unwrapped ranks would drift apart.
    parallel: Literal["none", "ddp", "fsdp"] = "none"
    fsdp_mixed_precision: Literal["none", "bfloat16", "float16"] = "none"  # FSDP2 parameter dtype in compute
    fsdp_cpu_offload: bool = False  # FSDP2 keeps sharded parameters, gradients and optimizer state in CPU memory
    dist_timeout: float = 600.0  # seconds a rank waits in a collective before the job stops with an error
    # where the metrics also go (train/trackers.py): any of tensorboard (event files in out_dir), trackio,
    # wandb, mlflow; [] or "none" = metrics.jsonl only. A list, or on the command line "tensorboard,wandb"
    logger: list[str] = field(default_factory=lambda: ["tensorboard"])
    eval_samples: int = 2  # texts a causal model generates at each evaluation (samples.jsonl, TensorBoard, report)
    peak_tflops: float = 0.0  # the accelerator's peak TFLOP/s for MFU; 0 = a known GPU's bf16 peak, else no MFU
    activation_checkpointing: bool = False  # keep only each block's input, recompute the rest in backward


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict, source: str = "config") -> "Config":
        cfg = cls()
        apply(cfg, _flatten(d), source)
        return cfg


SECTIONS = ("model", "data", "train")


def _section_keys(cfg: Config) -> dict[str, str]:
    """Flat key -> section, for every field name (names are unique across sections)."""
    owner = {}
    for section in SECTIONS:
        for f in fields(getattr(cfg, section)):
            owner.setdefault(f.name, section)
    return owner


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and k in SECTIONS and not prefix:
            out.update(_flatten(v, k + "."))
        else:
            out[prefix + k] = v
    return out


def _resolve_key(cfg: Config, key: str, source: str) -> tuple[object, dataclasses.Field]:
    owner = _section_keys(cfg)
    if "." in key:
        section, name = key.split(".", 1)
    else:
        section, name = owner.get(key), key
    if section in SECTIONS:
        obj = getattr(cfg, section)
        for f in fields(obj):
            if f.name == name:
                return obj, f
    known = list(owner) + [f"{s}.{n}" for n, s in owner.items()]
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    raise LmkitError(f"{source}: unknown config key '{key}'{hint}")


def _coerce(value: Any, tp: Any, key: str, source: str) -> Any:
    """Turn a TOML value or a command-line string into the field's declared type."""
    origin = get_origin(tp)
    if origin is Union:  # Optional[X]
        inner = [a for a in get_args(tp) if a is not type(None)][0]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            return None
        return _coerce(value, inner, key, source)
    if origin is list:  # a TOML list, or "a,b" from --set; "none" or "" = []
        if isinstance(value, str):
            value = [] if value.strip().lower() in ("none", "") else [v.strip() for v in value.split(",")]
        if not isinstance(value, list):
            raise LmkitError(f"{source}: {key} = {value!r} is not a list")
        return [_coerce(v, get_args(tp)[0], key, source) for v in value if v != "none"]
    if origin is Literal:
        choices = get_args(tp)
        if value not in choices:
            raise LmkitError(f"{source}: {key} = {value!r} is not one of {', '.join(map(str, choices))}")
        return value
    try:
        if tp is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on", "false", "0", "no", "off"):
                return value.lower() in ("true", "1", "yes", "on")
            raise ValueError
        if tp is int:
            if isinstance(value, bool):
                raise ValueError
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(float(value)) if isinstance(value, str) and "e" in value.lower() else int(value)
        if tp is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if tp is str:
            return str(value)
        if tp is dict and isinstance(value, dict):  # a TOML table in a list, e.g. [[data.sources]]
            return dict(value)
    except (TypeError, ValueError):
        pass
    raise LmkitError(f"{source}: {key} = {value!r} is not a valid {getattr(tp, '__name__', tp)}")


def apply(cfg: Config, flat: dict[str, Any], source: str) -> Config:
    hints = {s: typing.get_type_hints(type(getattr(cfg, s))) for s in SECTIONS}
    for key, value in flat.items():
        obj, f = _resolve_key(cfg, key, source)
        section = next(s for s in SECTIONS if getattr(cfg, s) is obj)
        setattr(obj, f.name, _coerce(value, hints[section][f.name], key, source))
    return cfg


def parse_overrides(pairs: list[str], source: str = "--set") -> dict[str, str]:
    out = {}
    for p in pairs:
        if "=" not in p:
            raise LmkitError(f"{source}: '{p}' is not of the form key=value")
        k, v = p.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> Config:
    cfg = Config()
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise LmkitError(f"{path}: no such config file")
        try:
            d = tomllib.loads(path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise LmkitError(f"{path}: not a valid TOML file ({e})")
        apply(cfg, _flatten(d), str(path))
    if overrides:
        apply(cfg, parse_overrides(overrides), "--set")
    apply_env(cfg)
    validate(cfg)
    return cfg


def apply_env(cfg: Config, sections: tuple[str, ...] = SECTIONS) -> Config:
    """The LMKIT_SET environment variable's `key=value` pairs (e.g. "n_embd=32 max_iters=20": the README test's
    tiny runs), applied last so they win over the file and --set; keys outside `sections` are left alone (a
    fine-tune passes ("train",) to keep its base model's shape). A run's saved config.json is never touched."""
    pairs = os.environ.get("LMKIT_SET", "").split()
    if not pairs:
        return cfg
    flat = {}
    for key, value in parse_overrides(pairs, "LMKIT_SET").items():
        obj, _ = _resolve_key(cfg, key, "LMKIT_SET")
        if next(s for s in SECTIONS if getattr(cfg, s) is obj) in sections:
            flat[key] = value
    print(f"LMKIT_SET: {' '.join(f'{k}={v}' for k, v in flat.items())}", file=sys.stderr)
    return apply(cfg, flat, "LMKIT_SET")


def validate(cfg: Config) -> Config:
    """Check every rule of config_rules.py once, at the edge; the rest of lmkit trusts the result."""
    config_rules.check(cfg.model, cfg.data, cfg.train)
    return cfg


def save_json(cfg: Config, path: Path) -> None:
    atomic_write_text(path, json.dumps(cfg.to_dict(), indent=2, ensure_ascii=False) + "\n")


def load_json(path: Path) -> Config:
    try:
        d = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise LmkitError(f"{path}: cannot read config ({e})")
    return Config.from_dict(d, str(path))
