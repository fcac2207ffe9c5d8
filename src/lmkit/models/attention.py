"""Attention, the one implementation every model family calls.

    Attention(Q, K, V) = softmax(Q Kᵀ / √d_k) V

computed by `torch.nn.functional.scaled_dot_product_attention` (flash / memory-efficient / math
kernels, chosen by PyTorch for the device). Also here: rotary position embeddings (RoPE) and the
pre-allocated key/value cache used for generation.
"""
from __future__ import annotations

import math
from contextlib import contextmanager

import torch
import torch.nn.functional as F

_recorded: list | None = None  # set by record_attention(): every attend() call appends its weights
EXPLICIT_MAX_T = 256  # bf16 on a CPU: explicit attention up to this many positions, flash beyond (see below)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool,
           mask: torch.Tensor | None = None, dropout_p: float = 0.0) -> torch.Tensor:
    """q: (B, H, Tq, D); k, v: (B, Hkv, Tk, D) -> (B, H, Tq, D). `mask` is a bool (.., Tq, Tk), True = attend."""
    if k.size(1) != q.size(1):  # grouped-query attention: each K/V head serves n_head/n_kv_head query heads
        B, H, Tq, D = q.shape
        rep = H // k.size(1)
        if Tq == 1 and (not causal or k.size(2) == 1) and _recorded is None and (mask is None or mask.size(-2) == 1):
            # one new token (decoding): query heads j·rep … j·rep+rep−1 share K/V head j, so they attend as
            # rep query rows of that head — no copy of the cache rep times over
            y = F.scaled_dot_product_attention(q.view(B, k.size(1), rep, D), k, v, attn_mask=mask, dropout_p=dropout_p)
            return y.view(B, H, 1, D)
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    if short_bf16_on_cpu(q, k, v, mask):
        y = attend_explicit(q, k, v, causal, dropout_p)
    else:
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p,
                                           is_causal=causal and mask is None)
    if _recorded is not None:
        _recorded.append(attention_weights(q, k, causal, mask))
    return y


