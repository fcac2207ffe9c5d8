"""Today's small open model families through Hugging Face, exactly: Qwen2 / Qwen2.5 (tied and untied), Qwen3,
Llama 3 (llama3 rope scaling, tied), Mistral (sliding window), SmolLM2- and TinyLlama-like Llamas.

Each family: a tiny random model made by transformers (no download) is read by lmkit with the same logits on a
padded batch, the same greedy tokens with the KV cache, and `import-hf` then `export-hf` gives a folder that
transformers loads with the same logits. GPT-2, Llama 2 and BERT are in test_hf.py.
"""
import json
import re

import pytest
import torch

transformers = pytest.importorskip("transformers")

import lmkit  # noqa: E402
from lmkit import LmkitError, Tokenizer  # noqa: E402
from lmkit.cli import main  # noqa: E402
from lmkit.engine import generate_ids  # noqa: E402
from lmkit.models.attention import llama3_frequencies  # noqa: E402
from lmkit.runs.hf_export import export_hf  # noqa: E402
from lmkit.sampling import SamplingConfig  # noqa: E402

TEXT = "The quick brown fox jumps over the lazy dog. 敏捷的棕色狐狸跳过了懒狗。" * 30
SMALL = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             max_position_embeddings=128, initializer_range=0.1)  # logits of order 1, so a slip shows
LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 64}  # with theta 1e4, head 16: all three bands in use
FAMILIES = {  # name: (config class, its settings, the format export-hf writes)
    "qwen2-tied": ("Qwen2Config", dict(tie_word_embeddings=True, rope_theta=1e6), "qwen2"),
    "qwen2-untied": ("Qwen2Config", dict(tie_word_embeddings=False, num_key_value_heads=1), "qwen2"),
    "qwen3": ("Qwen3Config", dict(head_dim=32, tie_word_embeddings=True, rope_theta=1e6), "qwen3"),
    "llama3": ("LlamaConfig", dict(rope_scaling=LLAMA3_ROPE, rope_theta=1e4, tie_word_embeddings=True), "llama"),
    "mistral": ("MistralConfig", dict(sliding_window=5, tie_word_embeddings=False), "mistral"),
    "smollm2": ("LlamaConfig", dict(tie_word_embeddings=True, rope_theta=1e5, rms_norm_eps=1e-5,
                                    num_key_value_heads=1), "llama"),
    "tinyllama": ("LlamaConfig", dict(tie_word_embeddings=False, rms_norm_eps=1e-5, num_key_value_heads=2), "llama"),
}


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.train([TEXT], kind="bpe", vocab_size=300)


def jitter_vectors(model):
    """Norm gains and biases moved off their initial ones and zeros (in place), so a mis-mapped one shows."""
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.1)
    return model


def make(family: str, path, tok):
    """The family's tiny model, saved with the tokenizer as a Hugging Face folder; non-trivial norm gains and
    biases, so a mis-mapped one shows."""
    cls, settings, _ = FAMILIES[family]
    torch.manual_seed(0)
    cfg = getattr(transformers, cls)(**{**SMALL, **settings}, vocab_size=tok.vocab_size + 20,
                                     bos_token_id=tok.eot_id, eos_token_id=tok.eot_id)
    model = jitter_vectors(transformers.AutoModelForCausalLM.from_config(cfg).eval())
    model.save_pretrained(path)
    tok.save(path / "tokenizer.json")
    return model


def padded_batch(vocab, lengths=(12, 7, 3), left=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    T = max(lengths)
    ids = torch.randint(0, vocab, (len(lengths), T), generator=g)
    mask = torch.zeros(len(lengths), T, dtype=torch.long)
    for i, n in enumerate(lengths):
        if left:
            mask[i, T - n:] = 1
        else:
            mask[i, :n] = 1
    ids[mask == 0] = 0
    return ids, mask


def their_logits(model, ids, mask):
    """transformers on a padded batch: positions count real tokens (as its generate() does for left padding)."""
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0)).logits


def worst(ours, theirs, mask):
    return (ours - theirs).abs()[mask.bool()].max().item()


