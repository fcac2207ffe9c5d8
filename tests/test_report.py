"""`lmkit report RUN`: the page training writes at its end, its contents, bad input, and the page in headless
Chromium (no console error, curves drawn)."""
import io
import json
import os
import shutil

import numpy as np
import pytest

import lmkit
from lmkit.cli import main
from lmkit.report import build_report, weights_parameters
from conftest import tiny_config

EVAL = {"run": "x", "data": "held-out.txt", "tokens": 1234, "loss": 2.5, "perplexity": 12.18, "bits_per_byte": 1.9,
        "per_subject": {"数学": {"acc": 0.25, "n": 40}, "history": {"acc": 0.5, "n": 20}}, "examples": [1, 2, 3]}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A run in a folder with a Chinese name, on English and Chinese text, with an evaluation result beside it."""
    base = tmp_path_factory.mktemp("report")
    data = base / "text.txt"
    data.write_text("".join(f"{i} little pigs went to market; 小猪{i}去市场。\n" for i in range(300)), encoding="utf-8")
    out = lmkit.train(tiny_config(base / "运行", data, max_iters=20), progress=False).out_dir
    (out / "eval_lm.json").write_text(json.dumps(EVAL, ensure_ascii=False), encoding="utf-8")
    return out


def test_training_writes_the_report_and_the_command_rewrites_it(run, tmp_path, capsys):
    page = (run / "report.html").read_text(encoding="utf-8")
    assert page.startswith("<!doctype html>") and '<meta charset="utf-8">' in page and "运行" in page
    assert "<script" not in page and "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")
    out = tmp_path / "r.html"
    assert main(["report", str(run), "--out", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    page = out.read_text(encoding="utf-8")
    for section in ("overview", "curves", "samples at each evaluation", "evaluations", "data", "model",
                    "machine and wall time per phase", "config: train"):
        assert f"<h2>{section}</h2>" in page, section
    assert page.count('<svg class="chart"') >= 5  # loss by step, by tokens, tokens/s, lr, grad norm, memory
    meta = json.loads((run / "data" / "meta.json").read_text())
    assert f"{meta['train_tokens']:,}" in page  # the data's tokens
    summary = json.loads((run / "summary.json").read_text())
    assert f"{summary['model']['parameters']:,}" in page and f"{summary['model']['flops_per_token']:,.0f}" in page
    assert "12.18" in page and "数学" in page and "examples: 3 entries" in page  # the evaluation table
    samples = [json.loads(l) for l in open(run / "samples.jsonl", encoding="utf-8")]
    assert page.count("<pre class='sample'>") == sum(len(r["samples"]) for r in samples) == 6


def test_an_older_run_without_summary_or_samples_still_reports(run, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(run, old)
    for f in ("summary.json", "samples.jsonl", "eval_lm.json"):
        (old / f).unlink()
    page = build_report(old)
    n = weights_parameters(old / "model.safetensors")  # parameters come from the weights' header instead
    assert n > 20000 and f"<td class=\"n\">{n:,}</td>" in page
    assert "no samples" in page and "no evaluation results" in page and "no summary.json" in page


def test_bad_input_is_one_line(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nothing")]) == 2
    assert "not a training run directory" in capsys.readouterr().err
    (tmp_path / "config.json").write_text("{}")
    assert main(["report", str(tmp_path), "--eval", str(tmp_path / "missing.json")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err


webdriver = pytest.importorskip("selenium.webdriver", reason="the browser test needs selenium")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage", "--window-size=1400,1000"]


@pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="no Chromium: apt-get install -y chromium chromium-driver")
def test_the_page_loads_without_errors_and_shows_the_curves(run, tmp_path):
    from PIL import Image
    from selenium.webdriver.chrome.service import Service
    os.environ["SE_OFFLINE"] = "true"
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS + [f"--user-data-dir={tmp_path / 'profile'}"]:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=DRIVER), options=options)
    try:
        driver.get((run / "report.html").resolve().as_uri())
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert not errors, errors
        assert "运行" in driver.find_element("css selector", "h1").text  # decoded as UTF-8
        first = json.loads(open(run / "samples.jsonl", encoding="utf-8").readline())["samples"][0]
        shown = driver.find_element("css selector", "pre.sample").text
        assert shown.startswith(first["prompt"].strip()) and first["text"].strip()[:10] in shown
        charts = driver.find_elements("css selector", "svg.chart")
        assert len(charts) >= 5
        img = np.asarray(Image.open(io.BytesIO(charts[0].screenshot_as_png)).convert("RGB")).astype(int)
        inked = (img.sum(axis=-1) < 600).mean()
        blue = (np.abs(img - [31, 119, 180]).max(axis=-1) < 40).sum()  # the first series' colour
        assert img.shape[1] > 300 and inked > 0.01 and blue > 100, (img.shape, inked, blue)  # axes, text, a curve
    finally:
        driver.quit()
