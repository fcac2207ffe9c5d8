"""Hugging Face interop: import GPT-2 and Llama-style checkpoints into lmkit, export lmkit runs back.

Both formats are the same decoder-only Transformer as lmkit's GPT with different options:
    GPT-2  learned positions, LayerNorm with biases, GELU MLP, tied head
    Llama  rotary positions, RMSNorm, SwiGLU MLP, no biases, grouped-query attention
so a checkpoint maps onto `models.gpt.GPT` by renaming (and fusing) weights; nothing is
approximated. GPT-2 stores its linear layers as Conv1D, (in, out): they are transposed on the way.
Weights are read from safetensors, or from pytorch_model.bin only with torch.load(weights_only=True).
"""
from __future__ import annotations

import json
import pickle
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .config import Config, save_json
from .errors import LmkitError
from .io import atomic_path, atomic_write_text
from .tokenizer import Tokenizer

SUPPORTED = ("gpt2", "llama", "bert")


# ---- reading a Hugging Face folder ------------------------------------------------------------------
def is_hf_dir(path: str | Path) -> bool:
    f = Path(path) / "config.json"
    if not f.is_file():
        return False
    try:
        return "model_type" in json.loads(f.read_text(encoding="utf-8"))
    except ValueError:
        return False


def read_hf_config(path: Path) -> dict:
    f = path / "config.json"
    try:
        return json.loads(f.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise LmkitError(f"{f}: cannot read ({e})")


def read_hf_weights(path: Path) -> dict[str, torch.Tensor]:
    """model.safetensors, sharded model-*.safetensors with an index, or pytorch_model.bin (weights only)."""
    single = path / "model.safetensors"
    index = path / "model.safetensors.index.json"
    try:
        if single.is_file():
            return load_file(str(single))
        if index.is_file():
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            out = {}
            for s in shards:
                out.update(load_file(str(path / s)))
            return out
        pt = path / "pytorch_model.bin"
        if pt.is_file():
            try:
                return torch.load(pt, map_location="cpu", weights_only=True)
            except pickle.UnpicklingError:
                raise LmkitError(
                    f"{pt}: holds more than tensors, and lmkit never unpickles a file it is handed; if you trust it, "
                    "convert it once to safetensors, e.g. with transformers: AutoModel.from_pretrained(DIR)"
                    ".save_pretrained(DIR, safe_serialization=True)") from None
    except LmkitError:
        raise
    except Exception as e:  # safetensors / torch raise several types on damaged files
        raise LmkitError(f"{path}: cannot read the weights ({str(e).splitlines()[0][:160]})")
    raise LmkitError(f"{path}: no model.safetensors, model.safetensors.index.json or pytorch_model.bin")


def read_hf_tokenizer(path: Path) -> Tokenizer:
    """tokenizer.json, GPT-2's vocab.json + merges.txt, or BERT's vocab.txt."""
    if (path / "tokenizer.json").is_file():
        return Tokenizer.load(path / "tokenizer.json")
    if (path / "vocab.txt").is_file():
        return Tokenizer.load(path / "vocab.txt")
    if (path / "vocab.json").is_file() and (path / "merges.txt").is_file():
        from tokenizers import Tokenizer as HFTokenizer, decoders, models, pre_tokenizers
        hf = HFTokenizer(models.BPE.from_file(str(path / "vocab.json"), str(path / "merges.txt")))
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        hf.decoder = decoders.ByteLevel()
        if hf.token_to_id("<|endoftext|>") is not None:
            hf.add_special_tokens(["<|endoftext|>"])
        return Tokenizer(hf)
    raise LmkitError(f"{path}: no tokenizer.json, vocab.json + merges.txt, or vocab.txt")


def _need(ok: bool, path: Path, msg: str) -> None:
    if not ok:
        raise LmkitError(f"{path / 'config.json'}: {msg}")


# ---- GPT-2 ------------------------------------------------------------------------------------------
GPT2_CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
GPT2_NAMES = {"attn.c_attn": "attn.qkv", "attn.c_proj": "attn.proj", "mlp.c_fc": "mlp.fc", "mlp.c_proj": "mlp.proj"}
GPT2_ACT = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu_fast": "gelu_tanh", "gelu": "gelu"}


def gpt2_config(hc: dict, path: Path) -> Config:
    act = hc.get("activation_function", "gelu_new")
    _need(act in GPT2_ACT, path, f"activation_function '{act}' is not supported (gelu, gelu_new)")
    _need(not hc.get("scale_attn_by_inverse_layer_idx") and not hc.get("reorder_and_upcast_attn"), path,
          "scale_attn_by_inverse_layer_idx / reorder_and_upcast_attn are not supported")
    _need(hc.get("scale_attn_weights", True), path, "scale_attn_weights = false is not supported")
    cfg = Config()
    m = cfg.model
    m.vocab_size, m.block_size = hc["vocab_size"], hc.get("n_positions", 1024)
    m.n_layer, m.n_head, m.n_embd = hc.get("n_layer", 12), hc.get("n_head", 12), hc.get("n_embd", 768)
    m.mlp_hidden = hc.get("n_inner")
    m.pos, m.norm, m.mlp, m.bias = "learned", "layernorm", GPT2_ACT[act], True
    m.norm_eps = hc.get("layer_norm_epsilon", 1e-5)
    m.tie_embeddings = hc.get("tie_word_embeddings", True)
    return cfg


def gpt2_to_lmkit(sd: dict, cfg: Config) -> dict:
    out = {}
    for k, v in sd.items():
        k = k.removeprefix("transformer.")
        if k.endswith((".attn.bias", ".attn.masked_bias")):  # old causal-mask buffers, not weights
            continue
        if k.endswith(GPT2_CONV1D):
            v = v.t()
        for hf_name, ours in GPT2_NAMES.items():
            k = k.replace(hf_name, ours)
        out[k] = v.contiguous()
    if cfg.model.tie_embeddings:
        out.pop("lm_head.weight", None)
    return out


def lmkit_to_gpt2(sd: dict, cfg: Config) -> tuple[dict, dict]:
    m = cfg.model
    out = {}
    for k, v in sd.items():
        if k == "lm_head.weight":
            if not m.tie_embeddings:
                out[k] = v
            continue
        for hf_name, ours in GPT2_NAMES.items():
            k = k.replace(ours, hf_name)
        if k.endswith(GPT2_CONV1D):
            v = v.t()
        out["transformer." + k] = v.contiguous()
    hc = {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": m.vocab_size,
          "n_positions": m.block_size, "n_embd": m.n_embd, "n_layer": m.n_layer, "n_head": m.n_head,
          "n_inner": m.mlp_hidden, "activation_function": "gelu_new" if m.mlp == "gelu_tanh" else "gelu",
          "layer_norm_epsilon": m.norm_eps, "tie_word_embeddings": m.tie_embeddings,
          "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}
    return out, hc


# ---- Llama ------------------------------------------------------------------------------------------
def llama_config(hc: dict, path: Path) -> Config:
    _need(hc.get("hidden_act", "silu") == "silu", path, f"hidden_act '{hc.get('hidden_act')}' is not supported (silu)")
    _need(bool(hc.get("attention_bias", False)) == bool(hc.get("mlp_bias", False)), path,
          "attention_bias and mlp_bias must agree (lmkit has one `bias` switch)")
    rope = hc.get("rope_parameters") or hc.get("rope_scaling") or {}
    _need(rope.get("rope_type", rope.get("type", "default")) == "default", path,
          f"rope scaling '{rope.get('rope_type', rope.get('type'))}' is not supported")
    n_embd, n_head = hc["hidden_size"], hc["num_attention_heads"]
    _need(hc.get("head_dim", n_embd // n_head) == n_embd // n_head, path, "head_dim must equal hidden_size / heads")
    cfg = Config()
    m = cfg.model
    m.vocab_size, m.block_size = hc["vocab_size"], hc.get("max_position_embeddings", 2048)
    m.n_layer, m.n_head, m.n_embd = hc["num_hidden_layers"], n_head, n_embd
    kv = hc.get("num_key_value_heads", n_head)
    m.n_kv_head = None if kv == n_head else kv
    m.mlp_hidden = hc["intermediate_size"]
    m.pos, m.norm, m.mlp, m.bias = "rope", "rmsnorm", "swiglu", bool(hc.get("attention_bias", False))
    m.rope_theta = float(hc.get("rope_theta", rope.get("rope_theta", 10000.0)))
    m.norm_eps = hc.get("rms_norm_eps", 1e-6)
    m.tie_embeddings = hc.get("tie_word_embeddings", False)
    return cfg


def llama_to_lmkit(sd: dict, cfg: Config) -> dict:
    out = {"wte.weight": sd["model.embed_tokens.weight"], "ln_f.weight": sd["model.norm.weight"]}
    if not cfg.model.tie_embeddings:
        out["lm_head.weight"] = sd.get("lm_head.weight", sd["model.embed_tokens.weight"])
    for i in range(cfg.model.n_layer):
        p, q = f"model.layers.{i}.", f"h.{i}."
        out[q + "ln_1.weight"] = sd[p + "input_layernorm.weight"]
        out[q + "ln_2.weight"] = sd[p + "post_attention_layernorm.weight"]
        for kind in ("weight", "bias") if cfg.model.bias else ("weight",):
            out[q + f"attn.qkv.{kind}"] = torch.cat([sd[p + f"self_attn.{n}_proj.{kind}"] for n in "qkv"])
            out[q + f"attn.proj.{kind}"] = sd[p + f"self_attn.o_proj.{kind}"]
            out[q + f"mlp.fc.{kind}"] = torch.cat([sd[p + f"mlp.{n}_proj.{kind}"] for n in ("gate", "up")])
            out[q + f"mlp.proj.{kind}"] = sd[p + f"mlp.down_proj.{kind}"]
    return out


def lmkit_to_llama(sd: dict, cfg: Config) -> tuple[dict, dict]:
    m = cfg.model
    kv, hd = m.n_kv_head or m.n_head, m.head_dim
    out = {"model.embed_tokens.weight": sd["wte.weight"], "model.norm.weight": sd["ln_f.weight"]}
    if not m.tie_embeddings:
        out["lm_head.weight"] = sd["lm_head.weight"]
    for i in range(m.n_layer):
        p, q = f"model.layers.{i}.", f"h.{i}."
        out[p + "input_layernorm.weight"] = sd[q + "ln_1.weight"]
        out[p + "post_attention_layernorm.weight"] = sd[q + "ln_2.weight"]
        for kind in ("weight", "bias") if m.bias else ("weight",):
            qw, kw, vw = sd[q + f"attn.qkv.{kind}"].split([m.n_head * hd, kv * hd, kv * hd])
            out[p + f"self_attn.q_proj.{kind}"], out[p + f"self_attn.k_proj.{kind}"] = qw, kw
            out[p + f"self_attn.v_proj.{kind}"] = vw
            out[p + f"self_attn.o_proj.{kind}"] = sd[q + f"attn.proj.{kind}"]
            gate, up = sd[q + f"mlp.fc.{kind}"].chunk(2)
            out[p + f"mlp.gate_proj.{kind}"], out[p + f"mlp.up_proj.{kind}"] = gate, up
            out[p + f"mlp.down_proj.{kind}"] = sd[q + f"mlp.proj.{kind}"]
    hc = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": m.vocab_size,
          "hidden_size": m.n_embd, "intermediate_size": m.hidden_dim, "num_hidden_layers": m.n_layer,
          "num_attention_heads": m.n_head, "num_key_value_heads": kv, "head_dim": hd, "hidden_act": "silu",
          "max_position_embeddings": m.block_size, "rms_norm_eps": m.norm_eps, "rope_theta": m.rope_theta,
          "attention_bias": m.bias, "mlp_bias": m.bias, "tie_word_embeddings": m.tie_embeddings,
          "attention_dropout": 0.0}
    return {k: v.contiguous() for k, v in out.items()}, hc


# ---- BERT (the name mapping itself lives once, in models/bert.py) -----------------------------------
def bert_from_hf(hc: dict, path: Path) -> tuple[Config, dict]:
    """BertModel or BertForMaskedLM -> an lmkit BERT. A BertModel has no MLM head; lmkit's starts fresh."""
    from .models import build_model
    from .models.bert import config_from_hf, hf_bert_to_lmkit
    _need(hc.get("position_embedding_type", "absolute") == "absolute", path, "only absolute positions are supported")
    _need(hc.get("hidden_act", "gelu") == "gelu", path, f"hidden_act '{hc.get('hidden_act')}' is not supported (gelu)")
    cfg = Config()
    cfg.model = config_from_hf(hc)  # keeps the checkpoint's dropout, for fine-tuning; eval() turns it off
    cfg.train.objective = "mlm"
    try:  # a classification checkpoint's head is not part of the encoder (import-hf keeps it: see below)
        sd = hf_bert_to_lmkit({k: v for k, v in read_hf_weights(path).items() if not k.startswith("classifier.")})
    except KeyError as e:
        raise LmkitError(f"{path}: unexpected weight {e} for a BERT model")
    fresh = build_model(cfg.model).state_dict()
    for k, v in fresh.items():  # the MLM head, when the checkpoint has none
        sd.setdefault(k, v)
    return cfg, sd


def lmkit_to_bert(sd: dict, cfg: Config) -> tuple[dict, dict]:
    """An lmkit BERT -> BertForMaskedLM names (q, k, v split again; the decoder tied to the embeddings)."""
    from .models.bert import HF_BERT_NAMES
    m = cfg.model
    if m.norm_position == "pre":
        raise LmkitError("export-hf: Hugging Face BERT is post-LN; this model has norm_position = 'pre'")
    if m.pos != "learned":
        raise LmkitError(f"export-hf: Hugging Face BERT has learned positions; this model has pos = '{m.pos}'")
    reverse = {}
    for hf_name, ours in HF_BERT_NAMES.items():
        for i in range(m.n_layer) if "{i}" in ours else [None]:
            for p in ("weight", "bias") if "{p}" in ours else [None]:
                kw = {k: v for k, v in (("i", i), ("p", p)) if v is not None}
                reverse[ours.format(**kw)] = "bert." + hf_name.format(**kw) if not hf_name.startswith("cls.") \
                    else hf_name.format(**kw)
    out = {}
    for k, v in sd.items():
        if k in reverse:
            out[reverse[k]] = v
        elif ".attn.qkv." in k:
            i, kind = k.split(".")[1], k.rsplit(".", 1)[1]
            for name, part in zip(("query", "key", "value"), v.chunk(3)):
                out[f"bert.encoder.layer.{i}.attention.self.{name}.{kind}"] = part
        else:
            raise LmkitError(f"export-hf: no BERT name for lmkit weight '{k}'")
    out["cls.predictions.decoder.bias"] = out["cls.predictions.bias"].clone()
    hc = {"architectures": ["BertForMaskedLM"], "model_type": "bert", "vocab_size": m.vocab_size,
          "hidden_size": m.n_embd, "num_hidden_layers": m.n_layer, "num_attention_heads": m.n_head,
          "intermediate_size": m.hidden_dim, "hidden_act": "gelu", "max_position_embeddings": m.block_size,
          "type_vocab_size": m.type_vocab_size, "layer_norm_eps": m.norm_eps, "hidden_dropout_prob": 0.0,
          "attention_probs_dropout_prob": 0.0, "tie_word_embeddings": True, "pad_token_id": 0}
    return {k: v.contiguous() for k, v in out.items()}, hc


def import_bert_classifier(hf_dir: Path, out_dir: Path, overwrite: bool = False) -> Path:
    """BertForSequenceClassification -> an lmkit classifier run (what `lmkit finetune classify` writes):
    BERT encoder, [CLS] pooling, head = pooler dense + tanh + classifier, labels from id2label."""
    from .finetune.classify import Classifier, model_meta, save_classifier
    from .models import build_model
    from .models.bert import config_from_hf, hf_bert_to_lmkit
    hc = read_hf_config(hf_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise LmkitError(f"{out_dir}: folder is not empty (use --overwrite)")
    sd = read_hf_weights(hf_dir)
    head = {"head.1.weight": sd.pop("bert.pooler.dense.weight", None), "head.1.bias": sd.pop("bert.pooler.dense.bias", None),
            "head.4.weight": sd.pop("classifier.weight", None), "head.4.bias": sd.pop("classifier.bias", None)}
    if any(v is None for v in head.values()):
        raise LmkitError(f"{hf_dir}: a BertForSequenceClassification checkpoint needs bert.pooler.dense and classifier weights")
    mcfg = config_from_hf(hc)
    mcfg.dropout = 0.0
    backbone = build_model(mcfg)
    backbone.load_state_dict({**backbone.state_dict(), **hf_bert_to_lmkit(sd)})  # no MLM head in this checkpoint
    n = head["head.4.weight"].size(0)
    id2label = hc.get("id2label") or {str(i): f"LABEL_{i}" for i in range(n)}
    labels = [str(id2label[str(i)] if str(i) in id2label else id2label[i]) for i in range(n)]
    model = Classifier(backbone, "bert", "cls", n)
    model.head.load_state_dict({k.removeprefix("head."): v for k, v in head.items()})
    save_classifier(model, read_hf_tokenizer(hf_dir), model_meta(model, labels, mcfg.block_size,
                                                                  {"text_field": "sentence", "label_field": "label"}),
                    out_dir)
    return out_dir


def export_bert_classifier(run_dir: Path, out_dir: Path) -> Path:
    """An lmkit BERT classifier run with [CLS] pooling -> BertForSequenceClassification."""
    from .finetune.classify import load_classifier
    clf = load_classifier(run_dir)
    if clf.meta["backbone"] != "bert" or clf.meta["pooling"] != "cls":
        raise LmkitError(f"export-hf: only BERT classifiers with [CLS] pooling have a Hugging Face form "
                         f"(this one: {clf.meta['backbone']}, {clf.meta['pooling']} pooling)")
    cfg = Config()
    cfg.model = clf.model.backbone.config
    sd, hc = lmkit_to_bert({k: v.detach() for k, v in clf.model.backbone.state_dict().items()}, cfg)
    sd = {k: v for k, v in sd.items() if k.startswith("bert.")}  # no MLM head in this format
    h = clf.model.head
    sd.update({"bert.pooler.dense.weight": h[1].weight.detach(), "bert.pooler.dense.bias": h[1].bias.detach(),
               "classifier.weight": h[4].weight.detach(), "classifier.bias": h[4].bias.detach()})
    labels = clf.meta["labels"]
    hc.update({"architectures": ["BertForSequenceClassification"], "num_labels": len(labels),
               "id2label": {str(i): l for i, l in enumerate(labels)}, "label2id": {l: i for i, l in enumerate(labels)},
               "pad_token_id": clf.tokenizer.pad_id or 0, "torch_dtype": "float32"})
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_dir / "model.safetensors") as tmp:
        save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp), metadata={"format": "pt"})
    atomic_write_text(out_dir / "config.json", json.dumps(hc, indent=2, ensure_ascii=False) + "\n")
    clf.tokenizer.save(out_dir / "tokenizer.json")
    tc = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": cfg.model.block_size,
          "pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]", "sep_token": "[SEP]", "mask_token": "[MASK]"}
    atomic_write_text(out_dir / "tokenizer_config.json", json.dumps(tc, indent=2) + "\n")
    return out_dir


