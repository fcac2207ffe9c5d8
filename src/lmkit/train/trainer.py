"""The training loop: one loop for every model family and objective.

Each step: learning rate from the schedule → `gradient_accumulation_steps` micro-batches of
forward (under autocast when asked) and backward → gradient clipping → AdamW step. Every
`eval_interval` steps: validation loss, a checkpoint, metrics.jsonl and loss.png.
Ctrl-C saves a checkpoint before leaving; `resume=True` continues from the last one exactly.
Under torchrun the same loop runs on every rank; `distributed.py` wraps the model (DDP / FSDP2) and
only rank 0 shows progress and writes logs, plots and the run directory's single files.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..config import Config, load_json, save_json
from ..data.batches import make_batches
from ..data.shards import is_prepared, load_meta, open_split, prepare
from ..data.sources import iter_documents
from ..errors import LmkitError
from ..models import build_model
from ..tokenizer import Tokenizer
from . import distributed
from .checkpoint import (clear_run, holds_run, load_train_state, load_weights, save_train_state,
                         save_weights)
from .optim import lr_at, make_optimizer

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class TrainResult:
    out_dir: Path
    step: int
    val_loss: float
    train_loss: float
    tokens_per_s: float
    wall_s: float
    interrupted: bool = False
    history: list = field(default_factory=list)
    best_metric: float | None = None  # keep-the-best tasks: the best value of task.metric


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_dtype(dtype: str, device: torch.device) -> str:
    """'auto' -> bfloat16 where it is fast, else float32. On CPUs without native bf16 (AVX2 only),
    bf16 matmuls run about 100x slower than fp32, so auto never picks it there."""
    if dtype != "auto":
        return dtype
    if device.type == "cuda":
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
    if device.type == "cpu":
        is_fast = getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)()
        is_fast = is_fast or getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()
        return "bfloat16" if is_fast else "float32"
    return "float32"


def autocast_ctx(device: torch.device, dtype: str):
    if dtype == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=DTYPES[dtype])


def prepare_data(cfg: Config, out_dir: Path, progress: bool = True) -> Path:
    """The prepared-data folder for this run: cfg.data.data itself, or <out_dir>/data made from raw text."""
    if is_prepared(cfg.data.data):
        return Path(cfg.data.data)
    data_dir = out_dir / "data"
    if is_prepared(data_dir):
        meta = load_meta(data_dir)
        if meta.get("source") == cfg.data.data:
            return data_dir
    d = cfg.data
    if d.tokenizer in ("char", "bpe", "wordpiece"):
        if progress:
            print(f"training a {d.tokenizer} tokenizer on {d.data} …", flush=True)
        tok = Tokenizer.train((t for _, t in iter_documents(d.data, d.text_field, d.errors)),
                              kind=d.tokenizer, vocab_size=d.vocab_size)
    else:
        tok = Tokenizer.load(d.tokenizer)
    meta = prepare(d.data, data_dir, tok, d.val_fraction, d.text_field, d.errors, overwrite=True, progress=progress)
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
    """
    tokenizer: Tokenizer
    train_batches = None
    metric: str | None = None
    higher_is_better: bool = False

    def evaluate(self, trainer: "Trainer") -> dict:
        raise NotImplementedError

    def save(self, trainer: "Trainer", out_dir: Path) -> None:
        pass


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

    def evaluate(self, trainer: "Trainer") -> dict:
        out = {}
        for split, tokens in (("train", self.train_batches.tokens), ("val", self.val_tokens)):
            batches = make_batches(tokens, self.cfg, 1234, self.tokenizer, name=split, rank=self.rank,
                                   world_size=self.world_size)
            losses = torch.zeros(self.cfg.train.eval_iters)
            for i in range(self.cfg.train.eval_iters):
                x, y = batches.next()
                with autocast_ctx(trainer.device, trainer.dtype):
                    _, loss = trainer.forward(x.to(trainer.device), y.to(trainer.device))
                losses[i] = loss.item()
            out[split] = trainer.dist.mean(losses.mean())
        return out


