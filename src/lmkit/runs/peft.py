"""PEFT's LoRA adapter folders (Hugging Face's `peft` library), read and written exactly.

    adapter_config.json          peft_type "LORA", r, lora_alpha, target_modules, bias "none",
                                 base_model_name_or_path (the base model's folder)
    adapter_model.safetensors    base_model.model.<module>.lora_A.weight (r × in), ….lora_B.weight (out × r),
                                 <module> spelled as in the Hugging Face model (model.layers.0.self_attn.q_proj)

Each adapted Linear computes W x + s · B A x with s = lora_alpha / r (lora_alpha / √r with use_rslora), as
lmkit's LoRALinear does (models/lora.py). lmkit fuses q/k/v (and gate/up) into one Linear; the family's name
table (models/gpt_hf.py) says which rows are which part. So:

    lmkit -> PEFT   an adapter on the fused qkv, ΔW = s · [B_q; B_k; B_v] A, is exactly PEFT adapters on q, k
                    and v that share A: each part gets A and its rows of B (save_peft; finetune sft writes one)
    PEFT -> lmkit   PEFT's parts each have their own A, which no single rank-r pair on the fused matrix holds,
                    so a PEFT folder is read as its base model with each ΔW = s · B A added to the rows of its
                    part: merged on read, as lmkit's own LoRA runs are (merge_peft; runs/hf.py opens the base).

Options that change what an adapter computes and that lmkit does not (DoRA, biases, whole modules saved
beside the adapters, ...) are refused in one line naming the option.
"""
from __future__ import annotations

import json
import math
import pickle
import re
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..config import ModelConfig
from ..errors import LmkitError
from ..io import atomic_dir
from ..models import gpt_hf
from ..models.hf_names import Table, match
from .detect import PEFT_CONFIG, read_json

FOLDER = "peft"  # where finetune sft --lora-rank writes the PEFT form of its adapters, inside the run
WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
PREFIX = "base_model.model."  # what PeftModel puts before the model's own module names
HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")  # owner/name
KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.(?:lora_(?P<ab>[AB])|base_layer)\.weight$")
# options that change what the adapter computes; lmkit refuses a folder that sets one
UNSUPPORTED = {"use_dora": "DoRA (use_dora)", "lora_bias": "a bias in lora_B (lora_bias)",
               "modules_to_save": "whole modules trained beside the adapters (modules_to_save)",
               "trainable_token_indices": "trained token embeddings (trainable_token_indices)",
               "target_parameters": "LoRA on bare parameters (target_parameters)",
               "alpha_pattern": "a lora_alpha per module (alpha_pattern)", "layer_replication": "layer_replication",
               "use_qalora": "QA-LoRA (use_qalora)",
               "alora_invocation_tokens": "activated LoRA (alora_invocation_tokens)",
               "arrow_config": "Arrow routing (arrow_config)", "use_bdlora": "block-diagonal LoRA (use_bdlora)"}
# initialisations that leave the base weights as they are (PiSSA, OLoRA, LoftQ, CorDA change them too)
PLAIN_INITS = (True, False, "gaussian", "eva")
WHY = {"lora_embedding_": "LoRA on an embedding", "lora_magnitude_vector": "DoRA", ".bias": "a trained bias"}


hf_format = gpt_hf.fitting_format  # the Hugging Face format that holds this GPT, as export-hf picks, or None


# ---- PEFT -> lmkit ------------------------------------------------------------------------------------
def check_config(path: Path) -> dict:
    """adapter_config.json of a PEFT folder, refused in one line when it is not a plain LoRA adapter."""
    where = path / PEFT_CONFIG
    meta = read_json(where)

    def need(ok: bool, msg: str) -> None:
        if not ok:
            raise LmkitError(f"{where}: {msg}")
    need(meta.get("peft_type") == "LORA", f"peft_type '{meta.get('peft_type')}' is not supported (LORA)")
    need(meta.get("task_type") in (None, "CAUSAL_LM"), f"task_type '{meta.get('task_type')}' is not supported "
         "(CAUSAL_LM: a language model's adapter)")
    need(meta.get("bias", "none") == "none", f"bias '{meta.get('bias')}' is not supported (none: adapters only)")
    for key, what in UNSUPPORTED.items():
        need(not meta.get(key), f"{what} is not supported")
    init = meta.get("init_lora_weights", True)
    need(init in PLAIN_INITS, f"init_lora_weights '{init}' is not supported: it changes the base weights too, "
         "which the folder does not hold (convert it to a plain LoRA with peft first)")
    alpha = meta.get("lora_alpha", 8)
    need(isinstance(alpha, (int, float)) and not isinstance(alpha, bool) and alpha > 0,
         f"lora_alpha must be a positive number (got {alpha!r})")
    return meta