# ---- import -----------------------------------------------------------------------------------------
def from_hf(path: str | Path) -> tuple[Config, dict, Tokenizer]:
    """Read a Hugging Face folder: (lmkit Config, lmkit-named state dict, Tokenizer)."""
    path = Path(path)
    hc = read_hf_config(path)
    kind = hc.get("model_type")
    if kind == "gpt2":
        cfg = gpt2_config(hc, path)
        sd = gpt2_to_lmkit(read_hf_weights(path), cfg)
    elif kind == "llama":
        cfg = llama_config(hc, path)
        sd = llama_to_lmkit(read_hf_weights(path), cfg)
    elif kind == "bert":
        cfg, sd = bert_from_hf(hc, path)
    else:
        raise LmkitError(f"{path / 'config.json'}: model_type '{kind}' is not supported "
                         f"(supported: {', '.join(SUPPORTED)})")
    tok = read_hf_tokenizer(path)
    if tok.vocab_size > cfg.model.vocab_size:
        raise LmkitError(f"{path}: the tokenizer has {tok.vocab_size} tokens but config.json's vocab_size is "
                         f"{cfg.model.vocab_size}: ids past the embedding table would fail")
    cfg.train.dtype = "float32"
    return cfg, sd, tok


def load_hf(path: str | Path, device: str = "cpu"):
    """`lmkit.load` for a Hugging Face folder or `hf:<hub id>`."""
    from .api import LM
    from .models import build_model
    path = resolve_hub(path)
    cfg, sd, tok = from_hf(path)
    model = build_model(cfg.model)
    try:
        missing, unexpected = model.load_state_dict(sd, strict=False)
    except RuntimeError as e:  # shape mismatches
        raise LmkitError(f"{path}: weights do not fit config.json ({str(e).splitlines()[-1].strip()[:200]})")
    missing = [k for k in missing if not (k == "lm_head.weight" and cfg.model.tie_embeddings)]
    if missing or unexpected:
        raise LmkitError(f"{path}: weights do not fit the config (missing {missing[:3]}, unexpected {unexpected[:3]})")
    return LM(model.to(device).eval(), tok, cfg, Path(path))


