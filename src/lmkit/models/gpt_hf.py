"""models/gpt.py in Hugging Face's decoder formats: GPT-2 and the Llama-style family (name tables, config.json).

All are the same decoder-only Transformer as lmkit's GPT with different options:
    GPT-2    learned positions, LayerNorm with biases, GELU MLP, tied head (GPT2LMHeadModel)
    Llama    rotary positions (Llama 3: `llama3` long-context remapping), RMSNorm, SwiGLU MLP, grouped-query
             attention, optional biases, a head size of its own (LlamaForCausalLM; also TinyLlama, SmolLM2)
    Qwen2    Llama + biases on q/k/v only (qkv_bias; Qwen2ForCausalLM, also Qwen2.5)
    Qwen3    Llama + per-head RMSNorm of q and k before rope (qk_norm; Qwen3ForCausalLM)
    Mistral  Llama + sliding-window attention (sliding_window; MistralForCausalLM)
so a checkpoint maps onto `GPT` by renaming weights: GPT-2's Conv1D layers are transposed, Llama's
separate q/k/v and gate/up projections are fused into lmkit's qkv and fc. One table per format serves
import and export (models/hf_names.py applies it either way).
"""
from __future__ import annotations

from ..config import ModelConfig
from ..errors import LmkitError
from .hf_names import Rule, Table

LLAMA_STYLE = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM",
               "mistral": "MistralForCausalLM"}
FORMATS = ("gpt2", *LLAMA_STYLE)  # export-hf's auto picks the first that holds the model
GPT2_ACT = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu_fast": "gelu_tanh", "gelu": "gelu"}


# ---- weight names -----------------------------------------------------------------------------------
def names(m: ModelConfig, fmt: str) -> Table:
    """The name table for a GPT with these settings in format `fmt` (gpt2, or one of the Llama style)."""
    return gpt2_names(m) if fmt == "gpt2" else llama_names(m)


def _head(m: ModelConfig) -> tuple[list[Rule], dict[str, str]]:
    """A tied head is the embedding matrix itself (stored once); an untied one is `lm_head` in both."""
    if m.tie_embeddings:
        return [], {"lm_head.weight": "wte.weight"}
    return [Rule("lm_head.weight", "lm_head.weight")], {}


def gpt2_names(m: ModelConfig) -> Table:
    head, tied = _head(m)
    t = "transformer."
    return Table([
        Rule("wte.weight", t + "wte.weight"),
        Rule("wpe.weight", t + "wpe.weight"),
        Rule("h.{i}.ln_1.{p}", t + "h.{i}.ln_1.{p}"),
        Rule("h.{i}.attn.qkv.{p}", t + "h.{i}.attn.c_attn.{p}", conv1d=True),
        Rule("h.{i}.attn.proj.{p}", t + "h.{i}.attn.c_proj.{p}", conv1d=True),
        Rule("h.{i}.ln_2.{p}", t + "h.{i}.ln_2.{p}"),
        Rule("h.{i}.mlp.fc.{p}", t + "h.{i}.mlp.c_fc.{p}", conv1d=True),
        Rule("h.{i}.mlp.proj.{p}", t + "h.{i}.mlp.c_proj.{p}", conv1d=True),
        Rule("ln_f.{p}", t + "ln_f.{p}"),
        *head,
    ], base=t, heads=("lm_head.",), tied=tied,
        # old files keep the causal-mask buffers; a tied head may be saved a second time
        ignored=(t + "h.{i}.attn.bias", t + "h.{i}.attn.masked_bias", *(["lm_head.weight"] if tied else [])))


def llama_names(m: ModelConfig) -> Table:
    head, tied = _head(m)
    q, kv, hidden = m.n_head * m.head_dim, (m.n_kv_head or m.n_head) * m.head_dim, m.hidden_dim
    t = "model."
    layer = t + "layers.{i}."
    return Table([
        Rule("wte.weight", t + "embed_tokens.weight"),
        Rule("h.{i}.ln_1.weight", layer + "input_layernorm.weight"),
        Rule("h.{i}.attn.qkv.{p}", *(layer + f"self_attn.{n}_proj.{{p}}" for n in "qkv"), sizes=(q, kv, kv)),
        Rule("h.{i}.attn.proj.{p}", layer + "self_attn.o_proj.{p}"),
        *(Rule(f"h.{{i}}.attn.{n}.weight", layer + f"self_attn.{n}.weight") for n in ("q_norm", "k_norm") if m.qk_norm),
        Rule("h.{i}.ln_2.weight", layer + "post_attention_layernorm.weight"),
        Rule("h.{i}.mlp.fc.{p}", layer + "mlp.gate_proj.{p}", layer + "mlp.up_proj.{p}", sizes=(hidden, hidden)),
        Rule("h.{i}.mlp.proj.{p}", layer + "mlp.down_proj.{p}"),
        Rule("ln_f.weight", t + "norm.weight"),
        *head,
    ], base=t, heads=("lm_head.",), tied=tied, ignored=("lm_head.weight",) if tied else ())


