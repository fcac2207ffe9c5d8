"""The Python API: `lm = lmkit.load(run_dir)`, then `lm.generate("To be")` (GPT, LSTM) or
`lm.fill_mask("The capital of France is [MASK].")` (BERT)."""
from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Iterator

import torch

from .beam import beam_search
from .chat import PLAIN, check_messages
from .errors import LmkitError
from .engine import DecodeSession
from .sampling import sampling_config
from .runs import CAUSAL, MODELS, Run, open_run
from .speculative import DRAFT_TOKENS, SpeculativeSession, check_draft
from .textstream import stream_pieces
from .tokenizer import Tokenizer


class LM:
    """A trained model with its tokenizer and config, ready to generate."""

    def __init__(self, model, tokenizer: Tokenizer, config, path: Path | None = None, chat_template=None,
                 run: Run | None = None):
        self.model, self.tokenizer, self.config, self.path = model, tokenizer, config, path
        self.chat_template = chat_template or PLAIN  # chat.py: the run's own, or plain-text role markers
        self.run = run  # what the directory was (kind, meta), when it came from one

    @classmethod
    def from_run(cls, run: Run) -> "LM":
        return cls(run.model, run.tokenizer, run.config, run.path, run.chat_template, run)

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

    def drafting(self, draft: "LM | str | Path | None", draft_tokens: int = DRAFT_TOKENS):
        """The decoding session class for generate/stream: DecodeSession, or with `draft` (an LM or a run
        directory sharing this one's tokenizer) speculative decoding (speculative.py), `draft_tokens` + 1
        proposals per round. Refused in one line: another tokenizer or vocabulary; a sampling field drafting
        cannot serve is refused by the session (speculative.py)."""
        if draft is None:
            return DecodeSession
        if not isinstance(draft, LM):
            draft = load(draft, device=str(self.device), families=CAUSAL, purpose="draft")
        me, other = str(self.path or "the target"), str(draft.path or "the draft")
        if draft.tokenizer.hf.to_str() != self.tokenizer.hf.to_str():
            raise LmkitError(f"draft: {other} and {me} do not share a tokenizer (vocabularies of "
                             f"{draft.tokenizer.vocab_size} and {self.tokenizer.vocab_size} tokens)")
        check_draft(self.model, draft.model, me, other)
        if isinstance(draft_tokens, bool) or not isinstance(draft_tokens, int) or draft_tokens < 0:
            raise LmkitError(f"draft_tokens must be an integer >= 0 (got {draft_tokens!r})")
        return partial(SpeculativeSession, draft=draft.model, draft_tokens=draft_tokens)

    def stream(self, prompt: str = "", draft=None, draft_tokens: int = DRAFT_TOKENS, **sampling) -> Iterator[str]:
        """Yield the continuation of `prompt` piece by piece as it is generated (options: SamplingConfig;
        `draft`: see generate)."""
        self._check_generates()
        cfg = sampling_config(**sampling)
        session = self.drafting(draft, draft_tokens)
        for piece in stream_pieces(self.model, self.tokenizer, [self.encode_prompt(prompt)], cfg, session=session):
            if piece.text:
                yield piece.text

    def generate(self, prompt: str | list[str] = "", num_samples: int = 1, draft=None,
                 draft_tokens: int = DRAFT_TOKENS, **sampling) -> str | list[str]:
        """Continue `prompt`; returns the new text. A list of prompts (of any lengths) runs as one batch and
        returns a list; `num_samples` > 1 returns that many continuations per prompt (a list, or a list of
        lists). Sampling options are the fields of `lmkit.sampling.SamplingConfig`; `json_schema=SCHEMA` (a dict,
        or True for any JSON object) makes every answer JSON valid under it, enforced while decoding (grammar.py).
        `draft=` a smaller model sharing the tokenizer (an LM or a run directory) turns on speculative decoding
        (speculative.py): the same tokens when greedy, the same distribution when sampling, `draft_tokens` + 1
        proposals checked per forward of this model."""
        self._check_generates()
        cfg = sampling_config(**sampling)
        session = self.drafting(draft, draft_tokens)
        if num_samples < 1:
            raise LmkitError(f"num_samples must be >= 1 (got {num_samples})")
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        ids = [self.encode_prompt(p) for p in prompts for _ in range(num_samples)]
        texts = [""] * len(ids)
        for piece in stream_pieces(self.model, self.tokenizer, ids, cfg, session=session):
            texts[piece.row] += piece.text
        grouped = [texts[i:i + num_samples] for i in range(0, len(texts), num_samples)]
        if num_samples == 1:
            grouped = [g[0] for g in grouped]
        return grouped[0] if isinstance(prompt, str) else grouped

    def chat_prompt(self, messages) -> tuple[str, tuple[str, ...]]:
        """A conversation ([(role, content), …] or [{"role", "content"}, …]) -> (the prompt for the
        assistant's reply in this run's chat template, the stop strings that end the reply)."""
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


def load(path: str | Path, device: str = "cpu", accept=MODELS, families=None, purpose: str = "lmkit.load",
         dtype: str = "float32") -> LM:
    """Load a model directory as an LM: a run written by `lmkit train` (or quantize, prune, finetune), a
    Hugging Face model folder (GPT-2, Llama-style, BERT), or `hf:<hub id>` (downloads; needs internet), or a
    PEFT LoRA adapter folder (read merged onto the base its adapter_config.json names).
    `accept` / `families` narrow what is taken (see lmkit.runs); anything else is refused in one line.
    `dtype`: "float32" (the reference), "bfloat16", or "auto" (bfloat16 where the device multiplies it
    natively, else float32) for a float model's weights; a quantized run keeps its kernels' precision."""
    return LM.from_run(open_run(path, accept=accept, families=families, purpose=purpose, device=device, dtype=dtype))
