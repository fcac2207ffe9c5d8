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
from ..errors import LmkitError
from .detect import detect, refusal
from .open import CAUSAL, ENCODERS, FLOAT, MODELS, NATIVE_FLOAT, open_run, save_run
from .record import Run
from ..io import check_target

__all__ = ["Run", "open_run", "save_run", "check_target", "detect", "refusal", "MODELS", "FLOAT",
           "NATIVE_FLOAT", "CAUSAL", "ENCODERS", "LmkitError"]