# ---- config.json ------------------------------------------------------------------------------------
def _need(ok: bool, where: str, msg: str) -> None:
    if not ok:
        raise LmkitError(f"{where}: {msg}")


def config_from_hf(hc: dict, where: str) -> ModelConfig:
    """A Hugging Face GPT-2 or Llama-style config.json -> ModelConfig; options lmkit's GPT lacks are refused
    (`where` names the file in the message)."""
    return gpt2_config(hc, where) if hc.get("model_type") == "gpt2" else llama_config(hc, where)


def gpt2_config(hc: dict, where: str) -> ModelConfig:
    act = hc.get("activation_function", "gelu_new")
    _need(act in GPT2_ACT, where, f"activation_function '{act}' is not supported (gelu, gelu_new)")
    _need(not hc.get("scale_attn_by_inverse_layer_idx") and not hc.get("reorder_and_upcast_attn"), where,
          "scale_attn_by_inverse_layer_idx / reorder_and_upcast_attn are not supported")
    _need(hc.get("scale_attn_weights", True), where, "scale_attn_weights = false is not supported")
    return ModelConfig(vocab_size=hc["vocab_size"], block_size=hc.get("n_positions", 1024),
                       n_layer=hc.get("n_layer", 12), n_head=hc.get("n_head", 12), n_embd=hc.get("n_embd", 768),
                       mlp_hidden=hc.get("n_inner"), pos="learned", norm="layernorm", mlp=GPT2_ACT[act], bias=True,
                       norm_eps=hc.get("layer_norm_epsilon", 1e-5), tie_embeddings=hc.get("tie_word_embeddings", True))


def rope_options(hc: dict, where: str) -> dict:
    """config.json's rope settings (transformers 5's rope_parameters, or the older rope_theta + rope_scaling)
    -> ModelConfig fields: rope_theta, and for Llama 3's long-context remapping rope_scaling + its four numbers."""
    rope = hc.get("rope_parameters") or hc.get("rope_scaling") or {}
    kind = rope.get("rope_type", rope.get("type", "default"))
    _need(kind in ("default", "llama3"), where, f"rope scaling '{kind}' is not supported (supported: default, llama3)")
    partial = rope.get("partial_rotary_factor", hc.get("partial_rotary_factor", 1.0))
    _need(partial == 1.0, where, f"partial_rotary_factor {partial} is not supported (rope on the whole head only)")
    out = {"rope_theta": float(hc.get("rope_theta") or rope.get("rope_theta") or 10000.0)}
    if kind == "llama3":
        out.update(rope_scaling="llama3", rope_factor=float(rope["factor"]),
                   rope_low_freq_factor=float(rope["low_freq_factor"]),
                   rope_high_freq_factor=float(rope["high_freq_factor"]),
                   rope_original_context=int(rope.get("original_max_position_embeddings")
                                             or hc["max_position_embeddings"]))
    return out


def llama_config(hc: dict, where: str) -> ModelConfig:
    """Llama, Qwen2, Qwen3 or Mistral: one translation, the family's quirks spelled out."""
    kind = hc["model_type"]
    _need(hc.get("hidden_act", "silu") == "silu", where, f"hidden_act '{hc.get('hidden_act')}' is not supported (silu)")
    _need(not hc.get("use_sliding_window"), where, f"use_sliding_window = true is not supported for {kind} "
          "(sliding-window attention is supported for mistral)")
    _need(len(set(hc.get("layer_types") or ())) <= 1, where, "layer_types mixing full and sliding attention "
          "are not supported")
    if kind == "llama":
        _need(bool(hc.get("attention_bias", False)) == bool(hc.get("mlp_bias", False)), where,
              "attention_bias and mlp_bias must agree (lmkit has one `bias` switch)")
    _need(kind != "qwen3" or not hc.get("attention_bias"), where, "attention_bias = true is not supported for qwen3")
    n_embd, n_head = hc["hidden_size"], hc["num_attention_heads"]
    head = hc.get("head_dim", 128 if kind == "qwen3" else None) or n_embd // n_head  # transformers' defaults
    kv = hc.get("num_key_value_heads") or n_head
    window = hc.get("sliding_window", 4096) if kind == "mistral" else None
    return ModelConfig(vocab_size=hc["vocab_size"], block_size=hc.get("max_position_embeddings", 2048),
                       n_layer=hc["num_hidden_layers"], n_head=n_head, n_embd=n_embd,
                       n_kv_head=None if kv == n_head else kv, mlp_hidden=hc["intermediate_size"],
                       head_size=None if head * n_head == n_embd else head,
                       pos="rope", norm="rmsnorm", mlp="swiglu",
                       bias=kind == "llama" and bool(hc.get("attention_bias")),
                       qkv_bias=kind == "qwen2", qk_norm=kind == "qwen3", sliding_window=window,
                       norm_eps=hc.get("rms_norm_eps", 1e-6), tie_embeddings=hc.get("tie_word_embeddings", False),
                       **rope_options(hc, where))


