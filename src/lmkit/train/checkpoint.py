"""Run directories: everything needed to reload, continue or export a model.

    config.json        the full Config the run was trained with
    tokenizer.json     its tokenizer
    model.safetensors  weights (metadata: step), written and read by lmkit.runs.native: what lmkit.load reads
    train_state.pt     the checkpoint, whole: weights, optimizer, step, RNG and data-sampler state (tensors
                       and numbers only, read back with torch.load(weights_only=True)): this module
    train_state/       under torchrun: model and optimizer shards (torch.distributed.checkpoint) and that
                       checkpoint's train_state.pt; the top-level train_state.pt then holds neither
    metrics.jsonl      one JSON line per log / eval
    loss.png           the loss curve

A checkpoint switches in one rename: train_state.pt alone is complete, and --resume reads the weights from
it, never from model.safetensors. A checkpoint writes the task's files, then model.safetensors (so that
lmkit.load reads the newest weights), then train_state.pt, each to a temp file, fsynced and renamed. A kill
in between leaves weights newer than the state: --resume continues from the state and rewrites
model.safetensors to match it. Under torchrun the shards and their train_state.pt are written into one temp
folder that is switched in by renames (distributed.save_checkpoint). A new run writes its weights at once
(a run directory loads from its start); one killed before its first checkpoint resumes at step 0. The temp
files and folders of a killed write are removed at the next start (lmkit.runs.train_dir.open_train_dir).
Ctrl-C waits for the optimizer step and its counters to finish together (hold_interrupt).

Fault injection, for tests/test_faults.py: LMKIT_FAULT=<point>:<n>[:int] kills the process (SIGKILL) the
n-th time it reaches `fault(point)`, or with ":int" sends it SIGINT (Ctrl-C). Points: weights, weights-rename,
state, state-rename, saved, dcp-switch (a checkpoint, in that order), step and optimizer (a training step), eval
(ShardTask.evaluate); one with a dot in its name (loss.png) is reached when Python code opens that file's temp
file for writing.
"""
from __future__ import annotations

import contextlib
import os
import pickle
import signal
import sys
import threading
from pathlib import Path

import torch

from ..errors import LmkitError
from ..io import atomic_path
from ..models import build_model
from ..runs.native import fit_weights, load_weights, save_weights, weights_metadata
from . import distributed
from .optim import make_optimizer

STATE = "train_state.pt"
WEIGHTS = "model.safetensors"
_FAULT = ((os.environ.get("LMKIT_FAULT") or "") + "::").split(":")[:3]  # point, n, "int" or ""
_reached: dict[str, int] = {}


def fault(point: str) -> None:
    """Die (or Ctrl-C) here when LMKIT_FAULT names this point and it is the n-th time; else nothing."""
    if point != _FAULT[0]:
        return
    _reached[point] = _reached.get(point, 0) + 1
    if _reached[point] == int(_FAULT[1] or 1):
        os.kill(os.getpid(), signal.SIGINT if _FAULT[2] == "int" else getattr(signal, "SIGKILL", signal.SIGTERM))


if "." in _FAULT[0]:  # a file's temp file, e.g. .loss.png.*.tmp: reached when it is opened for writing
    sys.addaudithook(lambda event, args: event == "open" and args[1] is not None and "w" in str(args[1])
                     and Path(str(args[0])).name.startswith(f".{_FAULT[0]}.") and fault(_FAULT[0]))


@contextlib.contextmanager
def hold_interrupt():
    """Ctrl-C (SIGINT) inside the block takes effect when it ends: what the block changes, changes together."""
    previous = signal.getsignal(signal.SIGINT)
    if previous is None or threading.current_thread() is not threading.main_thread():  # None: not Python's
        yield
        return
    caught = []
    signal.signal(signal.SIGINT, lambda sig, frame: caught.append(frame))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught and callable(previous):
        previous(signal.SIGINT, caught[0])
    elif caught and previous == signal.SIG_DFL:
        os.kill(os.getpid(), signal.SIGINT)


def save_train_state(state: dict, path: Path) -> None:
    with atomic_path(path, fsync=True) as tmp:
        torch.save(state, tmp)
        fault("state-rename")


def load_train_state(path: Path) -> dict:
    if not path.is_file():
        raise LmkitError(f"{path}: no training state to resume from")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise LmkitError(f"{path}: holds more than tensors and numbers, and lmkit never unpickles a file it is "
                         f"handed: not read ({str(e).splitlines()[0][:120]})")
    except Exception as e:  # torch raises several types for truncated zip / pickle data
        raise LmkitError(f"{path}: corrupt or truncated checkpoint ({str(e).splitlines()[0][:120]})")
    missing = [k for k in ("step", "tokens_seen", "best_val", "rng", "batches") if not isinstance(state, dict)
               or k not in state]
    if missing or not all(type(state[k]) is int and state[k] >= 0 for k in ("step", "tokens_seen")):
        why = f"no {', '.join(missing)}" if missing else "step and tokens_seen are not counts"
        raise LmkitError(f"{path}: not an lmkit training state ({why})")
    return state


