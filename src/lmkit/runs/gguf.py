"""export-gguf: write a Llama-style GPT as one GGUF file that llama.cpp and Ollama run.

    export_gguf("runs/x", "x.gguf", type="q8_0")

The file holds, under llama.cpp's `llama`, `qwen2` (biases on q/k/v) or `qwen3` (q/k norms) architecture, the
first that holds the model (ARCHS; the keys below are spelled with that name first):
    metadata   llama.context_length, embedding_length, block_count, feed_forward_length,
               attention.head_count / head_count_kv / layer_norm_rms_epsilon (and key/value_length when the
               head size is not n_embd / n_head), rope.freq_base, rope.dimension_count, vocab_size,
               general.file_type
    tokenizer  tokenizer.ggml.model = gpt2 (byte-level BPE): tokens, token types, merges, the pre-tokenizer's
               name, bos / eos (/ pad) ids, whether a bos is added; tokenizer.chat_template when the run has one
    tensors    token_embd, blk.N.{attn_norm, attn_q, attn_k, attn_v, attn_output, ffn_norm, ffn_gate, ffn_up,
               ffn_down} (+ attn_q/k/v.bias for qwen2, attn_q_norm / attn_k_norm for qwen3), output_norm, output
               (absent when the head is tied: llama.cpp then reuses token_embd), rope_freqs for Llama 3's rope

The weights are first given their Hugging Face Llama names by the family's own table (models/gpt_hf.py, which
also splits lmkit's fused qkv and gate/up), then renamed once more by HF_TO_GGUF below.

Rotary layout. lmkit (like Hugging Face) rotates each head's pair (x_i, x_{i+d/2}): the "rotate-half" layout.
llama.cpp's `llama` architecture rotates adjacent pairs (x_{2i}, x_{2i+1}) with the same frequency θ^(-2i/d).
So the rows of every head of attn_q and attn_k (weights and biases) are reordered from [first half; second half]
to interleaved, row i -> 2i and row d/2+i -> 2i+1 (`interleave_rotary`). q·k is unchanged because q and k are
reordered alike; v and the output projection stay as they are. llama.cpp's `qwen2` and `qwen3` rotate halves
(its "neox" rope), as lmkit does: their rows stay in order.

Types: f16 (matrices in float16), q8_0 and q4_0 (matrices quantized in blocks of 32 by the `gguf` package's
own quantizers; a matrix whose rows are not a multiple of 32 stays f16). Vectors (norms, biases, rope factors)
are float32 in every type, as llama.cpp keeps them.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from ..errors import LmkitError
from ..io import atomic_path, check_file_target
from ..models import gpt_hf
from ..models.attention import llama3_frequencies
from ..models.hf_names import match, to_hf
from .open import open_run
from .record import Run

TYPES = ("f16", "q8_0", "q4_0")
# what export-gguf opens: float weights written by lmkit or a Hugging Face folder; a LoRA run is refused with
# the advice to merge it first (detect.ADVICE), an int8 run with the advice to use its float source
ACCEPT = ("run", "hf", "pruned", "merged")
ARCHS = ("llama", "qwen2", "qwen3")  # lmkit's Hugging Face format = llama.cpp's architecture of the same name
HINTS = {"bert": "GGUF export is for Llama-style causal LMs, not encoders",
         "lstm": "GGUF export is for Llama-style Transformers, not recurrent LMs"}
L = "model.layers.{i}."
HF_TO_GGUF = [  # Hugging Face Llama name -> llama.cpp's name ({i}: the layer, {p}: weight or bias)
    ("model.embed_tokens.weight", "token_embd.weight"),
    (L + "input_layernorm.weight", "blk.{i}.attn_norm.weight"),
    (L + "self_attn.q_proj.{p}", "blk.{i}.attn_q.{p}"),
    (L + "self_attn.k_proj.{p}", "blk.{i}.attn_k.{p}"),
    (L + "self_attn.v_proj.{p}", "blk.{i}.attn_v.{p}"),
    (L + "self_attn.o_proj.{p}", "blk.{i}.attn_output.{p}"),
    (L + "self_attn.q_norm.weight", "blk.{i}.attn_q_norm.weight"),
    (L + "self_attn.k_norm.weight", "blk.{i}.attn_k_norm.weight"),
    (L + "post_attention_layernorm.weight", "blk.{i}.ffn_norm.weight"),
    (L + "mlp.gate_proj.{p}", "blk.{i}.ffn_gate.{p}"),
    (L + "mlp.up_proj.{p}", "blk.{i}.ffn_up.{p}"),
    (L + "mlp.down_proj.{p}", "blk.{i}.ffn_down.{p}"),
    ("model.norm.weight", "output_norm.weight"),
    ("lm_head.weight", "output.weight"),
]
# the byte-level BPE pre-tokenizers llama.cpp knows, by the regex they split with (tokenizer.ggml.pre)
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_SPLIT = LLAMA3_SPLIT.replace(r"\p{N}{1,3}", r"\p{N}")


def gguf_module():
    try:
        import gguf
    except ImportError:
        raise LmkitError("export-gguf needs the `gguf` package: pip install 'lmkit[gguf]' (or pip install gguf)")
    return gguf


def interleave_rotary(w: torch.Tensor, heads: int) -> torch.Tensor:
    """Rows of each head from rotate-half order [x_0 … x_{d/2-1}, y_0 … y_{d/2-1}] (lmkit, Hugging Face) to
    adjacent pairs [x_0, y_0, x_1, y_1, …] (llama.cpp's `llama` rope). `w`: (heads·d, …), a weight or a bias."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def uninterleave_rotary(w: torch.Tensor, heads: int) -> torch.Tensor:
    """The inverse of interleave_rotary (to compare a GGUF file's q/k with lmkit's)."""
    return w.reshape(heads, w.shape[0] // heads // 2, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def gguf_name(hf_name: str) -> str:
    for theirs, ours in HF_TO_GGUF:
        if found := match(hf_name, [theirs]):
            return ours.format(**found[1])
    raise LmkitError(f"export-gguf: no GGUF name for weight '{hf_name}'")


def open_llama(src: str | Path) -> tuple[Run, str]:
    """(the run, its llama.cpp architecture), refused in one line unless it is a float GPT that one holds."""
    run = open_run(src, accept=ACCEPT, families=("gpt",), purpose="export-gguf", hints=HINTS)
    arch = next((a for a in ARCHS if not gpt_hf.misfits(run.config.model, a)), None)
    if arch is None:
        raise LmkitError(f"{run.path}: export-gguf writes Llama-style models (pos = rope, norm = rmsnorm, "
                         f"mlp = swiglu; llama, qwen2, qwen3); this one has "
                         f"{', '.join(gpt_hf.misfits(run.config.model, 'llama'))}")
    return run, arch


def gguf_tensors(run: Run, arch: str = "llama") -> dict[str, torch.Tensor]:
    """llama.cpp's tensor names -> float32 tensors, q and k reordered for the `llama` architecture's rope."""
    m = run.config.model
    sd = {k: v.detach().float().cpu() for k, v in run.model.state_dict().items()}
    heads = {"attn_q": m.n_head, "attn_k": m.n_kv_head or m.n_head} if arch == "llama" else {}
    out = {}
    for name, t in to_hf(gpt_hf.names(m, arch), sd, where="export-gguf").items():
        name = gguf_name(name)
        kind = name.split(".")[-2]
        out[name] = interleave_rotary(t, heads[kind]) if kind in heads else t
    if m.rope_scaling == "llama3":  # llama.cpp divides each frequency by its factor: f' = f / factor
        d = m.head_dim
        f = 1.0 / (m.rope_theta ** (torch.arange(0, d, 2, dtype=torch.float32) / d))
        scaled = llama3_frequencies(f, m.rope_factor, m.rope_low_freq_factor, m.rope_high_freq_factor,
                                    m.rope_original_context)
        out["rope_freqs.weight"] = f / scaled
    return out


def pre_tokenizer_name(spec: dict | None) -> str | None:
    """tokenizer.json's pre_tokenizer -> llama.cpp's name for it (None: not one llama.cpp knows)."""
    spec = spec or {}
    steps = spec.get("pretokenizers", []) if spec.get("type") == "Sequence" else [spec]
    kinds = [s.get("type") for s in steps]
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        return "gpt-2"  # llama.cpp spells GPT-2's pre-tokenizer so (tokenizer.ggml.model stays gpt2)
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits") and steps[1].get("use_regex", True):
        return "smollm"
    if kinds == ["Split", "ByteLevel"] and not steps[1].get("use_regex", True):
        regex = (steps[0].get("pattern") or {}).get("Regex")
        return {LLAMA3_SPLIT: "llama-bpe", QWEN2_SPLIT: "qwen2"}.get(regex)
    return None


def tokenizer_fields(run: Run, n_vocab: int, gguf) -> dict:
    """The tokenizer.ggml.* values of a byte-level BPE tokenizer; anything else is refused."""
    tok = run.tokenizer
    spec = json.loads(tok.hf.to_str())
    model = spec.get("model") or {}
    byte_level = "ByteLevel" in json.dumps(spec.get("pre_tokenizer"))
    if model.get("type") != "BPE" or not byte_level:
        raise LmkitError(f"{run.path}: GGUF export needs a byte-level BPE tokenizer (this one is {tok.kind}); "
                         "train the run with tokenizer = 'bpe'")
    pre = pre_tokenizer_name(spec.get("pre_tokenizer"))
    if pre is None:
        raise LmkitError(f"{run.path}: export-gguf: the tokenizer's pre-tokenizer is not one llama.cpp knows "
                         "(gpt-2, llama-bpe, qwen2, smollm)")
    vocab = dict(model["vocab"])
    types = dict.fromkeys(vocab.values(), gguf.TokenType.NORMAL)
    for added in spec.get("added_tokens", []):
        vocab[added["content"]] = added["id"]
        types[added["id"]] = gguf.TokenType.CONTROL if added.get("special") else gguf.TokenType.USER_DEFINED
    by_id = {i: t for t, i in vocab.items()}
    if len(by_id) > n_vocab or sorted(by_id) != list(range(len(by_id))):
        raise LmkitError(f"{run.path}: export-gguf: the tokenizer's ids are not 0..{n_vocab - 1} "
                         f"({len(by_id)} tokens for a model vocabulary of {n_vocab})")
    tokens = [by_id[i] for i in range(len(by_id))] + [f"[PAD{i}]" for i in range(len(by_id), n_vocab)]
    types = [types[i] for i in range(len(by_id))] + [gguf.TokenType.UNUSED] * (n_vocab - len(by_id))
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    plain, marked = tok.hf.encode("a", add_special_tokens=False).ids, tok.hf.encode("a").ids
    added = marked[0] if len(marked) > len(plain) and marked[1:len(plain) + 1] == plain else None
    # a bos the tokenizer's post-processor puts first (Llama 3) is added by llama.cpp too; without one the
    # end-of-text token stands in as bos, as export-hf writes it, and none is added
    return {"pre": pre, "tokens": tokens, "types": types, "merges": merges, "add_bos": added is not None,
            "bos": tok.eot_id if added is None else added, "eos": tok.eot_id, "pad": tok.pad_id}


def chat_template_text(run: Run) -> str | None:
    """The run's chat template as Jinja (what llama.cpp's and Ollama's chat read), or None when it has none."""
    t = run.chat_template
    if t is None or getattr(t, "special", True) is False:  # the plain-text fallback: no template of its own
        return None
    return t.jinja() if hasattr(t, "jinja") else str(t)


def export_gguf(src: str | Path, out: str | Path, type: str = "f16", overwrite: bool = False) -> dict:
    """Write `out` (one .gguf file); every check runs before it is touched. Returns what was written."""
    if type not in TYPES:
        raise LmkitError(f"export-gguf: unknown type '{type}' ({', '.join(TYPES)})")
    gguf = gguf_module()
    out = check_file_target(out)
    if out.exists() and not overwrite:
        raise LmkitError(f"{out}: already exists (pass --overwrite to replace it)")
    run, arch = open_llama(src)
    m = run.config.model
    tensors = gguf_tensors(run, arch)
    vocab = tensors["token_embd.weight"].shape[0]
    tok = tokenizer_fields(run, vocab, gguf)
    qtype = {"f16": gguf.GGMLQuantizationType.F16, "q8_0": gguf.GGMLQuantizationType.Q8_0,
             "q4_0": gguf.GGMLQuantizationType.Q4_0}[type]
    ftype = {"f16": gguf.LlamaFileType.MOSTLY_F16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
             "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0}[type]
    block = gguf.GGML_QUANT_SIZES[qtype][0]
    with atomic_path(out) as tmp:
        w = gguf.GGUFWriter(str(tmp), arch)
        w.add_name(Path(run.path).name)
        w.add_context_length(m.block_size)
        w.add_embedding_length(m.n_embd)
        w.add_block_count(m.n_layer)
        w.add_feed_forward_length(m.hidden_dim)
        w.add_head_count(m.n_head)
        w.add_head_count_kv(m.n_kv_head or m.n_head)
        if m.head_dim * m.n_head != m.n_embd:
            w.add_key_length(m.head_dim)
            w.add_value_length(m.head_dim)
        w.add_rope_freq_base(float(m.rope_theta))
        w.add_rope_dimension_count(m.head_dim)
        w.add_layer_norm_rms_eps(float(m.norm_eps))
        w.add_vocab_size(vocab)
        w.add_file_type(ftype)
        if type != "f16":
            w.add_quantization_version(gguf.GGML_QUANT_VERSION)
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre(tok["pre"])
        w.add_token_list(tok["tokens"])
        w.add_token_types(tok["types"])
        w.add_token_merges(tok["merges"])
        w.add_add_bos_token(tok["add_bos"])
        for key, add in (("bos", w.add_bos_token_id), ("eos", w.add_eos_token_id), ("pad", w.add_pad_token_id)):
            if tok[key] is not None:
                add(tok[key])
        if (template := chat_template_text(run)) is not None:
            w.add_chat_template(template)
        types = {}
        for name, t in tensors.items():
            a = t.numpy()
            if a.ndim < 2:
                types[name] = "F32"
                w.add_tensor(name, a)
            elif qtype == gguf.GGMLQuantizationType.F16 or a.shape[-1] % block:
                types[name] = "F16"
                w.add_tensor(name, a.astype("float16"))
            else:
                types[name] = qtype.name
                w.add_tensor(name, gguf.quants.quantize(a, qtype), raw_dtype=qtype)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
    return {"path": str(out), "bytes": os.path.getsize(out), "type": type, "arch": arch, "tensors": types,
            "vocab": vocab, "pre": tok["pre"], "chat_template": template is not None}
