"""`lmkit quickstart`: a small character-level GPT on the built-in Shakespeare corpus, trained on the CPU in
a few minutes, then samples.

    plan       the recipe (RECIPE), or for `--minutes N` as many steps as N minutes hold at the speed measured
               now; the thread count is chosen by timing real steps (device.choose_threads) and the ETA
               comes from the same timing, before the first step
    run        trains (Ctrl-C checkpoints; `lmkit quickstart --resume` continues), then samples

The model is GPT-2 shaped (learned positions, LayerNorm, GELU, biases) so that `lmkit export-hf` writes it as
a GPT2LMHeadModel; Muon, a warm-up-stable-decay schedule and a batch of 48 make up for the architecture
levers GPT-2 cannot hold (benchmarks/RESULTS.md, "quickstart").
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import torch

from ..api import load
from ..config import Config, load_config
from ..errors import LmkitError
from ..models import build_model
from ..runs.train_dir import holds_run
from ..runs.training import training_config
from .device import autocast_ctx, choose_threads, pick_device, resolve_dtype
from .optim import make_optimizer
from .trainer import Trainer, TrainResult

DEFAULT_OUT = "runs/quickstart"
RECIPE = [
    "data=shakespeare", "tokenizer=char", "n_layer=4", "n_head=4", "n_embd=128", "block_size=64",
    "pos=learned", "norm=layernorm", "mlp=gelu", "bias=true", "tie_embeddings=false",  # GPT-2's options
    "batch_size=48", "optimizer=muon", "learning_rate=3e-3", "min_lr=3e-4", "lr_schedule=wsd",
    "decay_fraction=0.3", "warmup_iters=50", "max_iters=700", "eval_interval=100", "eval_iters=10",
]
PROMPTS = ["ROMEO:", "HAMLET:\nTo be", "KING LEAR:"]
EVAL_SHARE = 1 / 3  # an evaluation batch (forward only) costs about a third of a training step


@dataclass
class Plan:
    cfg: Config
    threads: str  # the thread choice, one line
    step_s: float  # seconds per training step at that thread count, measured now
    eta_s: float  # training + evaluations

    @property
    def steps(self) -> int:
        return self.cfg.train.max_iters


def resume_command(out: str) -> str:
    return "lmkit quickstart --resume" + ("" if out == DEFAULT_OUT else f" --out {out}")


def recipe(out: str, max_iters: int | None = None, threads: int = 0, device: str = "auto") -> Config:
    extra = [] if max_iters is None else [f"max_iters={max_iters}"]
    cfg = load_config(None, RECIPE + [f"out_dir={out}", f"num_threads={threads}", f"device={device}"] + extra)
    cfg.train.lr_decay_iters = 0  # the schedule ends with the run, however long
    return cfg


def step_timer(cfg: Config, vocab_size: int = 96):
    """One training step of this recipe's model on random tokens (what the thread probe times)."""
    c = copy.deepcopy(cfg)
    c.model.vocab_size = vocab_size
    device = pick_device(c.train.device)
    model = build_model(c.model).to(device)
    opt = make_optimizer(model, c.train, device.type)
    dtype = resolve_dtype(c.train.dtype, device)
    x = torch.randint(0, vocab_size, (c.train.batch_size, c.model.block_size), device=device)

    def step():
        with autocast_ctx(device, dtype):
            _, loss = model(x, x)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def eta(cfg: Config, step_s: float, steps: int) -> float:
    t = cfg.train
    evals = steps // t.eval_interval + 1
    return step_s * (steps + evals * 2 * t.eval_iters * EVAL_SHARE)


def plan(out: str, minutes: float | None = None, max_iters: int | None = None, threads: int = 0,
         device: str = "auto") -> Plan:
    """The run to make: the recipe's steps (or `max_iters`), or as many as `minutes` of training hold at the
    step time measured now (at the thread count chosen by the same timing)."""
    cfg = recipe(out, max_iters, threads, device)
    choice = choose_threads(cfg.train.num_threads, work=step_timer(cfg), reps=3)
    step_s = choice.seconds
    if minutes is not None:
        per_step = eta(cfg, step_s, 10_000) / 10_000  # with its share of evaluations
        cfg.train.max_iters = max(cfg.train.eval_interval, int(minutes * 60 / per_step))
        cfg.train.warmup_iters = min(cfg.train.warmup_iters, cfg.train.max_iters // 10)
    return Plan(cfg, choice.tell(), step_s, eta(cfg, step_s, cfg.train.max_iters))


def check_out(out: str, resume: bool, overwrite: bool) -> None:
    """Before any work: a new run needs a free --out (or --overwrite); --resume needs a run there."""
    if resume:
        if overwrite:
            raise LmkitError("quickstart: --resume continues a run, --overwrite replaces it; give one")
        if not holds_run(out):
            raise LmkitError(f"{out}: no quickstart run to resume (start one with lmkit quickstart"
                             f"{'' if out == DEFAULT_OUT else ' --out ' + out})")
    elif holds_run(out) and not overwrite:
        raise LmkitError(f"{out}: already holds a run (continue it with {resume_command(out)}, replace it "
                         f"with --overwrite, or give another --out)")


def train(out: str, minutes: float | None = None, max_iters: int | None = None, resume: bool = False,
          overwrite: bool = False, threads: int = 0, device: str = "auto", say=print) -> TrainResult:
    """Plan (or reopen) the run, say what it will do and how long it should take, and train it."""
    check_out(out, resume, overwrite)
    if resume:
        cfg = training_config(None, [f"out_dir={out}", f"num_threads={threads}", f"device={device}"], resume=True)
        say(choose_threads(cfg.train.num_threads, work=step_timer(cfg), reps=3).tell())
    else:
        p = plan(out, minutes, max_iters, threads, device)
        cfg = p.cfg
        say(p.threads)
        say(f"plan: {p.steps:,} steps at {1000 * p.step_s:.0f} ms each, about {clock(p.eta_s)} of training "
            f"and evaluation (measured just now, on this machine as loaded now)")
    trainer = Trainer(cfg, resume=resume, overwrite=overwrite)
    trainer.resume_hint = resume_command(out)
    return trainer.fit()


def last_eval(result: TrainResult) -> tuple[int, float]:
    """The step and val loss of the run's last evaluation (the final one, or the last before a Ctrl-C)."""
    evals = [h for h in result.history if "val_loss" in h]
    return (evals[-1]["step"], evals[-1]["val_loss"]) if evals else (result.step, result.val_loss)


def samples(out_dir: Path, tokens: int = 250) -> list[str]:
    lm = load(out_dir)
    return [p + lm.generate(p, max_new_tokens=tokens, temperature=0.8, top_k=50, seed=i) for i, p in enumerate(PROMPTS)]


def clock(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m} min {s:02d} s" if m else f"{s} s"
