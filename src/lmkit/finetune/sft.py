"""`lmkit finetune sft`: supervised fine-tuning of a GPT on conversations or instructions, fully or with LoRA,
through lmkit's one training loop (train/trainer.py) with an `SFTTask`.

    1. load the base (an lmkit run or a Hugging Face folder); give its tokenizer the chat template's role
       tokens (chat.py) and the embedding table a row for each new token, initialised with the mean
       embedding of the tokens of its name ("<|user|>" from "user"), so that the roles start apart;
    2. read and encode the data (sft_data.py): loss on reply tokens only, packed rows with attention kept
       inside each conversation, a held-out share for the validation loss;
    3. full fine-tuning trains every weight; with lora_rank > 0 only the adapters train (models/lora.py);
    4. the Trainer keeps the checkpoint with the best validation loss. The run directory loads with
       `lmkit.load` / `lmkit chat` / `lmkit serve`; a LoRA run also holds its adapters on their own, and
       `merge` (or --merge) writes a plain run with the adapters folded in. When the base keeps its vocabulary
       (it has a chat template of its own) and has a Hugging Face format, the run also holds <out>/peft: the
       adapters in PEFT's format, for peft.PeftModel.from_pretrained(base, "<out>/peft") (runs/peft.py).
"""
from __future__ import annotations

import copy
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..chat import TOKENS, add_role_tokens
from ..config import Config, apply, apply_env, parse_overrides, validate
from ..errors import LmkitError
from ..models import lora
from ..runs import FLOAT, check_target, open_run, save_run
from ..runs.native import save_adapters
from ..runs.peft import FOLDER as PEFT_FOLDER, peft_settings, save_peft
from ..train.trainer import Task, Trainer, TrainResult, autocast_ctx
from .sft_data import PackedBatches, load_examples, split_examples

# fine-tuning settings used unless --set says otherwise (the rest comes from the base run's config)
SFT_DEFAULTS = {"max_iters": 200, "eval_interval": 50, "eval_iters": 10, "log_interval": 10, "warmup_iters": 10,
                "batch_size": 8, "learning_rate": 1e-4, "min_lr": 1e-5, "weight_decay": 0.0, "checkpoint_interval": 0}
LORA_LEARNING_RATE = 1e-3  # adapters start at zero and move little per step: they take a larger rate


@dataclass
class SFTConfig:
    base: str  # an lmkit run or a Hugging Face folder
    data: str  # .json / .jsonl rows: messages, or instruction/input/output
    out: str
    lora_rank: int = 0  # 0 = full fine-tuning
    lora_alpha: float = 0.0  # 0 = 2 × rank
    lora_targets: tuple[str, ...] = lora.DEFAULT_TARGETS
    lora_dropout: float = 0.0
    too_long: str = "drop"  # conversations longer than the context: drop or truncate
    overrides: list[str] = field(default_factory=list)  # --set key=value for the training config
    merge: bool = False  # also write <out>/merged, a plain run with the adapters folded in
    resume: bool = False
    overwrite: bool = False
    progress: bool = True


def resize_vocab(model, vocab_size: int, new_ids: list[int], tokenizer, names: list[str]) -> None:
    """Grow the embedding table (and an untied output head) to `vocab_size` rows, then set the rows of
    `new_ids` to the mean embedding of the tokens of each name."""
    old = model.wte.weight
    if vocab_size > old.size(0):
        wte = torch.nn.Embedding(vocab_size, old.size(1), device=old.device, dtype=old.dtype)
        with torch.no_grad():
            wte.weight[:old.size(0)] = old
            wte.weight[old.size(0):] = old.mean(dim=0)
        model.wte = wte
        if model.config.tie_embeddings:
            model.lm_head.weight = model.wte.weight
        else:
            head = torch.nn.Linear(old.size(1), vocab_size, bias=False, device=old.device, dtype=old.dtype)
            with torch.no_grad():
                head.weight[:old.size(0)] = model.lm_head.weight
                head.weight[old.size(0):] = model.lm_head.weight.mean(dim=0)
            model.lm_head = head
        model.config.vocab_size = vocab_size
    with torch.no_grad():
        for i, name in zip(new_ids, names):
            spelled = tokenizer.encode(name.strip("<|>")) or [i]
            model.wte.weight[i] = model.wte.weight[spelled].mean(dim=0)


