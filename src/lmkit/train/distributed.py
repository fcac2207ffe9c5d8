"""Data parallelism on PyTorch's own engine: torch.distributed, launched by torchrun.

    torchrun --nproc_per_node N -m lmkit train CONFIG.toml        (or: lmkit train CONFIG.toml --nproc N)

Every rank runs the same training loop on its own slice of each global batch; gradients are averaged,

    g = (1/N) Σ_r ∇L_r   (L_r = mean loss of rank r's micro-batch),

so N ranks × batch b take exactly the step of 1 process × batch N·b.
  ddp   DistributedDataParallel: each rank holds the whole model, optimizer state and gradients; the
        gradients are all-reduced once per step (≈ 2·P·(N−1)/N values sent per rank, P = parameters).
  fsdp  FSDP2: `fully_shard` each block, then the root. A rank keeps 1/N of the parameters, gradients
        and optimizer state; it all-gathers a block's parameters just before the block runs (forward
        and again in backward) and reduce-scatters its gradients (≈ 3·P·(N−1)/N values per rank).
The backend is nccl on CUDA and gloo on CPU. Model code knows nothing of this module: the Trainer asks
it to set up, wrap, synchronise gradients, average a logged loss, and save/load checkpoints.

Checkpoints: model and optimizer state go to `train_state/` with torch.distributed.checkpoint (DCP),
each rank writing its own shards; DCP reshards on load, so a run resumes on any world size, also in
one plain process. Rank 0 also writes the whole model to `model.safetensors`, the single file that
`lmkit.load` and `lmkit generate` read. DCP's own reader unpickles `.metadata` and non-tensor values:
lmkit reads them only for a run whose config.json says parallel = ddp or fsdp, and then through
a restricted unpickler (the checkpoint metadata classes alone) and torch.load(weights_only=True).
"""
from __future__ import annotations

import contextlib
import inspect
import os
import re
import shutil
import subprocess
import sys
import warnings
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

from ..config import TrainConfig, load_json, save_json
from ..errors import LmkitError
from .dcp_read import read_metadata, safe_loaders

DCP_DIR = "train_state"


@dataclass
class Dist:
    mode: str = "none"  # none | ddp | fsdp
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.mode != "none"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            torch.distributed.barrier()

    @contextlib.contextmanager
    def main_first(self):
        """Rank 0 runs the block first (e.g. prepares data); the others wait, then find its result."""
        if not self.is_main:
            self.barrier()
        yield
        if self.is_main:
            self.barrier()

    def mean(self, value: torch.Tensor) -> float:
        """The mean of a scalar over all ranks (for the logged loss; the one host sync per log)."""
        if not self.enabled:
            return value.item()
        v = value.detach().float().reshape(1).clone()
        torch.distributed.all_reduce(v)  # SUM works on every backend; AVG is nccl-only
        return v.item() / self.world_size


def launched_by_torchrun() -> bool:
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))


def setup(cfg: TrainConfig, device: torch.device) -> tuple[Dist, torch.device]:
    """Join the process group when torchrun started us; one plain process stays as it always was."""
    if not launched_by_torchrun():
        if cfg.parallel != "none":
            print(f"note: parallel = {cfg.parallel!r} takes effect under torchrun (lmkit train --nproc N); "
                  "training in one process", flush=True)
        return Dist(), device
    world = int(os.environ["WORLD_SIZE"])
    mode = cfg.parallel if cfg.parallel != "none" else ("ddp" if world > 1 else "none")
    if mode == "none":
        return Dist(), device
    if not torch.distributed.is_available():
        raise LmkitError(f"parallel = {mode!r}: this torch build has no torch.distributed")
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group(
            "nccl" if device.type == "cuda" else "gloo", timeout=timedelta(seconds=cfg.dist_timeout),
            device_id=device if device.type == "cuda" else None)
    return Dist(mode, rank, local_rank, world), device