def short_bf16_on_cpu(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> bool:
    """The kernel choice by shape. In bf16 on a CPU, PyTorch's flash kernel (its backward above all) is
    2-4x slower than plain matmuls + softmax up to 128 positions; at 256 the two are even alone, but
    under torch.compile the explicit form fuses with its neighbours and the whole step is faster; from
    512 flash wins and keeps memory linear in T (`benchmarks/kernel_choice.py`, `train_throughput.py
    --explicit-max-t`). fp32 always takes flash."""
    return (q.device.type == "cpu" and v.dtype in (torch.bfloat16, torch.float16) and mask is None
            and q.size(-2) == k.size(-2) <= EXPLICIT_MAX_T)


def attend_explicit(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool,
                    dropout_p: float = 0.0) -> torch.Tensor:
    """softmax(Q Kᵀ / √d_k + causal mask) V with the products in v's dtype and the softmax in fp32."""
    probs = masked_scores(q, k, causal).float().softmax(dim=-1)
    if dropout_p > 0:
        probs = F.dropout(probs, dropout_p)
    return probs.to(v.dtype) @ v


def attention_weights(q: torch.Tensor, k: torch.Tensor, causal: bool, mask: torch.Tensor | None = None) -> torch.Tensor:
    """The matrix SDPA applies to V, spelled out in fp32: softmax(Q Kᵀ / √d_k + mask) -> (B, H, Tq, Tk)."""
    return masked_scores(q.float(), k.float(), causal, mask).softmax(dim=-1)


def masked_scores(q: torch.Tensor, k: torch.Tensor, causal: bool, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Q Kᵀ / √d_k in q's dtype, −inf where a query may not look (mask False, or a later key if causal)."""
    scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(q.size(-1)))
    if mask is not None:
        return scores.masked_fill(~mask, float("-inf"))
    if causal:
        tq, tk = scores.shape[-2:]
        scores = scores.masked_fill(torch.ones(tq, tk, dtype=torch.bool, device=q.device).tril().logical_not(),
                                    float("-inf"))
    return scores


@contextmanager
def record_attention():
    """Collect the attention weights of every layer during a forward pass (for `lmkit explain`):
        with record_attention() as maps: model(idx)   # maps[i]: (B, H, T, T) of layer i"""
    global _recorded
    _recorded = []
    try:
        yield _recorded
    finally:
        _recorded = None


# ---- rotary position embeddings (Su et al., 2021) -------------------------------------------------
def rope_tables(head_dim: int, max_len: int, theta: float = 10000.0,
                llama3: tuple[float, float, float, int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin of angle t·f_i, f_i = θ^(-2i/d), for positions t < max_len and pairs i < d/2: each (max_len, d/2).
    `llama3` = (factor, low_freq_factor, high_freq_factor, original context): the f_i remapped as Llama 3.1's."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    if llama3 is not None:
        inv_freq = llama3_frequencies(inv_freq, *llama3)
    angles = torch.outer(torch.arange(max_len, dtype=torch.float32), inv_freq)
    return angles.cos(), angles.sin()


def llama3_frequencies(f: torch.Tensor, factor: float, low: float, high: float, context: int) -> torch.Tensor:
    """Llama 3.1's long-context rope (Meta, 2024). A frequency whose wavelength λ = 2π/f fits into the original
    context often (λ ≤ context/high) is kept; one slower than λ ≥ context/low is divided by `factor` (its angles
    stretched over a longer context); in between it blends smoothly:
        s = clamp((context/λ − low) / (high − low), 0, 1),   f' = (1 − s) · f / factor + s · f"""
    s = ((context * f / (2 * math.pi) - low) / (high - low)).clamp(0.0, 1.0)
    return (1 - s) * f / factor + s * f


def sliding_window_mask(mask: torch.Tensor | None, T: int, S: int, window: int, device) -> torch.Tensor:
    """Restrict `mask` (.., T, S) (None: causal) to a band: the query at column c = S − T + i sees key j only if
    c − window < j ≤ c, i.e. the last `window` tokens, itself included (Mistral's sliding-window attention)."""
    cols = torch.arange(S, device=device)
    q = cols[S - T:, None]
    band = (cols[None, :] <= q) & (cols[None, :] > q - window)  # (T, S)
    return band if mask is None else mask & band


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate each (first-half, second-half) pair of x: (B, H, T, D) by its position's angle; cos/sin: (T, D/2)."""
    d = x.size(-1) // 2
    x1, x2 = x[..., :d], x[..., d:]
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


# ---- key/value cache ----------------------------------------------------------------------------
class KVCache:
    """Keys and values of every layer for up to `max_len` positions, allocated once.

    Generation runs the prompt through the model once (prefill), then one token per step; each step
    writes its new K/V at `pos` and attends over the first pos+1 positions instead of recomputing all.
    """

    def __init__(self, n_layer: int, batch_size: int, n_kv_head: int, max_len: int, head_dim: int,
                 device, dtype):
        shape = (n_layer, batch_size, n_kv_head, max_len, head_dim)
        # uninitialised: only positions already written are ever read, and the OS commits pages lazily,
        # so a long context costs nothing until it is used
        self.k = torch.empty(shape, device=device, dtype=dtype)
        self.v = torch.empty(shape, device=device, dtype=dtype)
        self.pos = 0  # number of positions filled
        self.max_len = max_len

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v (B, Hkv, T, D) at positions [pos, pos+T); return all keys/values so far."""
        t = k.size(2)
        self.k[layer, :, :, self.pos:self.pos + t] = k
        self.v[layer, :, :, self.pos:self.pos + t] = v
        return self.k[layer, :, :, :self.pos + t], self.v[layer, :, :, :self.pos + t]

    def advance(self, t: int) -> None:
        self.pos += t

    def select(self, rows: torch.Tensor) -> None:
        """Keep only these batch rows (generation drops finished sequences). Only the `pos` filled positions
        are copied: copying all `max_len` would touch every page of a long context at every finished row."""
        for name in ("k", "v"):
            old = getattr(self, name)
            new = torch.empty((old.size(0), len(rows), *old.shape[2:]), device=old.device, dtype=old.dtype)
            new[:, :, :, :self.pos] = old[:, rows, :, :self.pos]
            setattr(self, name, new)

    def drop_front(self, n: int) -> None:
        """Forget the first n cached positions (columns that became padding in every row)."""
        self.k[..., :self.pos - n, :] = self.k[..., n:self.pos, :].clone()
        self.v[..., :self.pos - n, :] = self.v[..., n:self.pos, :].clone()
        self.pos -= n
