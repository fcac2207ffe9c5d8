"""One vocabulary of flags: outputs are --out, old spellings still work with a note, the training shorthands
are their --set keys, and `lmkit config` lists every key with its value, default, type and meaning."""
import dataclasses
import json

import pytest

from lmkit.cli import build_parser, flags, main
from lmkit.config import Config
from lmkit.config_help import MEANINGS


def test_every_config_field_has_a_meaning_and_no_meaning_is_left_over():
    cfg = Config()
    keys = {f"{s}.{f.name}" for s in ("model", "data", "train") for f in dataclasses.fields(getattr(cfg, s))}
    assert sorted(keys - MEANINGS.keys()) == [], "add these to src/lmkit/config_help.py MEANINGS"
    assert sorted(MEANINGS.keys() - keys) == [], "no such config fields"
    assert all(len(m) > 10 and "\n" not in m for m in MEANINGS.values())


def test_config_lists_every_key_with_value_default_type_and_meaning(tmp_path, capsys):
    toml = tmp_path / "c.toml"
    toml.write_text('n_layer = 3\n[train]\noptimizer = "muon"\n')
    assert main(["config", str(toml), "--set", "dropout=0.1"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line[:2] in ("  ", "* ")]
    assert len(rows) == len(MEANINGS)
    changed = {line.split()[1] for line in rows if line.startswith("* ")}
    assert changed == {"n_layer", "optimizer", "dropout"}
    line = next(l for l in rows if l.split()[1] == "optimizer")
    assert '"muon"' in line and 'default "adamw"' in line and "adamw | muon" in line and MEANINGS["train.optimizer"] in line
    assert main(["config", "--defaults"]) == 0
    assert not [l for l in capsys.readouterr().out.splitlines() if l.startswith("* ")]
    assert main(["config", "--defaults", str(toml)]) == 2
    assert main(["config", str(tmp_path)]) == 2  # a folder that is no run
    assert "no config.json" in capsys.readouterr().err


def test_config_of_a_run_directory(trained_run, capsys):
    assert main(["config", str(trained_run)]) == 0
    saved = json.loads((trained_run / "config.json").read_text())
    line = next(l for l in capsys.readouterr().out.splitlines() if l[2:].split()[:1] == ["n_embd"])
    assert line.split()[2] == str(saved["model"]["n_embd"])


def test_training_shorthands_are_their_set_keys():
    a = build_parser().parse_args(["train", "c.toml", "--out", "runs/x", "--device", "cpu", "--threads", "1",
                                   "--learning-rate", "2e-3", "--max-iters", "50", "--seed", "7", "--set", "n_layer=2"])
    assert a.overrides == ["n_layer=2"]
    assert flags.settings_of(a) == ["out_dir=runs/x", "device=cpu", "num_threads=1", "seed=7", "learning_rate=0.002",
                                    "max_iters=50"]
    a = build_parser().parse_args(["finetune", "sft", "--base", "b", "--data", "d", "--out", "o", "--batch-size", "2"])
    assert flags.settings_of(a, out_key=None) == ["batch_size=2"] and a.out == "o"


def test_train_out_and_resume_by_out(tmp_path, text_file, capsys):
    toml = tmp_path / "c.toml"
    toml.write_text(f'data = "{text_file}"\nn_layer = 1\nn_head = 2\nn_embd = 16\nblock_size = 16\nbatch_size = 4\n'
                    'eval_interval = 5\neval_iters = 1\ndtype = "float32"\n')
    run = tmp_path / "run"
    assert main(["train", str(toml), "--out", str(run), "--max-iters", "5", "--threads", "1", "--quiet"]) == 0
    assert json.loads((run / "config.json").read_text())["train"]["max_iters"] == 5
    assert main(["train", "--resume", "--out", str(run), "--max-iters", "10", "--quiet"]) == 0
    assert "step 10:" in capsys.readouterr().out


def test_old_spellings_work_once_with_a_note(tmp_path, text_file, trained_run, capsys):
    assert main(["tokenizer", "train", str(text_file), "--out", str(tmp_path / "t.json"), "--type", "char"]) == 0
    err = capsys.readouterr().err
    assert err.count("note: --type is now --tokenizer") == 1
    assert json.loads((tmp_path / "t.json").read_text())  # it was written, as a char tokenizer
    assert main(["export-hf", str(trained_run), str(tmp_path / "hf")]) == 0
    out, err = capsys.readouterr()
    assert "note: the output as a positional" in err and "--out" in err
    assert (tmp_path / "hf" / "config.json").is_file()
    assert main(["export-hf", str(trained_run), str(tmp_path / "a"), "--out", str(tmp_path / "b")]) == 2
    assert "given twice" in capsys.readouterr().err
    assert main(["export-hf", str(trained_run)]) == 2
    assert "--out is required" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


@pytest.mark.parametrize("command", ["import-hf", "export-hf", "export-onnx", "export-gguf", "quantize", "prune",
                                     "embed", "grow", "tokenizer train", "prepare", "finetune merge", "finetune sft",
                                     "finetune classify"])
def test_every_output_is_out(command, capsys):
    with pytest.raises(SystemExit):
        main([*command.split(), "--help"])
    assert "--out OUT" in capsys.readouterr().out


@pytest.mark.parametrize("command", ["quickstart", "train", "generate", "chat", "fill-mask", "finetune classify",
                                     "finetune sft", "evaluate", "serve"])
def test_device_where_a_model_runs(command, capsys):
    with pytest.raises(SystemExit):
        main([*command.split(), "--help"])
    assert "--device" in capsys.readouterr().out
