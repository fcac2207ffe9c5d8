"""GPT: a decoder-only Transformer trained to predict the next token.

    P(w_1 … w_T) = Π_t P(w_t | w_<t),   loss = −(1/T) Σ_t log P(w_t | w_<t)

Architecture choices (all in ModelConfig): pre-norm residual blocks x + Attn(Norm(x)), x + MLP(Norm(x));
LayerNorm or RMSNorm; learned, sinusoidal or rotary positions (optionally with Llama 3's long-context
remapping); GELU, SwiGLU or ReLU² MLP; multi-head or grouped-query attention, optionally with QK-norm, a
head size of its own, biases on q/k/v alone, a sliding window; output head tied to the token embedding
or not, its logits optionally soft-capped. With the defaults this is GPT-2.
Reads top to bottom: norm → attention → MLP → block → model.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from ..config import ModelConfig
from .attention import KVCache, apply_rope, attend, rope_tables, sliding_window_mask


def make_norm(cfg: ModelConfig, dim: int | None = None) -> nn.Module:
    dim = dim or cfg.n_embd
    if cfg.norm == "rmsnorm":  # x / sqrt(mean(x²) + ε) · g
        return nn.RMSNorm(dim, eps=cfg.norm_eps)
    return nn.LayerNorm(dim, eps=cfg.norm_eps, bias=cfg.bias)  # (x − μ) / σ · g + b


class CausalSelfAttention(nn.Module):
    """Multi-head attention: head_i = softmax(Q_i K_iᵀ / √d_k + causal mask) V_i; output = concat(heads) W_O."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = cfg.n_head, cfg.n_kv_head or cfg.n_head, cfg.head_dim
        width = self.n_head * self.head_dim  # n_embd, unless head_size sets its own
        self.qkv = nn.Linear(cfg.n_embd, width + 2 * self.n_kv_head * self.head_dim, bias=cfg.bias or cfg.qkv_bias)
        self.proj = nn.Linear(width, cfg.n_embd, bias=cfg.bias)
        self.dropout = cfg.dropout
        self.rope = cfg.pos == "rope"
        if cfg.qk_norm:  # q ← norm(q) · g_q, k ← norm(k) · g_k per head (the model's norm): bounded attention logits
            self.q_norm, self.k_norm = make_norm(cfg, self.head_dim), make_norm(cfg, self.head_dim)
        self.qk_norm = cfg.qk_norm

    def forward(self, x, rope=None, cache: KVCache | None = None, layer: int = 0, mask=None):
        """`mask` (B, 1, T, S) or (T, S) bool, True = may attend: given when a batch holds padding or a sliding
        window applies (see GPT.encode); it replaces the causal rule."""
        B, T, _ = x.shape
        q, k, v = self.qkv(x).split([self.n_head * self.head_dim, self.n_kv_head * self.head_dim,
                                     self.n_kv_head * self.head_dim], dim=-1)
        q = q.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, H, T, D)
        k = k.view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)  # (B, Hkv, T, D)
        v = v.view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        if self.rope:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        padded, causal, mask = mask, True, None
        if cache is not None:
            past = cache.pos
            k, v = cache.update(layer, k, v)  # (B, Hkv, past+T, D)
            if past > 0:  # new queries sit at positions past..past+T-1 and may see keys up to their own
                causal = False
                if T > 1:
                    mask = torch.ones(T, past + T, dtype=torch.bool, device=x.device).tril(diagonal=past)
        if padded is not None:
            causal, mask = False, padded
        y = attend(q, k, v, causal=causal, mask=mask, dropout_p=self.dropout if self.training else 0.0)
        y = y.transpose(1, 2).reshape(B, T, self.n_head * self.head_dim)  # (B, T, H·D): heads side by side
        return self.proj(y)


