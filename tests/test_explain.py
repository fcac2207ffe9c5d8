import json
import math
import re
import shutil
import subprocess

import pytest
import torch

import lmkit
from lmkit import LmkitError
from lmkit.cli import main
from lmkit.config import ModelConfig
from lmkit.explain import analyse, write_page
from lmkit.models import build_model
from lmkit.models.attention import attend, record_attention
from lmkit.viz import plot_runs


@pytest.mark.parametrize("causal,kv_heads", [(True, 4), (False, 4), (True, 2)])
def test_recorded_weights_are_the_softmax_sdpa_applies(causal, kv_heads):
    torch.manual_seed(0)
    q = torch.randn(2, 4, 7, 8)
    k, v = torch.randn(2, kv_heads, 7, 8), torch.randn(2, kv_heads, 7, 8)
    with record_attention() as maps:
        y = attend(q, k, v, causal=causal)
    (w,) = maps
    assert w.shape == (2, 4, 7, 7)
    assert torch.allclose(w.sum(-1), torch.ones(2, 4, 7), atol=1e-6)  # each row is a distribution
    v_full = v.repeat_interleave(4 // kv_heads, dim=1)
    assert torch.allclose(w @ v_full, y, atol=1e-5)  # the very matrix SDPA applied to V
    upper = torch.ones(7, 7, dtype=torch.bool).triu(1)
    assert (w[..., upper] == 0).all() == causal


def test_model_forward_records_every_layer():
    torch.manual_seed(0)
    model = build_model(ModelConfig(vocab_size=30, block_size=16, n_layer=3, n_head=2, n_embd=16, pos="rope")).eval()
    with torch.no_grad(), record_attention() as maps:
        model(torch.randint(0, 30, (1, 9)))
    assert len(maps) == 3 and all(m.shape == (1, 2, 9, 9) for m in maps)
    assert all(torch.all(m.triu(1) == 0) for m in maps)


def test_analyse_surprisal_matches_the_model(trained_run):
    lm = lmkit.load(trained_run)
    a = analyse(lm, "To be, or not 床前")
    ids = a["ids"]
    with torch.no_grad():
        logp = lm.model(torch.tensor([ids]))[0][0].log_softmax(-1)
    assert a["surprisal"][0] is None and a["first"] == 1
    for t in range(1, len(ids)):
        assert abs(a["surprisal"][t] - (-logp[t - 1, ids[t]].item() / 0.6931471805599453)) < 1e-4
    assert "".join(a["tokens"][1:]) == "To be, or not 床前"
    probs = [p for _, p in a["topk"][0]]
    assert len(probs) == 10 and probs == sorted(probs, reverse=True) and sum(probs) <= 1 + 1e-5
    assert abs(probs[0] - logp[0].exp().max().item()) < 1e-5  # the most likely first token


def test_page_is_self_contained_and_holds_chinese(trained_run, tmp_path):
    lm = lmkit.load(trained_run)
    out = write_page(lm, "床前明月光，To be", tmp_path / "page.html")
    page = out.read_text(encoding="utf-8")
    assert "床" in page and "<script src" not in page and "http" not in page.split("<body>")[1]
    assert page.count("data:image/png;base64,") == lm.config.model.n_layer
    assert all((tmp_path / f"page_layer{i}.png").is_file() for i in range(lm.config.model.n_layer))
    data = json.loads(re.search(r"const D = (.*);\n", page).group(1).replace("<\\/", "</"))
    att = torch.tensor(data["attention"][0])  # (H, T, T)
    assert torch.allclose(att.sum(-1), torch.ones(att.shape[:2]), atol=1e-3)


def test_explain_cli_embeddings_and_plot(trained_run, tmp_path, capsys):
    assert main(["explain", str(trained_run), "To be", "--out", str(tmp_path / "e.html")]) == 0
    assert main(["explain", "--embeddings", str(trained_run), "--out", str(tmp_path / "emb.png")]) == 0
    assert (tmp_path / "emb.png").read_bytes()[:4] == b"\x89PNG"
    assert main(["explain", str(trained_run)]) == 2
    assert "give the text" in capsys.readouterr().err
    png = plot_runs([trained_run, trained_run], tmp_path / "curves.png")
    assert png.stat().st_size > 10_000
    with pytest.raises(LmkitError, match="no metrics.jsonl"):
        plot_runs([tmp_path], tmp_path / "x.png")


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium installed (apt-get install chromium)")
def test_page_renders_in_headless_chromium(trained_run, tmp_path):
    from PIL import Image
    page = write_page(lmkit.load(trained_run), "床前明月光 To be", tmp_path / "page.html")
    shot = tmp_path / "shot.png"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0",
             "--window-size=1100,900", f"--screenshot={shot}", page.as_uri()]
    p = subprocess.run([CHROMIUM, *flags], capture_output=True, text=True, timeout=120)
    assert shot.is_file(), p.stderr[-2000:]
    console = [l for l in p.stderr.splitlines() if "CONSOLE" in l or "Uncaught" in l]
    assert not console, console
    colours = Image.open(shot).convert("RGB").getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 50  # not a blank page


@pytest.fixture(scope="module")
def bert_run(tmp_path_factory):
    from conftest import tiny_config
    base = tmp_path_factory.mktemp("bert")
    text = base / "t.txt"
    text.write_text("the cat sat on the mat. the dog sat on the log. 猫坐在垫子上。\n" * 80, encoding="utf-8")
    cfg = tiny_config(base / "run", text, max_iters=40)
    cfg.model.type, cfg.data.tokenizer, cfg.data.vocab_size, cfg.train.objective = "bert", "wordpiece", 120, "mlm"
    return lmkit.train(cfg, progress=False).out_dir


def test_bert_explain_shows_bidirectional_attention(bert_run, tmp_path):
    lm = lmkit.load(bert_run)
    a = analyse(lm, "the cat sat 猫")
    assert a["tokens"][0] == "[CLS]" and a["tokens"][-1] == "[SEP]" and not a["causal"]
    att = torch.tensor(a["attention"][0])
    assert torch.allclose(att.sum(-1), torch.ones(att.shape[:2]), atol=1e-5)
    assert att[..., torch.ones(att.shape[-1], att.shape[-1], dtype=torch.bool).triu(1)].sum() > 0.1  # sees the future
    assert all(s is None for s in a["surprisal"])
    assert write_page(lm, "the cat sat 猫", tmp_path / "b.html").is_file()


def test_bert_evaluate_reports_masked_accuracy(bert_run, tmp_path, capsys):
    from lmkit.evaluate.lm import evaluate_mlm
    f = tmp_path / "t.txt"
    f.write_text("the cat sat on the mat. the dog sat on the log.\n" * 20, encoding="utf-8")
    lm = lmkit.load(bert_run)
    s = evaluate_mlm(lm, str(f), progress=False)
    assert s.masked_tokens > 20 and 0 <= s.masked_top1_accuracy <= s.masked_top5_accuracy <= 1
    assert abs(s.perplexity - math.exp(s.loss)) < 1e-6 * s.perplexity
    assert s == evaluate_mlm(lm, str(f), progress=False)  # the same masks every time (fixed seed)
    assert main(["evaluate", str(bert_run), "--data", str(f)]) == 0
    assert "masked top-1 accuracy" in capsys.readouterr().out