def base_folder(path: Path, meta: dict) -> str:
    """The base model named by base_model_name_or_path: a folder as given (or relative to the adapter's
    folder), else a Hugging Face Hub id, as `hf:<id>` (downloaded by runs/hf.py)."""
    name, where = meta.get("base_model_name_or_path"), path / PEFT_CONFIG
    if not isinstance(name, str) or not name:
        raise LmkitError(f"{where}: no base_model_name_or_path (the folder of the model the adapter was trained on)")
    if name.startswith("hf:"):
        return name
    for folder in (Path(name).expanduser(), path / name):
        if folder.is_dir():
            return str(folder)
    if HUB_ID.match(name):  # as peft and transformers read it: a model on the Hugging Face Hub
        return f"hf:{name}"
    raise LmkitError(f"{where}: base_model_name_or_path '{name}' is not a folder here; set it to the base model's "
                     "folder (a Hugging Face folder or its lmkit import-hf run)")


def read_adapter(path: Path) -> tuple[dict[str, torch.Tensor], Path]:
    """adapter_model.safetensors (or an old adapter_model.bin, read as tensors only, never unpickled)."""
    for name in WEIGHTS:
        file = path / name
        if file.is_file():
            try:
                if name.endswith(".bin"):
                    return torch.load(file, map_location="cpu", weights_only=True), file
                return load_file(str(file)), file
            except (pickle.UnpicklingError, OSError, ValueError, RuntimeError) as e:
                raise LmkitError(f"{file}: cannot read the adapter ({str(e).splitlines()[0][:160]})") from None
    raise LmkitError(f"{path}: no {' or '.join(WEIGHTS)} (the adapter's weights)")


def locate(table: Table, name: str, where) -> tuple[str, slice]:
    """A Hugging Face weight name -> (the lmkit weight that holds it, its rows there: a part of a fused one)."""
    full = table.with_base(name)
    for rule in table.rules:
        if found := match(full, rule.theirs):
            part, fill = found
            start = sum(rule.sizes[:part])
            return rule.ours.format(**fill), slice(start, start + rule.sizes[part]) if rule.sizes else slice(None)
    what = "the output head, which shares its matrix with the embedding" if full == "lm_head.weight" else "it"
    raise LmkitError(f"{where}: an adapter on '{name.removesuffix('.weight')}' cannot be mapped onto lmkit's model "
                     f"(no lmkit weight for {what})")


def same(mine: torch.Tensor, saved: torch.Tensor) -> bool:
    return mine.shape == saved.shape and torch.equal(mine, saved.to(mine.dtype))


def merge_peft(model: torch.nn.Module, m: ModelConfig, path: Path, meta: dict) -> int:
    """Add every adapter's ΔW = s · B A to the rows of its base weight in `model` (in place, same outputs as
    PEFT's adapted model); returns how many adapters were merged."""
    sd, file = read_adapter(path)
    fmt = hf_format(m)
    if fmt is None:
        raise LmkitError(f"{path}: the base model has no Hugging Face format, so PEFT's names cannot be mapped")
    table, pairs = gpt_hf.names(m, fmt), {}
    for key, t in sd.items():
        k = KEY.match(key)
        if k is None:
            why = next((w for s, w in WHY.items() if s in key), "a tensor lmkit does not know")
            raise LmkitError(f"{file}: '{key}' is {why}, which is not supported (LoRA's lora_A / lora_B only)")
        pairs.setdefault(k["module"], {})[k["ab"] or "base"] = t
    params = dict(model.named_parameters())
    with torch.no_grad():
        for module, ab in pairs.items():
            ours, rows = locate(table, module + ".weight", file)
            weight = params.get(ours)
            if weight is None:
                raise LmkitError(f"{file}: an adapter on '{module}' cannot be mapped onto lmkit's model ({ours})")
            if "base" in ab and not same(weight[rows], ab.pop("base")):  # peft saves an adapted head's base too
                raise LmkitError(f"{file}: '{module}.base_layer' is not the base model's weight (another base, or "
                                 "a resized vocabulary, which lmkit does not take from an adapter)")
            if not ab:
                continue
            if set(ab) != {"A", "B"}:
                have, lack = ("A", "B") if "A" in ab else ("B", "A")
                raise LmkitError(f"{file}: '{module}' has lora_{have} but no lora_{lack}")
            a, b = ab["A"].float(), ab["B"].float()
            r = a.shape[0]
            scale = meta.get("lora_alpha", 8) / (math.sqrt(r) if meta.get("use_rslora") else r)
            if a.dim() != 2 or b.dim() != 2 or b.shape[1] != r or (b.shape[0], a.shape[1]) != tuple(weight[rows].shape):
                raise LmkitError(f"{file}: the adapter on '{module}' is {tuple(b.shape)} x {tuple(a.shape)} but the "
                                 f"base weight is {tuple(weight[rows].shape)}: is base_model_name_or_path its base?")
            weight[rows] += (scale * (b @ a)).to(weight.dtype)
    return len(pairs)


