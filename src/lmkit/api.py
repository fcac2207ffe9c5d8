"""The Python API: `lm = lmkit.load(run_dir)`, then `lm.generate("To be")` (GPT, LSTM) or
`lm.fill_mask("The capital of France is [MASK].")` (BERT)."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import torch

from .config import load_json
from .errors import LmkitError
from .generate import SamplingConfig, TextStream, generate_ids
from .models import build_model
from .tokenizer import Tokenizer
from .train.checkpoint import load_weights


class LM:
    """A trained model with its tokenizer and config, ready to generate."""

    def __init__(self, model, tokenizer: Tokenizer, config, path: Path | None = None):
        self.model, self.tokenizer, self.config, self.path = model, tokenizer, config, path

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def encode_prompt(self, prompt: str) -> list[int]:
        ids = self.tokenizer.encode(prompt) if prompt else []
        # an empty prompt starts a fresh document, as after <|endoftext|> in training
        return ids or [self.tokenizer.eot_id]

    def _check_generates(self) -> None:
        if self.config.model.type == "bert":
            raise LmkitError(f"{self.path}: a BERT encoder does not generate text; use fill-mask")

    def stream(self, prompt: str = "", **sampling) -> Iterator[str]:
        """Yield the continuation of `prompt` piece by piece as it is generated."""
        self._check_generates()
        cfg = SamplingConfig(**sampling)
        out = TextStream(self.tokenizer)
        idx = torch.tensor([self.encode_prompt(prompt)])
        for nxt in generate_ids(self.model, idx, cfg, eos_id=self.tokenizer.eot_id):
            if cfg.stop_at_eos and int(nxt[0]) == self.tokenizer.eot_id:
                break
            piece = out.push(int(nxt[0]))
            if piece:
                yield piece
        tail = out.flush()
        if tail:
            yield tail

    def generate(self, prompt: str = "", num_samples: int = 1, **sampling) -> str | list[str]:
        """Continue `prompt`; returns the new text (a list of `num_samples` texts when > 1)."""
        self._check_generates()
        cfg = SamplingConfig(**sampling)
        prompt_ids = self.encode_prompt(prompt)
        idx = torch.tensor([prompt_ids] * num_samples)
        steps = list(generate_ids(self.model, idx, cfg, eos_id=self.tokenizer.eot_id))
        texts = []
        new = torch.stack(steps, dim=1).tolist() if steps else [[] for _ in range(num_samples)]
        for row in new:
            if cfg.stop_at_eos and self.tokenizer.eot_id in row:
                row = row[:row.index(self.tokenizer.eot_id)]
            texts.append(self.tokenizer.decode(row))
        return texts[0] if num_samples == 1 else texts

    @torch.no_grad()
    def logits(self, text: str) -> torch.Tensor:
        """Logits (T, V) for every position of `text`."""
        self.model.eval()
        idx = torch.tensor([self.tokenizer.encode(text)], device=self.device)
        return self.model(idx)[0][0]


    @torch.no_grad()
    def fill_mask(self, text: str, top_k: int = 5) -> list[list[tuple[str, float]]]:
        """For each [MASK] in `text`, the top_k tokens with their probabilities, most likely first:
        softmax over the vocabulary of the masked-LM logits at that position."""
        tok = self.tokenizer
        if self.config.model.type != "bert":
            raise LmkitError(f"{self.path}: fill-mask needs a BERT (masked LM) run, not '{self.config.model.type}'")
        ids = [tok.cls_id] + tok.encode(text) + [tok.sep_id]
        where = [i for i, t in enumerate(ids) if t == tok.mask_id]
        if not where:
            raise LmkitError(f"fill-mask: the text has no [MASK] token: {text!r}")
        if len(ids) > self.config.model.block_size:
            raise LmkitError(f"fill-mask: the text is {len(ids)} tokens, longer than the model's context "
                             f"({self.config.model.block_size})")
        self.model.eval()
        logits, _ = self.model(torch.tensor([ids], device=self.device))
        probs = logits[0, where].float().softmax(dim=-1)  # (n_masks, V)
        top = probs.topk(min(top_k, probs.size(-1)), dim=-1)
        return [[(tok.decode([i]), round(p, 6)) for p, i in zip(ps.tolist(), ix.tolist())]
                for ps, ix in zip(top.values, top.indices)]


def load(path: str | Path, device: str = "cpu") -> LM:
    """Load a run directory written by `lmkit train`, a Hugging Face model folder (GPT-2 or
    Llama-style), or `hf:<hub id>` (downloads; needs internet)."""
    from .hf import is_hf_dir, load_hf
    if str(path).startswith("hf:") or is_hf_dir(path):
        return load_hf(path, device)
    path = Path(path)
    if not path.is_dir():
        raise LmkitError(f"{path}: no such run directory")
    if not (path / "config.json").is_file():
        raise LmkitError(f"{path}: not a run directory (no config.json)")
    cfg = load_json(path / "config.json")
    tokenizer = Tokenizer.load(path / "tokenizer.json")
    model = build_model(cfg.model)
    from .compress import QUANT_FILE, load_int8
    if (path / QUANT_FILE).is_file():  # written by `lmkit quantize`
        return LM(load_int8(model, path), tokenizer, cfg, path)
    load_weights(model, path / "model.safetensors")
    model.to(device).eval()
    return LM(model, tokenizer, cfg, path)