@pytest.mark.parametrize("family", FAMILIES)
def test_family_matches_transformers_imports_generates_and_exports(tmp_path, tok, family):
    theirs = make(family, tmp_path / "hf", tok)
    lm = lmkit.load(tmp_path / "hf")
    V = tok.vocab_size
    # (a) logits on a left- and a right-padded batch, real positions only
    for left in (True, False):
        ids, mask = padded_batch(V, left=left)
        with torch.no_grad():
            ours = lm.model(ids, attention_mask=mask)[0]
        assert worst(ours, their_logits(theirs, ids, mask), mask) <= 1e-4, (family, left)
    # (b) greedy tokens with lmkit's KV cache, two prompts of different lengths in one batch
    prompts = [tok.encode("The quick brown"), tok.encode("lazy dog. 敏捷的棕色")]
    L = max(map(len, prompts))
    ids = torch.tensor([[0] * (L - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (L - len(p)) + [1] * len(p) for p in prompts])
    with torch.no_grad():
        ref = theirs.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=24, min_new_tokens=24,
                              pad_token_id=0)[:, L:]
    ours = torch.stack(list(generate_ids(lm.model, prompts, SamplingConfig(max_new_tokens=24, temperature=0))), 1)
    assert ours.tolist() == ref.tolist(), family
    # (c) import-hf, export-hf: transformers loads the result, every weight in place, the same logits
    assert main(["import-hf", str(tmp_path / "hf"), "--out", str(tmp_path / "run")]) == 0
    assert main(["export-hf", str(tmp_path / "run"), "--out", str(tmp_path / "back")]) == 0
    assert json.loads((tmp_path / "back" / "config.json").read_text())["model_type"] == FAMILIES[family][2]
    back, info = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "back", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    ids, mask = padded_batch(V, seed=1)
    assert worst(their_logits(back.eval(), ids, mask), their_logits(theirs, ids, mask), mask) <= 1e-4
    with torch.no_grad():
        assert torch.equal(lmkit.load(tmp_path / "run").model(ids, attention_mask=mask)[0],
                           lm.model(ids, attention_mask=mask)[0])


def test_the_options_each_family_sets(tmp_path, tok):
    seen = {}
    for family in ("qwen2-tied", "qwen3", "llama3", "mistral"):
        make(family, tmp_path / family, tok)
        seen[family] = lmkit.load(tmp_path / family).config.model
    assert seen["qwen2-tied"].qkv_bias and not seen["qwen2-tied"].bias and seen["qwen2-tied"].tie_embeddings
    assert seen["qwen3"].qk_norm and seen["qwen3"].head_size == 32 and seen["qwen3"].norm_eps == 1e-6
    m = seen["llama3"]
    assert (m.rope_scaling, m.rope_factor, m.rope_original_context, m.tie_embeddings) == ("llama3", 8.0, 64, True)
    assert seen["mistral"].sliding_window == 5
    f = 1.0 / (1e4 ** (torch.arange(0, 16, 2) / 16))  # the remapping keeps, blends and divides
    g = llama3_frequencies(f, 8.0, 1.0, 4.0, 64)
    assert g[0] == f[0] and torch.allclose(g[-1], f[-1] / 8) and f[1] / 8 < g[1] < f[1]


