"""BERT: a bidirectional Transformer encoder pretrained as a masked language model (Devlin et al., 2019).

    loss = −(1/|M|) Σ_{i∈M} log P(x_i | x_{\\M})      over the selected positions M only (labels −100 elsewhere)

Architecture as in the paper and in Hugging Face's BertModel, so pretrained weights load unchanged
(through the name table in models/bert_hf.py): token + learned position + segment embeddings → LayerNorm; then
post-LN blocks x = LN(x + Attn(x)); x = LN(x + MLP(x)), where every position attends to every
non-padding position (no causal mask). `pos = "rope"` replaces the position table with rotary
positions on q and k, as in the GPT. `norm_position = "pre"` gives pre-LN blocks instead,
x = x + Attn(LN(x)); x = x + MLP(LN(x)) and a final LN, which train faster from scratch. The MLM head is dense → GELU → LayerNorm → logits with the
output matrix tied to the token embedding. Attention runs through `attention.attend`, as in GPT.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from ..config import ModelConfig
from .attention import apply_rope, attend, rope_tables
from .gpt import MLP, make_norm


class SelfAttention(nn.Module):
    """head_i = softmax(Q_i K_iᵀ / √d_k + padding mask) V_i; output = concat(heads) W_O."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_head, self.head_dim = cfg.n_head, cfg.head_dim
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.dropout = cfg.dropout

    def forward(self, x, mask=None, rope=None):
        B, T, C = x.shape
        q, k, v = (t.view(B, T, self.n_head, self.head_dim).transpose(1, 2) for t in self.qkv(x).split(C, dim=-1))
        if rope is not None:  # rotary positions: q·k depends on the offset between the two positions
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        y = attend(q, k, v, causal=False, mask=mask, dropout_p=self.dropout if self.training else 0.0)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))  # (B, T, C)


class Block(nn.Module):
    """Post-LN residual block (as BERT): x = LN(x + Attn(x)); x = LN(x + MLP(x)).
    Pre-LN: x = x + Attn(LN(x)); x = x + MLP(LN(x))."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.attn, self.ln_1 = SelfAttention(cfg), make_norm(cfg)
        self.mlp, self.ln_2 = MLP(cfg), make_norm(cfg)
        self.drop = nn.Dropout(cfg.dropout)
        self.pre = cfg.norm_position == "pre"

    def forward(self, x, mask=None, rope=None):
        if self.pre:
            x = x + self.drop(self.attn(self.ln_1(x), mask, rope))
            return x + self.mlp(self.ln_2(x))
        x = self.ln_1(x + self.drop(self.attn(x, mask, rope)))
        return self.ln_2(x + self.mlp(x))


class BERT(nn.Module):
    is_causal = False  # every position sees every other (non-padding) position
    activation_checkpointing = False  # set by the Trainer (train.activation_checkpointing): recompute blocks

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        assert cfg.vocab_size > 0, "vocab_size must be set from the tokenizer before building the model"
        self.config = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)  # token embeddings
        if cfg.pos == "rope":  # rotary positions, applied to q and k in every layer
            cos, sin = rope_tables(cfg.head_dim, cfg.block_size, cfg.rope_theta)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        else:
            self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd)  # learned positions
        self.wtt = nn.Embedding(cfg.type_vocab_size, cfg.n_embd)  # segment (token type) embeddings
        self.ln_emb = make_norm(cfg)
        self.drop = nn.Dropout(cfg.dropout)
        self.h = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = make_norm(cfg) if cfg.norm_position == "pre" else nn.Identity()  # pre-LN: normalise the output
        # masked-LM head; the decoder matrix is wte itself (tied), only its bias is separate
        self.mlm_dense, self.mlm_ln = nn.Linear(cfg.n_embd, cfg.n_embd), make_norm(cfg)
        self.mlm_bias = nn.Parameter(torch.zeros(cfg.vocab_size))
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def num_params(self, non_embedding: bool = True) -> int:
        n = sum(p.numel() for p in self.parameters())
        return n - self.wpe.weight.numel() if non_embedding and hasattr(self, "wpe") else n

    def encode(self, idx: torch.Tensor, attention_mask: torch.Tensor | None = None,
               token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        """idx (B, T), attention_mask (B, T) with 1 = real token, 0 = padding -> hidden states (B, T, C)."""
        B, T = idx.shape
        assert T <= self.config.block_size, "sequence longer than block_size"
        x = self.wte(idx)
        rope = (self.rope_cos[:T], self.rope_sin[:T]) if self.config.pos == "rope" else None
        if rope is None:
            x = x + self.wpe(torch.arange(T, device=idx.device))
        x = x + self.wtt(token_type_ids if token_type_ids is not None else torch.zeros_like(idx))
        x = self.drop(self.ln_emb(x))
        mask = None if attention_mask is None else attention_mask.bool()[:, None, None, :]  # (B, 1, 1, Tk)
        recompute = self.activation_checkpointing and self.training and torch.is_grad_enabled()
        for block in self.h:  # activation checkpointing: as in GPT.encode
            x = checkpoint(block, x, mask, rope, use_reentrant=False) if recompute else block(x, mask, rope)
        return self.ln_f(x)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, attention_mask=None,
                token_type_ids=None):
        """-> MLM logits (B, T, V); given `targets` (B, T) with −100 at unselected positions: the logits of
        the selected positions only (N, V) and the mean cross-entropy over them. The head runs on the ~15%
        selected positions alone, which saves most of its (B·T·C·V) cost in training."""
        x = self.encode(idx, attention_mask, token_type_ids)
        if targets is not None:
            selected = targets != -100
            x, targets = x[selected], targets[selected]  # (N, C), (N,)
        x = self.mlm_ln(F.gelu(self.mlm_dense(x)))
        logits = F.linear(x, self.wte.weight, self.mlm_bias)  # tied output matrix
        if targets is None:
            return logits, None
        return logits, F.cross_entropy(logits.float(), targets)


__all__ = ["BERT"]
