"""The Python API: `lm = lmkit.load(run_dir)`, then `lm.generate("To be")` (GPT, LSTM) or
`lm.fill_mask("The capital of France is [MASK].")` (BERT)."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import torch

from .config import load_json
from .errors import LmkitError
from .generate import sampling_config, stream_pieces
from .models import build_model
from .tokenizer import Tokenizer
from .train.checkpoint import load_weights


class LM:
    """A trained model with its tokenizer and config, ready to generate."""

    def __init__(self, model, tokenizer: Tokenizer, config, path: Path | None = None, chat_template=None):
        from .chat import PLAIN
        self.model, self.tokenizer, self.config, self.path = model, tokenizer, config, path
        self.chat_template = chat_template or PLAIN  # chat.py: the run's own, or plain-text role markers

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
        """Yield the continuation of `prompt` piece by piece as it is generated (options: SamplingConfig)."""
        self._check_generates()
        cfg = sampling_config(**sampling)
        for piece in stream_pieces(self.model, self.tokenizer, [self.encode_prompt(prompt)], cfg):
            if piece.text:
                yield piece.text

    def generate(self, prompt: str | list[str] = "", num_samples: int = 1, **sampling) -> str | list[str]:
        """Continue `prompt`; returns the new text. A list of prompts (of any lengths) runs as one batch and
        returns a list; `num_samples` > 1 returns that many continuations per prompt (a list, or a list of
        lists). Sampling options are the fields of `lmkit.generate.SamplingConfig`."""
        self._check_generates()
        cfg = sampling_config(**sampling)
        if num_samples < 1:
            raise LmkitError(f"num_samples must be >= 1 (got {num_samples})")
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        ids = [self.encode_prompt(p) for p in prompts for _ in range(num_samples)]
        texts = [""] * len(ids)
        for piece in stream_pieces(self.model, self.tokenizer, ids, cfg):
            texts[piece.row] += piece.text
        grouped = [texts[i:i + num_samples] for i in range(0, len(texts), num_samples)]
        if num_samples == 1:
            grouped = [g[0] for g in grouped]
        return grouped[0] if isinstance(prompt, str) else grouped

    def chat_prompt(self, messages) -> tuple[str, tuple[str, ...]]:
        """A conversation ([(role, content), …] or [{"role", "content"}, …]) -> (the prompt for the
        assistant's reply in this run's chat template, the stop strings that end the reply)."""
        from .chat import check_messages
        if messages and isinstance(messages[0], dict):
            messages = check_messages(messages)
        return self.chat_template.prompt(list(messages))

    def chat(self, messages, **sampling) -> str:
        """The assistant's reply to a conversation (a string is one user message), through the run's chat
        template; sampling options as for generate()."""
        if isinstance(messages, str):
            messages = [("user", messages)]
        text, stops = self.chat_prompt(messages)
        sampling["stop"] = tuple(sampling.get("stop", ())) + stops
        return self.generate(text, **sampling)

    def beam_search(self, prompt: str = "", num_beams: int = 4, max_new_tokens: int = 50,
                    length_penalty: float = 1.0) -> str:
        """The most likely continuation found by beam search (for translation, summarisation)."""
        from .beam import beam_search
        self._check_generates()
        ids = beam_search(self.model, self.encode_prompt(prompt), num_beams, max_new_tokens,
                          eos_id=self.tokenizer.eot_id, length_penalty=length_penalty)
        return self.tokenizer.decode(ids)

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
    if (path / "classifier.json").is_file():
        raise LmkitError(f"{path}: a text classifier (made by lmkit finetune classify); use `lmkit predict` "
                         "or lmkit.finetune.classify.load_classifier")
    cfg = load_json(path / "config.json")
    tokenizer = Tokenizer.load(path / "tokenizer.json")
    from .chat import load_template
    template = load_template(path, tokenizer)
    model = build_model(cfg.model)
    from .compress import QUANT_FILE, load_int8
    if (path / QUANT_FILE).is_file():  # written by `lmkit quantize`
        return LM(load_int8(model, path), tokenizer, cfg, path, template)
    from .finetune.lora import ADAPTER_CONFIG, load_adapted
    if (path / ADAPTER_CONFIG).is_file():  # a LoRA fine-tune: base + adapters, merged for inference
        model = load_adapted(model, path)
    else:
        load_weights(model, path / "model.safetensors")
    model.to(device).eval()
    return LM(model, tokenizer, cfg, path, template)
