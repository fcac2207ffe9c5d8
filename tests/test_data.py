import numpy as np
import pytest

from lmkit import LmkitError, Tokenizer
from lmkit.data.batches import CausalBatches
from lmkit.data.shards import open_split, prepare
from lmkit.data.sources import iter_documents, play_to_text


def _docs(spec, **kw):
    return [t for _, t in iter_documents(spec, **kw)]


def test_shards_decode_back_to_the_source(corpus_dir, tmp_path):
    texts = {f.name: f.read_text(encoding="utf-8") for f in sorted(corpus_dir.iterdir())}
    tok = Tokenizer.train(texts.values(), kind="bpe", vocab_size=400)
    meta = prepare(str(corpus_dir), tmp_path / "shards", tok, val_fraction=0.2, progress=False)
    assert meta["split"] == "document" and meta["documents"] == 30
    assert meta["dtype"] == "uint16"
    decoded = []
    for split in ("train", "val"):
        ids = np.asarray(open_split(tmp_path / "shards", split)).tolist()
        assert ids[-1] == tok.eot_id  # every document ends with <|endoftext|>
        text = tok.decode(ids)
        decoded += [d for d in text.split("<|endoftext|>") if d]
    assert meta["val_tokens"] > 0 and meta["train_tokens"] > meta["val_tokens"]
    assert sorted(decoded) == sorted(texts.values())  # every document exactly once, whole


def test_single_file_is_split_by_its_tail(tmp_path):
    f = tmp_path / "one.txt"
    f.write_text("".join(f"line {i}\n" for i in range(2000)), encoding="utf-8")
    tok = Tokenizer.train(_docs(str(f)), kind="char")
    meta = prepare(str(f), tmp_path / "s", tok, val_fraction=0.1, progress=False)
    assert meta["split"] == "tail"
    train = tok.decode(np.asarray(open_split(tmp_path / "s", "train")).tolist())
    val = tok.decode(np.asarray(open_split(tmp_path / "s", "val")).tolist())
    assert (train + val).replace("<|endoftext|>", "") == f.read_text()
    assert abs(meta["val_tokens"] / (meta["train_tokens"] + meta["val_tokens"]) - 0.1) < 0.001


def test_large_file_streams_in_pieces(tmp_path, monkeypatch):
    import lmkit.data.sources as sources
    monkeypatch.setattr(sources, "CHUNK_BYTES", 64)
    f = tmp_path / "big.txt"
    text = "".join(f"第{i}行 line {i}\n" for i in range(200))
    f.write_text(text, encoding="utf-8")
    pieces = list(iter_documents(str(f)))
    assert len(pieces) > 10 and {d for d, _ in pieces} == {str(f)}
    assert "".join(t for _, t in pieces) == text


def test_jsonl_field_and_errors(tmp_path):
    f = tmp_path / "rows.jsonl"
    f.write_text('{"text": "hello"}\n{"text": "世界"}\n\n', encoding="utf-8")
    assert _docs(str(f)) == ["hello", "世界"]
    g = tmp_path / "bad.jsonl"
    g.write_text('{"text": "ok"}\n{"body": "no text"}\n', encoding="utf-8")
    with pytest.raises(LmkitError, match=r"bad.jsonl:2: row has no field 'text'"):
        _docs(str(g))
    h = tmp_path / "body.jsonl"
    h.write_text('{"body": "正文"}\n', encoding="utf-8")
    assert _docs(str(h), text_field="body") == ["正文"]


def test_json_array_of_rows_with_list_fields(tmp_path):
    f = tmp_path / "poems.json"
    f.write_text('[{"title": "靜夜思", "paragraphs": ["床前明月光，疑是地上霜。", "舉頭望明月，低頭思故鄉。"]}]',
                 encoding="utf-8")
    assert _docs(str(f), text_field="paragraphs") == ["床前明月光，疑是地上霜。\n舉頭望明月，低頭思故鄉。"]
    with pytest.raises(LmkitError, match=r"poems.json\[0\]: row has no field 'text'"):
        _docs(str(f))


def test_not_utf8_names_file_and_offset(tmp_path):
    f = tmp_path / "latin1.txt"
    f.write_bytes("café olé".encode("utf-8") + b" caf\xe9")
    with pytest.raises(LmkitError, match=r"latin1.txt: not valid UTF-8 at byte offset 14.*--errors replace"):
        _docs(str(f))
    assert _docs(str(f), errors="replace") == ["café olé caf\ufffd"]


def test_missing_and_empty_inputs(tmp_path):
    with pytest.raises(LmkitError, match="no such file or folder"):
        _docs(str(tmp_path / "nope.txt"))
    with pytest.raises(LmkitError, match="matches no files"):
        _docs(str(tmp_path / "*.txt"))
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    tok = Tokenizer.train(["abc"], kind="char")
    with pytest.raises(LmkitError, match="empty"):
        prepare(str(empty), tmp_path / "out", tok, progress=False)
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_prepare_refuses_non_empty_folder(corpus_dir, tmp_path):
    tok = Tokenizer.train(["abc"], kind="char")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(LmkitError, match="not empty.*--overwrite"):
        prepare(str(corpus_dir), tmp_path / "out", tok, progress=False)
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"


def test_builtin_shakespeare_corpus():
    docs = list(iter_documents("shakespeare"))
    assert len(docs) >= 30
    hamlet = dict(docs)["hamlet"]
    assert "HAMLET:\nTo be, or not to be" in hamlet and "**" not in hamlet


def test_play_markdown_to_text():
    md = "# Play\n\n## ACT I\n\n_Enter BOB_\n\n**BOB**  \nHello there,  \nfriend.\n"
    assert play_to_text(md) == "Play\n\nACT I\n\nEnter BOB\n\nBOB:\nHello there,\nfriend.\n"


def test_builtin_python_stdlib_corpus():
    first = next(iter(iter_documents("python-stdlib")))
    assert first[0].endswith(".py") and len(first[1]) > 0


def test_causal_batches_are_shifted_windows_and_resumable():
    tokens = np.arange(1000, dtype=np.uint16)
    b = CausalBatches(tokens, block_size=16, batch_size=4, seed=0)
    x, y = b.next()
    assert x.shape == (4, 16) and (y == x + 1).all()
    state = b.state_dict()
    after = b.next()[0]
    b.load_state_dict(state)
    assert (b.next()[0] == after).all()
    with pytest.raises(LmkitError, match="fewer than block_size"):
        CausalBatches(tokens[:10], block_size=16, batch_size=4, seed=0)
