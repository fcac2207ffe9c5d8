"""Commands that run a model on text: generate, chat, fill-mask."""
# Handlers import the library when they run, so that `lmkit --help` and flag errors never load torch
# (sampling_config is torch-free: the sampling flags take their defaults from SamplingConfig).
from __future__ import annotations

import sys

from ..errors import LmkitError
from ..sampling_config import SAMPLING_DEFAULTS, sampling_config
from . import flags

# SamplingConfig field, flag type, help ("{}": the field's default); `chat` takes the first five
SAMPLING = [
    ("max_new_tokens", int, "tokens to generate (default {})"),
    ("temperature", float, "0 = greedy; higher = more random (default {})"),
    ("top_k", int, "sample only among the k most likely tokens (default {}; 0 = off)"),
    ("top_p", float, "nucleus sampling: smallest set with this much probability (default {})"),
    ("seed", int, "fix the random draws so the output repeats"),
    ("min_p", float, "drop tokens less likely than min_p × the top token's probability (default {})"),
    ("repetition_penalty", float, "> 1 discourages tokens already in the text (default {}; 1 = off)"),
    ("frequency_penalty", float, "lower a token's logit by this per earlier use (-2..2; default {})"),
    ("presence_penalty", float, "lower a used token's logit by this once (-2..2; default {})"),
]
CHAT_SAMPLING = 5
FLAG = {name: "--" + name.replace("_", "-") for name in SAMPLING_DEFAULTS}


def register(g: flags.Group) -> None:
    p = g.command("generate", run_generate, "generate text from a trained run",
                  "Continue a prompt with a trained model, streaming the text as it comes.")
    p.add_argument("run_dir", help=flags.TRAINED_RUN)
    p.add_argument("--prompt", default="", help="text to continue (default: start of a new document)")
    flags.number(p, "--num-samples", lo=1, default=1, help="how many continuations (default 1)")
    flags.device(p)
    flags.dtype(p)
    p.add_argument("--chat", action="store_true", help="the prompt is a user message: answer it through the "
                   "run's chat template (the reply stops at the end of the assistant's turn)")
    _sampling_flags(p, SAMPLING)
    p.add_argument("--stop", action="append", default=list(SAMPLING_DEFAULTS["stop"]), metavar="TEXT",
                   help="stop before this text (repeatable)")
    p.add_argument("--truncate", action="store_true", default=SAMPLING_DEFAULTS["truncate"],
                   help="a prompt longer than the context keeps its last tokens")
    flags.number(p, "--beams", lo=0, default=0, help="beam search with this many beams instead of sampling")
    p.add_argument("--json-schema", dest="json_schema_file", default=None, metavar="FILE",
                   help="answer with JSON valid under the JSON Schema in FILE, enforced while decoding "
                        "(a file holding {} or {\"type\": \"object\"}: any JSON object)")
    flags.draft(p, "penalties and --json-schema")

    p = g.command("chat", run_chat, "chat with a run in the terminal, replies streamed",
                  "A terminal conversation with RUN_DIR; /reset starts over, /quit leaves. When the conversation "
                  "outgrows the model's context the oldest turns are left out (the system prompt stays), and it "
                  "says so.")
    p.add_argument("run_dir", help=flags.TRAINED_RUN)
    p.add_argument("--system", help="a system prompt for the conversation (kept when older turns are left out)")
    flags.device(p)
    flags.dtype(p)
    _sampling_flags(p, SAMPLING[:CHAT_SAMPLING])

    p = g.command("fill-mask", run_fill_mask, "predict the tokens behind [MASK] with a BERT run",
                  "Print the top-k tokens, with probabilities, for each [MASK] in TEXT.")
    p.add_argument("run_dir", help="run directory of a BERT model (model.type = bert, objective = mlm)")
    p.add_argument("text", help='text with one or more [MASK], e.g. "The capital of France is [MASK]."')
    flags.number(p, "--top-k", lo=1, default=5, help="how many candidates per [MASK] (default 5)")
    flags.device(p)


def _sampling_flags(p, table) -> None:
    for name, type_, help in table:
        default = SAMPLING_DEFAULTS[name]
        shown = "off" if default is None else f"{default:g}" if isinstance(default, float) else str(default)
        flags.number(p, FLAG[name], type=type_, default=default, help=help.format(shown))