class SFTTask(Task):
    """Packed conversations for the Trainer; evaluation is the reply-token loss on the held-out split."""
    metric, higher_is_better = "val", False  # keep the checkpoint with the best validation loss

    def __init__(self, cfg: Config, tokenizer, template, train, val, pad_id: int, adapters: dict | None,
                 peft: dict | None = None):
        t, block = cfg.train, cfg.model.block_size
        self.tokenizer, self.template, self.cfg, self.adapters, self.peft = tokenizer, template, cfg, adapters, peft
        self.train_batches = PackedBatches(train, block, t.batch_size, pad_id, t.seed)
        self.val_rows = PackedBatches(val, block, t.batch_size, pad_id, t.seed, shuffle=False).rows
        self.train_rows = PackedBatches(train, block, t.batch_size, pad_id, 1234).rows  # a fixed sample

    def _loss(self, trainer, rows) -> float:
        """Mean loss per reply token over the first eval_iters batches of `rows`."""
        bs, total, count = self.cfg.train.batch_size, 0.0, 0
        for i in range(0, min(len(rows), bs * self.cfg.train.eval_iters), bs):
            x, y, doc = (torch.stack(t).to(trainer.device) for t in zip(*rows[i:i + bs]))
            n = int((y != -100).sum())
            if n:
                with autocast_ctx(trainer.device, trainer.dtype):
                    _, loss = trainer.forward(x, y, doc)
                total, count = total + float(loss) * n, count + n
        return total / count if count else math.nan

    def evaluate(self, trainer) -> dict:
        return {"train": self._loss(trainer, self.train_rows), "val": self._loss(trainer, self.val_rows)}

    def save(self, trainer, out_dir: Path) -> None:
        self.template.save(out_dir)
        if self.adapters is not None:
            save_adapters(trainer.model, out_dir, self.adapters)
        if self.peft is not None:
            save_peft(trainer.model, out_dir / PEFT_FOLDER, self.peft)


def training_config(base_cfg: Config, c: SFTConfig) -> Config:
    cfg = copy.deepcopy(base_cfg)
    defaults = dict(SFT_DEFAULTS, learning_rate=LORA_LEARNING_RATE if c.lora_rank else SFT_DEFAULTS["learning_rate"])
    apply(cfg, {k: v for k, v in defaults.items()}, "sft defaults")
    cfg.train.min_lr = cfg.train.learning_rate / 10
    apply(cfg, parse_overrides(c.overrides), "--set")
    apply_env(cfg, ("train",))  # LMKIT_SET (the README test's tiny runs); the base model's shape stays
    if cfg.train.min_lr > cfg.train.learning_rate:
        cfg.train.min_lr = cfg.train.learning_rate / 10
    cfg.data.data, cfg.train.out_dir = str(c.data), str(c.out)
    cfg.train.parallel = "none"
    return validate(cfg)


