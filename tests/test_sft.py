"""Chat template, SFT data (loss masks, packing boundaries), LoRA, and fine-tuning through the Trainer."""
import importlib.util
import json
import random

import pytest
import torch

import lmkit
from lmkit.chat import PLAIN, TOKENS, add_role_tokens, check_messages
from lmkit.config import ModelConfig
from lmkit.errors import LmkitError
from lmkit.models import lora
from lmkit.finetune.sft import SFTConfig, finetune_sft
from lmkit.finetune.sft_data import Example, PackedBatches, load_examples, pack
from lmkit.models import build_model
from lmkit.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def tok():
    t = Tokenizer.train(["Hello there, how are you? 你好 add 1 and 2 gives 3."] * 5, kind="bpe", vocab_size=300)
    add_role_tokens(t)
    return t


def test_template_pieces_encode_as_the_whole_text_and_mask_only_replies(tok):
    msgs = [("system", "Be brief."), ("user", "Hello there"), ("assistant", "how are you?"), ("user", "你好"),
            ("assistant", "gives 3.")]
    ids, reply = TOKENS.encode(tok, msgs)
    whole = "".join(t for t, _ in TOKENS.pieces(msgs, add_reply_prompt=False))
    assert whole == ("<|system|>Be brief.<|end|><|user|>Hello there<|end|><|assistant|>how are you?<|end|>"
                     "<|user|>你好<|end|><|assistant|>gives 3.<|end|>")
    assert ids == tok.encode(whole)  # the ids SFT trains on are those the model sees when chatting
    trained = tok.decode([i for i, r in zip(ids, reply) if r])
    assert trained == "how are you?<|end|>gives 3.<|end|>"
    text, stops = TOKENS.prompt(msgs[:3] + [("user", "你好")])
    assert text.endswith("<|user|>你好<|end|><|assistant|>") and stops == ("<|end|>",)
    # a run without a template keeps the plain-text markers the server used before
    assert PLAIN.prompt([("user", " To be ")]) == ("User: To be\n\nAssistant:", ("\n\nUser:", "\nUser:"))


def test_bad_rows_are_named_and_counted(tok, tmp_path, capsys):
    rows = [{"instruction": "add 1 and 2", "output": "3"},
            {"instruction": "add 1 and 2"},
            {"messages": [{"role": "user", "content": "Hello"}, {"role": "user", "content": "there"}]},
            {"messages": [{"role": "robot", "content": "Hello"}]},
            {"messages": [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "how " * 40}]},
            {"messages": [{"role": "system", "content": "x"}, {"role": "user", "content": "Hello"},
                          {"role": "assistant", "content": "3"}]}]
    path = tmp_path / "d.json"
    path.write_text(json.dumps(rows))
    examples, counts = load_examples(path, tok, TOKENS, max_tokens=30)
    err = capsys.readouterr().err
    assert [e.row for e in examples] == [1, 6]
    assert counts == {"rows": 6, "bad": 3, "too_long": 1, "truncated": 0}
    assert "row 2: missing or empty 'output'" in err
    assert "row 3: messages[1]: roles out of order (user after user; expected assistant)" in err
    assert "row 4: messages[0]: unknown role 'robot'" in err and "rows 5)" in err
    examples, counts = load_examples(path, tok, TOKENS, max_tokens=30, too_long="truncate")
    assert [e.row for e in examples] == [1, 5, 6] and len(examples[1].ids) == 30 and counts["truncated"] == 1
    path.write_text(json.dumps(rows[1:4]))
    with pytest.raises(LmkitError, match="no usable rows .*first problem: row 1: missing or empty 'output'"):
        load_examples(path, tok, TOKENS, max_tokens=30)
    with pytest.raises(LmkitError, match=r"messages\[0\]: roles out of order \(assistant first"):
        check_messages([{"role": "assistant", "content": "hi"}])


