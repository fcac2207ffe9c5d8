"""Every command that takes a model directory, against every kind of directory lmkit reads or writes.

Each cell either works (exit 0) or prints exactly one `error:` line that names the kind it found (or the
problem: an empty folder, a missing path, a corrupt file), exit 2, no traceback. The table WORKS says which
cells work; every other cell must be refused.
"""
import io
import json
import shutil

import pytest

from conftest import tiny_config

KINDS = ["gpt", "lstm", "bert", "hf-gpt2", "hf-bert", "int8", "pruned", "lora", "merged", "classifier", "index",
         "data", "empty", "missing", "corrupt-config", "corrupt-weights", "peft"]
# what a refusal must say for each kind
NAMES = {"gpt": "GPT run", "lstm": "LSTM run", "bert": "BERT run", "hf-gpt2": "Hugging Face GPT model",
         "hf-bert": "Hugging Face BERT model", "int8": "int8 run", "pruned": "pruned run", "lora": "LoRA run",
         "merged": "merged LoRA run", "classifier": "text classifier", "index": "search index",
         "data": "prepared training data", "empty": "empty folder", "missing": "no such",
         "corrupt-config": "corrupt", "corrupt-weights": "corrupt", "peft": "PEFT LoRA adapter"}
CAUSAL = {"gpt", "lstm", "hf-gpt2", "int8", "pruned", "lora", "merged", "peft"}
FLOAT_GPT = {"gpt", "hf-gpt2", "pruned", "lora", "merged", "peft"}
WORKS = {
    "generate": CAUSAL, "chat": CAUSAL, "serve": CAUSAL,
    "evaluate": CAUSAL | {"bert", "hf-bert"},
    "explain": CAUSAL | {"bert", "hf-bert"},
    "fill-mask": {"bert", "hf-bert"},
    "predict": {"classifier"},
    "export-hf": FLOAT_GPT | {"bert", "hf-bert"},
    "export-onnx": FLOAT_GPT | {"bert", "hf-bert", "lstm"},
    "quantize": FLOAT_GPT | {"bert", "hf-bert"},
    "prune": FLOAT_GPT | {"bert", "hf-bert"},
    "grow": {"gpt", "pruned", "merged"},
    "sft": FLOAT_GPT,
    "classify": FLOAT_GPT | {"bert", "hf-bert", "lstm"},
    "embed": {"bert", "hf-bert"},
    "init_from": {"gpt", "pruned"},
    "resume": {"gpt", "lstm", "bert"},
}


@pytest.fixture(scope="module")
def kinds(tmp_path_factory):
    from lmkit import train
    from lmkit.cli import main
    base = tmp_path_factory.mktemp("kinds")
    text = base / "text.txt"
    text.write_text("To be, or not to be, that is the question. 床前明月光。\n" * 60, encoding="utf-8")
    k = {}
    cfg = tiny_config(base / "gpt", text, max_iters=4, eval_interval=4)
    k["gpt"] = train(cfg, progress=False).out_dir
    cfg = tiny_config(base / "lstm", text, max_iters=2, eval_interval=2)
    cfg.model.type = "lstm"
    k["lstm"] = train(cfg, progress=False).out_dir
    cfg = tiny_config(base / "bert", text, max_iters=2, eval_interval=2, objective="mlm")
    cfg.data.tokenizer, cfg.data.vocab_size, cfg.model.type = "wordpiece", 120, "bert"
    k["bert"] = train(cfg, progress=False).out_dir
    for name, argv in [
        ("hf-gpt2", ["export-hf", k["gpt"], base / "hf-gpt2"]),
        ("hf-bert", ["export-hf", k["bert"], base / "hf-bert"]),
        ("int8", ["quantize", k["gpt"], "--out", base / "int8"]),
        ("pruned", ["prune", k["gpt"], "--sparsity", "0.3", "--out", base / "pruned"]),
    ]:
        assert main([str(a) for a in argv]) == 0, name
        k[name] = base / name
    chat = base / "chat.jsonl"
    chat.write_text("".join(json.dumps({"instruction": f"say {w}", "output": w}) + "\n"
                            for w in ["to", "be", "or", "not"] * 5), encoding="utf-8")
    assert main(["finetune", "sft", "--base", str(k["gpt"]), "--data", str(chat), "--out", str(base / "lora"),
                 "--lora-rank", "2", "--set", "max_iters=2", "eval_interval=2", "batch_size=2", "--quiet"]) == 0
    k["lora"] = base / "lora"
    assert main(["finetune", "merge", str(k["lora"]), str(base / "merged")]) == 0
    k["merged"] = base / "merged"
    labelled = base / "labels.jsonl"
    labelled.write_text("".join(json.dumps({"text": f"{w} film", "label": w == "good"}) + "\n"
                                for w in ["good", "bad"] * 10), encoding="utf-8")
    assert main(["finetune", "classify", "--train", str(labelled), "--eval", str(labelled), "--model",
                 "bag-of-embeddings", "--epochs", "1", "--vocab-size", "100", "--out", str(base / "classifier"),
                 "--quiet"]) == 0
    k["classifier"] = base / "classifier"
    assert main(["embed", str(k["bert"]), "--data", str(text), "--chunk-tokens", "24", "--overlap", "4",
                 "--out", str(base / "index")]) == 0
    k["index"] = base / "index"
    assert main(["prepare", str(text), "--out", str(base / "data"), "--tokenizer", "char"]) == 0
    k["data"] = base / "data"
    (base / "empty").mkdir()
    k["empty"], k["missing"] = base / "empty", base / "missing"
    shutil.copytree(k["gpt"], base / "corrupt-config")
    (base / "corrupt-config" / "config.json").write_text("{not json", encoding="utf-8")
    shutil.copytree(k["gpt"], base / "corrupt-weights")
    w = base / "corrupt-weights" / "model.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    k["corrupt-config"], k["corrupt-weights"] = base / "corrupt-config", base / "corrupt-weights"
    import peft  # a PEFT LoRA adapter folder (made by peft) on the GPT-2 folder: read merged onto it
    import transformers
    hf = transformers.AutoModelForCausalLM.from_pretrained(k["hf-gpt2"])
    peft.get_peft_model(hf, peft.LoraConfig(r=2, target_modules=["c_attn"], fan_in_fan_out=True)).save_pretrained(
        base / "peft")
    k["peft"] = base / "peft"
    toml = base / "small.toml"
    toml.write_text(f'data = "{text}"\ntokenizer = "char"\nn_layer = 2\nn_head = 2\nn_embd = 32\nblock_size = 32\n'
                    'max_iters = 1\neval_interval = 1\neval_iters = 1\nbatch_size = 2\ndtype = "float32"\n',
                    encoding="utf-8")
    k["_text"], k["_labels"], k["_chat"], k["_toml"] = text, labelled, chat, toml
    return k