def resolve_hub(path: str | Path) -> Path:
    """`hf:<repo id>` downloads the model's files through huggingface_hub (needs internet)."""
    s = str(path)
    if not s.startswith("hf:"):
        return Path(path)
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise LmkitError("hf: ids need the huggingface_hub package (pip install huggingface_hub)")
    try:
        return Path(snapshot_download(s[3:], allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model"]))
    except Exception as e:  # network, unknown repo, auth: one line for the user
        raise LmkitError(f"{s}: download failed ({str(e).splitlines()[0][:160]})")


def import_hf(hf_dir: str | Path, out_dir: str | Path, overwrite: bool = False) -> Path:
    """Write a Hugging Face checkpoint as an lmkit run directory. The weights go straight from the renamed
    state dict to model.safetensors; the model is built on the meta device only to check names and shapes,
    so no second full copy is allocated."""
    from .models import build_model
    from .train.checkpoint import clear_run, holds_run
    hf_dir, out_dir = resolve_hub(hf_dir), Path(out_dir)
    if "BertForSequenceClassification" in (read_hf_config(hf_dir).get("architectures") or []):
        return import_bert_classifier(hf_dir, out_dir, overwrite)
    if holds_run(out_dir):
        if not overwrite:
            raise LmkitError(f"{out_dir}: already holds a run (use --overwrite to replace it)")
        clear_run(out_dir)
    cfg, sd, tok = from_hf(hf_dir)
    cfg.train.out_dir = str(out_dir)
    with torch.device("meta"):
        expected = {k: v.shape for k, v in build_model(cfg.model).state_dict().items()}
    if cfg.model.tie_embeddings and cfg.model.type == "gpt":
        expected.pop("lm_head.weight", None)
        sd.pop("lm_head.weight", None)
    missing, unexpected = sorted(set(expected) - set(sd)), sorted(set(sd) - set(expected))
    wrong = [k for k in expected if k in sd and tuple(sd[k].shape) != tuple(expected[k])]
    if missing or unexpected or wrong:
        raise LmkitError(f"{hf_dir}: weights do not fit config.json (missing {missing[:3]}, unexpected "
                         f"{unexpected[:3]}, wrong shape {wrong[:3]})")
    out_dir.mkdir(parents=True, exist_ok=True)
    tok.save(out_dir / "tokenizer.json")
    with atomic_path(out_dir / "model.safetensors") as tmp:
        save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp), metadata={"format": "pt", "step": "0"})
    save_json(cfg, out_dir / "config.json")
    return out_dir