def config_to_hf(m: ModelConfig, fmt: str) -> dict:
    """ModelConfig -> the config.json transformers builds the format's model from (GPT2LMHeadModel,
    LlamaForCausalLM, ...; check `misfits` first: options the format cannot hold are not written)."""
    if fmt == "gpt2":
        return {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": m.vocab_size,
                "n_positions": m.block_size, "n_embd": m.n_embd, "n_layer": m.n_layer, "n_head": m.n_head,
                "n_inner": m.mlp_hidden, "activation_function": "gelu_new" if m.mlp == "gelu_tanh" else "gelu",
                "layer_norm_epsilon": m.norm_eps, "tie_word_embeddings": m.tie_embeddings,
                "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}
    hc = {"architectures": [LLAMA_STYLE[fmt]], "model_type": fmt, "vocab_size": m.vocab_size,
          "hidden_size": m.n_embd, "intermediate_size": m.hidden_dim, "num_hidden_layers": m.n_layer,
          "num_attention_heads": m.n_head, "num_key_value_heads": m.n_kv_head or m.n_head, "head_dim": m.head_dim,
          "hidden_act": "silu", "max_position_embeddings": m.block_size, "rms_norm_eps": m.norm_eps,
          "rope_theta": m.rope_theta, "tie_word_embeddings": m.tie_embeddings, "attention_dropout": 0.0}
    if m.rope_scaling == "llama3":
        hc["rope_scaling"] = {"rope_type": "llama3", "factor": m.rope_factor,
                              "low_freq_factor": m.rope_low_freq_factor, "high_freq_factor": m.rope_high_freq_factor,
                              "original_max_position_embeddings": m.rope_original_context}
    if fmt == "llama":
        hc.update(attention_bias=m.bias, mlp_bias=m.bias)
    elif fmt == "mistral":
        hc["sliding_window"] = m.sliding_window
    else:  # qwen2, qwen3: no sliding window; Qwen3's optional q/k/v/o biases off
        hc["use_sliding_window"] = False
        if fmt == "qwen3":
            hc["attention_bias"] = False
    return hc


def misfits(m: ModelConfig, fmt: str) -> list[str]:
    """The settings of `m` that format `fmt` cannot hold, as "name = value" (empty: it fits)."""
    if fmt == "gpt2":
        checks = [("pos", m.pos, m.pos == "learned"), ("norm", m.norm, m.norm == "layernorm"),
                  ("mlp", m.mlp, m.mlp in ("gelu", "gelu_tanh")), ("bias", m.bias, m.bias),
                  ("n_kv_head", m.n_kv_head, m.n_kv_head in (None, m.n_head)), ("qk_norm", m.qk_norm, not m.qk_norm),
                  ("head_size", m.head_size, m.head_dim * m.n_head == m.n_embd)]
    else:  # Llama-style: q/k norm is qwen3's alone, biases on q/k/v only qwen2's, biases everywhere llama's,
        # a sliding window mistral's
        qkv_only = m.qkv_bias and not m.bias
        checks = [("pos", m.pos, m.pos == "rope"), ("norm", m.norm, m.norm == "rmsnorm"),
                  ("mlp", m.mlp, m.mlp == "swiglu"), ("qk_norm", m.qk_norm, m.qk_norm == (fmt == "qwen3")),
                  ("qkv_bias", m.qkv_bias, qkv_only == (fmt == "qwen2")),
                  ("bias", m.bias, not m.bias or fmt == "llama")]
    checks += [("sliding_window", m.sliding_window, m.sliding_window is None or fmt == "mistral"),
               ("logit_softcap", m.logit_softcap, not m.logit_softcap)]
    return [f"{k} = {v}" for k, v, ok in checks if not ok]


def fitting_format(m: ModelConfig) -> str | None:
    """The first format of FORMATS that holds `m` (export-hf's auto), or None."""
    return next((f for f in FORMATS if not misfits(m, f)), None)
