"""Task metrics against hand-computed values and the libraries' own, and `lmkit evaluate --task`."""
import json

import pytest

from lmkit.evaluate.tasks import bleu_chrf, evaluate_task, exact_match, rouge, task_messages, token_f1

rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer", reason="needs rouge-score (pip install -e '.[tasks]')")
sacrebleu = pytest.importorskip("sacrebleu", reason="needs sacrebleu (pip install -e '.[tasks]')")


def test_exact_match_and_token_f1_follow_squad():
    # SQuAD normalisation: case, punctuation and articles do not count; the best reference counts
    assert exact_match("The Eiffel Tower!", ["eiffel tower", "Paris"]) == 1.0
    assert exact_match("Eiffel", ["eiffel tower"]) == 0.0
    # "in city of paris" vs "paris france": 1 shared token, P = 1/4, R = 1/2, F1 = 2PR/(P+R) = 1/3
    assert token_f1("in the city of Paris", ["Paris, France"]) == pytest.approx(1 / 3)
    assert token_f1("in the city of Paris", ["Paris, France", "the city of Paris"]) == pytest.approx(6 / 7)
    assert token_f1("", ["paris"]) == 0.0 and token_f1("the", ["a"]) == 1.0  # both empty after normalisation
    assert token_f1("北京市", ["北京"]) == pytest.approx(0.8)  # Chinese: a token per character


def test_rouge_matches_rouge_score():
    pred, ref = "the cat was sitting on a mat", "the cat sat on the mat"
    ours = rouge([pred], [ref])
    lib = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True).score(ref, pred)
    for k in ("rouge1", "rouge2", "rougeL"):
        assert ours[k] == pytest.approx(100 * lib[k].fmeasure)
    # by hand: unigrams the, cat, on, mat shared (sitting -> sit): P 4/7, R 4/6; bigram "the cat": P 1/6, R 1/5
    assert ours["rouge1"] == pytest.approx(100 * 2 * (4 / 7) * (4 / 6) / (4 / 7 + 4 / 6))
    assert ours["rouge2"] == pytest.approx(100 * 2 * (1 / 6) * (1 / 5) / (1 / 6 + 1 / 5))
    assert rouge(["猫坐在垫子上"], ["猫坐在地上"])["rouge1"] > 50  # Chinese is scored by character, not dropped


def test_bleu_and_chrf_match_sacrebleu():
    hyps, refs = ["the cat sat on the mat .", "a dog barked loudly"], ["the cat sat on a mat .", "the dog barked loudly"]
    ours = bleu_chrf(hyps, refs)
    assert ours["bleu"] == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs]).score) and ours["bleu_tokenize"] == "13a"
    assert ours["chrf"] == pytest.approx(sacrebleu.corpus_chrf(hyps, [refs]).score)
    assert 40 < ours["bleu"] < 50 and 70 < ours["chrf"] < 80
    zh = bleu_chrf(["我喜欢吃苹果。"], ["我爱吃苹果。"])  # Chinese has no spaces: sacrebleu's zh tokenizer
    assert zh["bleu_tokenize"] == "zh"
    assert zh["bleu"] == pytest.approx(sacrebleu.corpus_bleu(["我喜欢吃苹果。"], [["我爱吃苹果。"]], tokenize="zh").score)
    assert zh["bleu"] > 20 and sacrebleu.corpus_bleu(["我喜欢吃苹果。"], [["我爱吃苹果。"]]).score == 0.0


def test_evaluate_task_end_to_end(trained_run, tmp_path, capsys):
    import lmkit
    from lmkit.api import LM
    from lmkit.cli import main
    from lmkit.models import build_model
    base = lmkit.load(trained_run)  # the run's tokenizer with a fresh model of 160 positions: room for prompts
    base.config.model.block_size = 160
    lm = LM(build_model(base.config.model).eval(), base.tokenizer, base.config)
    rows = [{"question": "To be?", "context": "To be, or not to be", "answers": ["not to be"]},
            {"question": "What is it?", "answers": {"text": ["the question"]}},
            {"question": "missing answers"},
            {"messages": [{"role": "user", "content": "To be"}, {"role": "assistant", "content": "or not"}]}]
    data = tmp_path / "qa.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    r = evaluate_task("fresh", "qa", str(data), max_new_tokens=4, progress=False, lm=lm)
    assert r["rows"] == 3 and r["skipped"] == 1 and r["chat_template"] == "plain"
    assert [p["references"] for p in r["predictions"]] == [["not to be"], ["the question"], ["or not"]]
    assert all(len(lm.tokenizer.encode(p["prediction"])) <= 4 for p in r["predictions"])
    em = sum(exact_match(p["prediction"], p["references"]) for p in r["predictions"]) / 3
    f1 = sum(token_f1(p["prediction"], p["references"]) for p in r["predictions"]) / 3
    assert r["metrics"] == pytest.approx({"exact_match": 100 * em, "f1": 100 * f1})
    # a long document is cut to fit the context
    doc = tmp_path / "sum.jsonl"
    doc.write_text(json.dumps({"document": "To be, or not to be. " * 40, "summary": "to be"}) + "\n")
    r = evaluate_task("fresh", "summarization", str(doc), max_new_tokens=4, progress=False, lm=lm)
    assert r["rows"] == 1 and r["cut"] == 1 and set(r["metrics"]) == {"rouge1", "rouge2", "rougeL"}
    # the command: a table and a JSON file (the trained 32-token run; short conversation rows)
    data.write_text(json.dumps(rows[3]) + "\n")
    out = tmp_path / "scores.json"
    assert main(["evaluate", str(trained_run), "--task", "translation", "--data", str(data), "--max-new-tokens",
                 "4", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "BLEU" in printed and "chrF" in printed
    saved = json.loads(out.read_text())
    assert saved["rows"] == 1 and saved["predictions"][0]["references"] == ["or not"]
    assert saved["metrics"]["chrf"] == pytest.approx(
        sacrebleu.corpus_chrf([saved["predictions"][0]["prediction"]], [["or not"]]).score)


def test_task_prompts_are_shared_with_training():
    msgs, refs = task_messages("translation", {"source": "Hi.", "target": "你好。", "target_lang": "Chinese"})
    assert msgs == [("user", "Translate into Chinese.\n\nHi.")] and refs == ["你好。"]
    from lmkit.errors import LmkitError
    with pytest.raises(LmkitError, match="missing or empty 'summary'"):
        task_messages("summarization", {"document": "x"})
