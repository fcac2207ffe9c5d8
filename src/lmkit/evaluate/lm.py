"""Language-model metrics on held-out text: loss, perplexity, bits per byte, next-token accuracy.

The text becomes one token stream <|endoftext|> t_1 … t_N, each document followed by <|endoftext|>,
read in windows of block_size; every token after the leading <|endoftext|> is predicted exactly once
from the tokens before it in its window:
    loss       = −(1/N) Σ_i ln p(t_i | context)                  (nats per token)
    perplexity = exp(loss)
    bits/byte  = Σ_i −log2 p(t_i | context) / (UTF-8 bytes of the text)
Perplexity depends on the tokenizer (a character model predicts more, easier tokens than a BPE
model); bits per byte divides the same total surprise by the raw text size, so it compares models
with different tokenizers on the same text.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..data.sources import iter_documents
from ..data.batches import mask_tokens
from ..errors import LmkitError


@dataclass
class LMScores:
    tokens: int
    bytes: int
    loss: float
    perplexity: float
    bits_per_byte: float
    top1_accuracy: float
    top5_accuracy: float

    def to_dict(self) -> dict:
        return asdict(self)


def check_counts(**counts) -> None:
    """Each count given (batch_size, max_tokens, …) a whole number >= 1, or None where None means unset;
    LmkitError naming the first that is not."""
    for name, value in counts.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise LmkitError(f"{name} must be an integer >= 1 (got {value!r})")


def token_stream(lm, source: str, text_field: str = "text", errors: str = "strict",
                 max_tokens: int | None = None) -> tuple[list[int], int]:
    """Token ids of every document of `source` (each followed by <|endoftext|>) and the UTF-8 byte count."""
    eot = lm.tokenizer.eot_id
    ids, n_bytes, last = ([eot] if eot is not None else []), 0, None  # a document starts after <|endoftext|>
    for doc_id, text in iter_documents(source, text_field, errors):
        if last is not None and doc_id != last and eot is not None:
            ids.append(eot)
        last = doc_id
        ids.extend(lm.tokenizer.encode(text))
        n_bytes += len(text.encode("utf-8"))
        if max_tokens and len(ids) > max_tokens:  # keep exactly max_tokens to predict, and count their bytes
            ids = ids[:max_tokens + 1]
            n_bytes = len(lm.tokenizer.decode(ids, skip_special_tokens=True).encode("utf-8"))
            break
    else:
        if eot is not None and ids:
            ids.append(eot)
    if len(ids) < 2:
        raise LmkitError(f"{source}: too little text to evaluate (fewer than 2 tokens)")
    return ids, n_bytes


@torch.no_grad()
def score_tokens(model, ids: list[int], block_size: int, batch_size: int = 8, progress: bool = False) -> dict:
    """Sum of −ln p and top-1/top-5 hits over every token after the first, in windows of block_size."""
    model.eval()
    device = next(model.parameters()).device
    data = torch.tensor(ids, dtype=torch.long)
    # window w holds tokens [w*B, w*B + B + 1): it predicts tokens w*B+1 .. w*B+B, each exactly once
    starts = list(range(0, len(ids) - 1, block_size))
    nll, top1, top5, n = 0.0, 0, 0, 0
    for i in tqdm(range(0, len(starts), batch_size), desc="evaluating", unit="batch", disable=not progress,
                  leave=False):
        chunk = [data[s:s + block_size + 1] for s in starts[i:i + batch_size]]
        longest = max(len(c) for c in chunk)
        x = torch.zeros(len(chunk), longest - 1, dtype=torch.long)
        y = torch.full((len(chunk), longest - 1), -100, dtype=torch.long)
        for j, c in enumerate(chunk):
            x[j, :len(c) - 1], y[j, :len(c) - 1] = c[:-1], c[1:]
        logits = model(x.to(device))[0].float()  # (B, T, V); right padding never reaches real positions
        y = y.to(device)
        real = y != -100
        nll += F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=-100, reduction="sum").item()
        best5 = logits.topk(min(5, logits.size(-1)), dim=-1).indices  # (B, T, 5)
        hit = best5 == y.unsqueeze(-1)
        top1 += (hit[..., 0] & real).sum().item()
        top5 += (hit.any(-1) & real).sum().item()
        n += real.sum().item()
    return {"nll": nll, "top1": top1, "top5": top5, "n": n}


def evaluate_lm(lm, source: str, text_field: str = "text", errors: str = "strict", batch_size: int = 8,
                max_tokens: int | None = None, progress: bool = True) -> LMScores:
    """Score a causal model (an `lmkit.LM`) on the text of `source` (file, folder, glob, .jsonl, corpus)."""
    check_counts(batch_size=batch_size, max_tokens=max_tokens)
    ids, n_bytes = token_stream(lm, source, text_field, errors, max_tokens)
    s = score_tokens(lm.model, ids, lm.config.model.block_size, batch_size, progress)
    loss = s["nll"] / s["n"]
    return LMScores(tokens=s["n"], bytes=n_bytes, loss=loss, perplexity=math.exp(loss),
                    bits_per_byte=s["nll"] / math.log(2) / max(1, n_bytes),
                    top1_accuracy=s["top1"] / s["n"], top5_accuracy=s["top5"] / s["n"])


@dataclass
class MLMScores:
    masked_tokens: int
    loss: float
    perplexity: float  # exp of the mean −ln p over masked tokens (a "pseudo-perplexity")
    masked_top1_accuracy: float
    masked_top5_accuracy: float

    def to_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def evaluate_mlm(lm, source: str, text_field: str = "text", errors: str = "strict", batch_size: int = 8,
                 max_tokens: int | None = None, mlm_probability: float = 0.15, seed: int = 0,
                 progress: bool = True) -> MLMScores:
    """Masked-token accuracy of an encoder: windows [CLS] … [SEP] of the text, 15% of the tokens chosen
    with a fixed seed and corrupted 80/10/10 as in training; each chosen token is predicted once."""
    check_counts(batch_size=batch_size, max_tokens=max_tokens)
    tok, model = lm.tokenizer, lm.model
    if tok.cls_id is None or tok.mask_id is None:
        raise LmkitError("evaluate: a masked-LM model needs a tokenizer with [CLS], [SEP] and [MASK]")
    model.eval()
    device = next(model.parameters()).device
    ids = []
    for _, text in iter_documents(source, text_field, errors):
        ids.extend(tok.encode(text))
        if max_tokens and len(ids) >= max_tokens:
            ids = ids[:max_tokens]
            break
    if not ids:
        raise LmkitError(f"{source}: no text to evaluate")
    width = model.config.block_size - 2
    windows = [[tok.cls_id] + ids[s:s + width] + [tok.sep_id] for s in range(0, len(ids), width)]
    special = torch.tensor(sorted(i for i in (tok.pad_id, tok.cls_id, tok.sep_id, tok.mask_id) if i is not None))
    g = torch.Generator().manual_seed(seed)
    nll, top1, top5, n = 0.0, 0, 0, 0
    for i in tqdm(range(0, len(windows), batch_size), desc="evaluating", unit="batch", disable=not progress,
                  leave=False):
        chunk = windows[i:i + batch_size]
        T = max(len(w) for w in chunk)
        x = torch.full((len(chunk), T), tok.pad_id if tok.pad_id is not None else 0, dtype=torch.long)
        mask = torch.zeros(len(chunk), T, dtype=torch.long)
        for j, w in enumerate(chunk):
            x[j, :len(w)], mask[j, :len(w)] = torch.tensor(w), 1
        inputs, labels = mask_tokens(x, mlm_probability, tok.mask_id, tok.vocab_size, special, g)
        labels = labels.masked_fill(mask == 0, -100)
        logits = model(inputs.to(device), attention_mask=mask.to(device))[0].float()
        labels = labels.to(device)
        chosen = labels != -100
        nll += F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100, reduction="sum").item()
        hit = logits.topk(min(5, logits.size(-1)), dim=-1).indices == labels.unsqueeze(-1)
        top1 += (hit[..., 0] & chosen).sum().item()
        top5 += (hit.any(-1) & chosen).sum().item()
        n += chosen.sum().item()
    if n == 0:
        raise LmkitError(f"{source}: too little text: no token was chosen for masking")
    return MLMScores(masked_tokens=n, loss=nll / n, perplexity=math.exp(nll / n),
                     masked_top1_accuracy=top1 / n, masked_top5_accuracy=top5 / n)