def finetune_sft(c: SFTConfig) -> TrainResult:
    """Fine-tune `c.base` on `c.data` into `c.out`; returns the Trainer's result."""
    if c.lora_rank < 0:
        raise LmkitError(f"--lora-rank must be >= 0 (got {c.lora_rank})")
    lm = open_run(c.base, accept=FLOAT, families=("gpt",), purpose="finetune sft --base")
    model, tokenizer = lm.model.train(), lm.tokenizer
    cfg = training_config(lm.config, c)
    grows = not lm.chat_template.special
    if grows:  # first chat fine-tune: add the role tokens
        have = tokenizer.vocab_size
        ids = add_role_tokens(tokenizer)
        new = [(i, m) for i, m in zip(ids, dict.fromkeys(TOKENS.markers)) if i >= have]
        resize_vocab(model, max(tokenizer.vocab_size, cfg.model.vocab_size), [i for i, _ in new], tokenizer,
                     [m for _, m in new])
        cfg.model.vocab_size = model.config.vocab_size
    template = TOKENS if not lm.chat_template.special else lm.chat_template
    examples, counts = load_examples(c.data, tokenizer, template, cfg.model.block_size + 1, c.too_long)
    train, val = split_examples(examples, cfg.data.val_fraction, cfg.train.seed)
    adapters = peft = None
    if c.lora_rank:
        alpha = c.lora_alpha or 2.0 * c.lora_rank
        adapted = lora.add_lora(model, c.lora_targets, c.lora_rank, alpha, c.lora_dropout)
        adapters = {"rank": c.lora_rank, "alpha": alpha, "targets": list(c.lora_targets), "base": str(c.base)}
        peft, why = peft_form(model, cfg, adapted, c, alpha, grows)
        if c.progress:
            print(f"PEFT adapter: {Path(c.out) / PEFT_FOLDER}" if peft else f"no PEFT adapter: {why}", flush=True)
    trainable, total = lora.count_parameters(model)
    if c.progress:
        kind = f"LoRA rank {c.lora_rank}" if c.lora_rank else "full fine-tuning"
        n_reply = sum(sum(e.reply) for e in train)
        print(f"SFT ({kind}): {trainable:,} of {total:,} parameters trainable ({100 * trainable / total:.2f}%); "
              f"{len(train):,} train / {len(val):,} held-out conversations ({n_reply:,} reply tokens in train) "
              f"from {counts['rows']:,} rows", flush=True)
    pad_id = tokenizer.eot_id if tokenizer.eot_id is not None else 0
    task = SFTTask(cfg, tokenizer, template, train, val, pad_id, adapters, peft)
    stale = Path(c.out) / PEFT_FOLDER
    if c.overwrite and peft is None and (stale / "adapter_config.json").is_file():  # from the run replaced
        shutil.rmtree(stale)
    result = Trainer(cfg, resume=c.resume, overwrite=c.overwrite, progress=c.progress, init_model=model,
                     task=task).fit()
    if c.merge and adapters is not None:
        merge_run(c.out, Path(c.out) / "merged", overwrite=True)
    return result


def peft_form(model, cfg: Config, adapted: list[str], c: SFTConfig, alpha: float, grows: bool):
    """(what runs.peft.save_peft needs, or None; why not): PEFT's format holds the adapters alone, on the base
    model as it is, so a base whose vocabulary grows (the role tokens added: no chat template of its own)
    or one with no Hugging Face format gets none."""
    if grows:
        return None, ("the base has no chat template of its own, so its vocabulary grew by the role tokens, "
                      "which a PEFT LoRA adapter does not hold")
    base = str(c.base).removeprefix("hf:") if str(c.base).startswith("hf:") else str(Path(c.base).resolve())
    try:
        return peft_settings(model, cfg.model, adapted, base, c.lora_rank, alpha, c.lora_dropout), ""
    except LmkitError as e:
        return None, str(e)


def merge_run(run_dir: str | Path, out_dir: str | Path, overwrite: bool = False) -> Path:
    """Write a LoRA run as a plain run: weights with the adapters folded in (W + (α/r) B A), its config,
    tokenizer and chat template; it loads, generates and exports (`lmkit export-hf`) like any run."""
    check_target(out_dir, overwrite, source=run_dir)
    run = open_run(run_dir, accept=("lora",), purpose="finetune merge")  # base + adapters, merged on read
    return save_run(out_dir, run.config, run.tokenizer, model=run.model, chat_template=run.chat_template,
                    marker=("merged", {"source": str(run.path), "adapters": run.meta}), overwrite=overwrite)
