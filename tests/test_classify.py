"""lmkit finetune classify / predict: file reading, bad input, every backbone, pooling, best checkpoint."""
import json
import random

import pytest
import torch

from lmkit.cli import main
from lmkit.errors import LmkitError
from lmkit.finetune.classify import Classifier, load_classifier
from lmkit.finetune.fit import ClassifyConfig, finetune_classify
from lmkit.finetune.metrics import classification_report
from lmkit.finetune.tabular import read_labeled

GOOD = ["great", "wonderful", "superb", "lovely", "moving"]
BAD = ["awful", "boring", "dreadful", "dull", "terrible"]


def write_tsv(path, n, seed):
    """Sentiment that one word decides: a separable task every backbone learns in a few epochs."""
    rng = random.Random(seed)
    rows = ["sentence\tlabel"]
    for i in range(n):
        label = i % 2
        filler = rng.sample(["the", "film", "was", "plot", "a", "story", "and", "it", "quite", "'s"], 4)
        word = rng.choice(GOOD if label else BAD)
        filler.insert(rng.randrange(5), word)
        rows.append(" ".join(filler) + f" \t{label}")
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cls")
    return write_tsv(d / "train.tsv", 240, 0), write_tsv(d / "dev.tsv", 100, 1), d


def fit(files, name, **kw):
    train, dev, d = files
    settings = dict(train=str(train), eval=str(dev), out=str(d / name), progress=False, vocab_size=200,
                    n_embd=32, n_head=2, n_layer=1, max_len=16, overwrite=True)
    return finetune_classify(ClassifyConfig(**{**settings, **kw}))