def argv_for(command: str, path, k, out) -> list[str]:
    p, text = str(path), str(k["_text"])
    return {
        "generate": ["generate", p, "--prompt", "To", "--max-new-tokens", "3"],
        "chat": ["chat", p, "--max-new-tokens", "3"],
        "serve": ["serve", p],
        "evaluate": ["evaluate", p, "--data", text, "--max-tokens", "64"],
        "explain": ["explain", p, "To be", "--out", str(out / "e.html")],
        "fill-mask": ["fill-mask", p, "To [MASK]"],
        "predict": ["predict", p, "good film"],
        "export-hf": ["export-hf", p, str(out / "hf")],
        "export-onnx": ["export-onnx", p, str(out / "m.onnx"), "--no-check"],
        "quantize": ["quantize", p, "--out", str(out / "q")],
        "prune": ["prune", p, "--out", str(out / "p")],
        "grow": ["grow", p, "--n-layer", "4", "--out", str(out / "g")],
        "sft": ["finetune", "sft", "--base", p, "--data", str(k["_chat"]), "--out", str(out / "s"),
                "--set", "max_iters=1", "eval_interval=1", "batch_size=2", "--quiet"],
        "classify": ["finetune", "classify", "--base", p, "--train", str(k["_labels"]), "--eval",
                     str(k["_labels"]), "--epochs", "1", "--max-len", "16", "--out", str(out / "c"), "--quiet"],
        "embed": ["embed", p, "--data", text, "--chunk-tokens", "24", "--overlap", "4", "--out", str(out / "i")],
        "init_from": ["train", str(k["_toml"]), "--set", f"init_from={p}", f"out_dir={out / 't'}", "--quiet"],
        "resume": ["train", "--resume", "--set", f"out_dir={p}", "max_iters=5", "--quiet"],
    }[command]


@pytest.mark.parametrize("command", list(WORKS))
def test_command_against_every_kind(command, kinds, tmp_path, monkeypatch, capsys):
    from lmkit.cli import main
    import uvicorn
    monkeypatch.setattr(uvicorn.Server, "run", lambda *a, **kw: None)  # serve: load and build the app, don't listen
    failures = []
    for kind in KINDS:
        path = kinds[kind]
        if command == "resume" and kind in KINDS[:10]:  # resume writes into the run: give it a copy
            shutil.copytree(path, tmp_path / f"copy-{kind}")
            path = tmp_path / f"copy-{kind}"
        out = tmp_path / kind
        out.mkdir()
        monkeypatch.setattr("sys.stdin", io.StringIO("hello\n/quit\n"))
        try:
            rc = main(argv_for(command, path, kinds, out))
        except SystemExit as e:  # argparse
            rc = e.code
        except Exception as e:  # a traceback a user would see
            failures.append(f"{kind}: raised {type(e).__name__}: {e}")
            continue
        err = [l for l in capsys.readouterr().err.splitlines() if l.startswith("error:") or "Traceback" in l]
        if kind in WORKS[command]:
            if rc != 0:
                failures.append(f"{kind}: should work, exit {rc}: {err}")
        elif rc != 2 or len(err) != 1 or NAMES[kind] not in err[0]:
            failures.append(f"{kind}: should be refused naming {NAMES[kind]!r}; exit {rc}, {err}")
    assert not failures, f"{command}:\n" + "\n".join(failures)
