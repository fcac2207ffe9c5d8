"""export-gguf: a tiny Llama-style run written as GGUF and read back with the `gguf` package's own reader."""
import pytest
import torch

gguf = pytest.importorskip("gguf")

from lmkit import Tokenizer  # noqa: E402
from lmkit.chat import TOKENS  # noqa: E402
from lmkit.cli import main  # noqa: E402
from lmkit.config import Config  # noqa: E402
from lmkit.errors import LmkitError  # noqa: E402
from lmkit.models import build_model  # noqa: E402
from lmkit.runs import save_run  # noqa: E402
from lmkit.runs.gguf import export_gguf, interleave_rotary, uninterleave_rotary  # noqa: E402

TEXT = "The quick brown fox jumps over the lazy dog. 敏捷的棕色狐狸跳过了懒狗。" * 30
LLAMA = dict(pos="rope", norm="rmsnorm", mlp="swiglu", bias=False)


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.train([TEXT], kind="bpe", vocab_size=300, special_tokens=("<|endoftext|>", *TOKENS.markers[:3],
                                                                                    TOKENS.end))


def make_run(path, tok, template=TOKENS, **model):
    cfg = Config()
    m = cfg.model
    m.vocab_size, m.block_size, m.n_layer, m.n_head, m.n_kv_head, m.n_embd = tok.vocab_size, 64, 2, 4, 2, 64
    m.mlp_hidden, m.rope_theta, m.norm_eps, m.tie_embeddings = 96, 5000.0, 1e-5, False
    for k, v in {**LLAMA, **model}.items():
        setattr(m, k, v)
    torch.manual_seed(0)
    net = build_model(m).eval()
    with torch.no_grad():  # norm gains that are not all ones, so a mis-mapped norm shows
        for name, p in net.named_parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.1)
        for block in net.h:  # sharp attention, so that q/k in the wrong rotary order changes the logits
            block.attn.qkv.weight[:(m.n_head + m.n_kv_head) * m.head_dim].mul_(6.0)
    return save_run(path, cfg, tok, model=net, chat_template=template), net


def read(path):
    r = gguf.GGUFReader(str(path))
    meta = {k: f.contents() for k, f in r.fields.items() if not k.startswith("GGUF.")}
    tensors = {t.name: t for t in r.tensors}
    return meta, tensors


def values(t) -> torch.Tensor:
    """A GGUF tensor as float32, in PyTorch's (rows, cols) order."""
    a = gguf.quants.dequantize(t.data, t.tensor_type)
    return torch.from_numpy(a.copy()).float().reshape(tuple(reversed([int(n) for n in t.shape])))


