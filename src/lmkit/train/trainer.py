"""The training loop: one loop for every model family and objective.

    fit()         until max_iters (or the time budget max_minutes) is reached:
      evaluation()    every eval_interval steps and at the end: evaluate(), log it, checkpoint(), loss.png
      checkpoint()    also every checkpoint_interval steps when set
      train_step()    learning rate from the schedule → gradient_accumulation_steps micro-batches of forward
                      (under autocast when asked) and backward → gradient clipping → optimizer step
      log_training()  every log_interval steps: loss, learning rate, tokens/s; is the time budget spent?
    Ctrl-C checkpoints before leaving (interrupted()); `resume=True` continues from the last checkpoint exactly,
    whenever Ctrl-C or a kill came (checkpoint.py: one rename switches a checkpoint; the optimizer step and its
    counters change together). A run that fails before its first checkpoint removes the folder it made.

What the loop learns from is a `Task` (task.py); where it writes is decided before it starts
(lmkit.runs.train_dir: resume / overwrite / init_from). Under torchrun the same loop runs on every rank;
`distributed.py` wraps the model (DDP / FSDP2) and only rank 0 shows progress and writes logs, plots and
the run directory's single files.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..config import Config, apply, load_config, parse_overrides, save_json, validate
from ..errors import LmkitError
from ..models import build_model
from ..runs.train_dir import load_init, open_train_dir, remove_failed
from ..viz import plot_loss  # matplotlib itself is imported when the first plot is drawn
from . import checkpoint as ckpt, distributed, resources
from .checkpoint import fault, hold_interrupt
from .device import DTYPES, autocast_ctx, choose_threads, pick_device, resolve_dtype
from .log import Phases, RunLog, keep_logs_before, remove_run_files
from .optim import lr_at, make_optimizer  # lr_at is looked up here at every step (tests replace it)
from .samples import generate_samples
from .summary import RunRecord
from .task import ShardTask, Task, prepare_data
from .trackers import Trackers, check as check_trackers

__all__ = ["Trainer", "TrainResult", "Task", "ShardTask", "train", "prepare_data", "pick_device", "resolve_dtype",
           "autocast_ctx", "DTYPES"]


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


class Trainer:
    resume_hint = "--resume"  # how the command that started the run continues it (said after Ctrl-C)

    def __init__(self, cfg: Config, resume: bool = False, overwrite: bool = False, progress: bool = True,
                 init_model: torch.nn.Module | None = None, after_step=None, task: Task | None = None):
        """`init_model`: start from these weights (fine-tuning) instead of a fresh model (or train.init_from);
        `after_step(model)`: called after every optimizer step (e.g. to keep pruned weights at zero);
        `task`: what to learn from (default: the token shards of cfg.data, see ShardTask)."""
        t = cfg.train
        self.cfg, self.after_step, self.phases = cfg, after_step, Phases()
        self.dist, self.device = distributed.setup(t, pick_device(t.device))
        self.loggers = check_trackers(t.logger, t.logger == ["tensorboard"]) if self.dist.is_main else []
        if task is not None and self.dist.enabled:
            raise LmkitError("fine-tuning tasks run in one process; start them without torchrun / --nproc")
        self.progress = progress and self.dist.is_main
        self.run_dir = open_train_dir(cfg, resume, overwrite, self.dist.is_main, self.dist.barrier)
        self.out_dir = self.run_dir.path
        try:
            self._start(init_model, task)
        except BaseException:
            self._remove_if_failed()
            raise

    def _start(self, init_model: torch.nn.Module | None, task: Task | None) -> None:
        """Data, model and optimizer; a resumed run's checkpoint, a new run's first files."""
        cfg, t, resume = self.cfg, self.cfg.train, self.run_dir.resume
        if self.device.type == "cpu" and not self.dist.enabled:  # num_threads, or the fastest count right now
            choice = choose_threads(t.num_threads)
            if self.progress and not choice.told:
                print(choice.tell(), flush=True)
        elif t.num_threads:
            torch.set_num_threads(t.num_threads)
        self.dtype = resolve_dtype(t.dtype, self.device)
        torch.manual_seed(t.seed)
        with self.phases("data"):
            self._take_task(task)
        if init_model is None and t.init_from and not resume:  # e.g. a deeper model made by `lmkit grow`
            init_model = load_init(t.init_from, cfg.model, self.tokenizer)
        self.step, self.tokens_seen, self.best_val = 0, 0, math.inf
        self.best_metric = -math.inf if self.task.higher_is_better else math.inf
        self._build_model(init_model)
        if resume:
            ckpt.restore(self)
        if self.dist.is_main:  # the records after the checkpoint go: the run redoes them
            self.kept = keep_logs_before(self.out_dir, self.step, self.step % t.eval_interval == 0 or
                                         self.step >= t.max_iters)
            if not resume:  # a new start: no event files, samples or report of an earlier run
                remove_run_files(self.out_dir)
        self.forward = torch.compile(self.wrapped) if t.compile else self.wrapped

    def _take_task(self, task: Task | None) -> None:
        """The task (default: token shards, prepared by rank 0 first) and its tokenizer, which sets vocab_size."""
        cfg = self.cfg
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

    def _build_model(self, init_model: torch.nn.Module | None) -> None:
        """The model (the same initial weights on every rank, or the weights handed in), wrapped for
        torchrun, and its optimizer."""
        t = self.cfg.train
        self.model = (init_model if init_model is not None else build_model(self.cfg.model)).to(self.device)
        if not self.run_dir.resume and self.dist.is_main:  # a new run: its files, and it loads from the start
            if self.dist.enabled:
                self.cfg.train.parallel = self.dist.mode  # what distributed.trained_distributed reads
            save_json(self.cfg, self.out_dir / "config.json")
            self.tokenizer.save(self.out_dir / "tokenizer.json")
            self.task.save(self, self.out_dir)
            ckpt.write_weights(self)
        elif self.run_dir.resume and self.dist.enabled:  # resumed under torchrun: its checkpoints are DCP ones now
            if self.dist.is_main:
                distributed.record_mode(self.out_dir, self.dist.mode)
            self.dist.barrier()
        resources.set_checkpointing(self.model, t.activation_checkpointing)
        self.wrapped = distributed.wrap(self.model, self.dist, t, self.device)
        if self.dist.rank:
            torch.manual_seed(t.seed + self.dist.rank)  # other dropout masks on other ranks
        self.optimizer = make_optimizer(self.model, t, self.device.type)

    @property
    def global_batch(self) -> int:
        """Sequences per optimizer step: micro-batch × accumulation × ranks."""
        return self.cfg.train.batch_size * self.cfg.train.gradient_accumulation_steps * self.dist.world_size

    # ---- the loop ---------------------------------------------------------------------------------
    def fit(self) -> TrainResult:
        """Train to max_iters or until the time budget is spent; Ctrl-C checkpoints and returns (interrupted)."""
        t = self.cfg.train
        self._begin()
        interrupted, failed = False, True  # failed: an exception leaves fit() (see _remove_if_failed)
        try:
            while True:
                final = self.step >= t.max_iters or self.out_of_time
                if final or self.step % t.eval_interval == 0:
                    self.evaluation(final)
                if final:
                    break
                if t.checkpoint_interval and self.step and self.step % t.checkpoint_interval == 0:
                    self.checkpoint()
                with self.phases("train"):
                    loss, lr = self.train_step()
                self.log.bar.update(1)
                if self.step % t.log_interval == 0 or self.step == t.max_iters:
                    self.log_training(loss, lr)
            if self.out_of_time:
                self.log.note(f"stopped at step {self.step} of {t.max_iters}: the time budget "
                              f"max_minutes = {t.max_minutes:g} is spent")
            failed = False
        except KeyboardInterrupt:
            if self.dist.enabled:  # ranks stop at different points: no collective save; resume from the last one
                raise
            interrupted = True
            self.interrupted()
            failed = False
        except RuntimeError as e:
            if not distributed.is_comm_failure(self.dist, e):
                raise
            raise LmkitError(f"rank {self.dist.rank}: lost contact with the other ranks at step {self.step} "
                             f"({distributed.short_reason(e)}); the job stops (the first rank to fail is named "
                             f"by torchrun; dist_timeout = {t.dist_timeout:g} s)") from None
        finally:
            self.log.close()
            if failed:
                self._remove_if_failed()
        self.record.finish()  # summary.json, report.html, the measured peak memory beside the estimate
        wall = self.log.wall()
        distributed.teardown(self.dist)
        return TrainResult(self.out_dir, self.step, self.last["val"], self.last["train"], self.log.tokens_per_s(),
                           wall, interrupted, self.log.history,
                           self.best_metric if self.task.metric is not None else None)

    def _begin(self) -> None:
        """Open the log, say the global batch under torchrun, put the model in training mode."""
        t = self.cfg.train
        if self.dist.enabled and self.progress:
            print(f"{self.dist.mode} on {self.dist.world_size} ranks: global batch = {t.batch_size} (micro-batch) × "
                  f"{t.gradient_accumulation_steps} (accumulation) × {self.dist.world_size} (ranks) = "
                  f"{self.global_batch} sequences = {self.global_batch * self.cfg.model.block_size:,} tokens per step",
                  flush=True)
        trackers = Trackers(self.out_dir, self.loggers, self.cfg.to_dict(), self.step, self.run_dir.resume,
                            self.kept) if self.loggers else None  # TensorBoard & co. (main process only)
        self.log = RunLog(self.out_dir / "metrics.jsonl", t.max_iters, self.step, self.progress, self.dist.is_main,
                          self.tokens_seen, trackers)
        self.record = RunRecord(self, self.log.note)  # FLOPs, MFU, memory, summary.json
        self.last = {"val": math.nan, "train": math.nan}  # the last evaluation
        self.out_of_time = False
        self._step_start, self.grad_norm = None, math.nan  # sampler and RNG state at the start of the step under way
        self.model.train()

    def train_step(self) -> tuple[torch.Tensor, float]:
        """One optimizer step: the schedule's learning rate, gradient_accumulation_steps micro-batches of
        forward (under autocast) and backward (gradients synchronised on the last one), gradient clipping, the
        optimizer step, `after_step`. Returns the last micro-batch's loss (not synced to the host) and the lr."""
        t = self.cfg.train
        self._step_start = self.train_batches.state_dict(), torch.get_rng_state()
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
            fault("step")
        if t.grad_clip or (self.step + 1) % t.log_interval == 0 or self.step + 1 == t.max_iters:  # clip / log the norm
            self.grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), t.grad_clip or math.inf)
        with hold_interrupt():  # weights, optimizer state and counters move together, or not at all
            self.optimizer.step()
            fault("optimizer")
            self.optimizer.zero_grad(set_to_none=True)
            if self.after_step is not None:
                self.after_step(self.model)
            self.step += 1
            self.tokens_seen += step_tokens
            self._step_start = None
        return loss, lr

    @torch.no_grad()
    def evaluate(self) -> dict:
        """The task's evaluation ("val" loss, maybe "train" loss and other metrics), in eval mode."""
        self.model.eval()
        try:
            return self.task.evaluate(self)
        finally:
            self.model.train()

    def evaluation(self, final: bool = False) -> None:
        """Evaluate and log it; checkpoint (keep-the-best tasks: only when task.metric improved; else at every
        evaluation, or only at the `final` one when checkpoint_interval sets the rhythm); redraw loss.png."""
        t = self.cfg.train
        with self.phases("evaluate"):
            self.last = {"train": math.nan, **self.evaluate()}
        self.best_val = min(self.best_val, self.last["val"])
        extra = {k: v for k, v in self.last.items() if k not in ("train", "val")}
        self.log.write({"step": self.step, "train_loss": self.last["train"], "val_loss": self.last["val"], **extra,
                        "tokens": self.tokens_seen})
        self.log.show(self.last["val"])
        if self.task.metric is not None:
            if self._improved(self.last):
                self.checkpoint()
        elif final or not t.checkpoint_interval:
            self.checkpoint()
        if self.dist.is_main:
            plot_loss(self.out_dir / "metrics.jsonl", self.out_dir / "loss.png")
            with self.phases("samples"):  # samples.jsonl and the trackers' text: generated texts, a task's tables
                self.log.samples(self.step, generate_samples(self), self.task.texts(self.last))
            self.record.save()
        self.log.restart_lap(self.tokens_seen)  # tokens/s counts training time only

    def _improved(self, result: dict) -> bool:
        """Keep-the-best tasks: does this evaluation beat the best so far (and become it)?"""
        value = result[self.task.metric]
        better = value > self.best_metric if self.task.higher_is_better else value < self.best_metric
        if better:
            self.best_metric = value
        return better

    def log_training(self, loss: torch.Tensor, lr: float) -> None:
        """A metrics record: the loss (averaged over ranks: the one host sync per log interval), lr, tokens and
        tokens/s since the last record. Here the ranks also decide together whether max_minutes is spent."""
        t = self.cfg.train
        self.log.loss = self.dist.mean(loss)
        elapsed, tps = self.log.lap(self.tokens_seen)
        self.log.write({"step": self.step, "loss": self.log.loss, "lr": lr, "tokens": self.tokens_seen,
                        "tok_per_s": round(tps, 1), "time": round(elapsed, 3),
                        "grad_norm": resources.as_float(self.grad_norm), **self.record.extra(tps)})
        self.log.show(self.last["val"], tps)
        if t.max_minutes:  # decided together, so that every rank stops at the same step
            spent = torch.tensor(float(elapsed > 60 * t.max_minutes), device=self.device)
            self.out_of_time = self.dist.mean(spent) > 0

    def interrupted(self) -> None:
        """Ctrl-C in one process: checkpoint and say how to continue. Weights change only inside
        optimizer.step(), which Ctrl-C waits for (with the counters), so a step cut short is saved with the
        sampler/RNG state of its start: --resume redraws its batches. Between steps (an evaluation, a
        checkpoint being written) the state of now is the next step's start."""
        self.log.bar.close()
        self.optimizer.zero_grad(set_to_none=True)
        self.checkpoint(*(self._step_start or (None, None)))
        print(f"\ninterrupted: checkpoint saved at step {self.step} in {self.out_dir} "
              f"(continue with {self.resume_hint})", flush=True)

    # ---- checkpoints ------------------------------------------------------------------------------
    def checkpoint(self, batches_state=None, rng_state=None) -> None:
        """The task's files, model.safetensors and train_state.pt, switched in by one rename (checkpoint.py);
        under torchrun the sharded model and optimizer go to train_state/ and rank 0 writes the single files."""
        with self.phases("checkpoint"):
            ckpt.save(self, batches_state, rng_state)

    def _remove_if_failed(self) -> None:
        """Failed before the first checkpoint: remove the folder this run made (lmkit's files in it)."""
        if self.dist.is_main:
            if self.run_dir.created and not (self.out_dir / ckpt.STATE).exists():
                remove_run_files(self.out_dir)  # this run's event files, samples, summary
            remove_failed(self.run_dir)


def train(config, resume: bool = False, overwrite: bool = False, progress: bool = True,
          overrides: list[str] | None = None) -> TrainResult:
    """Train from a Config, a dict, or a path to a TOML file: `lmkit.train("examples/x.toml")`."""
    if isinstance(config, (str, os.PathLike)):
        cfg = load_config(config, overrides)
    else:
        cfg = config if isinstance(config, Config) else Config.from_dict(config)
        if overrides:
            apply(cfg, parse_overrides(overrides), "--set")
        validate(cfg)
    return Trainer(cfg, resume=resume, overwrite=overwrite, progress=progress).fit()