class MLP(nn.Module):
    """Position-wise feed-forward: GELU(x W_1) W_2, ReLU²: max(0, x W_1)² W_2,
    or SwiGLU: (SiLU(x W_gate) ⊙ x W_up) W_down."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.swiglu, self.tanh, self.relu2 = cfg.mlp == "swiglu", cfg.mlp == "gelu_tanh", cfg.mlp == "relu2"
        hidden = cfg.hidden_dim
        self.fc = nn.Linear(cfg.n_embd, 2 * hidden if self.swiglu else hidden, bias=cfg.bias)
        self.proj = nn.Linear(hidden, cfg.n_embd, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x):
        h = self.fc(x)
        if self.swiglu:
            gate, up = h.chunk(2, dim=-1)
            h = F.silu(gate) * up
        elif self.relu2:
            h = F.relu(h).square()
        else:
            h = F.gelu(h, approximate="tanh" if self.tanh else "none")
        return self.dropout(self.proj(h))


class Block(nn.Module):
    """Pre-norm residual block: x = x + Attn(Norm(x)); x = x + MLP(Norm(x))."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.ln_1, self.attn = make_norm(cfg), CausalSelfAttention(cfg)
        self.ln_2, self.mlp = make_norm(cfg), MLP(cfg)
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def forward(self, x, rope=None, cache=None, layer=0, mask=None):
        x = x + self.resid_dropout(self.attn(self.ln_1(x), rope, cache, layer, mask))
        return x + self.mlp(self.ln_2(x))


def next_token_head(lm_head: nn.Module, x: torch.Tensor, targets: torch.Tensor | None, last_only: bool,
                    softcap: float = 0.0):
    """Hidden states (B, T, C) -> logits (B, T, V) (only the last position with last_only) and, given
    targets, the mean −log p(target) with softmax over the vocabulary in fp32 (stable under autocast);
    -100 targets are ignored. Shared by every causal model (GPT, LSTM).

    softcap > 0 bounds the logits smoothly: logits ← softcap · tanh(logits / softcap)."""
    logits = lm_head(x[:, -1:] if last_only and targets is None else x)  # (B, T, V)
    if softcap:
        logits = softcap * torch.tanh(logits / softcap)
    if targets is None:
        return logits, None
    loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-100)
    return logits, loss


def sinusoidal_table(max_len: int, dim: int) -> torch.Tensor:
    """PE[t, 2i] = sin(t / 10000^(2i/d)), PE[t, 2i+1] = cos(t / 10000^(2i/d))  (Vaswani et al., 2017)."""
    pos = torch.arange(max_len, dtype=torch.float32)[:, None]
    div = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    pe = torch.zeros(max_len, dim)
    pe[:, 0::2] = torch.sin(pos * div)
    pe[:, 1::2] = torch.cos(pos * div)[:, : dim // 2]
    return pe


def padded_positions_and_mask(attention_mask: torch.Tensor, T: int) -> tuple[torch.Tensor, torch.Tensor]:
    """attention_mask (B, S) bool -> positions of the last T tokens (B, T) and the attention mask (B, 1, T, S).

    Query i (at column S − T + i) may see key j when j ≤ its column and key j is a real token. It always
    sees itself, so a padding query has one finite score (its output is never used) instead of NaN.
    """
    B, S = attention_mask.shape
    pos = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, S - T:]
    cols = torch.arange(S, device=attention_mask.device)
    causal = cols[None, :] <= cols[S - T:, None]  # (T, S)
    itself = cols[None, :] == cols[S - T:, None]
    mask = (causal & attention_mask[:, None, :]) | itself  # (B, T, S)
    return pos, mask[:, None]