def reference_logits(w: dict, ids: torch.Tensor, meta: dict) -> torch.Tensor:
    """llama.cpp's forward pass written from the GGUF file alone: `llama` ropes adjacent pairs (2i, 2i+1), `qwen2`
    and `qwen3` halves (i, i + d/2); q/k/v biases and per-head q/k norms where the file has them."""
    arch = meta["general.architecture"]
    L, H, KV = (meta[f"{arch}.{k}"] for k in ("block_count", "attention.head_count", "attention.head_count_kv"))
    eps, base = meta[f"{arch}.attention.layer_norm_rms_epsilon"], meta[f"{arch}.rope.freq_base"]
    norm = lambda x, g: x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * g  # noqa: E731
    x = w["token_embd.weight"][ids]
    T = ids.numel()
    d = w["blk.0.attn_q.weight"].shape[0] // H
    freqs = base ** (-torch.arange(0, d, 2) / d) / w.get("rope_freqs.weight", 1.0)  # llama.cpp: f / factor
    angle = torch.arange(T)[:, None] * freqs  # (T, d/2)

    def rope(v):  # (T, heads, d): rotate each adjacent pair (llama) or each (i, i + d/2) pair (neox)
        a, b = (v[..., 0::2], v[..., 1::2]) if arch == "llama" else v.chunk(2, dim=-1)
        c, s = angle.cos()[:, None], angle.sin()[:, None]
        turned = (a * c - b * s, b * c + a * s)
        return torch.stack(turned, dim=-1).flatten(-2) if arch == "llama" else torch.cat(turned, dim=-1)

    for i in range(L):
        p = lambda n: w[f"blk.{i}.{n}.weight"]  # noqa: E731
        h = norm(x, p("attn_norm"))
        q, k, v = (h @ p(n).T + w.get(f"blk.{i}.{n}.bias", 0.0) for n in ("attn_q", "attn_k", "attn_v"))
        q, k, v = q.view(T, H, d), k.view(T, KV, d), v.view(T, KV, d)
        if f"blk.{i}.attn_q_norm.weight" in w:
            q, k = norm(q, p("attn_q_norm")), norm(k, p("attn_k_norm"))
        q, k = rope(q), rope(k)
        k, v = k.repeat_interleave(H // KV, 1), v.repeat_interleave(H // KV, 1)
        att = torch.einsum("thd,shd->hts", q, k) / d ** 0.5
        att = att.masked_fill(torch.ones(T, T).triu(1).bool(), float("-inf")).softmax(-1)
        x = x + torch.einsum("hts,shd->thd", att, v).reshape(T, H * d) @ p("attn_output").T
        h = norm(x, p("ffn_norm"))
        x = x + (torch.nn.functional.silu(h @ p("ffn_gate").T) * (h @ p("ffn_up").T)) @ p("ffn_down").T
    return norm(x, w["output_norm.weight"]) @ w.get("output.weight", w["token_embd.weight"]).T


def test_rotary_reordering_is_a_per_head_interleave():
    w = torch.arange(8.0).reshape(8, 1)  # two heads of 4 rows: [x0 x1 y0 y1] each
    assert interleave_rotary(w, 2).flatten().tolist() == [0, 2, 1, 3, 4, 6, 5, 7]
    assert torch.equal(uninterleave_rotary(interleave_rotary(w, 2), 2), w)


def test_f16_metadata_tensors_and_logits(tmp_path, tok):
    run, net = make_run(tmp_path / "run", tok)
    r = export_gguf(run, tmp_path / "m.gguf", "f16")
    meta, tensors = read(r["path"])
    expect = {"general.architecture": "llama", "llama.block_count": 2, "llama.context_length": 64,
              "llama.embedding_length": 64, "llama.feed_forward_length": 96, "llama.attention.head_count": 4,
              "llama.attention.head_count_kv": 2, "llama.rope.dimension_count": 16, "llama.vocab_size": tok.vocab_size,
              "general.file_type": 1, "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "gpt-2",
              "tokenizer.ggml.eos_token_id": tok.eot_id, "tokenizer.ggml.bos_token_id": tok.eot_id,
              "tokenizer.ggml.add_bos_token": False}
    assert {k: meta.get(k) for k in expect} == expect
    assert meta["llama.rope.freq_base"] == pytest.approx(5000.0)
    assert meta["llama.attention.layer_norm_rms_epsilon"] == pytest.approx(1e-5)
    assert len(meta["tokenizer.ggml.tokens"]) == tok.vocab_size == len(meta["tokenizer.ggml.token_type"])
    assert meta["tokenizer.ggml.tokens"][tok.eot_id] == "<|endoftext|>"
    assert meta["tokenizer.ggml.token_type"][tok.eot_id] == gguf.TokenType.CONTROL
    assert len(meta["tokenizer.ggml.merges"]) > 0 and all(" " in m for m in meta["tokenizer.ggml.merges"])
    assert "<|assistant|>" in meta["tokenizer.chat_template"]

    per_layer = {"attn_norm": [64], "attn_q": [64, 64], "attn_k": [64, 32], "attn_v": [64, 32],
                 "attn_output": [64, 64], "ffn_norm": [64], "ffn_gate": [64, 96], "ffn_up": [64, 96],
                 "ffn_down": [96, 64]}
    shapes = {"token_embd.weight": [64, tok.vocab_size], "output_norm.weight": [64],
              "output.weight": [64, tok.vocab_size],
              **{f"blk.{i}.{n}.weight": s for i in range(2) for n, s in per_layer.items()}}
    assert {n: [int(d) for d in t.shape] for n, t in tensors.items()} == shapes  # GGML order: ne0 = columns
    assert {t.tensor_type.name for n, t in tensors.items() if len(t.shape) == 2} == {"F16"}
    assert {t.tensor_type.name for n, t in tensors.items() if len(t.shape) == 1} == {"F32"}

    w = {n: values(t) for n, t in tensors.items()}
    sd = net.state_dict()
    q, k, v = sd["h.1.attn.qkv.weight"].split([64, 32, 32])
    gate, up = sd["h.1.mlp.fc.weight"].chunk(2)
    for ours, name in [(uninterleave_rotary(w["blk.1.attn_q.weight"], 4), q),
                       (uninterleave_rotary(w["blk.1.attn_k.weight"], 2), k), (w["blk.1.attn_v.weight"], v),
                       (w["blk.1.ffn_gate.weight"], gate), (w["blk.1.ffn_up.weight"], up),
                       (w["blk.1.ffn_down.weight"], sd["h.1.mlp.proj.weight"]),
                       (w["token_embd.weight"], sd["wte.weight"]), (w["output.weight"], sd["lm_head.weight"])]:
        assert torch.allclose(ours, name, rtol=1e-3, atol=1e-4)  # fp16 rounding
    assert torch.equal(w["blk.1.ffn_norm.weight"], sd["h.1.ln_2.weight"])  # vectors stay float32

    ids = torch.tensor(tok.encode(TEXT[:60])[:24])
    with torch.no_grad():
        ours = net(ids[None])[0][0]
    assert (reference_logits(w, ids, meta) - ours).abs().max() < 5e-3  # unpermuted q/k: ~0.15


@pytest.mark.parametrize("kind, tol", [("q8_0", 0.02), ("q4_0", 0.3)])
def test_quantized_tensors_dequantize_close(tmp_path, tok, kind, tol):
    run, net = make_run(tmp_path / "run", tok, tie_embeddings=True)
    r = export_gguf(run, tmp_path / "m.gguf", kind)
    meta, tensors = read(r["path"])
    assert meta["general.file_type"] == {"q8_0": 7, "q4_0": 2}[kind]
    assert "output.weight" not in tensors  # tied: llama.cpp reuses token_embd
    assert tensors["blk.0.ffn_down.weight"].tensor_type.name == kind.upper()
    sd = net.state_dict()
    q = uninterleave_rotary(values(tensors["blk.0.attn_q.weight"]), 4)
    for ours, theirs in [(q, sd["h.0.attn.qkv.weight"][:64]), (values(tensors["token_embd.weight"]), sd["wte.weight"]),
                         (values(tensors["blk.0.ffn_down.weight"]), sd["h.0.mlp.proj.weight"])]:
        scale = theirs.abs().max()
        assert (ours - theirs).abs().max() <= tol * scale


def test_llama3_rope_and_own_head_size(tmp_path, tok):
    run, net = make_run(tmp_path / "run", tok, head_size=32, rope_scaling="llama3", rope_factor=8.0,
                        rope_low_freq_factor=1.0, rope_high_freq_factor=4.0, rope_original_context=16)
    meta, tensors = read(export_gguf(run, tmp_path / "m.gguf")["path"])
    assert (meta["llama.attention.key_length"], meta["llama.attention.value_length"]) == (32, 32)
    assert [int(n) for n in tensors["blk.0.attn_q.weight"].shape] == [64, 128]
    factors = values(tensors["rope_freqs.weight"])
    assert factors.shape == (16,) and factors.min() >= 1.0 and factors[-1] == pytest.approx(8.0)
    w = {n: values(t) for n, t in tensors.items()}
    ids = torch.tensor(tok.encode(TEXT[:200])[:60])
    with torch.no_grad():
        ours = net(ids[None])[0][0]
    assert (reference_logits(w, ids, meta) - ours).abs().max() < 5e-3


@pytest.mark.parametrize("arch, options", [("qwen2", dict(qkv_bias=True)),
                                           ("qwen3", dict(qk_norm=True, head_size=32, tie_embeddings=True))])
def test_qwen2_and_qwen3_get_their_own_architecture(tmp_path, tok, arch, options):
    """Biases on q/k/v (qwen2) and per-head q/k norms (qwen3), rows in order: llama.cpp ropes halves there."""
    run, net = make_run(tmp_path / "run", tok, **options)  # biases and norm gains random, q/k sharp
    r = export_gguf(run, tmp_path / "m.gguf")
    meta, tensors = read(r["path"])
    assert r["arch"] == meta["general.architecture"] == arch and meta[f"{arch}.block_count"] == 2
    assert ("blk.0.attn_q.bias" in tensors) == (arch == "qwen2") and "blk.0.attn_output.bias" not in tensors
    assert ("blk.1.attn_k_norm.weight" in tensors) == (arch == "qwen3")
    w = {n: values(t) for n, t in tensors.items()}
    q_rows = 4 * net.config.head_dim
    assert torch.allclose(w["blk.0.attn_q.weight"], net.state_dict()["h.0.attn.qkv.weight"][:q_rows], atol=1e-3)
    ids = torch.tensor(tok.encode(TEXT[:60])[:24])
    with torch.no_grad():
        ours = net(ids[None])[0][0]
    assert (reference_logits(w, ids, meta) - ours).abs().max() < 5e-3


def test_refusals_are_one_line(tmp_path, tok, capsys):
    gpt2, _ = make_run(tmp_path / "gpt2", tok, pos="learned", norm="layernorm", mlp="gelu", bias=True)
    assert main(["export-gguf", str(gpt2), "--out", str(tmp_path / "a.gguf")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err and "pos = learned" in err
    char = Tokenizer.train([TEXT], kind="char")
    run, _ = make_run(tmp_path / "char", char, template=None)
    assert main(["export-gguf", str(run), "--out", str(tmp_path / "b.gguf")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err and "byte-level BPE" in err
    assert not (tmp_path / "a.gguf").exists() and not (tmp_path / "b.gguf").exists()

    ok, _ = make_run(tmp_path / "ok", tok)
    out = tmp_path / "c.gguf"
    assert main(["export-gguf", str(ok), "--out", str(out), "--type", "q8_0"]) == 0
    assert "wrote" in capsys.readouterr().out
    assert main(["export-gguf", str(ok), "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["export-gguf", str(ok), "--out", str(out), "--overwrite"]) == 0
    with pytest.raises(LmkitError, match="unknown type 'q2_k'"):
        export_gguf(ok, tmp_path / "d.gguf", "q2_k")