def test_metrics_from_a_known_confusion():
    r = classification_report([0, 0, 0, 1, 1, 2], [0, 0, 1, 1, 2, 2], 3)
    assert r["confusion"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    assert r["accuracy"] == pytest.approx(4 / 6)
    f1 = [2 * 1 * (2 / 3) / (1 + 2 / 3), 0.5, 2 * 0.5 * 1 / 1.5]  # per-class 2PR/(P+R)
    assert r["macro_f1"] == pytest.approx(sum(f1) / 3)


def test_reads_sst2_columns_and_bare_quotes(tmp_path):
    p = tmp_path / "x.tsv"
    p.write_text('sentence\tlabel\nit \'s a "charming" film \t1\n\t0\nbad \t0\n', encoding="utf-8")
    data = read_labeled(p)
    assert (data.text_field, data.label_field) == ("sentence", "label")
    assert data.texts == ['it \'s a "charming" film', "bad"] and data.labels == ["1", "0"] and data.rows == [1, 3]
    j = tmp_path / "x.jsonl"
    j.write_text('{"review": "fine", "sentiment": "pos"}\n{"review": "meh", "sentiment": "neg"}\n', encoding="utf-8")
    data = read_labeled(j)
    assert data.texts == ["fine", "meh"] and data.labels == ["pos", "neg"]


@pytest.mark.parametrize("kind,pooling", [("bag-of-embeddings", None), ("lstm", None), ("gpt", None), ("bert", "cls")])
def test_every_backbone_learns_the_task(files, kind, pooling):
    r = fit(files, kind, model=kind, pooling=pooling, epochs=5, learning_rate=1e-2 if kind == "bag-of-embeddings" else 5e-3)
    assert r["accuracy"] >= 0.85, r["history"]  # chance is 0.5
    best = max(h["accuracy"] for h in r["history"])
    assert r["accuracy"] == best and len(r["history"]) == 6  # before training, then once per epoch; best kept
    assert [h["epoch"] for h in r["history"]] == [0, 1, 2, 3, 4, 5]
    clf = load_classifier(files[2] / kind)
    assert [l for l, _ in clf.predict(["a great film", "a boring film"])] == ["1", "0"]


def test_pooling_ignores_right_padding():
    from lmkit.config import ModelConfig
    from lmkit.models import build_model
    torch.manual_seed(0)
    for kind, pooling in (("gpt", "last"), ("lstm", "last"), ("bert", "mean"), ("bert", "cls")):
        cfg = ModelConfig(type=kind, vocab_size=30, block_size=12, n_layer=1, n_head=2, n_embd=16)
        clf = Classifier(build_model(cfg), kind, pooling, 2).eval()
        ids = torch.randint(5, 30, (1, 5))
        padded = torch.cat([ids, torch.zeros(1, 4, dtype=torch.long)], dim=1)
        mask = torch.tensor([[1] * 5 + [0] * 4])
        torch.testing.assert_close(clf.features(padded, mask), clf.features(ids, torch.ones(1, 5, dtype=torch.long)),
                                   atol=1e-5, rtol=1e-5)


def test_cli_finetune_then_predict_a_text_and_a_file(files, capsys, tmp_path):
    train, dev, d = files
    out = tmp_path / "run"
    assert main(["finetune", "classify", "--train", str(train), "--eval", str(dev), "--out", str(out),
                 "--model", "bag-of-embeddings", "--epochs", "4", "--learning-rate", "1e-2", "--n-embd", "32",
                 "--vocab-size", "200", "--quiet"]) == 0
    summary = capsys.readouterr().out
    acc = float(summary.split("accuracy ")[1].split(",")[0])
    assert acc >= 0.85
    assert main(["predict", str(out), "what a superb story"]) == 0
    label, p = capsys.readouterr().out.split()
    assert label == "1" and 0.5 < float(p) <= 1
    preds = tmp_path / "preds.jsonl"
    assert main(["predict", str(out), "--file", str(dev), "--out", str(preds)]) == 0
    rows = [json.loads(l) for l in preds.read_text().splitlines()]
    assert len(rows) == 100 and rows[0]["row"] == 1
    truth = [l.rsplit("\t", 1)[1] for l in dev.read_text().splitlines()[1:]]
    assert sum(r["label"] == t for r, t in zip(rows, truth)) / 100 == pytest.approx(acc)


def test_bad_input_is_named(files, tmp_path, capsys):
    train, dev, d = files
    nolabel = tmp_path / "nolabel.tsv"
    nolabel.write_text("sentence\tscore\na\t1\n", encoding="utf-8")
    one = tmp_path / "one.tsv"
    one.write_text("sentence\tlabel\na\t1\nb\t1\n", encoding="utf-8")
    unseen = tmp_path / "unseen.tsv"
    unseen.write_text("sentence\tlabel\ngood\t1\nfine\t7\n", encoding="utf-8")
    cases = [
        (dict(train=str(nolabel)), "nolabel.tsv: no label column found among sentence, score"),
        (dict(label_field="stars"), "no label field 'stars'"),
        (dict(train=str(one)), "one.tsv: field 'label' has a single class"),
        (dict(eval=str(unseen)), "unseen.tsv: row 2: 'label' = '7' never occurs"),
        (dict(base=str(tmp_path)), "not a run directory"),
    ]
    for kw, msg in cases:
        c = dict(train=str(train), eval=str(dev), out=str(tmp_path / "o"), model="bag-of-embeddings", progress=False)
        c.update(kw)
        if "base" in kw:
            c.pop("model")
        with pytest.raises(LmkitError, match=msg.replace("(", r"\(").replace(")", r"\)")):
            finetune_classify(ClassifyConfig(**c))
    assert main(["finetune", "classify", "--train", str(one), "--eval", str(dev), "--out", str(tmp_path / "o"),
                 "--model", "lstm"]) == 2
    assert "error: " in capsys.readouterr().err
    r = fit(files, "short", model="bag-of-embeddings", epochs=1, max_len=4)  # texts are 5 words: all cut
    err = capsys.readouterr().err
    assert "240 of 240 texts in field 'sentence' are longer than 4 tokens" in err and r["accuracy"] > 0


def test_gpt_run_as_base(trained_run, files, tmp_path):
    r = fit(files, "gptbase", base=str(trained_run), epochs=1, learning_rate=1e-3)
    assert 0 <= r["accuracy"] <= 1
    meta = json.loads((files[2] / "gptbase" / "classifier.json").read_text())
    assert meta["backbone"] == "gpt" and meta["pooling"] == "last" and meta["max_len"] == 16


def test_a_csv_row_cut_at_an_unquoted_comma_is_refused(tmp_path):
    from lmkit.errors import LmkitError
    from lmkit.finetune.tabular import read_labeled
    good = tmp_path / "good.csv"
    good.write_text('text,label\n"fine, really",pos\n', encoding="utf-8")
    assert read_labeled(good).texts == ["fine, really"]  # quoting honoured
    bad = tmp_path / "bad.csv"
    bad.write_text('text,label\n"fine, really",pos\nnot, quoted,neg\n', encoding="utf-8")
    with pytest.raises(LmkitError, match=r"row 2 has 3 fields, the header 2 .*quote a text"):
        read_labeled(bad, need_labels=False)