# ---- export -----------------------------------------------------------------------------------------
def export_format(cfg: Config, fmt: str = "auto") -> str:
    """Which format can hold this model: GPT-2 or Llama-style. Refuse, naming the option, when neither."""
    m = cfg.model
    if m.type == "bert":
        if fmt not in ("auto", "bert"):
            raise LmkitError(f"export-hf: a BERT model exports as 'bert' (BertForMaskedLM), not '{fmt}'")
        return "bert"
    if m.type != "gpt":
        raise LmkitError(f"export-hf: model type '{m.type}' has no Hugging Face format here (gpt and bert do)")
    gpt2_misfits = [f"{k} = {v}" for k, v, ok in [
        ("pos", m.pos, m.pos == "learned"), ("norm", m.norm, m.norm == "layernorm"),
        ("mlp", m.mlp, m.mlp in ("gelu", "gelu_tanh")), ("bias", m.bias, m.bias),
        ("n_kv_head", m.n_kv_head, m.n_kv_head in (None, m.n_head)), ("qk_norm", m.qk_norm, not m.qk_norm),
        ("logit_softcap", m.logit_softcap, not m.logit_softcap)] if not ok]
    llama_misfits = [f"{k} = {v}" for k, v, ok in [
        ("pos", m.pos, m.pos == "rope"), ("norm", m.norm, m.norm == "rmsnorm"),
        ("mlp", m.mlp, m.mlp == "swiglu"), ("qk_norm", m.qk_norm, not m.qk_norm),
        ("logit_softcap", m.logit_softcap, not m.logit_softcap)] if not ok]
    if fmt == "auto":
        fmt = "gpt2" if not gpt2_misfits else "llama" if not llama_misfits else ""
        if not fmt:
            raise LmkitError(f"export-hf: no Hugging Face format holds this model: GPT-2 cannot hold "
                             f"{', '.join(gpt2_misfits)}; Llama-style cannot hold {', '.join(llama_misfits)}")
    misfits = {"gpt2": gpt2_misfits, "llama": llama_misfits}.get(fmt)
    if misfits is None:
        raise LmkitError(f"export-hf: unknown format '{fmt}' (gpt2, llama, auto)")
    if misfits:
        other = "Llama-style (pos = rope, norm = rmsnorm, mlp = swiglu)" if fmt == "gpt2" else \
            "GPT-2 (pos = learned, norm = layernorm, mlp = gelu, bias = true)"
        raise LmkitError(f"export-hf: the {fmt} format cannot hold {', '.join(misfits)}; "
                         f"a model with those options exports as {other}")
    return fmt


