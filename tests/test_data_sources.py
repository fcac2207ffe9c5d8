"""Issue 20: Hugging Face datasets as sources (local files only, nothing downloads), streaming with a break
and --continue, weighted mixtures (proportions and exact resume), and the cleaning steps with their counts."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

import lmkit
from conftest import tiny_config
from lmkit import LmkitError, Tokenizer
from lmkit.config import load_config
from lmkit.data import hub
from lmkit.data.batches import CausalBatches, make_batches
from lmkit.data.clean import Cleaner
from lmkit.data.mixture import Source, parse_sources
from lmkit.data.shards import open_split, prepare
from lmkit.data.sources import iter_documents

datasets = pytest.importorskip("datasets")
pa = pytest.importorskip("pyarrow")
import pyarrow.parquet as pq  # noqa: E402


def _rows(n, start=0):
    return [{"text": f"第{i}篇 document number {i}: " + "床前明月光。" * (1 + i % 5), "n": i} for i in range(start, n)]


@pytest.fixture
def parquet(tmp_path):
    f = tmp_path / "rows.parquet"
    pq.write_table(pa.Table.from_pylist(_rows(300)), f)
    return f


@pytest.fixture
def fake_hub(monkeypatch, parquet):
    """datasets.load_dataset answering for 'local/rows' from the parquet file; other names do not exist."""
    real = datasets.load_dataset

    def load_dataset(name, config=None, split="train", streaming=False, **kw):
        if "data_files" in kw:  # lmkit reading a local file: the real thing
            return real(name, config, split=split, streaming=streaming, **kw)
        if name != "local/rows":
            raise datasets.exceptions.DatasetNotFoundError(f"Dataset '{name}' doesn't exist on the Hub")
        return real("parquet", data_files={"train": str(parquet)}, split=split, streaming=streaming)
    monkeypatch.setattr(datasets, "load_dataset", load_dataset)


def _char_tok():
    return Tokenizer.train([r["text"] for r in _rows(300)] + ["abcdefghijklmnopqrstuvwxyz"], kind="char")


def test_hub_spec_parsing():
    assert hub.parse("hf:roneneldan/TinyStories") == ("roneneldan/TinyStories", None, "train")
    assert hub.parse("hf:wikitext:wikitext-2-raw-v1") == ("wikitext", "wikitext-2-raw-v1", "train")
    assert hub.parse("hf:x:validation") == ("x", None, "validation")
    assert hub.parse("hf:x:train[:10%]") == ("x", None, "train[:10%]")
    assert hub.parse("hf:x:cfg:test") == ("x", "cfg", "test")
    with pytest.raises(LmkitError, match="expected hf:NAME"):
        hub.parse("hf:")


def test_local_parquet_and_hub_name_read_the_same_rows(parquet, fake_hub):
    local = list(iter_documents(str(parquet)))
    assert len(local) == 300 and local[7] == (f"{parquet}#7", _rows(300)[7]["text"])
    from_hub = [t for _, t in iter_documents("hf:local/rows", streaming=True)]
    assert from_hub == [t for _, t in local]
    with pytest.raises(LmkitError, match=r"hf:nobody/nothing: no dataset 'nobody/nothing' found"):
        list(iter_documents("hf:nobody/nothing"))
    with pytest.raises(LmkitError, match=r"hf:local/rows:test: no split 'test'"):
        list(iter_documents("hf:local/rows:test"))
    with pytest.raises(LmkitError, match=r"rows.parquet: no field 'body' \(fields: text, n"):
        list(iter_documents(str(parquet), text_field="body"))


def test_saved_dataset_folder_and_csv(tmp_path):
    ds = datasets.Dataset.from_list(_rows(20))
    ds.save_to_disk(str(tmp_path / "saved"))
    assert len(list(iter_documents(str(tmp_path / "saved")))) == 20
    arrow = next((tmp_path / "saved").glob("*.arrow"))
    assert [t for _, t in iter_documents(str(arrow))] == [r["text"] for r in _rows(20)]
    (tmp_path / "t.csv").write_text("text,label\nhello there,1\n你好,0\n", encoding="utf-8")
    assert [t for _, t in iter_documents(str(tmp_path / "t.csv"))] == ["hello there", "你好"]


class _Flaky:
    """A stream that loses the network after `fail_after` rows (then, once 'fixed', reads on)."""

    def __init__(self, monkeypatch, fail_after):
        self.fail_after = fail_after
        monkeypatch.setattr(datasets, "load_dataset", self.load_dataset)

    def load_dataset(self, name, config=None, split="train", streaming=False, **kw):
        rows, fail = _rows(3000), self.fail_after

        def gen():
            for i, r in enumerate(rows):
                if fail is not None and i == fail:
                    raise ConnectionError("Read timed out")
                yield r
        return datasets.IterableDataset.from_generator(gen)


def test_a_broken_stream_leaves_usable_shards_and_continues_exactly(tmp_path, monkeypatch):
    tok = _char_tok()
    _Flaky(monkeypatch, None)
    whole = prepare("hf:some/stream", tmp_path / "whole", tok, progress=False, streaming=True)
    flaky = _Flaky(monkeypatch, 2500)
    with pytest.raises(LmkitError, match=r"hf:some/stream: the stream broke after 2,000 rows \(ConnectionError: "
                                         r"Read timed out\).*--continue"):
        prepare("hf:some/stream", tmp_path / "part", tok, progress=False, streaming=True)
    meta = json.loads((tmp_path / "part" / "meta.json").read_text())
    assert meta["complete"] is False and meta["rows_read"] == 2000
    assert len(open_split(tmp_path / "part", "train")) == meta["train_tokens"] > 0  # usable as it is
    flaky.fail_after = None  # the network is back
    done = prepare("hf:some/stream", tmp_path / "part", tok, progress=False, streaming=True, resume=True)
    assert done["complete"] is True and done["train_tokens"] == whole["train_tokens"]
    for split in ("train", "val"):
        assert np.array_equal(open_split(tmp_path / "part", split), open_split(tmp_path / "whole", split))


def test_max_tokens_stops_the_stream(tmp_path, monkeypatch):
    import lmkit.data.encode as encode
    monkeypatch.setattr(encode, "BATCH_CHARS", 4096)
    _Flaky(monkeypatch, None)
    meta = prepare("hf:some/stream", tmp_path / "p", _char_tok(), progress=False, streaming=True, max_tokens=20_000)
    total = meta["train_tokens"] + meta["val_tokens"]  # the batch that reaches 20,000 is the last one
    assert 20_000 <= total < 20_000 + 4096 + 200 and meta["stopped_at_max_tokens"] == ["hf:some/stream"]


def test_mixture_windows_follow_the_weights_and_resume_exactly():
    tokens = np.arange(60_000, dtype=np.uint32)
    spans = [(0, 50_000, 0.2), (50_000, 54_000, 0.5), (54_000, 60_000, 0.3)]
    b = CausalBatches(tokens, block_size=32, batch_size=10, seed=3, spans=spans)
    counts = np.zeros(3)
    for _ in range(1000):  # 10,000 windows
        x, y = b.next()
        first, last = x[:, 0].numpy(), y[:, -1].numpy()
        which = np.searchsorted([50_000, 54_000], first, side="right")
        assert (last < np.array([50_000, 54_000, 60_000])[which]).all()  # no window crosses into the next source
        counts += np.bincount(which, minlength=3)
    assert np.abs(counts / counts.sum() - [0.2, 0.5, 0.3]).max() < 0.01
    state = b.state_dict()
    after = [b.next()[0] for _ in range(3)]
    b.load_state_dict(state)
    assert all(torch.equal(b.next()[0], a) for a in after)


def test_prepared_mixture_records_sources_and_draws_by_weight(tmp_path, parquet, corpus_dir):
    tok = Tokenizer.train([t for spec in (str(parquet), str(corpus_dir)) for _, t in iter_documents(spec)], kind="char")
    sources = [Source(str(parquet), 0.25), Source(str(corpus_dir), 0.75)]
    meta = prepare(sources, tmp_path / "mix", tok, progress=False)
    per = meta["sources"]
    assert [s["weight"] for s in per] == [0.25, 0.75] and per[0]["documents"] == 300 and per[1]["documents"] == 30
    assert sum(s["train_tokens"] for s in per) == meta["train_tokens"]
    train = open_split(tmp_path / "mix", "train")
    assert train.mixture[0] == (0, per[0]["train_tokens"], 0.25)
    cfg = lmkit.Config()
    cfg.model.block_size, cfg.train.batch_size = 16, 100
    b = make_batches(train, cfg, 0, tok)
    n0 = per[0]["train_tokens"]
    assert b.spans[0].tolist() == [0, n0] and b.spans[1].tolist() == [n0 - 17, per[1]["train_tokens"] - 17]
    assert b.cumulative.tolist() == [0.25, 1.0]


def test_bad_mixture_entries_name_the_source(tmp_path, corpus_dir):
    with pytest.raises(LmkitError, match=r"data.sources\[1\] \(b.txt\): weight must be a number > 0 \(got 0\)"):
        parse_sources([{"path": "a.txt", "weight": 1}, {"path": "b.txt", "weight": 0}])
    cfg = tmp_path / "c.toml"
    cfg.write_text('normalize = ["t2s"]\n[[data.sources]]\npath = "hf:x/y"\nweight = 3\n[[data.sources]]\n'
                   'path = "b.txt"\ntext_field = "body"\n')
    d = load_config(cfg).data
    assert d.sources == [{"path": "hf:x/y", "weight": 3}, {"path": "b.txt", "text_field": "body"}]
    assert d.normalize == ["t2s"] and [s.weight for s in parse_sources(d.sources)] == [3.0, 1.0]
    cfg.write_text('[[data.sources]]\npath = "a.txt"\nweight = 1\n[[data.sources]]\npath = "b.txt"\nweight = -2\n')
    with pytest.raises(LmkitError, match=r"data.sources\[1\] \(b.txt\): weight must be a number > 0"):
        load_config(cfg)
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(LmkitError, match=r"empty.txt: the source yields no text"):
        prepare([Source(str(corpus_dir), 1), Source(str(empty), 1)], tmp_path / "out", _char_tok(), progress=False)
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_training_on_a_mixture_config_resumes_exactly(tmp_path, text_file, corpus_dir):
    def cfg(out, iters):
        c = tiny_config(out, text_file, max_iters=iters, lr_decay_iters=6, eval_interval=3)
        c.data.sources = [{"path": str(text_file), "weight": 0.3}, {"path": str(corpus_dir), "weight": 0.7}]
        return c
    straight = lmkit.train(cfg(tmp_path / "a", 6), progress=False)
    meta = json.loads((straight.out_dir / "data" / "meta.json").read_text())
    assert [s["weight"] for s in meta["sources"]] == [0.3, 0.7]
    half = cfg(tmp_path / "b", 3)
    lmkit.train(half, progress=False)
    half.train.max_iters = 6
    resumed = lmkit.train(half, resume=True, progress=False)
    from safetensors.torch import load_file
    a, b = load_file(straight.out_dir / "model.safetensors"), load_file(resumed.out_dir / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_cleaning_steps_are_counted():
    docs = [("a", "舉頭望明月"), ("b", "ｆｕｌｌ width"), ("c", "x"), ("d", "舉頭望明月"),
            ("e", "the quick brown fox jumps over the lazy dog " * 4),
            ("f", "the quick brown fox jumps over the lazy dog " * 4 + "!")]
    c = Cleaner(["nfkc", "t2s"], "minhash", min_chars=3)
    kept = dict(c.run(iter(docs)))
    assert kept["a"] == "举头望明月" and kept["b"] == "full width"
    assert set(kept) == {"a", "b", "e"}
    n = c.counts
    assert (n["short"], n["duplicates"], n["near_duplicates"], n["documents"]) == (1, 1, 1, 6)
    assert n["t2s_chars"] == 2 * 2 and n["nfkc_chars"] == 4
    lines = "\n".join(c.report({"bom": 1, "line_ends": 5}))
    assert "5 CR/CRLF read as LF; 1 byte-order marks dropped" in lines and "near-duplicates" in lines
    with pytest.raises(LmkitError, match="normalize: unknown 'zh'"):
        Cleaner(["zh"])


def test_cli_prepare_prints_the_cleaning_report(tmp_path):
    f = tmp_path / "poems.jsonl"
    rows = [{"text": "床前明月光，疑是地上霜。\r\n舉頭望明月"}] * 3 + [{"text": "短"}] + \
           [{"text": f"第{i}首，低頭思故鄉。"} for i in range(20)]
    f.write_text("\ufeff" + "\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8")
    r = subprocess.run([sys.executable, "-m", "lmkit", "prepare", str(f), "--out", str(tmp_path / "p"), "--tokenizer",
                        "char", "--normalize", "t2s", "--dedup", "exact", "--min-chars", "2"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "3 CR/CRLF read as LF; 1 byte-order marks dropped" in r.stdout
    assert "min-chars 2: dropped 1 of 24 documents" in r.stdout and "dropped 2 exact duplicates" in r.stdout
    assert "21 documents" in r.stdout
    tok = Tokenizer.load(tmp_path / "p" / "tokenizer.json")
    assert tok.hf.token_to_id("举") is not None and tok.hf.token_to_id("舉") is None  # trained on Simplified
    bad = subprocess.run([sys.executable, "-m", "lmkit", "prepare", str(f), str(f), "--out", str(tmp_path / "q"),
                          "--weights", "1,0"], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].startswith("error: --weights[1]")
    assert "Traceback" not in bad.stderr and not (tmp_path / "q").exists()


def _cut_characters(tok, text: str) -> int:
    """How many characters of `text` a token boundary falls inside (their bytes split between tokens)."""
    bounds, pos = set(), 0
    for t in tok.hf.encode(text, add_special_tokens=False).tokens:
        if tok.kind == "bpe":
            pos += len(t)  # one stand-in character per byte
        elif len(t) == 6 and t.startswith("<0x"):
            pos += 1  # a byte-fallback token
        else:
            pos += len(t.encode("utf-8"))
        bounds.add(pos)
    cut, at = 0, 0
    for ch in text:
        n = len(ch.encode("utf-8"))
        cut += any(b in bounds for b in range(at + 1, at + n))
        at += n
    return cut


def test_bpe_chars_keeps_chinese_characters_whole():
    from conftest import MIXED, SHARED
    poems = SHARED / "chinese_poetry_tang" / "poet.tang.0.json"
    if not poems.is_file():
        pytest.skip("../shared/data is not here")
    texts = [t for _, t in iter_documents(str(poems), text_field="paragraphs")]
    chars = Tokenizer.train(texts, kind="bpe-chars", vocab_size=2000)
    byte_level = Tokenizer.train(texts, kind="bpe", vocab_size=2000)
    assert chars.kind == "bpe-chars" and chars.vocab_size == 2000
    for tok in (chars, byte_level):
        assert tok.decode(tok.encode(MIXED)) == MIXED  # any text round-trips, emoji and CRLF included
    sample = "\n".join(texts)  # all of it: byte-level cuts only the rarer characters (56-63 of 49,874 here;
    # a twentieth of the poems held 0-1 of them, as training varied run to run)
    vocab = chars.hf.get_vocab()
    in_vocab = "".join(c for c in sample if c in vocab)
    assert _cut_characters(chars, in_vocab) == 0  # a character the vocabulary has is never cut
    assert _cut_characters(byte_level, in_vocab) > 0  # byte-level BPE cuts some of the same characters
    assert chars.decode(chars.encode("龘")) == "龘" and len(chars.encode("龘")) == 3  # not in it: its 3 bytes
    with pytest.raises(LmkitError, match="character BPE needs at least 513"):
        Tokenizer.train(texts, kind="bpe-chars", vocab_size=300)
