"""LoRA adapters in PEFT's format, both ways, on tiny random Hugging Face models (no download):

    lmkit -> PEFT   finetune sft --lora-rank writes <out>/peft, which peft.PeftModel.from_pretrained loads onto the
                    transformers base with the same logits as lmkit's LoRA run
    PEFT -> lmkit   a folder made by peft (get_peft_model + save_pretrained) loads in lmkit, merged onto its base
                    (a Hugging Face folder or its lmkit import), with the same logits as PEFT's model
and what lmkit does not support (DoRA, biases, modules_to_save, ...) is refused in one line.
"""
import json
import shutil

import pytest
import torch

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

import lmkit  # noqa: E402
from lmkit.cli import main  # noqa: E402
from lmkit.finetune.sft import SFTConfig, finetune_sft  # noqa: E402
from lmkit.tokenizer import Tokenizer  # noqa: E402
from test_chat_jinja import FAMILIES as TEMPLATES, hf_folder  # noqa: E402
from test_hf_families import jitter_vectors  # noqa: E402

SMALL = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             max_position_embeddings=64, initializer_range=0.1)
MODELS = {"qwen2": ("Qwen2Config", dict(tie_word_embeddings=True)),
          "llama": ("LlamaConfig", dict(tie_word_embeddings=False)),
          "gpt2": ("GPT2Config", None)}


def make(path, family: str):
    """A tiny random model of the family with a ChatML template and byte-level BPE tokenizer, as a folder."""
    folder = hf_folder(path, **TEMPLATES["chatml"])
    tok = Tokenizer.load(folder)
    torch.manual_seed(0)
    cls, settings = MODELS[family]
    if settings is None:
        cfg = transformers.GPT2Config(vocab_size=tok.vocab_size, n_positions=64, n_embd=32, n_layer=2, n_head=4)
    else:
        cfg = getattr(transformers, cls)(**SMALL, **settings, vocab_size=tok.vocab_size)
    model = jitter_vectors(transformers.AutoModelForCausalLM.from_config(cfg).eval())
    model.save_pretrained(folder)
    return folder, tok


def batch(vocab, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (2, 9), generator=g)
    mask = torch.ones_like(ids)
    mask[1, :4] = 0  # left padding
    return ids, mask


def theirs(model, ids, mask):
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0)).logits


def ours(lm, ids, mask):
    with torch.no_grad():
        return lm.model(ids, attention_mask=mask)[0]


def gap(a, b, mask):
    return (a - b).abs()[mask.bool()].max().item()


@pytest.mark.parametrize("family", ["qwen2", "llama"])
def test_sft_lora_writes_an_adapter_that_peft_loads_with_the_same_logits(tmp_path, family):
    folder, tok = make(tmp_path / "base", family)
    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps({"instruction": f"say {w}", "output": w}) + "\n"
                            for w in ["Hello", "there", "world", "brief"] * 4), encoding="utf-8")
    out = tmp_path / "lora"
    finetune_sft(SFTConfig(base=str(folder), data=str(data), out=str(out), lora_rank=4, lora_alpha=4.0,
                           progress=False, overrides=["max_iters=4", "eval_interval=4", "eval_iters=1", "batch_size=4",
                                                      "warmup_iters=0", "learning_rate=0.05", "dtype=float32"]))
    config = json.loads((out / "peft" / "adapter_config.json").read_text())
    assert (config["peft_type"], config["r"], config["lora_alpha"], config["bias"]) == ("LORA", 4, 4, "none")
    assert config["target_modules"] == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    assert config["base_model_name_or_path"] == str(folder.resolve())
    base = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    ids, mask = batch(tok.vocab_size)
    before = theirs(base, ids, mask)
    tuned = peft.PeftModel.from_pretrained(base, out / "peft").eval()
    from safetensors.torch import load_file
    written = {k.replace(".weight", ".default.weight") for k in load_file(out / "peft" / "adapter_model.safetensors")}
    assert written == {k for k in tuned.state_dict() if ".lora_" in k}  # every adapter PEFT made is filled
    after, lm = theirs(tuned, ids, mask), lmkit.load(out)  # lmkit's own LoRA run, merged on read
    assert gap(before, after, mask) > 1e-2  # the adapters moved the model
    assert gap(ours(lm, ids, mask), after, mask) <= 1e-4
    assert gap(ours(lmkit.load(out / "peft"), ids, mask), after, mask) <= 1e-4  # and lmkit reads it back