def launch(nproc: int, train_args: list[str]) -> None:
    """`lmkit train ... --nproc N` = `torchrun --standalone --nproc_per_node N -m lmkit train ...`."""
    if nproc < 1:
        raise LmkitError(f"--nproc must be >= 1 (got {nproc})")
    if launched_by_torchrun():
        raise LmkitError("--nproc: this process already runs under torchrun")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "lmkit", "train", *train_args]
    rc = subprocess.run(cmd).returncode
    if rc:
        raise LmkitError(f"torchrun: the job stopped with exit code {rc}; the failing rank's message is above")


def is_comm_failure(d: Dist, e: BaseException) -> bool:
    """A collective failed: a peer died (gloo: connection reset/closed) or went silent past dist_timeout."""
    if not d.enabled:
        return False
    if isinstance(e, getattr(torch.distributed, "DistError", ())):
        return True
    text = str(e)
    return any(w in text for w in ("gloo", "NCCL", "Connection reset", "Connection closed", "Timed out"))


def short_reason(e: BaseException) -> str:
    """The first sentence of a backend error without its source location:
    '[…/pair.cc:537] Read error [127.0.0.1]:17330: Connection reset by peer. …' → 'Read error …: Connection reset by peer'."""
    line = re.sub(r"^\[[^\]]*\]\s*", "", str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__)
    return line.split(". ")[0][:200]


def teardown(d: Dist) -> None:
    if d.enabled and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def wrap(model: nn.Module, d: Dist, cfg: TrainConfig, device: torch.device) -> nn.Module:
    """The module to call for forward/backward. FSDP2 shards `model` in place (each entry of a top-level
    ModuleList, i.e. each Transformer block, then the root); DDP returns a wrapper around it."""
    if d.mode == "ddp":
        from torch.nn.parallel import DistributedDataParallel
        # buffers (RoPE/sinusoid tables) are constants: no need to broadcast them every forward
        no_buffer_sync = ({"forward_sync_buffers": False} if "forward_sync_buffers" in
                          inspect.signature(DistributedDataParallel).parameters else {"broadcast_buffers": False})
        return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                       **no_buffer_sync)
    if d.mode == "fsdp":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard
        if cfg.fsdp_cpu_offload and device.type != "cuda":
            raise LmkitError(f"fsdp_cpu_offload = true needs CUDA ranks (these train on {device.type}, whose "
                             "parameters already live in CPU memory); set it to false")
        kwargs = {"mesh": init_device_mesh(device.type, (d.world_size,))}
        if cfg.fsdp_mixed_precision != "none":  # compute in bf16/fp16, reduce gradients in fp32
            kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=getattr(torch, cfg.fsdp_mixed_precision),
                                                       reduce_dtype=torch.float32)
        if cfg.fsdp_cpu_offload:
            kwargs["offload_policy"] = CPUOffloadPolicy()
        for child in model.children():
            if isinstance(child, nn.ModuleList):
                for block in child:
                    fully_shard(block, **kwargs)
        fully_shard(model, **kwargs)
    return model


@contextlib.contextmanager
def gradient_sync(d: Dist, wrapped: nn.Module, sync: bool):
    """Gradient accumulation: reduce gradients across ranks only in the last micro-batch's backward."""
    if d.mode == "ddp" and not sync:
        with wrapped.no_sync():
            yield
        return
    if d.mode == "fsdp":
        wrapped.set_requires_gradient_sync(sync)
    yield


