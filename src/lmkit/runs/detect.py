"""What a directory is, read from its marker files alone (no weights are touched)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..errors import LmkitError
from ..io import read_json  # noqa: F401  (re-exported for the readers in runs/)

# marker files that make a native run directory one of the derived kinds ("int8": any lmkit quantize output,
# int8 or int4; quantization.json says which)
MARKERS = {"int8": "quantization.json", "lora": "adapter_config.json", "pruned": "pruning.json",
           "merged": "merged.json"}
DESCRIPTION = {
    "run": "an lmkit run (made by lmkit train)",
    "hf": "a Hugging Face model folder",
    "peft": "a PEFT LoRA adapter folder (made by peft, or by lmkit finetune sft --lora-rank)",
    "int8": "an int8 run (made by lmkit quantize)",
    "pruned": "a pruned run (made by lmkit prune)",
    "lora": "a LoRA run (made by lmkit finetune sft --lora-rank)",
    "merged": "a merged LoRA run (made by lmkit finetune merge)",
    "classifier": "a text classifier (made by lmkit finetune classify)",
    "index": "a search index (made by lmkit embed)",
    "data": "prepared training data (made by lmkit prepare)",
}
FAMILY_NAME = {"gpt": "a GPT (causal LM)", "lstm": "an LSTM/GRU language model", "bert": "a BERT encoder",
               "classifier": "a text classifier"}
PEFT_CONFIG = "adapter_config.json"  # a PEFT adapter folder's file (the same name as lmkit's LoRA marker; PEFT's
# has a peft_type key, and no lmkit config.json beside it need be there)
# Hugging Face model_type -> lmkit family (models/gpt_hf.py and bert_hf.py translate them)
HF_FAMILIES = {"gpt2": "gpt", "llama": "gpt", "qwen2": "gpt", "qwen3": "gpt", "mistral": "gpt", "bert": "bert"}


@dataclass
class Found:
    path: Path
    kind: str
    family: str | None = None  # gpt, bert, lstm, classifier; None when unknown until read (hf: ids)
    meta: dict = field(default_factory=dict)  # the marker file's contents, for messages (e.g. "source")
    hf_id: bool = False

    def describe(self) -> str:
        if self.kind == "hf" and "peft_type" in self.meta:  # read as kind hf: merged onto its base (runs/hf.py)
            return DESCRIPTION["peft"]
        text = DESCRIPTION[self.kind]
        if self.kind == "int8" and self.meta.get("bits") == 4:  # quantization.json of an int4 run
            text = text.replace("int8", "int4")
        if self.family and self.kind in ("run", "hf", "int8", "pruned", "lora", "merged"):
            name = {"gpt": "GPT", "bert": "BERT", "lstm": "LSTM"}.get(self.family, self.family)
            text = text.replace("an lmkit run", f"an lmkit {name} run").replace("a Hugging Face model",
                                                                                f"a Hugging Face {name} model")
        return text


def detect(path: str | Path, what: str = "run directory") -> Found:
    """The kind of directory at `path`; LmkitError (one line) for a missing path, an empty folder, a file,
    or a folder that holds none of lmkit's kinds."""
    if str(path).startswith("hf:"):
        return Found(Path(str(path)), "hf", hf_id=True)
    path = Path(path)
    if not path.exists():
        raise LmkitError(f"{path}: no such {what}")
    if not path.is_dir():
        raise LmkitError(f"{path}: is a file, not a {what}")
    if not any(path.iterdir()):
        raise LmkitError(f"{path}: not a {what} (an empty folder)")
    if (path / "classifier.json").is_file():
        return Found(path, "classifier", "classifier", read_json(path / "classifier.json"))
    if (path / "meta.json").is_file() and (path / "vectors.npy").is_file():
        return Found(path, "index", meta=read_json(path / "meta.json"))
    if (path / "meta.json").is_file() and (path / "train.bin").is_file():
        return Found(path, "data", meta=read_json(path / "meta.json"))
    if (path / PEFT_CONFIG).is_file() and "peft_type" in (peft := read_json(path / PEFT_CONFIG)):
        return Found(path, "hf", "gpt", peft)  # a PEFT adapter: read as its base with the adapter merged in
    if not (path / "config.json").is_file():
        raise LmkitError(f"{path}: not a {what}" + (" (no config.json)" if what == "run directory" else ""))
    raw = read_json(path / "config.json")
    if "model_type" in raw:
        return Found(path, "hf", HF_FAMILIES.get(raw["model_type"], raw["model_type"]))
    if not isinstance(raw.get("model"), dict) or "train" not in raw:
        raise LmkitError(f"{path / 'config.json'}: neither an lmkit run (no 'model' and 'train' sections) nor a "
                         "Hugging Face model (no 'model_type')")
    family = raw["model"].get("type", "gpt")
    for kind, marker in MARKERS.items():
        if (path / marker).is_file():
            return Found(path, kind, family, read_json(path / marker))
    return Found(path, "run", family)


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