PEFT_CASES = {  # family: LoraConfig settings
    "qwen2": dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "o_proj", "gate_proj", "down_proj"]),
    "llama": dict(r=3, lora_alpha=5, use_rslora=True, target_modules=["k_proj", "up_proj", "lm_head"]),
    "gpt2": dict(r=2, lora_alpha=4, target_modules=["c_attn", "c_proj", "c_fc"], fan_in_fan_out=True),
}


def peft_adapter(tmp_path, family):
    """A folder that peft wrote, its adapters random (not zero, so that they count), and the PEFT model."""
    folder, tok = make(tmp_path / "base", family)
    model = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    tuned = peft.get_peft_model(model, peft.LoraConfig(**PEFT_CASES[family], task_type="CAUSAL_LM")).eval()
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in tuned.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    tuned.save_pretrained(tmp_path / "adapter")
    return folder, tok, tuned, tmp_path / "adapter"


@pytest.mark.parametrize("family", PEFT_CASES)
def test_lmkit_reads_an_adapter_made_by_peft(tmp_path, family, capsys):
    folder, tok, tuned, adapter = peft_adapter(tmp_path, family)
    ids, mask = batch(tok.vocab_size, seed=3)
    want = theirs(tuned, ids, mask)
    with tuned.disable_adapter():
        assert gap(theirs(tuned, ids, mask), want, mask) > 1e-2
    lm = lmkit.load(adapter)
    assert gap(ours(lm, ids, mask), want, mask) <= 1e-4
    # onto an lmkit run of the same base: base_model_name_or_path names the import
    assert main(["import-hf", str(folder), "--out", str(tmp_path / "run")]) == 0
    f = adapter / "adapter_config.json"
    f.write_text(json.dumps({**json.loads(f.read_text()), "base_model_name_or_path": str(tmp_path / "run")}))
    assert gap(ours(lmkit.load(adapter), ids, mask), want, mask) <= 1e-4
    assert main(["generate", str(adapter), "--prompt", "Hello", "--max-new-tokens", "3"]) == 0
    # import-hf of the adapter: a plain run, the adapter folded in
    assert main(["import-hf", str(adapter), "--out", str(tmp_path / "merged")]) == 0
    assert gap(ours(lmkit.load(tmp_path / "merged"), ids, mask), want, mask) <= 1e-4


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    return peft_adapter(tmp_path_factory.mktemp("peft"), "qwen2")[3]


@pytest.mark.parametrize("change,message", [
    ({"use_dora": True}, "DoRA (use_dora) is not supported"),
    ({"bias": "all"}, "bias 'all' is not supported (none: adapters only)"),
    ({"modules_to_save": ["lm_head"]}, "whole modules trained beside the adapters (modules_to_save) is not supported"),
    ({"peft_type": "IA3"}, "peft_type 'IA3' is not supported (LORA)"),
    ({"init_lora_weights": "pissa"}, "init_lora_weights 'pissa' is not supported"),
    ({"base_model_name_or_path": "/nowhere/base"}, "base_model_name_or_path '/nowhere/base' is not a folder here"),
])
def test_what_lmkit_does_not_support_is_refused_in_one_line(made, tmp_path, change, message, capsys):
    adapter = shutil.copytree(made, tmp_path / "adapter")
    f = adapter / "adapter_config.json"
    f.write_text(json.dumps({**json.loads(f.read_text()), **change}))
    capsys.readouterr()
    assert main(["generate", str(adapter), "--prompt", "Hello", "--max-new-tokens", "2"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and message in err, err


def test_an_adapter_lmkit_cannot_map_is_refused(tmp_path, capsys):
    """LoRA on the output head of a model whose head is its embedding matrix: no lmkit weight of its own."""
    folder, tok = make(tmp_path / "base", "qwen2")
    model = transformers.AutoModelForCausalLM.from_pretrained(folder)
    peft.get_peft_model(model, peft.LoraConfig(r=2, target_modules=["lm_head"])).save_pretrained(tmp_path / "a")
    capsys.readouterr()
    assert main(["generate", str(tmp_path / "a"), "--prompt", "Hello", "--max-new-tokens", "2"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot be mapped onto lmkit's model" in err and "lm_head" in err, err
