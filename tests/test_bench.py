"""lmkit evaluate --bench: the scorer against a pass per pair, the benchmark files, bad input, the hub path,
and parity with lm-evaluation-harness's own `hf` backend."""
import bz2
import json
import math

import pytest
import torch

import lmkit
from lmkit.api import LM
from lmkit.cli import main
from lmkit.config import ModelConfig
from lmkit.errors import LmkitError
from lmkit.evaluate import bench_hub
from lmkit.evaluate.bench import hellaswag_clean, letter_prompt, run_benchmark
from lmkit.evaluate.bench_score import encode_pairs, rolling_requests, score_pairs
from lmkit.models import build_model
from lmkit.tokenizer import Tokenizer

from conftest import SHARED

HELLASWAG = SHARED / "hellaswag" / "hellaswag_val_full.txt.bz2"
PAIRS = [("the cat sat on", " the mat"), ("the cat sat on", " a hat."), ("the cat sat on", " x"),
         ("hello", " world"), ("q: what? answer:", " A"), ("q: what? answer:", " B"), ("abc ", "def"),
         ("a very long context that will not fit into forty chars at all", " yes it is")]


def tiny_lm(kind="gpt", pos="rope", block=40):
    torch.manual_seed(0)
    tok = Tokenizer.train(["abcdefghijklmnopqrstuvwxyz ABCD.,:?\n"], kind="char")
    cfg = ModelConfig()
    cfg.type, cfg.pos, cfg.vocab_size = kind, pos, tok.vocab_size
    cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.block_size = 2, 2, 32, block
    return LM(build_model(cfg).eval(), tok, type("C", (), {"model": cfg})())


def one_pass(lm, ctx, cont):
    """Σ ln p(cont | ctx) from one forward pass over the last block+1 tokens (the harness's way)."""
    full = (ctx + cont)[-(lm.model.config.block_size + 1):]
    with torch.no_grad():
        lp = lm.model(torch.tensor([full[:-1]]))[0][0].float().log_softmax(-1)
    return sum(lp[len(full) - 1 - len(cont) + j, t].item() for j, t in enumerate(cont))


@pytest.mark.parametrize("kind,pos", [("gpt", "rope"), ("gpt", "learned"), ("lstm", "learned")])
def test_shared_context_cache_equals_one_pass_per_pair(kind, pos):
    lm = tiny_lm(kind, pos)
    got = score_pairs(lm, PAIRS, batch_size=3, progress=False)  # batches of groups, left padding, a cut context
    for (c, t), g in zip(encode_pairs(lm.tokenizer, PAIRS), got):
        assert abs(g.logprob - one_pass(lm, c, t)) < 1e-4
    assert [g.truncated for g in got] == [False] * 7 + [True]
    assert encode_pairs(lm.tokenizer, [("abc ", "def")])[0][1][0] == lm.tokenizer.encode(" ")[0]  # space moves


def test_a_batch_of_cut_and_whole_contexts_fits_the_window():
    lm = tiny_lm()  # block 40: the first context is cut to 21 tokens, the second (35) is not
    pairs = [("abcdefghij" * 5, " " + "klmnopqrs" * 2 + "t"), ("abcdefghij" * 3 + "klmno", " a")]
    got = score_pairs(lm, pairs, batch_size=8, progress=False)
    for (c, t), g in zip(encode_pairs(lm.tokenizer, pairs), got):
        assert abs(g.logprob - one_pass(lm, c, t)) < 1e-4
    assert [g.truncated for g in got] == [True, False]


def test_rolling_windows_predict_every_token_once():
    ids = list(range(10, 33))
    windows = rolling_requests(ids, prefix=0, block=8)
    assert sum((c for _, c in windows), []) == ids
    assert all(len(c) + len(t) - 1 <= 8 for c, t in windows) and len(windows[-1][0]) + len(windows[-1][1]) == 9


def _slice(tmp_path, n):
    lines = bz2.open(HELLASWAG, "rt", encoding="utf-8").read().split("\n")[:6 * n]
    f = tmp_path / "hs.txt"
    f.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return f, lines