@pytest.mark.parametrize("change,message", [
    ({"model_type": "gemma2"}, "model_type 'gemma2' is not supported (supported: gpt2, llama, qwen2, qwen3, mistral, "
                               "bert)"),
    ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}, "rope_parameters": None},
     "rope scaling 'yarn' is not supported (supported: default, llama3)"),
    ({"use_sliding_window": True}, "use_sliding_window = true is not supported for qwen2"),
    ({"hidden_act": "gelu"}, "hidden_act 'gelu' is not supported"),
    ({"sliding_window": 0, "model_type": "mistral"}, "model.sliding_window must be positive (got 0)"),
])
def test_unsupported_options_are_refused_in_one_line(tmp_path, tok, change, message, capsys):
    make("qwen2-untied", tmp_path / "hf", tok)
    f = tmp_path / "hf" / "config.json"
    f.write_text(json.dumps({**json.loads(f.read_text()), **change}))
    with pytest.raises(LmkitError, match="config.json: " + re.escape(message)):
        lmkit.load(tmp_path / "hf")
    capsys.readouterr()
    assert main(["import-hf", str(tmp_path / "hf"), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and not (tmp_path / "run").exists()


def test_import_streams_shards_and_keeps_their_dtype(tmp_path, tok):
    from safetensors.torch import load_file
    make("qwen3", tmp_path / "hf", tok).to(torch.bfloat16).save_pretrained(tmp_path / "sharded", max_shard_size="60KB")
    tok.save(tmp_path / "sharded" / "tokenizer.json")
    index = json.loads((tmp_path / "sharded" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1  # several shard files
    assert main(["import-hf", str(tmp_path / "sharded"), "--out", str(tmp_path / "run")]) == 0
    streamed = load_file(tmp_path / "run" / "model.safetensors")
    whole = lmkit.load(tmp_path / "sharded").model.state_dict()  # read whole, in memory, into an fp32 model
    assert {v.dtype for v in streamed.values()} == {torch.bfloat16} and "lm_head.weight" not in streamed
    assert all(torch.equal(v.float(), whole[k]) for k, v in streamed.items())
    assert set(whole) - set(streamed) == {"lm_head.weight"}  # tied: stored once


LLAMA = dict(pos="rope", norm="rmsnorm", mlp="swiglu", bias=False)
NATIVE = {  # lmkit runs with the new options, and the format export-hf picks for them
    "qkv-bias": (dict(LLAMA, n_kv_head=2, qkv_bias=True, tie_embeddings=False), "qwen2"),
    "qk-norm-head-size": (dict(LLAMA, n_kv_head=2, qk_norm=True, head_size=16), "qwen3"),
    "sliding-window": (dict(LLAMA, n_kv_head=1, sliding_window=4), "mistral"),
    "llama3-rope": (dict(LLAMA, rope_scaling="llama3", rope_original_context=8, rope_theta=1e4), "llama"),
}


@pytest.mark.parametrize("name", NATIVE)
def test_a_run_with_the_new_options_exports_to_the_format_that_holds_them(tmp_path, tok, name):
    from lmkit.config import Config
    from lmkit.models import build_model
    from lmkit.runs import save_run
    options, fmt = NATIVE[name]
    cfg = Config()
    for k, v in dict(vocab_size=tok.vocab_size, block_size=64, n_layer=2, n_head=4, n_embd=32, **options).items():
        setattr(cfg.model, k, v)
    torch.manual_seed(1)
    net = build_model(cfg.model).eval()
    with torch.no_grad():  # non-trivial norm gains and biases
        for p in net.parameters():
            p.add_(torch.randn_like(p) * (0.1 if p.dim() == 1 else 0.05))
    out = export_hf(save_run(tmp_path / "run", cfg, tok, model=net), tmp_path / "hf")
    assert json.loads((out / "config.json").read_text())["model_type"] == fmt
    theirs, info = transformers.AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    ids, mask = padded_batch(tok.vocab_size, seed=2)
    with torch.no_grad():
        assert worst(net(ids, attention_mask=mask)[0], their_logits(theirs.eval(), ids, mask), mask) <= 1e-4


def test_export_names_the_format_that_holds_a_model(tmp_path, tok):
    make("qwen2-untied", tmp_path / "hf", tok)
    with pytest.raises(LmkitError, match=r"the llama format cannot hold qkv_bias = True; this model exports as qwen2"):
        export_hf(tmp_path / "hf", tmp_path / "out", fmt="llama")


def test_the_rest_of_the_path_works_on_an_imported_qwen2(tmp_path, tok, monkeypatch):
    """quantize, evaluate, serve, finetune sft (full and LoRA) and explain on an imported Qwen2-like run."""
    import uvicorn
    from fastapi.testclient import TestClient
    from lmkit.serve import create_app
    make("qwen2-tied", tmp_path / "hf", tok)
    run, text, chat = tmp_path / "run", tmp_path / "t.txt", tmp_path / "chat.jsonl"
    assert main(["import-hf", str(tmp_path / "hf"), "--out", str(run)]) == 0
    text.write_text(TEXT[:600], encoding="utf-8")
    chat.write_text("".join(json.dumps({"instruction": f"say {w}", "output": w}) + "\n"
                            for w in ["fox", "dog", "quick", "lazy"] * 5), encoding="utf-8")
    assert main(["quantize", str(run), "--out", str(tmp_path / "int8")]) == 0
    assert len(lmkit.load(tmp_path / "int8").generate("The quick", max_new_tokens=5, temperature=0)) > 0
    assert main(["evaluate", str(run), "--data", str(text), "--json", str(tmp_path / "e.json")]) == 0
    assert json.loads((tmp_path / "e.json").read_text())["perplexity"] > 1
    assert main(["explain", str(run), "The quick brown fox", "--out", str(tmp_path / "x.html")]) == 0
    assert (tmp_path / "x.html").stat().st_size > 1000
    sft = ["--data", str(chat), "--set", "max_iters=2", "eval_interval=2", "batch_size=2", "--quiet"]
    assert main(["finetune", "sft", "--base", str(run), "--out", str(tmp_path / "full"), *sft]) == 0
    assert main(["finetune", "sft", "--base", str(run), "--out", str(tmp_path / "lora"), "--lora-rank", "2",
                 *sft]) == 0
    tuned = lmkit.load(tmp_path / "lora")
    assert tuned.config.model.qkv_bias and len(tuned.generate("say fox", max_new_tokens=3, temperature=0)) > 0
    monkeypatch.setattr(uvicorn.Server, "run", lambda *a, **kw: None)
    assert main(["serve", str(run)]) == 0  # loads and builds the app
    with TestClient(create_app(lmkit.load(run))) as client:
        r = client.post("/v1/completions", json={"model": "run", "prompt": "The quick", "max_tokens": 4,
                                                 "temperature": 0})
    assert r.status_code == 200 and r.json()["choices"][0]["text"] is not None


def test_the_cli_offers_every_export_format():
    from lmkit.cli.convert import EXPORT_FORMATS
    from lmkit.models.gpt_hf import FORMATS
    assert EXPORT_FORMATS == ["auto", *FORMATS, "bert"]
