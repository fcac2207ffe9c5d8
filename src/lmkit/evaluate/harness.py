"""lmkit as a model of lm-evaluation-harness (`pip install 'lmkit[lm-eval]'`): the harness's tasks, run on
lmkit's scorer (bench_score.py: each context computed once, its KV cache shared by its continuations).

lm-eval 0.4 finds models only in its own registry (no plugin entry points), so this module registers
"lmkit" when imported, and running it runs lm-eval's own command line with the model known:

    python -m lmkit.evaluate.harness --model lmkit --model_args run=runs/x --tasks hellaswag
    python -m lmkit.evaluate.harness run --model lmkit --model_args run=runs/x --batch_size 32 \\
        --tasks my_task --include_path my_tasks/      # local task configs

or from Python: `import lmkit.evaluate.harness` and then `lm_eval.simple_evaluate(model="lmkit", ...)`, or
pass `LmkitLM(run="runs/x")` as the model. model_args: run (any directory `lmkit.load` opens), device
(default cuda when there is one, else cpu); lm-eval's --batch_size is the continuations per pass (default 32; "auto" means 32).
"""
from __future__ import annotations

import sys

import torch
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import model_registry
from tqdm.auto import tqdm

from ..api import LM, load
from ..runs import CAUSAL
from .bench_score import rolling_requests, score_tokens


class LmkitLM(TemplateLM):
    """lm_eval's LM interface (loglikelihood, loglikelihood_rolling, generate_until) over an lmkit model."""

    def __init__(self, run=None, batch_size=32, device: str | None = None, max_batch_size=None, lm: LM | None = None,
                 **_ignored):
        super().__init__()
        if lm is None and run is None:
            raise ValueError("lmkit model: give model_args run=DIR")
        if not device or (str(device).startswith("cuda") and not torch.cuda.is_available()):
            device = "cuda" if torch.cuda.is_available() else "cpu"  # lm-eval's CLI asks for cuda by default
        self.lm = lm or load(run, device=device, families=CAUSAL, purpose="lm_eval --model lmkit")
        self.tokenizer = self.lm.tokenizer
        self.batch_size = 32 if batch_size in (None, "auto") or str(batch_size).startswith("auto") else int(batch_size)
        self._device = self.lm.device

    @property
    def eot_token_id(self) -> int:
        eot = self.lm.tokenizer.eot_id
        return 0 if eot is None else eot

    @property
    def max_length(self) -> int:
        return self.lm.model.config.block_size

    def tok_encode(self, string: str, add_special_tokens=None, **kwargs) -> list[int]:
        return self.lm.tokenizer.encode(string)

    def tok_decode(self, tokens, **kwargs) -> str:
        return self.lm.tokenizer.decode(tokens)

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        """requests: ((context, continuation), context ids, continuation ids) -> (Σ ln p, is greedy)."""
        scored = score_tokens(self.lm.model, [(c, t) for _, c, t in requests], self.batch_size,
                              progress=not disable_tqdm, desc="lmkit loglikelihood")
        out = []
        for (key, _, _), s in zip(requests, scored):
            out.append((s.logprob, s.greedy))
            self.cache_hook.add_partial("loglikelihood", key, (s.logprob, s.greedy))
        return out

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Σ ln p of every token of each text, in windows of the model's context (bench_score.rolling_requests),
        conditioned on <|endoftext|>, each token predicted once."""
        windows, owner = [], []
        for i, req in enumerate(requests):
            for w in rolling_requests(self.tok_encode(req.args[0]), self.eot_token_id, self.max_length):
                windows.append(w)
                owner.append(i)
        scored = score_tokens(self.lm.model, windows, self.batch_size, progress=not disable_tqdm,
                              desc="lmkit rolling")
        totals = [0.0] * len(requests)
        for i, s in zip(owner, scored):
            totals[i] += s.logprob
        for req, t in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", (req.args[0],), t)
        return totals

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Greedy (or sampled, with do_sample) continuations, cut at the first of `until`."""
        out = []
        for req in tqdm(requests, desc="lmkit generate", disable=disable_tqdm, leave=False):
            context, kw = req.args[0], dict(req.args[1] or {})
            until = kw.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            sample = kw.get("do_sample") and float(kw.get("temperature", 1.0)) > 0
            text = self.lm.generate(context, max_new_tokens=int(kw.get("max_gen_toks", 256)),
                                    temperature=float(kw.get("temperature", 1.0)) if sample else 0.0,
                                    stop=tuple(until), truncate=True)
            for u in until:
                text = text.split(u)[0]
            out.append(text)
            self.cache_hook.add_partial("generate_until", (context, req.args[1]), text)
        return out


import lm_eval.models  # noqa: E402,F401  the built-in names first: lm-eval adds them only to an empty registry

if "lmkit" not in model_registry:
    model_registry.register("lmkit", target=LmkitLM)


def main(argv: list[str] | None = None) -> None:
    """lm-eval's command line, with "lmkit" among its models."""
    from lm_eval.__main__ import cli_evaluate
    sys.argv = [sys.argv[0]] + list(sys.argv[1:] if argv is None else argv)
    cli_evaluate()


if __name__ == "__main__":
    main()