def sampling_options(a) -> dict:
    """The sampling keyword arguments the flags give, checked by SamplingConfig; an error names the flag."""
    kw = {name: getattr(a, name) for name in SAMPLING_DEFAULTS if hasattr(a, name)}
    if "stop" in kw:
        kw["stop"] = tuple(kw["stop"])
    try:
        sampling_config(**kw)
    except LmkitError as e:
        field = str(e).split(" ", 1)[0]
        raise LmkitError(f"{FLAG[field]}: {e}" if field in kw else str(e)) from None
    return kw


def run_generate(a) -> None:
    from ..api import load
    from ..runs import CAUSAL
    sampling = sampling_options(a)
    if a.json_schema_file is not None:
        if a.beams:
            raise LmkitError("--json-schema: works with sampling, not with --beams")
        sampling["json_schema"] = _read_schema(a.json_schema_file)
    if a.draft is not None:
        _check_draft_flags(a, sampling)
    lm = load(a.run_dir, device=a.device, families=CAUSAL, purpose="generate", dtype=a.dtype)
    if a.draft is not None:  # loaded and checked once, before any output
        sampling["draft"], sampling["draft_tokens"] = load(a.draft, device=a.device, families=CAUSAL, dtype=a.dtype), a.draft_tokens
        lm.drafting(sampling["draft"], a.draft_tokens)
    if a.json_schema_file is not None:  # compiled before any output: a schema the grammar library refuses fails here
        from ..grammar import json_grammar
        try:
            json_grammar(lm.tokenizer, lm.model.config.vocab_size, sampling["json_schema"])
        except LmkitError as e:
            raise LmkitError(f"--json-schema {a.json_schema_file}: {str(e).removeprefix('json_schema: ')}") from None
    prompt, shown = a.prompt, a.prompt if a.json_schema_file is None else ""  # JSON alone, ready to parse
    if a.chat:  # the run's chat template, as `lmkit chat` and the server use it
        prompt, stops = lm.chat_prompt([("user", a.prompt)])
        sampling["stop"], shown = sampling["stop"] + stops, ""
    from ..sampling import PromptTooLong
    try:
        _write_samples(a, lm, prompt, shown, sampling)
    except PromptTooLong as e:  # named as this command spells it
        raise LmkitError(e.spelled("--truncate") if not a.beams else str(e).split(" (")[0] + " (shorten it)") from None


def _write_samples(a, lm, prompt: str, shown: str, sampling: dict) -> None:
    if a.beams:
        print(shown + lm.beam_search(prompt, num_beams=a.beams, max_new_tokens=a.max_new_tokens))
        return
    for i in range(a.num_samples):
        if i:
            print("\n" + "-" * 40)
        sys.stdout.write(shown)
        for piece in lm.stream(prompt, **{**sampling, "seed": None if a.seed is None else a.seed + i}):
            sys.stdout.write(piece)
            sys.stdout.flush()
        print()


def _check_draft_flags(a, sampling: dict) -> None:
    from ..sampling_config import sampling_config as checked
    from ..speculative import unsupported
    if a.beams:
        raise LmkitError("--draft: works with sampling, not with --beams")
    if a.json_schema_file is not None:
        raise LmkitError("--json-schema: not available with --draft (speculative decoding)")
    name = unsupported(checked(**sampling))
    if name is not None:
        raise LmkitError(f"{FLAG[name]}: not available with --draft (speculative decoding)")


def _read_schema(path: str) -> dict:
    import json
    from pathlib import Path
    try:
        schema = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise LmkitError(f"--json-schema {path}: cannot read it ({e.strerror})") from None
    except ValueError as e:
        raise LmkitError(f"--json-schema {path}: not JSON ({e})") from None
    if not isinstance(schema, dict):
        raise LmkitError(f"--json-schema {path}: must hold a JSON Schema object, not a {type(schema).__name__}")
    return schema or True  # {}: any JSON object


def run_chat(a) -> None:
    from ..api import load
    from ..runs import CAUSAL
    from ..serve.terminal import chat
    sampling = sampling_options(a)
    chat(load(a.run_dir, device=a.device, families=CAUSAL, purpose="chat", dtype=a.dtype), system=a.system, **sampling)


def run_fill_mask(a) -> None:
    from ..api import load
    from ..runs import ENCODERS
    lm = load(a.run_dir, device=a.device, families=ENCODERS, purpose="fill-mask")
    for i, candidates in enumerate(lm.fill_mask(a.text, a.top_k)):
        print(f"[MASK] #{i + 1}:")
        for token, p in candidates:
            print(f"  {p:8.4f}  {token}")