# ---- checkpoints ----------------------------------------------------------------------------------
def save_checkpoint(d: Dist, model: nn.Module, optimizer, out_dir: Path, step: int,
                    export: Callable[[dict], None], write_state: Callable[[Path], None],
                    fault: Callable[[str], None] = lambda point: None) -> None:
    """Every rank writes its shards of model + optimizer into out_dir/.train_state.tmp, rank 0 adds the
    training state (`write_state(folder)`) and switches the folder in by renames (train_state → .old, .tmp →
    train_state; open_train_dir restores .old if a kill falls between), then passes the gathered full state
    dict to `export`. `fault(point)`: fault injection (checkpoint.fault)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                         get_optimizer_state_dict)
    out_dir = Path(out_dir)
    tmp, final, old = out_dir / f".{DCP_DIR}.tmp", out_dir / DCP_DIR, out_dir / f".{DCP_DIR}.old"
    if d.is_main:
        for folder in (tmp, old):
            shutil.rmtree(folder, ignore_errors=True)
    d.barrier()
    state = {"model": get_model_state_dict(model), "step": torch.tensor(step)}
    if optimizer.state:  # before the first step there is none; asking for it would create it (Adam's t = 1)
        state["optim"] = get_optimizer_state_dict(model, optimizer)
    dcp.save(state, checkpoint_id=tmp)
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if d.is_main:
        write_state(tmp)
        if final.exists():
            final.rename(old)
        fault("dcp-switch")
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
        export(full)
    d.barrier()


def record_mode(out_dir: Path, mode: str) -> None:
    """A run resumed under torchrun writes DCP checkpoints from now on: its config.json says so."""
    cfg = load_json(Path(out_dir) / "config.json")
    if cfg.train.parallel != mode:
        cfg.train.parallel = mode
        save_json(cfg, Path(out_dir) / "config.json")


def trained_distributed(out_dir: Path) -> bool:
    """Whether the run's own config.json says it was trained under torchrun (parallel = ddp or fsdp)."""
    return load_json(Path(out_dir) / "config.json").train.parallel in ("ddp", "fsdp")


def load_checkpoint(model: nn.Module, optimizer, out_dir: Path, step: int) -> None:
    """Read out_dir/train_state into `model` and `optimizer`, whatever world size wrote it; only for a run
    trained distributed, never unpickling anything but checkpoint metadata (read_metadata)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (get_model_state_dict, get_optimizer_state_dict,
                                                         set_model_state_dict, set_optimizer_state_dict)
    out_dir = Path(out_dir)
    path = out_dir / DCP_DIR
    if not trained_distributed(out_dir):
        raise LmkitError(f"{out_dir / 'train_state.pt'} holds no optimizer state, and config.json says the run "
                         f"was trained in one process (parallel = none): {path} is not read (it is read only for a "
                         "run trained under torchrun, parallel = ddp or fsdp); the checkpoint is incomplete")
    if not (path / ".metadata").is_file():
        raise LmkitError(f"{path}: no distributed checkpoint (missing .metadata); the checkpoint is incomplete")
    metadata = read_metadata(path)
    state = {"model": get_model_state_dict(model), "step": torch.tensor(-1)}
    if any(k.startswith("optim.") for k in metadata.state_dict_metadata):
        state["optim"] = get_optimizer_state_dict(model, optimizer)
    reader, planner = safe_loaders(path, metadata)
    try:
        with warnings.catch_warnings():  # in one plain process DCP says it assumes one process: it is right
            warnings.filterwarnings("ignore", message=".*assuming the intent is to load in a single process")
            dcp.load(state, storage_reader=reader, planner=planner)
    except (Exception, dcp.api.CheckpointException) as e:  # DCP wraps reader errors (in a BaseException)
        e = next(iter(e.failures.values()))[0] if isinstance(e, dcp.api.CheckpointException) and e.failures else e
        raise LmkitError(f"{path}: cannot read the distributed checkpoint ({str(e).splitlines()[0][:160]})")
    if int(state["step"]) != step:
        raise LmkitError(f"{path} (step {int(state['step'])}) and train_state.pt (step {step}) disagree; "
                         "the checkpoint is incomplete")
    set_model_state_dict(model, state["model"])
    if "optim" in state:
        set_optimizer_state_dict(model, optimizer, state["optim"])


def load_full_state(model: nn.Module, optimizer, plain: nn.Module, plain_optimizer) -> None:
    """Shard the state of an unwrapped model and optimizer (a one-process checkpoint) into `model`."""
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_optimizer_state_dict,
                                                         set_model_state_dict, set_optimizer_state_dict)
    full = StateDictOptions(full_state_dict=True)
    set_model_state_dict(model, plain.state_dict(), options=full)
    set_optimizer_state_dict(model, optimizer, get_optimizer_state_dict(plain, plain_optimizer), options=full)
