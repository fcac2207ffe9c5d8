"""The rules a config must satisfy, checked once by `config.validate` before anything runs.

Each rule is one `need(condition, message)`: the message names the key and the value that broke it. The
sections arrive as the dataclasses of config.py (model, data, train); this module imports none of it, so
adding a field is one line there and, where it has a range or depends on another field, one rule here.
"""
from __future__ import annotations

from .errors import LmkitError


LOGGERS = ("tensorboard", "trackio", "wandb", "mlflow")  # train.logger: where metrics go besides metrics.jsonl


def need(ok: bool, msg: str) -> None:
    if not ok:
        raise LmkitError(f"config: {msg}")


def check(m, d, t) -> None:
    """m: ModelConfig, d: DataConfig, t: TrainConfig."""
    for name in ("block_size", "n_layer", "n_head", "n_embd"):
        need(getattr(m, name) > 0, f"model.{name} must be positive (got {getattr(m, name)})")
    need(m.head_size is not None or m.n_embd % m.n_head == 0,
         f"n_embd ({m.n_embd}) must be divisible by n_head ({m.n_head}), or head_size set")
    need(m.type == "gpt" or (m.head_size, m.qkv_bias, m.sliding_window, m.rope_scaling) == (None, False, None, "none"),
         "head_size, qkv_bias, sliding_window and rope_scaling are options of type = 'gpt'")
    for name in ("head_size", "sliding_window"):  # optional: None = off
        v = getattr(m, name)
        need(v is None or v > 0, f"model.{name} must be positive (got {v})")
    need(m.rope_scaling == "none" or (m.pos == "rope" and m.rope_factor > 0 and m.rope_original_context > 0
                                      and 0 < m.rope_low_freq_factor < m.rope_high_freq_factor),
         "rope_scaling = 'llama3' needs pos = 'rope', rope_factor > 0, rope_original_context > 0 and "
         "0 < rope_low_freq_factor < rope_high_freq_factor")
    if m.n_kv_head is not None:
        need(m.n_kv_head > 0 and m.n_head % m.n_kv_head == 0,
             f"n_head ({m.n_head}) must be divisible by n_kv_head ({m.n_kv_head})")
    if m.pos == "rope":
        need(m.head_dim % 2 == 0, f"rope needs an even head size (n_embd/n_head = {m.head_dim})")
    need(0.0 <= m.dropout < 1.0, f"dropout must be in [0, 1) (got {m.dropout})")
    need(m.vocab_size >= 0, f"model.vocab_size must be >= 0 (got {m.vocab_size})")
    need(m.type == "bert" or m.norm_position != "post",
         f"norm_position = 'post' is for type = 'bert' ({m.type} blocks are pre-norm)")
    need(m.type != "bert" or m.pos in ("learned", "rope"),
         f"model.pos = '{m.pos}' is not available for type = 'bert' (use 'learned' or 'rope')")
    need(m.type_vocab_size > 0, f"model.type_vocab_size must be positive (got {m.type_vocab_size})")
    need(0.0 < t.mlm_probability < 1.0, f"mlm_probability must be in (0, 1) (got {t.mlm_probability})")
    need(t.objective == "mlm" or m.type != "bert", "model.type = 'bert' trains with objective = 'mlm'")
    need(t.objective == "clm" or m.type == "bert", f"objective = 'mlm' needs model.type = 'bert' (got '{m.type}')")
    need(0.0 < d.val_fraction < 1.0, f"val_fraction must be in (0, 1) (got {d.val_fraction})")
    need(t.max_iters >= 0, f"max_iters must be >= 0 (got {t.max_iters})")
    for name in ("batch_size", "gradient_accumulation_steps", "eval_interval", "eval_iters", "log_interval"):
        need(getattr(t, name) > 0, f"{name} must be positive (got {getattr(t, name)})")
    need(t.learning_rate > 0, f"learning_rate must be positive (got {t.learning_rate})")
    need(0 <= t.min_lr <= t.learning_rate, f"min_lr must be in [0, learning_rate] (got {t.min_lr})")
    need(t.warmup_iters >= 0 and t.lr_decay_iters >= 0, "warmup_iters and lr_decay_iters must be >= 0")
    need(m.logit_softcap >= 0, f"logit_softcap must be >= 0 (got {m.logit_softcap})")
    need(t.muon_lr > 0, f"muon_lr must be positive (got {t.muon_lr})")
    need(0.0 <= t.muon_momentum < 1.0, f"muon_momentum must be in [0, 1) (got {t.muon_momentum})")
    need(0.0 < t.decay_fraction <= 1.0, f"decay_fraction must be in (0, 1] (got {t.decay_fraction})")
    need(t.optimizer == "adamw" or t.parallel != "fsdp",
         "optimizer = 'muon' needs whole matrices; it does not run with parallel = 'fsdp'")
    need(t.dist_timeout > 0, f"dist_timeout must be positive (got {t.dist_timeout})")
    need(t.max_minutes >= 0, f"max_minutes must be >= 0 (got {t.max_minutes})")
    # trackers, samples, MFU, activation checkpointing
    for name in t.logger:
        need(name in LOGGERS, f"logger '{name}' is not one of {', '.join(LOGGERS)} (or none)")
    need(t.eval_samples >= 0, f"eval_samples must be >= 0 (got {t.eval_samples})")
    need(t.peak_tflops >= 0, f"peak_tflops must be >= 0 (got {t.peak_tflops})")
    need(not t.activation_checkpointing or m.type in ("gpt", "bert"),
         f"activation_checkpointing is for type = 'gpt' or 'bert' blocks (got '{m.type}')")
    # mixtures and cleaning
    for i, src in enumerate(d.sources):
        name = f"data.sources[{i}] ({src.get('path', 'no path')})"
        need(isinstance(src.get("path"), str) and src["path"] != "", f"{name} needs path = \"…\"")
        w = src.get("weight", 1.0)
        need(not isinstance(w, bool) and isinstance(w, (int, float)) and 0 < w < float("inf"),
             f"{name}: weight must be a number > 0 (got {w!r})")
        unknown = sorted(set(src) - {"path", "weight", "text_field", "max_tokens"})
        need(not unknown, f"{name}: unknown key '{unknown[0] if unknown else ''}' (use path, weight, text_field, "
             "max_tokens)")
    for n in d.normalize:
        need(n in ("nfc", "nfkc", "t2s", "s2t"), f"normalize '{n}' is not one of nfc, nfkc, t2s, s2t")
    need(d.min_chars >= 0 and d.max_tokens >= 0, "min_chars and max_tokens must be >= 0")