def test_hellaswag_report_json_and_truncation(trained_run, tmp_path, capsys):
    f, lines = _slice(tmp_path, 12)
    out = tmp_path / "r.json"
    assert main(["evaluate", str(trained_run), "--bench", "hellaswag", "--data", str(f), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "acc_norm" in printed and "cut from the left" in printed  # block 32 < every context
    r = json.loads(out.read_text())["benchmarks"][0]
    assert r["items"] == 12 and r["truncated"] == 12 and r["chance"] == 0.25
    accs = []
    for e, i in zip(r["examples"], range(0, 72, 6)):
        assert len(e["logprobs"]) == 4 and e["gold"] == int(lines[i + 1])
        assert e["pred"] == max(range(4), key=lambda k: e["logprobs"][k])
        norm = [lp / len(hellaswag_clean(end).encode()) for lp, end in zip(e["logprobs"], lines[i + 2:i + 6])]
        assert e["pred_norm"] == max(range(4), key=lambda k: norm[k])
        accs.append(float(e["pred"] == e["gold"]))
    m = sum(accs) / 12
    assert math.isclose(r["metrics"]["acc"]["value"], m)
    assert math.isclose(r["metrics"]["acc"]["stderr"], math.sqrt(sum((a - m) ** 2 for a in accs) / 11 / 12))


def _letter_folder(tmp_path):
    d = tmp_path / "data" / "mmlu"
    (d / "test").mkdir(parents=True)
    (d / "dev").mkdir()
    for s in ("anatomy", "virology"):
        (d / "test" / f"{s}_test.csv").write_text("".join(f'"Q{i} of {s}?",a,b,"c, d",e,{"ABCD"[i % 4]}\n'
                                                          for i in range(5)))
        (d / "dev" / f"{s}_dev.csv").write_text("Shot one?,1,2,3,4,B\nShot two?,5,6,7,8,D\n")
    return d


def test_letter_prompts_are_the_standard_formats(tmp_path):
    row = {"question": " Why? ", "choices": ["w", "x", "y", "z"], "gold": 2}
    shot = {"question": "How?", "choices": ["1", "2", "3", "4"], "gold": 1}
    assert letter_prompt("mmlu", "college biology", row, [shot]) == (
        "The following are multiple choice questions (with answers) about college biology.\n\n"
        "How?\nA. 1\nB. 2\nC. 3\nD. 4\nAnswer: B\n\nWhy?\nA. w\nB. x\nC. y\nD. z\nAnswer:")
    assert letter_prompt("ceval", "高中化学", row, []) == (
        "以下是中国关于高中化学考试的单项选择题，请选出其中的正确答案。\n\nWhy?\nA. w\nB. x\nC. y\nD. z\n答案：")
    assert letter_prompt("cmmlu", "农学", row, [shot]).endswith("答案是：B\n\n题目：Why?\nA. w\nB. x\nC. y\nD. z\n答案是：")


def test_mmlu_subjects_shots_limit_and_macro_average(trained_run, tmp_path):
    d = _letter_folder(tmp_path)
    lm = lmkit.load(trained_run)
    r = run_benchmark(lm, "mmlu", str(d.parent), limit=3, shots=2, progress=False)
    assert r["items"] == 6 and set(r["subjects"]) == {"anatomy", "virology"} and r["shots"] == 2
    per = [p["acc"] for p in r["subjects"].values()]
    assert math.isclose(r["metrics"]["acc_macro"]["value"], sum(per) / 2)
    assert all(len(e["logprobs"]) == 4 and e["tokens"] == [2, 2, 2, 2] for e in r["examples"])  # " A" is 2 chars


def test_bad_input_names_file_row_and_field(trained_run, tmp_path, capsys):
    run = str(trained_run)
    assert main(["evaluate", run]) == 2
    assert "--data is required (or --bench NAME" in capsys.readouterr().err
    assert main(["evaluate", run, "--bench", "hellaswag,nope"]) == 2
    err = capsys.readouterr().err
    assert "unknown benchmark 'nope'" in err and "winogrande" in err and "Traceback" not in err
    assert main(["evaluate", run, "--bench", "lambada", "--data", str(tmp_path)]) == 2
    assert "lambada_test.jsonl: missing" in capsys.readouterr().err
    bad = tmp_path / "wino"
    bad.mkdir()
    (bad / "dev.jsonl").write_text('{"sentence": "A _ b.", "option1": "x", "option2": "y", "answer": "1"}\n'
                                   '{"sentence": "A _ b.", "option1": "x", "answer": "2"}\n')
    with pytest.raises(LmkitError, match=r"dev.jsonl: row 2: field 'option2' missing"):
        run_benchmark(lmkit.load(trained_run), "winogrande", str(bad), progress=False)
    (bad / "dev.jsonl").write_text('{"sentence": "A _ b.", "option1": "x", "option2": "y", "answer": "1"}\nnot json\n')
    assert main(["evaluate", run, "--bench", "winogrande", "--data", str(bad / "dev.jsonl")]) == 2
    assert "dev.jsonl: row 2: not valid JSON" in capsys.readouterr().err
    f, _ = _slice(tmp_path, 2)
    f.write_text(f.read_text().replace("\n3\n", "\nthree\n", 1))
    assert main(["evaluate", run, "--bench", "hellaswag", "--data", str(f)]) == 2
    assert "item 1 (line 2): field 'label' must be 0-3" in capsys.readouterr().err


def test_hub_path_through_datasets_on_a_local_file(trained_run, tmp_path, monkeypatch):
    rows = [{"text": "the king said to be or not to be"}, {"text": "what is the question of the day"}]
    f = tmp_path / "lambada.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.setitem(bench_hub.HUB, "lambada", bench_hub.HubSpec("json", None, "train", data_files=str(f)))
    lm = lmkit.load(trained_run)
    r = run_benchmark(lm, "lambada", None, progress=False)
    assert r["items"] == 2 and r["source"] == "hf:json"
    lls = [e["logprobs"][0] for e in r["examples"]]
    assert math.isclose(r["metrics"]["perplexity"]["value"], math.exp(-sum(lls) / 2), rel_tol=1e-9)
    direct = score_pairs(lm, [("the king said to be or not to", " be")], progress=False)[0]
    assert math.isclose(lls[0], direct.logprob, rel_tol=1e-6) and r["examples"][0]["acc"] == float(direct.greedy)


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    """A small random Llama saved by transformers (its own byte-level BPE), and its `lmkit import-hf` run."""
    from tokenizers import Tokenizer as HFTokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
    tmp = tmp_path_factory.mktemp("llama")
    text = bz2.open(HELLASWAG, "rt", encoding="utf-8").read().split("\n")[:600]
    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer, hf.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    hf.train_from_iterator(text, trainers.BpeTrainer(vocab_size=600, special_tokens=["<|endoftext|>"],
                                                     initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                     show_progress=False))
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=hf.get_vocab_size(), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      tie_word_embeddings=False, bos_token_id=0, eos_token_id=0)
    LlamaForCausalLM(cfg).save_pretrained(tmp / "hf")
    PreTrainedTokenizerFast(tokenizer_object=hf, eos_token="<|endoftext|>").save_pretrained(tmp / "hf")
    assert main(["import-hf", str(tmp / "hf"), "--out", str(tmp / "run")]) == 0
    return tmp


def test_parity_with_lm_eval_hf_backend_on_100_hellaswag_rows(llama, tmp_path):
    lm_eval = pytest.importorskip("lm_eval")
    from lm_eval.tasks import TaskManager
    import lmkit.evaluate.harness  # noqa: F401  (registers model "lmkit")
    f, lines = _slice(tmp_path, 100)
    ours = run_benchmark(lmkit.load(llama / "run"), "hellaswag", str(f), progress=False)
    docs = [{"query": hellaswag_clean(lines[i]), "choices": [hellaswag_clean(e) for e in lines[i + 2:i + 6]],
             "label": int(lines[i + 1])} for i in range(0, 600, 6)]
    (tmp_path / "hs.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "hs.yaml").write_text(
        "task: hs_slice\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
        f"    validation: {tmp_path / 'hs.jsonl'}\nvalidation_split: validation\noutput_type: multiple_choice\n"
        'doc_to_text: "{{query}}"\ndoc_to_target: "{{label}}"\ndoc_to_choice: "{{choices}}"\n'
        "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"
        "  - metric: acc_norm\n    aggregation: mean\n    higher_is_better: true\n")
    tm = TaskManager(include_path=str(tmp_path / "tasks"), include_defaults=False)
    results = {}
    for model, args in (("hf", f"pretrained={llama / 'hf'},dtype=float32"), ("lmkit", f"run={llama / 'run'}")):
        res = lm_eval.simple_evaluate(model=model, model_args=args, tasks=["hs_slice"], task_manager=tm,
                                      log_samples=True, batch_size=16, device="cpu")
        samples = sorted(res["samples"]["hs_slice"], key=lambda s: s["doc_id"])
        theirs = [[r[0][0] for r in s["resps"]] for s in samples]
        assert len(theirs) == 100
        assert max(abs(a - b) for e, t in zip(ours["examples"], theirs) for a, b in zip(e["logprobs"], t)) < 1e-4
        results[model] = res["results"]["hs_slice"]
        for m in ("acc", "acc_norm"):
            assert results[model][f"{m},none"] == ours["metrics"][m]["value"]


def test_harness_model_rolling_and_generate():
    pytest.importorskip("lm_eval")
    from lm_eval.api.instance import Instance
    from lmkit.evaluate.harness import LmkitLM
    lm = tiny_lm(block=16)
    h = LmkitLM(lm=lm)
    text = "the cat sat on the mat and then the dog sat too"  # 48 tokens: four windows of 16
    ids = lm.tokenizer.encode(text)
    expected = sum(one_pass(lm, c, t) for c, t in rolling_requests(ids, h.eot_token_id, 16))
    short = one_pass(lm, [h.eot_token_id], lm.tokenizer.encode("the cat"))
    got = h.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (t,), 0) for t in (text, "the cat")],
                                  disable_tqdm=True)
    assert abs(got[0] - expected) < 1e-3 and abs(got[1] - short) < 1e-4
    ll = h.loglikelihood([Instance("loglikelihood", {}, ("the cat sat", " on"), 0)], disable_tqdm=True)
    assert abs(ll[0][0] - score_pairs(lm, [("the cat sat", " on")], progress=False)[0].logprob) < 1e-6
    out = h.generate_until([Instance("generate_until", {}, ("the cat", {"until": ["\n"], "max_gen_toks": 8}), 0)],
                           disable_tqdm=True)
    assert isinstance(out[0], str) and "\n" not in out[0] and len(out[0]) <= 8
