"""What a training run costs: FLOPs per token and MFU, a memory estimate beside the measured peak, the machine.

    FLOPs per token (training: forward + backward) ≈ 6·N + 12·L·d·T
        N = parameters without the position table, L layers, d = n_embd, T = block_size (PaLM, appendix B)
    MFU = FLOPs per token × tokens/s / peak FLOP/s  (peak: train.peak_tflops, or a known GPU's bf16 figure)

Memory (bytes, per rank):
    parameters  4·N (fp32 weights; FSDP: /ranks)          gradients  4·N
    optimizer   AdamW: 2 fp32 states per parameter (8·N); Muon: 1 state for the hidden matrices, 2 for the rest
    activations per micro-batch, what backward keeps (B sequences × T tokens, a = bytes of the compute dtype):
        per block and token  8·d (fp32 norm inputs) + a·(6·d + 2·h)   (h = MLP width; +2·d with rope for the
                             rotated q, k; SwiGLU keeps 4·h); activation checkpointing keeps 4·d (the block's
                             input) per block and recomputes one block at a time in backward
        output head          a·d + a·V (logits) + 4·V (fp32 log-softmax; +4·V for the fp32 copy of a
                             low-precision logits tensor)
Measured peak: CUDA's max_memory_allocated, else the process's peak resident set (which also counts
Python, torch's libraries and the data), so the two compare best on a large model.
"""
from __future__ import annotations

import os
import platform
import sys

import torch

from ..models.lora import count_parameters

# dense bf16 tensor-core peaks in TFLOP/s (vendor data sheets), matched against torch.cuda.get_device_name
GPU_PEAK_TFLOPS = [("H200", 989.0), ("H100 PCIe", 756.0), ("H100", 989.0), ("B200", 2250.0), ("A100", 312.0),
                   ("L40S", 362.0), ("L4", 121.0), ("A10", 125.0), ("RTX 4090", 165.2), ("RTX 3090", 71.0),
                   ("V100", 125.0), ("T4", 65.0)]
GB = 1024 ** 3


def counted_parameters(model: torch.nn.Module) -> int:
    """Parameters without learned position tables (they cost no FLOPs per token), each shared one once."""
    seen, n = set(), 0
    for name, p in model.named_parameters():
        if id(p) not in seen and not name.split(".")[-2:-1] == ["wpe"]:
            seen.add(id(p))
            n += p.numel()
    return n


def flops_per_token(model: torch.nn.Module, cfg) -> float:
    """Training FLOPs per token, 6·N + 12·L·d·T (cfg: the ModelConfig; an LSTM has no attention term)."""
    attention = 0 if cfg.type == "lstm" else 12 * cfg.n_layer * cfg.n_embd * cfg.block_size
    return 6.0 * counted_parameters(model) + attention


def peak_flops(train_cfg, device: torch.device, dtype: torch.dtype) -> float | None:
    """FLOP/s that MFU divides by: train.peak_tflops when set, else a known GPU's bf16 peak when training in
    bf16/fp16 on it; None (no MFU) otherwise."""
    if train_cfg.peak_tflops:
        return train_cfg.peak_tflops * 1e12
    if device.type != "cuda" or dtype not in (torch.bfloat16, torch.float16):
        return None
    name = torch.cuda.get_device_name(device)
    return next((tf * 1e12 for key, tf in GPU_PEAK_TFLOPS if key in name), None)


def set_checkpointing(model: torch.nn.Module, on: bool) -> None:
    """train.activation_checkpointing: GPT and BERT (also inside a classifier) recompute their blocks in backward."""
    for m in model.modules():
        if hasattr(m, "activation_checkpointing"):
            m.activation_checkpointing = on


def as_float(x) -> float:
    """A logged scalar tensor as a float (an FSDP DTensor gathered first)."""
    if hasattr(x, "full_tensor"):
        x = x.full_tensor()
    return float(x)


def optimizer_states(model: torch.nn.Module, optimizer: str) -> int:
    """fp32 values of optimizer state: AdamW two per parameter; Muon one for the blocks' 2-D matrices."""
    n = 0
    for name, p in model.named_parameters():
        hidden = optimizer == "muon" and p.ndim == 2 and (".h." in f".{name}")
        n += p.numel() * (1 if hidden else 2)
    return n


def activation_bytes(cfg, batch_size: int, dtype: torch.dtype, checkpointing: bool) -> float:
    """What backward keeps of one micro-batch (see the module's docstring); cfg: the ModelConfig."""
    a = 2 if dtype in (torch.bfloat16, torch.float16) else 4
    d, h, V, T = cfg.n_embd, cfg.hidden_dim, cfg.vocab_size, cfg.block_size
    if cfg.type == "lstm":
        block = 4 * d + a * 10 * d  # gates and states per layer and token, roughly
    else:
        block = 8 * d + a * (6 * d + (4 * h if cfg.mlp == "swiglu" else 2 * h) + (2 * d if cfg.pos == "rope" else 0))
    head = a * d + a * V + 4 * V + (4 * V if a != 4 else 0)
    blocks = cfg.n_layer * 4 * d + block if checkpointing else cfg.n_layer * block
    return float(batch_size * T * (blocks + head))


def memory_estimate(model: torch.nn.Module, cfg, dtype: torch.dtype, shards: int = 1) -> dict:
    """Bytes per rank: parameters, gradients, optimizer state, activations per micro-batch, total."""
    t = cfg.train
    n = count_parameters(model)[1]
    out = {"parameters": 4.0 * n / shards, "gradients": 4.0 * n / shards,
           "optimizer": 4.0 * optimizer_states(model, t.optimizer) / shards,
           "activations": activation_bytes(cfg.model, t.batch_size, dtype, t.activation_checkpointing)}
    out["total"] = sum(out.values())
    return out


def size(n: float) -> str:
    """Bytes as GB or MB."""
    return f"{n / GB:.2f} GB" if n >= GB / 10 else f"{n / 1024 ** 2:.1f} MB"


def describe_estimate(est: dict, cfg) -> str:
    """One line for the start of training."""
    t = cfg.train
    act = (f"activations {size(est['activations'])} per micro-batch of {t.batch_size} × {cfg.model.block_size}"
           f" tokens{' (activation checkpointing)' if t.activation_checkpointing else ''}")
    return (f"memory estimate: parameters {size(est['parameters'])}, gradients {size(est['gradients'])}, "
            f"optimizer state {size(est['optimizer'])}, {act}; total ≈ {size(est['total'])}")


def peak_memory(device: torch.device) -> tuple[float | None, str]:
    """(bytes, what was measured): CUDA's max_memory_allocated, else the peak resident set of this process."""
    if device.type == "cuda":
        return float(torch.cuda.max_memory_allocated(device)), "max_memory_allocated"
    try:
        import resource
    except ImportError:  # Windows
        return None, "peak RSS"
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return float(peak if sys.platform == "darwin" else peak * 1024), "peak RSS"


def current_rss() -> float | None:
    """This process's resident set now, in bytes (Linux; None elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return float(int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE"))
    except (OSError, ValueError, IndexError):
        return None


def machine(device: torch.device) -> dict:
    """The machine a run trained on, for the run report."""
    info = {"python": platform.python_version(), "torch": torch.__version__, "os": platform.platform(),
            "cpu": _cpu_name(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "device": str(device)}
    try:
        info["memory_gb"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GB, 1)
    except (ValueError, OSError, AttributeError):
        pass
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["gpu_count"] = torch.cuda.device_count()
    return info


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
