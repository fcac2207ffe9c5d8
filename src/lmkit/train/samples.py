"""The texts a language model generates at each evaluation, so that a run shows what it has learnt (samples.jsonl,
TensorBoard's text tab, the run report): train.eval_samples continuations of prompts cut from the validation
split at evenly spaced places, each PROMPT_TOKENS long, sampled at temperature 0.8 and top-k 50 with a fixed
seed (its own generator: the training RNG is untouched) for up to NEW_TOKENS tokens."""
from __future__ import annotations

import sys

import torch

from ..sampling import sampling_config
from ..textstream import stream_pieces
from .task import ShardTask

PROMPT_TOKENS, NEW_TOKENS, SEED = 16, 64, 1234


def prompts(task: ShardTask, n: int, block_size: int) -> list[list[int]]:
    """n prompts of token ids from the validation split, evenly spaced (the first at its start)."""
    val = task.val_tokens
    length = max(1, min(PROMPT_TOKENS, block_size // 4, len(val)))
    starts = [k * max(0, len(val) - length) // max(1, n) for k in range(n)]
    return [[int(t) for t in val[s:s + length]] for s in starts]


@torch.no_grad()
def generate_samples(trainer) -> list[dict]:
    """[{"prompt", "text"}] for trainer.cfg.train.eval_samples prompts; [] when the run is no causal LM on
    token shards, or under FSDP (whose sharded model generates only with every rank)."""
    cfg = trainer.cfg
    n = cfg.train.eval_samples
    if (not n or getattr(trainer, "_no_samples", False) or cfg.model.type not in ("gpt", "lstm")
            or not isinstance(trainer.task, ShardTask) or trainer.dist.mode == "fsdp"):
        return []
    model, tok = trainer.model, trainer.tokenizer
    ids = prompts(trainer.task, n, cfg.model.block_size)
    room = cfg.model.block_size - max(len(p) for p in ids)
    if room < 1:
        return []
    texts = [""] * len(ids)
    was_training = model.training
    model.eval()
    try:
        sc = sampling_config(max_new_tokens=min(NEW_TOKENS, room), temperature=0.8, top_k=50, seed=SEED)
        for piece in stream_pieces(model, tok, ids, sc):
            texts[piece.row] += piece.text
    except Exception as e:  # a sample is a nicety: a failure is said once and training goes on
        trainer._no_samples = True
        print(f"warning: generating samples failed ({type(e).__name__}: {e}); training goes on without them",
              file=sys.stderr)
        return []
    finally:
        model.train(was_training)
    return [{"prompt": tok.decode(p), "text": t} for p, t in zip(ids, texts)]