def document_positions_and_mask(document_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """document_ids (B, T), one id per token of a packed row (documents in runs of equal ids) -> positions
    (B, T) counted from each document's first token, and the attention mask (B, 1, T, T):

        mask[b, i, j] = (j ≤ i) and doc[b, j] = doc[b, i]

    so every document in a packed row is computed exactly as if it were alone."""
    B, T = document_ids.shape
    cols = torch.arange(T, device=document_ids.device)
    starts = torch.ones_like(document_ids, dtype=torch.bool)
    starts[:, 1:] = document_ids[:, 1:] != document_ids[:, :-1]
    first = torch.where(starts, cols, 0).cummax(dim=-1).values  # index of each token's document start
    same = document_ids[:, :, None] == document_ids[:, None, :]  # (B, T, T)
    return cols - first, (same & (cols[None, :] <= cols[:, None]))[:, None]


class GPT(nn.Module):
    is_causal = True  # each position sees only itself and the past
    activation_checkpointing = False  # set by the Trainer (train.activation_checkpointing): recompute blocks

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        assert cfg.vocab_size > 0, "vocab_size must be set from the tokenizer before building the model"
        self.config = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)  # token embeddings
        if cfg.pos == "learned":
            self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd)
        elif cfg.pos == "sinusoidal":
            self.register_buffer("wpe_table", sinusoidal_table(cfg.block_size, cfg.n_embd), persistent=False)
        else:
            llama3 = (cfg.rope_factor, cfg.rope_low_freq_factor, cfg.rope_high_freq_factor,
                      cfg.rope_original_context) if cfg.rope_scaling == "llama3" else None
            cos, sin = rope_tables(cfg.head_dim, cfg.block_size, cfg.rope_theta, llama3)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        self.drop = nn.Dropout(cfg.dropout)
        self.h = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = make_norm(cfg)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.wte.weight  # weight tying: one matrix maps ids→vectors and vectors→logits
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # GPT-2: scale residual projections by 1/√(2·n_layer)
            if name.endswith("proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init_weights(module):
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self, non_embedding: bool = True) -> int:
        n = sum(p.numel() for p in self.parameters())
        if non_embedding and self.config.pos == "learned":
            n -= self.wpe.weight.numel()
        return n

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None,
                document_ids: torch.Tensor | None = None, *, cache: KVCache | None = None,
                last_only: bool = False, attention_mask: torch.Tensor | None = None):
        """idx: (B, T) token ids -> logits (B, T, V) (or (B, 1, V) with last_only), and the mean
        cross-entropy against `targets` (B, T) when given (positions with -100 are ignored).

        `attention_mask` (B, past + T), 1 = real token, 0 = padding (as in Hugging Face), covers the cached
        positions and the new ones. With it, a left-padded row behaves exactly as if it were alone: its
        positions count only its real tokens (position = cumsum(mask) − 1) and no query sees a padding key.
        `document_ids` (B, T): rows packed with several documents (fine-tuning); no token sees another
        document and positions restart at each document (see document_positions_and_mask).
        """
        return next_token_head(self.lm_head, self.encode(idx, cache, attention_mask, document_ids), targets,
                               last_only, self.config.logit_softcap)

    def encode(self, idx: torch.Tensor, cache: KVCache | None = None,
               attention_mask: torch.Tensor | None = None, document_ids: torch.Tensor | None = None) -> torch.Tensor:
        """idx: (B, T) token ids -> final hidden states (B, T, C), after ln_f (what the heads read)."""
        B, T = idx.shape
        start = cache.pos if cache is not None else 0
        assert start + T <= self.config.block_size, "sequence longer than block_size"
        x = self.wte(idx)  # (B, T, C)
        if document_ids is not None:
            assert cache is None and attention_mask is None, "document_ids are for packed training rows"
            pos, mask = document_positions_and_mask(document_ids)  # (B, T), (B, 1, T, T)
        elif attention_mask is None:  # positions start..start+T-1: a slice of each table (no index op)
            pos, mask = slice(start, start + T), None
        else:
            assert attention_mask.shape == (B, start + T), "attention_mask must cover cached and new positions"
            pos, mask = padded_positions_and_mask(attention_mask.bool(), T)  # (B, T), (B, 1, T, S)
        rope = None
        if self.config.pos == "learned":
            x = x + self.wpe.weight[pos]
        elif self.config.pos == "sinusoidal":
            x = x + self.wpe_table[pos]
        else:  # (T, D/2), or (B, 1, T, D/2) per row, broadcast over heads
            rope = (self.rope_cos[pos], self.rope_sin[pos]) if isinstance(pos, slice) else \
                (self.rope_cos[pos][:, None], self.rope_sin[pos][:, None])
        window = self.config.sliding_window
        if window and start + T > window:  # the same band for every layer, prefill and cached steps alike
            mask = sliding_window_mask(mask, T, start + T, window, idx.device)
        x = self.drop(x)
        recompute = self.activation_checkpointing and self.training and cache is None and torch.is_grad_enabled()
        for i, block in enumerate(self.h):
            if recompute:  # keep the block's input only; backward runs the block again (same dropout masks)
                x = checkpoint(block, x, rope, None, i, mask, use_reentrant=False)
            else:
                x = block(x, rope, cache, i, mask)
        if cache is not None:
            cache.advance(T)
        return self.ln_f(x)

    def make_cache(self, batch_size: int, max_len: int | None = None, dtype=None) -> KVCache:
        cfg = self.config
        p = self.wte.weight
        return KVCache(cfg.n_layer, batch_size, cfg.n_kv_head or cfg.n_head, max_len or cfg.block_size,
                       cfg.head_dim, p.device, dtype or p.dtype)