class Trainer:
    def __init__(self, cfg: Config, resume: bool = False, overwrite: bool = False, progress: bool = True,
                 init_model: torch.nn.Module | None = None, after_step=None, task: Task | None = None):
        """`init_model`: start from these weights (fine-tuning) instead of a fresh model;
        `after_step(model)`: called after every optimizer step (e.g. to keep pruned weights at zero);
        `task`: what to learn from (default: the token shards of cfg.data, see ShardTask)."""
        t = cfg.train
        self.after_step = after_step
        self.cfg = cfg
        self.dist, self.device = distributed.setup(t, pick_device(t.device))
        if task is not None and self.dist.enabled:
            raise LmkitError("fine-tuning tasks run in one process; start them without torchrun / --nproc")
        self.progress = progress and self.dist.is_main
        self.out_dir = Path(t.out_dir)
        if resume:
            if not holds_run(self.out_dir):
                raise LmkitError(f"{self.out_dir}: no run to resume (train without --resume to start one)")
            saved = load_json(self.out_dir / "config.json")
            if saved.model != cfg.model and cfg.model.vocab_size == 0:
                cfg.model.vocab_size = saved.model.vocab_size
            if saved.model != cfg.model:
                raise LmkitError(f"{self.out_dir}: the model settings differ from the run being resumed")
        elif holds_run(self.out_dir):
            if not overwrite:
                raise LmkitError(f"{self.out_dir}: already holds a run (use --resume to continue it "
                                 "or --overwrite to replace it)")
            self.dist.barrier()  # every rank has looked before rank 0 clears
            if self.dist.is_main:
                clear_run(self.out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)

        if t.num_threads:
            torch.set_num_threads(t.num_threads)
        self.dtype = resolve_dtype(t.dtype, self.device)
        torch.manual_seed(t.seed)

        if task is None:
            with self.dist.main_first():
                data_dir = prepare_data(cfg, self.out_dir, self.progress)
            task = ShardTask(cfg, data_dir, self.dist.rank, self.dist.world_size)
        self.task, self.tokenizer, self.train_batches = task, task.tokenizer, task.train_batches
        if cfg.model.vocab_size == 0:
            cfg.model.vocab_size = self.tokenizer.vocab_size
        elif cfg.model.vocab_size < self.tokenizer.vocab_size:
            raise LmkitError(f"config: vocab_size {cfg.model.vocab_size} is smaller than the tokenizer's "
                             f"{self.tokenizer.vocab_size}")
        if init_model is None and t.init_from and not resume:  # e.g. a deeper model made by `lmkit grow`
            from .grow import load_init
            init_model = load_init(t.init_from, cfg.model, self.tokenizer)
        # the same initial weights on every rank (or the weights handed in, for fine-tuning)
        self.model = (init_model if init_model is not None else build_model(cfg.model)).to(self.device)
        self.wrapped = distributed.wrap(self.model, self.dist, t, self.device)
        if self.dist.rank:
            torch.manual_seed(t.seed + self.dist.rank)  # other dropout masks on other ranks
        self.optimizer = make_optimizer(self.model, t, self.device.type)
        self.step = 0
        self.best_val = math.inf
        self.best_metric = -math.inf if task.higher_is_better else math.inf
        self.tokens_seen = 0
        if resume:
            self._load_state()
        elif self.dist.is_main:
            save_json(cfg, self.out_dir / "config.json")
            self.tokenizer.save(self.out_dir / "tokenizer.json")
        self.forward = torch.compile(self.wrapped) if t.compile else self.wrapped

    @property
    def global_batch(self) -> int:
        """Sequences per optimizer step: micro-batch × accumulation × ranks."""
        return self.cfg.train.batch_size * self.cfg.train.gradient_accumulation_steps * self.dist.world_size

    # ---- checkpoints ------------------------------------------------------------------------------
    def _state(self, batches_state=None, rng_state=None) -> dict:
        state = {
            "step": self.step, "tokens_seen": self.tokens_seen, "best_val": self.best_val,
            "rng": rng_state if rng_state is not None else torch.get_rng_state(),
            "batches": batches_state or self.train_batches.state_dict(),
            "global_batch": self.global_batch, "best_metric": self.best_metric,
        }
        if not self.dist.enabled:  # under torchrun the optimizer state lives in train_state/ (DCP)
            state["optimizer"] = self.optimizer.state_dict()
        return state

    def save(self, batches_state=None, rng_state=None) -> None:
        if self.dist.enabled:
            def export(full_state: dict) -> None:
                plain = build_model(self.cfg.model)
                plain.load_state_dict(full_state)
                save_weights(plain, self.out_dir / "model.safetensors", self.step)
            distributed.save_checkpoint(self.dist, self.model, self.optimizer, self.out_dir, self.step, export)
            if self.dist.is_main:
                save_train_state(self._state(batches_state, rng_state), self.out_dir / "train_state.pt")
            return
        save_weights(self.model, self.out_dir / "model.safetensors", self.step)
        save_train_state(self._state(batches_state, rng_state), self.out_dir / "train_state.pt")
        self.task.save(self, self.out_dir)

    def _load_state(self) -> None:
        state = load_train_state(self.out_dir / "train_state.pt")
        if "optimizer" not in state:  # written under torchrun: any world size, or one process
            distributed.load_checkpoint(self.model, self.optimizer, self.out_dir, state["step"])
        elif self.dist.mode == "fsdp":  # written by one process: load a plain copy, then shard it
            plain = build_model(self.cfg.model)
            plain_optimizer = make_optimizer(plain, self.cfg.train, "cpu")
            self._load_single_process(state, plain, plain_optimizer)
            distributed.load_full_state(self.model, self.optimizer, plain, plain_optimizer)
        else:  # written by one process; under DDP every rank reads the same file into its replica
            self._load_single_process(state, self.model, self.optimizer)
        torch.set_rng_state(state["rng"])
        if state.get("global_batch", self.global_batch) != self.global_batch and self.progress:
            print(f"note: the global batch was {state['global_batch']} sequences per step and is now "
                  f"{self.global_batch} "
                  f"(batch_size × gradient_accumulation_steps × ranks); set batch_size to keep it", flush=True)
        if self.dist.rank:
            torch.manual_seed(self.cfg.train.seed + self.dist.rank + state["step"])
        self.train_batches.load_state_dict(state["batches"])
        self.step, self.tokens_seen, self.best_val = state["step"], state["tokens_seen"], state["best_val"]
        self.best_metric = state.get("best_metric", self.best_metric)

    def _load_single_process(self, state: dict, model, optimizer) -> None:
        weights_step = load_weights(model, self.out_dir / "model.safetensors")
        if weights_step != state["step"]:
            raise LmkitError(f"{self.out_dir}: model.safetensors (step {weights_step}) and train_state.pt "
                             f"(step {state['step']}) disagree; the checkpoint is incomplete")
        optimizer.load_state_dict(state["optimizer"])

    # ---- evaluation -------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self) -> dict:
        """The task's evaluation ("val" loss, maybe "train" loss and other metrics), in eval mode."""
        self.model.eval()
        try:
            return self.task.evaluate(self)
        finally:
            self.model.train()

    def _improved(self, result: dict) -> bool:
        """Keep-the-best tasks: does this evaluation beat the best so far (and become it)?"""
        value = result[self.task.metric]
        better = value > self.best_metric if self.task.higher_is_better else value < self.best_metric
        if better:
            self.best_metric = value
        return better

    # ---- the loop ---------------------------------------------------------------------------------
    def fit(self) -> TrainResult:
        t = self.cfg.train
        global_batch = self.global_batch
        tokens_per_step = global_batch * self.cfg.model.block_size
        if self.dist.enabled and self.progress:
            print(f"{self.dist.mode} on {self.dist.world_size} ranks: global batch = {t.batch_size} (micro-batch) × "
                  f"{t.gradient_accumulation_steps} (accumulation) × {self.dist.world_size} (ranks) = {global_batch} "
                  f"sequences = {tokens_per_step:,} tokens per step", flush=True)
        metrics = open(self.out_dir / "metrics.jsonl" if self.dist.is_main else os.devnull, "a", encoding="utf-8")
        bar = tqdm(total=t.max_iters, initial=self.step, desc="training", unit="it", disable=not self.progress,
                   dynamic_ncols=True)
        history, last = [], {"val": math.nan, "train": math.nan}
        t0, timed_tokens, loss_val = time.perf_counter(), 0, math.nan
        log_t0 = time.perf_counter()
        interrupted = out_of_time = False
        self.model.train()
        step_batches, step_rng = self.train_batches.state_dict(), torch.get_rng_state()

        def log(rec):
            metrics.write(json.dumps(rec) + "\n")
            metrics.flush()
            history.append(rec)

        try:
            while True:
                done = self.step >= t.max_iters or out_of_time
                if self.step % t.eval_interval == 0 or done:
                    last = {"train": math.nan, **self.evaluate()}
                    self.best_val = min(self.best_val, last["val"])
                    extra = {k: v for k, v in last.items() if k not in ("train", "val")}
                    log({"step": self.step, "train_loss": last["train"], "val_loss": last["val"], **extra,
                         "tokens": self.tokens_seen})
                    bar.set_postfix(loss=f"{loss_val:.4f}", val=f"{last['val']:.4f}", refresh=False)
                    if self.task.metric is not None:
                        if self._improved(last):
                            self.save()
                    elif done or not t.checkpoint_interval:
                        self.save()
                    if self.dist.is_main:
                        from ..viz import plot_loss
                        plot_loss(self.out_dir / "metrics.jsonl", self.out_dir / "loss.png")
                    log_t0, timed_tokens = time.perf_counter(), 0  # tokens/s counts training time only
                if done:
                    if out_of_time and self.progress:
                        tqdm.write(f"stopped at step {self.step} of {t.max_iters}: the time budget "
                                   f"max_minutes = {t.max_minutes:g} is spent")
                    break
                if t.checkpoint_interval and self.step and self.step % t.checkpoint_interval == 0:
                    self.save()
                step_batches, step_rng = self.train_batches.state_dict(), torch.get_rng_state()
                lr = lr_at(self.step, t)
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                step_tokens = 0
                for micro in range(t.gradient_accumulation_steps):
                    batch = tuple(b.to(self.device, non_blocking=True) for b in self.train_batches.next())
                    step_tokens += batch[0].numel() * self.dist.world_size
                    with distributed.gradient_sync(self.dist, self.wrapped, micro == t.gradient_accumulation_steps - 1):
                        with autocast_ctx(self.device, self.dtype):
                            _, loss = self.forward(*batch)
                        (loss / t.gradient_accumulation_steps).backward()
                if t.grad_clip:
                    torch.nn.utils.clip_grad_norm_(self.model.parameters(), t.grad_clip)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                if self.after_step is not None:
                    self.after_step(self.model)
                self.step += 1
                self.tokens_seen += step_tokens
                timed_tokens += step_tokens
                bar.update(1)
                if self.step % t.log_interval == 0 or self.step == t.max_iters:
                    loss_val = self.dist.mean(loss)  # the one host sync per log interval
                    now = time.perf_counter()
                    tps = timed_tokens / (now - log_t0)
                    log({"step": self.step, "loss": loss_val, "lr": lr, "tokens": self.tokens_seen,
                         "tok_per_s": round(tps, 1), "time": round(now - t0, 3)})
                    bar.set_postfix(loss=f"{loss_val:.4f}", val=f"{last['val']:.4f}", tok_s=f"{tps:,.0f}",
                                    refresh=False)
                    log_t0, timed_tokens = now, 0
                    if t.max_minutes:  # decided together, so that every rank stops at the same step
                        out_of_time = self.dist.mean(torch.tensor(float(now - t0 > 60 * t.max_minutes), device=self.device)) > 0
        except KeyboardInterrupt:
            if self.dist.enabled:  # ranks stop at different points: no collective save; resume from the last one
                raise
            interrupted = True
            bar.close()
            # weights change only inside optimizer.step(); save the sampler/RNG state of the step's start
            # so that --resume redraws the batches of the unfinished step
            self.optimizer.zero_grad(set_to_none=True)
            self.save(step_batches, step_rng)
            print(f"\ninterrupted: checkpoint saved at step {self.step} in {self.out_dir} "
                  f"(continue with --resume)", flush=True)
        except RuntimeError as e:
            if not distributed.is_comm_failure(self.dist, e):
                raise
            raise LmkitError(f"rank {self.dist.rank}: lost contact with the other ranks at step {self.step} "
                             f"({distributed.short_reason(e)}); the job stops (the first rank to fail is named "
                             f"by torchrun; dist_timeout = {t.dist_timeout:g} s)") from None
        finally:
            bar.close()
            metrics.close()
        wall = time.perf_counter() - t0
        distributed.teardown(self.dist)
        train_records = [h for h in history if "tok_per_s" in h]
        tps = sum(h["tok_per_s"] for h in train_records) / len(train_records) if train_records else 0.0
        return TrainResult(self.out_dir, self.step, last["val"], last["train"], tps, wall, interrupted, history,
                           self.best_metric if self.task.metric is not None else None)


def train(config, resume: bool = False, overwrite: bool = False, progress: bool = True,
          overrides: list[str] | None = None) -> TrainResult:
    """Train from a Config, a dict, or a path to a TOML file: `lmkit.train("examples/x.toml")`."""
    from ..config import Config, load_config, validate, apply, parse_overrides
    if isinstance(config, (str, os.PathLike)):
        cfg = load_config(config, overrides)
    else:
        cfg = config if isinstance(config, Config) else Config.from_dict(config)
        if overrides:
            apply(cfg, parse_overrides(overrides), "--set")
        validate(cfg)
    return Trainer(cfg, resume=resume, overwrite=overwrite, progress=progress).fit()