# ---- the Trainer's checkpoints ----------------------------------------------------------------------
def trainer_state(tr, batches_state=None, rng_state=None) -> dict:
    """What --resume needs besides the shards (under torchrun) or including the weights (one process)."""
    state = {
        "step": tr.step, "tokens_seen": tr.tokens_seen, "best_val": tr.best_val,
        "rng": rng_state if rng_state is not None else torch.get_rng_state(),
        "batches": batches_state or tr.train_batches.state_dict(),
        "global_batch": tr.global_batch, "best_metric": tr.best_metric,
    }
    if not tr.dist.enabled:  # under torchrun model and optimizer state live in train_state/ (DCP)
        state["optimizer"] = tr.optimizer.state_dict()
        state["model"] = tr.model.state_dict()
    return state


def write_weights(tr) -> None:
    """model.safetensors of the current step (one process, or the main process of DDP: a whole model)."""
    save_weights(tr.model, tr.out_dir / WEIGHTS, tr.step, before_rename=lambda: fault("weights-rename"))


def save(tr, batches_state=None, rng_state=None) -> None:
    """A checkpoint of Trainer `tr` (see the module's docstring): task files, weights, then train_state.pt."""
    out, state = tr.out_dir, trainer_state(tr, batches_state, rng_state)
    fault("weights")
    if tr.dist.enabled:
        def export(full_state: dict) -> None:
            plain = build_model(tr.cfg.model)
            plain.load_state_dict(full_state)
            save_weights(plain, out / WEIGHTS, tr.step)
        distributed.save_checkpoint(tr.dist, tr.model, tr.optimizer, out, tr.step, export,
                                    lambda folder: save_train_state(state, folder / STATE), fault)
        if tr.dist.is_main:
            fault("state")
            save_train_state(state, out / STATE)
        return
    tr.task.save(tr, out)
    write_weights(tr)
    fault("state")
    save_train_state(state, out / STATE)
    fault("saved")


def restore(tr) -> None:
    """--resume: the weights, optimizer, sampler and RNG state, and counters of the last checkpoint."""
    out = tr.out_dir
    state = load_train_state(out / STATE)
    if (out / WEIGHTS).exists() and weights_metadata(out / WEIGHTS) is None:  # damaged: no kill does that
        raise LmkitError(f"{out / WEIGHTS}: corrupt or truncated checkpoint; train_state.pt holds its weights too: "
                         "remove the file and --resume writes it again")
    try:
        if "optimizer" not in state:  # written under torchrun: any world size, or one process
            inner = out / distributed.DCP_DIR / STATE  # switched in with the shards: theirs
            if distributed.trained_distributed(out) and inner.is_file():
                state = load_train_state(inner)
            distributed.load_checkpoint(tr.model, tr.optimizer, out, state["step"])
        elif tr.dist.mode == "fsdp":  # written by one process: load a plain copy, then shard it
            plain = build_model(tr.cfg.model)
            plain_optimizer = make_optimizer(plain, tr.cfg.train, "cpu")
            _load_single_process(state, plain, plain_optimizer, out)
            distributed.load_full_state(tr.model, tr.optimizer, plain, plain_optimizer)
        else:  # written by one process; under DDP every rank reads the same file into its replica
            _load_single_process(state, tr.model, tr.optimizer, out)
        torch.set_rng_state(state["rng"])
        tr.train_batches.load_state_dict(state["batches"])
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise LmkitError(f"{out / STATE}: not a training state this run can continue "
                         f"({type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''})") from None
    if state.get("global_batch", tr.global_batch) != tr.global_batch and tr.progress:
        print(f"note: the global batch was {state['global_batch']} sequences per step and is now "
              f"{tr.global_batch} (batch_size × gradient_accumulation_steps × ranks); set batch_size to keep it",
              flush=True)
    if tr.dist.rank:
        torch.manual_seed(tr.cfg.train.seed + tr.dist.rank + state["step"])
    tr.step, tr.tokens_seen, tr.best_val = state["step"], state["tokens_seen"], state["best_val"]
    tr.best_metric = state.get("best_metric", tr.best_metric)
    saved = weights_metadata(out / WEIGHTS) or {}
    if tr.dist.is_main and tr.dist.mode != "fsdp" and saved.get("step") != str(tr.step):
        write_weights(tr)  # killed between the weights and the state: the weights follow the state


def _load_single_process(state: dict, model, optimizer, out: Path) -> None:
    if "model" in state:
        fit_weights(model, state["model"], out / STATE)
    else:  # written before train_state.pt held the weights
        weights_step = load_weights(model, out / WEIGHTS)
        if weights_step != state["step"]:
            raise LmkitError(f"{out}: model.safetensors (step {weights_step}) and train_state.pt "
                             f"(step {state['step']}) disagree; the checkpoint is incomplete")
    optimizer.load_state_dict(state["optimizer"])