def export_hf(run_dir: str | Path, out_dir: str | Path, fmt: str = "auto", overwrite: bool = False) -> Path:
    """Write config.json, model.safetensors and tokenizer files that transformers loads."""
    from .api import load
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise LmkitError(f"{out_dir}: folder is not empty (use --overwrite)")
    if (Path(run_dir) / "classifier.json").is_file():  # written by lmkit finetune classify
        return export_bert_classifier(Path(run_dir), out_dir)
    lm = load(run_dir)
    cfg = lm.config
    fmt = export_format(cfg, fmt)
    sd = {k: v.detach().cpu() for k, v in lm.model.state_dict().items()}
    sd, hc = {"gpt2": lmkit_to_gpt2, "llama": lmkit_to_llama, "bert": lmkit_to_bert}[fmt](sd, cfg)
    eot = lm.tokenizer.eot_id
    if fmt == "bert":
        hc["pad_token_id"] = lm.tokenizer.pad_id or 0
    else:
        hc.update({"bos_token_id": eot, "eos_token_id": eot})
    hc["torch_dtype"] = "float32"
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_dir / "model.safetensors") as tmp:
        save_file(sd, str(tmp), metadata={"format": "pt"})
    atomic_write_text(out_dir / "config.json", json.dumps(hc, indent=2) + "\n")
    lm.tokenizer.save(out_dir / "tokenizer.json")
    eot_tok = lm.tokenizer.hf.id_to_token(eot) if eot is not None else None
    tc = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": cfg.model.block_size,
          "clean_up_tokenization_spaces": False}
    if fmt == "bert":
        tc.update(pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    else:
        tc.update(bos_token=eot_tok, eos_token=eot_tok)
        if lm.chat_template.special:  # a chat fine-tune: the same template for apply_chat_template
            tc["chat_template"] = lm.chat_template.jinja()
    atomic_write_text(out_dir / "tokenizer_config.json", json.dumps(tc, indent=2, ensure_ascii=False) + "\n")
    return out_dir