# ---- lmkit -> PEFT ------------------------------------------------------------------------------------
def hf_modules(table: Table, name: str) -> list[tuple[str, slice]] | None:
    """An lmkit Linear module -> [(the Hugging Face module, its rows of the fused weight), ...], or None."""
    ours = name + ".weight"
    rule = next((r for r in table.rules if match(ours, [r.ours])), None)
    if rule is None:
        return None
    fill, parts, start = match(ours, [rule.ours])[1], [], 0
    for theirs, size in zip(rule.theirs, rule.sizes or (None,)):
        parts.append((theirs.format(**fill).removesuffix(".weight"),
                      slice(None) if size is None else slice(start, start + size)))
        start += size or 0
    return parts


def export_plan(m: ModelConfig, adapted: list[str]) -> tuple[Table, dict]:
    """(the name table, {lmkit module: [(Hugging Face module, rows), ...]}) for the adapted modules; LmkitError
    (one line) for a model with no Hugging Face format or a module with no Hugging Face name."""
    fmt = hf_format(m)
    if fmt is None:
        raise LmkitError("the model has no Hugging Face format (export-hf would refuse it)")
    table, plan = gpt_hf.names(m, fmt), {}
    for name in adapted:
        if (parts := hf_modules(table, name)) is None:
            raise LmkitError(f"the adapted module '{name}' has no Hugging Face name (a tied output head?)")
        plan[name] = parts
    return table, plan


def target_modules(model: torch.nn.Module, table: Table, plan: dict) -> list[str]:
    """PEFT's target_modules: a module's last name ("q_proj") where every module of that name is adapted,
    else the adapted modules' full names, so that PEFT adapts exactly those."""
    last = lambda n: n.rsplit(".", 1)[-1]  # noqa: E731
    every = [hf for n, x in model.named_modules() if isinstance(x, torch.nn.Linear)
             for hf, _ in hf_modules(table, n) or ()]
    adapted, out = [hf for parts in plan.values() for hf, _ in parts], []
    for short in dict.fromkeys(map(last, adapted)):
        mine = [n for n in adapted if last(n) == short]
        out += [short] if len(mine) == sum(last(n) == short for n in every) else mine
    return out


def peft_settings(model: torch.nn.Module, m: ModelConfig, adapted: list[str], base: str, rank: int, alpha: float,
                  dropout: float) -> dict:
    """What save_peft needs: the name plan and adapter_config.json (PEFT's schema) for these adapters."""
    table, plan = export_plan(m, adapted)
    config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base, "r": rank,
              "lora_alpha": int(alpha) if float(alpha).is_integer() else alpha, "lora_dropout": dropout,
              "target_modules": target_modules(model, table, plan), "bias": "none",
              "fan_in_fan_out": hf_format(m) == "gpt2",
              "use_rslora": False, "use_dora": False, "modules_to_save": None, "init_lora_weights": True,
              "layers_to_transform": None, "layers_pattern": None, "rank_pattern": {}, "alpha_pattern": {},
              "inference_mode": True, "revision": None}
    return {"plan": plan, "config": config}


def save_peft(model: torch.nn.Module, out: Path, settings: dict) -> Path:
    """Write the adapters of `model` (LoRALinear modules) as a PEFT folder at `out`, replaced whole."""
    modules, state = dict(model.named_modules()), {}
    for name, parts in settings["plan"].items():
        layer = modules[name]
        a, b = layer.lora_A.detach().cpu(), layer.lora_B.detach().cpu()
        for hf, rows in parts:
            state[f"{PREFIX}{hf}.lora_A.weight"] = a.clone().contiguous()
            state[f"{PREFIX}{hf}.lora_B.weight"] = b[rows].clone().contiguous()
    with atomic_dir(out) as tmp:
        save_file(state, str(tmp / WEIGHTS[0]), metadata={"format": "pt"})
        (tmp / PEFT_CONFIG).write_text(json.dumps(settings["config"], indent=2) + "\n", encoding="utf-8")
    return out
