import pytest

from lmkit import LmkitError, Tokenizer
from conftest import MIXED

SAMPLES = [MIXED, "", " ", "emoji only 👨‍👩‍👧‍👦🏳️‍🌈", "中文没有空格也能切分吗？能。", "\x00 control \x7f chars", "a<|endoftext|>b"]


def test_bpe_round_trip_is_exact_for_any_utf8():
    tok = Tokenizer.train([MIXED * 10, "The quick brown fox."], kind="bpe", vocab_size=300)
    assert tok.kind == "bpe" and tok.vocab_size <= 300
    for text in SAMPLES + ["never-seen text: Ωμέγα, русский, 日本語, 🐍"]:
        assert tok.decode(tok.encode(text)) == text


def test_bpe_merges_learned_text_into_fewer_tokens():
    tok = Tokenizer.train(["床前明月光，疑是地上霜。" * 200], kind="bpe", vocab_size=400)
    ids = tok.encode("床前明月光")
    assert len(ids) < len("床前明月光".encode("utf-8")), "BPE should merge the repeated bytes"


def test_char_round_trip_and_unknown_characters():
    tok = Tokenizer.train([MIXED], kind="char")
    assert tok.kind == "char"
    assert tok.decode(tok.encode(MIXED)) == MIXED
    assert len(tok.encode("你好🎉")) == 3  # one token per character
    unk = tok.hf.token_to_id("<unk>")
    assert tok.encode("Ж") == [unk]


def test_special_token_and_save_load(tmp_path):
    tok = Tokenizer.train([MIXED * 5], kind="bpe", vocab_size=280)
    assert tok.encode("a<|endoftext|>b")[1] == tok.eot_id
    tok.save(tmp_path / "tokenizer.json")
    again = Tokenizer.load(tmp_path / "tokenizer.json")
    assert again.encode(MIXED) == tok.encode(MIXED) and again.eot_id == tok.eot_id


def test_vocab_too_small_is_refused():
    with pytest.raises(LmkitError, match="vocab_size 100 is too small.*257"):
        Tokenizer.train(["abc"], kind="bpe", vocab_size=100)


def test_empty_corpus_is_refused():
    with pytest.raises(LmkitError, match="empty"):
        Tokenizer.train(["", ""], kind="char")


def test_bad_tokenizer_file(tmp_path):
    bad = tmp_path / "tokenizer.json"
    bad.write_text("{not json")
    with pytest.raises(LmkitError, match="not a valid tokenizer.json"):
        Tokenizer.load(bad)
