"""The loading layer: every kind of directory lmkit reads or writes, known in one place.

    run = open_run("runs/x", accept=GENERATE, families=CAUSAL, purpose="generate")
    run.model, run.tokenizer, run.config, run.chat_template, run.meta
    save_run("runs/y", run.config, run.tokenizer, model=run.model)

Every command and API entry point opens its model directory here and says which kinds it accepts;
any other kind is refused in one line that names what was found and what to do instead. The kinds:

    run         lmkit train: config.json, tokenizer.json, model.safetensors (GPT, BERT, LSTM/GRU)
    hf          a Hugging Face model folder (config.json with model_type), or hf:<hub id>
    int8        lmkit quantize: int8 block weights and quantization.json
    pruned      lmkit prune: a run with pruning.json
    lora        lmkit finetune sft --lora-rank: base weights + adapters, adapter_config.json
    merged      lmkit finetune merge (or sft --merge): the adapters folded in, merged.json
    classifier  lmkit finetune classify: a text classifier, classifier.json
    index       lmkit embed: a search index (meta.json, vectors.npy, chunks.jsonl)
    data        lmkit prepare: token shards (meta.json, train.bin, val.bin)

Readers import only models/, config, the tokenizer and the chat template; they return a `Run`, never an
`LM` (the facade in api.py wraps a Run).
"""
from __future__ import annotations

from pathlib import Path

from ..errors import LmkitError
from .detect import DESCRIPTION, FAMILY_NAME, Found, detect
from .record import Run
from .target import check_target

# what commands accept: kinds, and model families (config.model.type, or "classifier")
MODELS = ("run", "hf", "int8", "pruned", "lora", "merged")  # every kind that holds one language model
FLOAT = ("run", "hf", "pruned", "lora", "merged")  # ... with float weights (trainable, exportable)
NATIVE_FLOAT = ("run", "pruned", "lora", "merged")  # ... written by lmkit itself
CAUSAL = ("gpt", "lstm")  # the families that generate text
ENCODERS = ("bert",)


def open_run(path: str | Path, accept=MODELS, families=None, purpose: str = "this command",
             device: str = "cpu", hints: dict | None = None, what: str = "run directory") -> Run:
    """Open the directory at `path` as a Run, refusing (LmkitError, one line) a kind or model family that
    is not in `accept` / `families`. `hints` may replace the advice given for a refused kind or family;
    `what` names the directory expected, in messages for a path that is none of lmkit's kinds."""
    found = detect(path, what)
    if found.kind not in accept:
        raise LmkitError(refusal(found, purpose, hints, accept))
    if found.kind == "hf" and found.hf_id:
        found = detect(_download(found.path))
    if families is not None and found.family is not None and found.family not in families:
        raise LmkitError(refusal(found, purpose, hints, accept, families))
    run = _read(found, device)
    if families is not None and run.family not in families:  # a hub id: family known once downloaded
        raise LmkitError(refusal(detect(run.path), purpose, hints, accept, families))
    return run


def _read(found: Found, device: str) -> Run:
    if found.kind == "hf":
        from .hf import read_hf
        run = read_hf(found.path)
    elif found.kind == "classifier":
        from .classifier import read_classifier
        run = read_classifier(found.path)
    elif found.kind in ("index", "data"):
        return Run(found.path, found.kind, meta=found.meta)
    else:
        from .native import read_native
        run = read_native(found.path, found.kind)
    run.model.to(device).eval()
    return run


def _download(hub_id: Path) -> Path:
    from .hf import resolve_hub
    return resolve_hub(str(hub_id))


ADVICE = {
    "int8": "use the float run it came from{source}",
    "lora": "merge its adapters first: lmkit finetune merge {path} OUT",
    "classifier": "use lmkit predict {path} TEXT",
    "index": "use lmkit search {path} QUERY",
    "data": "train a model on it: lmkit train CONFIG --set data={path}",
    "hf": "import it first: lmkit import-hf {path} OUT",
}
FAMILY_ADVICE = {
    "bert": "a masked-LM encoder does not generate text: use lmkit fill-mask, embed or finetune classify",
    "gpt": "a causal LM; this needs an encoder (a BERT run or Hugging Face BERT folder)",
    "lstm": "a recurrent LM; this needs a Transformer",
}


def refusal(found: Found, purpose: str, hints: dict | None, accept, families=None) -> str:
    """'runs/x is an int8 run (made by lmkit quantize); <purpose> needs ...: <advice>'."""
    hints = hints or {}
    what = found.describe()
    if families is not None and found.kind in accept:
        advice = hints.get(found.family) or FAMILY_ADVICE.get(found.family, "")
        wanted = " or ".join(FAMILY_NAME.get(f, f) for f in families)
        return f"{found.path} is {what}; {purpose} needs {wanted}" + (f" ({advice})" if advice else "")
    advice = hints.get(found.kind) or ADVICE.get(found.kind, "")
    source = found.meta.get("source")
    advice = advice.format(path=found.path, source=f" ({source})" if source else "")
    wanted = ", ".join(DESCRIPTION[k].split(" (")[0] for k in accept)
    return f"{found.path} is {what}; {purpose} takes {wanted}" + (f": {advice}" if advice else "")


def save_run(out: str | Path, config, tokenizer, model=None, state_dict=None, chat_template=None,
             marker: tuple[str, dict] | None = None, step: int = 0, overwrite: bool = False, metadata=None) -> Path:
    """Write a native run directory (see native.save_native)."""
    from .native import save_native
    return save_native(out, config, tokenizer, model, state_dict, chat_template, marker, step, overwrite, metadata)


__all__ = ["Run", "open_run", "save_run", "check_target", "detect", "refusal", "MODELS", "FLOAT",
           "NATIVE_FLOAT", "CAUSAL", "ENCODERS", "LmkitError"]