def test_packing_masks_the_loss_and_keeps_documents_apart():
    torch.manual_seed(0)
    examples = [Example(i + 1, torch.randint(1, 50, (n,)).tolist(), [j >= n // 2 for j in range(n)])
                for i, n in enumerate([7, 5, 9, 4])]
    rows = pack(examples, [0, 1, 2, 3], block_size=16, pad_id=0)
    assert len(rows) == 2  # 6 + 4 targets in the first row; 8 + 3 in the second
    x, y, doc = rows[0]
    assert x.tolist()[:10] == examples[0].ids[:-1] + examples[1].ids[:-1]
    assert doc.tolist() == [0] * 6 + [1] * 4 + [2] * 6  # padding is a document of its own
    want = [t if r else -100 for e in examples[:2] for t, r in zip(e.ids[1:], e.reply[1:])] + [-100] * 6
    assert y.tolist() == want
    assert int((y != -100).sum()) == sum(sum(e.reply[1:]) for e in examples[:2])

    for pos in ("learned", "rope"):  # logits of a packed row == logits of each document alone
        model = build_model(ModelConfig(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=16, pos=pos)).eval()
        x, y, doc = rows[1]
        with torch.no_grad():
            packed = model(x[None], None, doc[None])[0][0]
            a, b = examples[2].ids[:-1], examples[3].ids[:-1]
            alone_a, alone_b = model(torch.tensor([a]))[0][0], model(torch.tensor([b]))[0][0]
            plain = model(x[None])[0][0]  # without document ids the second document sees the first
        assert torch.allclose(packed[:8], alone_a, atol=1e-5) and torch.allclose(packed[8:11], alone_b, atol=1e-5)
        assert not torch.allclose(plain[8:11], alone_b, atol=1e-3)


def test_packed_batches_resume_exactly():
    examples = [Example(i, list(range(1, 3 + i % 5)), [True] * (2 + i % 5)) for i in range(30)]
    a = PackedBatches(examples, 12, 3, 0, seed=5)
    for _ in range(7):  # crosses an epoch boundary (about 12 rows per epoch)
        a.next()
    b = PackedBatches(examples, 12, 3, 0, seed=5)
    b.load_state_dict(a.state_dict())
    for _ in range(5):
        assert all(torch.equal(u, v) for u, v in zip(a.next(), b.next()))


def test_lora_starts_at_base_trains_only_adapters_and_merges_exactly():
    torch.manual_seed(0)
    model = build_model(ModelConfig(vocab_size=40, block_size=16, n_layer=2, n_head=2, n_embd=16))
    x = torch.randint(0, 40, (2, 10))
    base = model(x)[0].detach()
    names = lora.add_lora(model, ("attn.qkv", "mlp.proj"), rank=4, alpha=8)
    assert names == ["h.0.attn.qkv", "h.0.mlp.proj", "h.1.attn.qkv", "h.1.mlp.proj"]
    assert torch.equal(model(x)[0], base)  # B = 0: the adapted model starts as its base
    _, loss = model(x, x)
    loss.backward()
    grads = {n for n, p in model.named_parameters() if p.grad is not None}
    assert grads == {f"{m}.lora_{ab}" for m in names for ab in "AB"}
    trainable, total = lora.count_parameters(model)
    assert trainable == 2 * (4 * (16 + 48) + 4 * (64 + 16))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_()
    adapted = model(x)[0].detach()
    assert not torch.allclose(adapted, base, atol=1e-3)
    lora.merge_lora(model)
    assert not any(isinstance(m, lora.LoRALinear) for m in model.modules())
    assert torch.allclose(model(x)[0], adapted, atol=1e-5)
    with pytest.raises(LmkitError, match="'attn.q' matches no Linear module"):
        lora.add_lora(build_model(ModelConfig(vocab_size=40, block_size=16, n_layer=1, n_head=2, n_embd=16)),
                      ("attn.q",))


WORDS = ["to", "be", "or", "not", "that", "is", "the", "question"]


def _rows(n=80):
    """Instructions in the characters the tiny base knows; the reply says which half the word is from."""
    rng = random.Random(0)
    return [{"instruction": w, "output": "to" if WORDS.index(w) < 4 else "be"}
            for w in (rng.choice(WORDS) for _ in range(n))]


def test_sft_full_and_lora_through_the_trainer(trained_run, tmp_path):
    data = tmp_path / "sft.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in _rows()))
    common = ["max_iters=20", "eval_interval=10", "eval_iters=2", "batch_size=8", "warmup_iters=2",
              "dtype=float32"]
    r = finetune_sft(SFTConfig(base=str(trained_run), data=str(data), out=str(tmp_path / "full"),
                               overrides=common + ["learning_rate=3e-3"], progress=False))
    evals = [h for h in r.history if "val_loss" in h]
    assert evals[-1]["val_loss"] < 0.5 * evals[0]["val_loss"]  # the replies are learned
    lm = lmkit.load(r.out_dir)
    assert lm.chat_template == TOKENS and lm.tokenizer.hf.token_to_id("<|end|>") is not None
    text, _ = lm.chat_prompt([{"role": "user", "content": "is"}])
    assert text == "<|user|>is<|end|><|assistant|>"
    reply = lm.chat("is", temperature=0, max_new_tokens=5)
    assert reply in ("to", "be")  # stops at <|end|>
    # `lmkit chat` and `lmkit generate --chat` go through the same template
    import contextlib
    import io
    from lmkit.cli import main
    from lmkit.serve.terminal import chat
    screen, said = io.StringIO(), iter(["is", "/quit"])
    chat(lm, temperature=0, max_new_tokens=5, input=lambda _: next(said), out=screen)
    assert f"model> {reply}\n" in screen.getvalue()
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["generate", str(r.out_dir), "--chat", "--prompt", "is", "--temperature", "0",
                     "--max-new-tokens", "5"]) == 0
    assert printed.getvalue() == reply + "\n"
    if importlib.util.find_spec("fastapi") and importlib.util.find_spec("uvicorn"):  # and the server
        import httpx
        from lmkit.serve.app import create_app
        from test_serve import live_server
        with live_server(create_app(lm)) as url:
            body = httpx.post(url + "/v1/chat/completions", timeout=60, json={
                "model": r.out_dir.name, "messages": [{"role": "user", "content": "is"}], "temperature": 0,
                "max_tokens": 5}).json()
        assert body["choices"][0]["message"]["content"] == reply

    # LoRA, from the same base exported as a Hugging Face folder; the merged run exports back
    transformers = pytest.importorskip("transformers", reason="the Hugging Face round trip needs transformers")
    from lmkit.runs.hf_export import export_hf
    hf_base = export_hf(trained_run, tmp_path / "hf_base")
    out = tmp_path / "lora"
    r = finetune_sft(SFTConfig(base=str(hf_base), data=str(data), out=str(out), lora_rank=4,
                               overrides=common + ["learning_rate=1e-2"], merge=True, progress=False))
    evals = [h for h in r.history if "val_loss" in h]
    assert evals[-1]["val_loss"] < evals[0]["val_loss"]
    from safetensors.torch import load_file
    adapters = load_file(out / "adapter.safetensors")
    assert adapters and all(".lora_" in k for k in adapters)
    assert json.loads((out / "adapter_config.json").read_text())["rank"] == 4
    base = lmkit.load(trained_run).model.state_dict()
    merged = lmkit.load(out / "merged")
    assert merged.chat_template == TOKENS
    for k, v in merged.model.state_dict().items():  # only adapted layers changed (plus the new token rows)
        if k.endswith(("ln_1.weight", "ln_f.weight")):
            assert torch.equal(v, base[k])
    ids = torch.tensor([merged.tokenizer.encode("<|user|>not<|end|><|assistant|>")])
    with torch.no_grad():
        ours = merged.model(ids)[0]
        assert torch.allclose(lmkit.load(out).model(ids)[0], ours, atol=1e-5)  # adapters merged at load
        hf_out = export_hf(out / "merged", tmp_path / "hf_chat")
        theirs = transformers.AutoModelForCausalLM.from_pretrained(hf_out).eval()(ids).logits
        assert torch.allclose(theirs, ours, atol=1e-4)
    hf_tok = transformers.AutoTokenizer.from_pretrained(hf_out)
    assert hf_tok.apply_chat_template([{"role": "user", "content": "not"}], tokenize=False,
                                      add_generation_prompt=True) == "<|user|>not<|end|><|assistant|>"


def test_sft_cli_errors(trained_run, tmp_path, capsys):
    from lmkit.cli import main
    data = tmp_path / "sft.json"
    data.write_text(json.dumps(_rows(10)))
    assert main(["finetune", "sft", "--base", str(trained_run), "--data", str(data), "--out", str(tmp_path / "o"),
                 "--lora-rank", "2", "--lora-targets", "attn.qkv", "mlp.nope"]) == 2
    assert "error: --lora-targets: 'mlp.nope' matches no Linear module" in capsys.readouterr().err
    assert main(["finetune", "sft", "--base", str(trained_run), "--data", str(tmp_path / "missing.json"),
                 "--out", str(tmp_path / "o")]) == 2
    assert "missing.json: no such file" in capsys.readouterr().err
    assert main(["finetune", "merge", str(trained_run), str(tmp_path / "m")]) == 2
    assert "is an lmkit GPT run (made by lmkit train); finetune merge takes a LoRA run" in capsys.readouterr().err
