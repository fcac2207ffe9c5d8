"""The command line: real subprocesses, so exit codes and stderr are what a user sees."""
import os
import re
import subprocess
import sys

import pytest

from lmkit.cli import main


def lmkit_cmd(*args, cwd=None):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", "lmkit", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=300)


def assert_clean_error(proc, *fragments):
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for frag in fragments:
        assert frag in lines[0], (frag, lines[0])


def test_end_to_end_tokenizer_prepare_train_generate(tmp_path):
    text = tmp_path / "poems.txt"
    text.write_text("白日依山尽，黄河入海流。\nThe sun sets behind the hills.\n" * 300, encoding="utf-8")
    p = lmkit_cmd("tokenizer", "train", text, "--out", tmp_path / "tok.json", "--vocab-size", "300")
    assert p.returncode == 0, p.stderr
    p = lmkit_cmd("prepare", text, "--out", tmp_path / "data", "--tokenizer", tmp_path / "tok.json")
    assert p.returncode == 0 and "tail split" in p.stdout, p.stderr
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'data = "{tmp_path / "data"}"\nn_layer = 1\nn_head = 2\nn_embd = 32\nblock_size = 32\n'
                   'batch_size = 4\nmax_iters = 30\neval_interval = 15\neval_iters = 2\ndtype = "float32"\n')
    p = lmkit_cmd("train", cfg, "--set", f"out_dir={tmp_path / 'run'}", "--quiet")
    assert p.returncode == 0, p.stderr
    assert "val loss" in p.stdout and "loss.png" in p.stdout
    p = lmkit_cmd("generate", tmp_path / "run", "--prompt", "白日", "--max-new-tokens", "12", "--seed", "1")
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("白日") and len(p.stdout) > 3


def test_bad_inputs_give_one_line_errors(tmp_path):
    assert_clean_error(lmkit_cmd("prepare", tmp_path / "missing.txt", "--out", tmp_path / "o"),
                       "missing.txt", "no such file")
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"ok\n\xff\xfe")
    assert_clean_error(lmkit_cmd("prepare", bad, "--out", tmp_path / "o", "--tokenizer", "char"),
                       "bad.txt", "byte offset 3", "--errors replace")
    assert not (tmp_path / "o").exists()
    p = lmkit_cmd("prepare", bad, "--out", tmp_path / "o", "--tokenizer", "char", "--errors", "replace")
    assert p.returncode == 0, p.stderr
    assert_clean_error(lmkit_cmd("tokenizer", "train", bad, "--out", tmp_path / "t.json", "--vocab-size", "10",
                                 "--errors", "replace"), "vocab_size 10 is too small")
    cfg = tmp_path / "c.toml"
    cfg.write_text("learning_rat = 0.1\n")
    assert_clean_error(lmkit_cmd("train", cfg), "unknown config key 'learning_rat'", "did you mean 'learning_rate'")
    assert_clean_error(lmkit_cmd("train", tmp_path / "nope.toml"), "nope.toml", "no such config file")
    assert_clean_error(lmkit_cmd("generate", tmp_path, "--prompt", "x"), "not a run directory")


def test_in_process_errors_return_nonzero(tmp_path, capsys):
    assert main(["train", "--set", "n_embd=30", "n_head=4", f"out_dir={tmp_path}"]) == 2
    assert "give a CONFIG.toml" in capsys.readouterr().err
    cfg = tmp_path / "c.toml"
    cfg.write_text("n_embd = 30\nn_head = 4\n")
    assert main(["train", str(cfg)]) == 2
    assert "n_embd (30) must be divisible by n_head (4)" in capsys.readouterr().err


# every command of `lmkit --help`, and for each leaf (a command, or a command's subcommand) the smallest
# argv that parses, with the handler it must reach
COMMANDS = ["quickstart", "tokenizer", "prepare", "train", "grow", "config", "plot", "generate", "chat", "fill-mask",
            "finetune", "predict", "evaluate", "explain", "report", "import-hf", "export-hf", "quantize", "prune",
            "export-onnx", "export-gguf", "embed", "search", "serve"]
LEAVES = {
    "quickstart": [], "tokenizer train": ["d", "--out", "t.json"], "prepare": ["d", "--out", "o"], "train": ["c.toml"],
    "grow": ["r", "--n-layer", "2", "--out", "o"], "config": [], "plot": ["r"], "generate": ["r"], "chat": ["r"],
    "fill-mask": ["r", "[MASK]"], "finetune classify": ["--train", "t", "--eval", "e", "--out", "o", "--model", "gpt"],
    "finetune sft": ["--base", "r", "--data", "d", "--out", "o"], "finetune merge": ["r", "--out", "o"], "predict": ["r", "x"],
    "evaluate": ["r", "--data", "d"], "explain": ["r", "x"], "report": ["r"], "import-hf": ["h", "--out", "o"], "export-hf": ["r", "--out", "o"],
    "quantize": ["r", "--out", "o"], "prune": ["r", "--out", "o"], "export-onnx": ["r", "--out", "o.onnx"],
    "export-gguf": ["r", "--out", "o.gguf"],
    "embed": ["--data", "d", "--out", "o"], "search": ["i", "q"], "serve": ["r"],
}
HEAVY = ("torch", "numpy", "transformers", "fastapi", "tokenizers", "safetensors")


def test_the_table_holds_every_command_once():
    import argparse
    from lmkit.cli import GROUPS, flags
    names = []
    for title, module in GROUPS:
        group = flags.Group(title, argparse.ArgumentParser().add_subparsers())
        module.register(group)
        names += [name for name, _ in group.commands]
    assert sorted(names) == sorted(COMMANDS)
    assert sorted({leaf.split()[0] for leaf in LEAVES}) == sorted(COMMANDS)


def test_help_lists_every_command_once_by_group():
    p = lmkit_cmd("--help")
    assert p.returncode == 0, p.stderr
    listed = re.findall(r"^  ([a-z][a-z-]*)  ", p.stdout, re.M)  # the command rows (options start with "-")
    assert sorted(listed) == sorted(COMMANDS), listed
    for heading in ("train:", "generate:", "fine-tune:", "evaluate:", "convert:", "search:", "serve:"):
        assert re.search(rf"^{heading}", p.stdout, re.M), heading
    p = lmkit_cmd("train", "--help")
    assert "--resume" in p.stdout and "--overwrite" in p.stdout and "--set" in p.stdout


@pytest.mark.parametrize("leaf", LEAVES)
def test_every_command_has_help_and_a_handler(leaf, capsys):
    from lmkit.cli import build_parser
    words = leaf.split()
    with pytest.raises(SystemExit) as e:
        main([*words, "--help"])
    assert e.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: lmkit {leaf} ")
    args = build_parser().parse_args([*words, *LEAVES[leaf]])
    assert args.run.__name__ in {"run_" + "_".join(w).replace("-", "_") for w in (words, words[-1:])}


def test_parser_loads_no_torch():
    code = "import sys; from lmkit.cli import build_parser; build_parser(); print('torch' in sys.modules)"
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "False"


def test_help_and_flag_errors_load_nothing_heavy():
    argvs = [[*leaf.split(), "--help"] for leaf in LEAVES] + [["generate", "--temperature", "abc", "x"]]
    code = (f"import sys, contextlib, io\nfrom lmkit.cli import main\nfor argv in {argvs!r}:\n"
            "    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):\n"
            "        try:\n            main(argv)\n        except SystemExit:\n            pass\n"
            f"print([m for m in {HEAVY!r} if m in sys.modules])")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "[]"


def test_flag_error_is_a_usage_line_not_a_traceback():
    p = lmkit_cmd("generate", "--temperature", "abc", "x")
    assert p.returncode == 2
    assert "Traceback" not in p.stderr
    assert p.stderr.startswith("usage: lmkit generate ")
    assert "lmkit generate: error: argument --temperature: invalid float value: 'abc'" in p.stderr


def test_sampling_flags_take_their_defaults_from_sampling_config(tmp_path, capsys):
    from lmkit.cli import build_parser
    from lmkit.sampling_config import SAMPLING_DEFAULTS
    generate = vars(build_parser().parse_args(["generate", "r"]))
    chat = vars(build_parser().parse_args(["chat", "r"]))
    for name, default in SAMPLING_DEFAULTS.items():
        if name in generate:
            assert generate[name] == (list(default) if name == "stop" else default), name
    assert {n for n in SAMPLING_DEFAULTS if n in generate} >= {"max_new_tokens", "temperature", "top_k", "top_p",
                                                                 "seed", "min_p", "repetition_penalty", "stop"}
    assert {n for n in SAMPLING_DEFAULTS if n in chat} == {"max_new_tokens", "temperature", "top_k", "top_p", "seed"}
    assert all(chat[n] == SAMPLING_DEFAULTS[n] for n in ("max_new_tokens", "temperature", "top_k", "top_p", "seed"))
    # SamplingConfig's check, with the flag named, before any model is opened (tmp_path holds none)
    assert main(["generate", str(tmp_path), "--top-p", "2"]) == 2
    err = capsys.readouterr().err
    assert "--top-p" in err and "top_p must be in (0, 1] (got 2.0)" in err
    assert main(["chat", str(tmp_path), "--max-new-tokens", "-1"]) == 2
    assert "--max-new-tokens" in capsys.readouterr().err


def test_prepare_refuses_a_full_folder_before_training_a_tokenizer(tmp_path, capsys):
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "keep.txt").write_text("mine")
    # the corpus is missing too: the folder is what is refused, so the check came first
    assert main(["prepare", str(tmp_path / "missing.txt"), "--out", str(tmp_path / "o")]) == 2
    assert "folder is not empty" in capsys.readouterr().err


def test_train_resume_without_config_reads_the_runs_config(tmp_path):
    from lmkit.config import Config, save_json
    from lmkit.errors import LmkitError
    from lmkit.runs.training import training_config
    run = tmp_path / "run"
    run.mkdir()
    cfg = Config()
    cfg.train.out_dir, cfg.train.max_iters = str(run), 10
    save_json(cfg, run / "config.json")
    resumed = training_config(None, [f"out_dir={run}", "max_iters=20"], resume=True)
    assert resumed.train.max_iters == 20 and resumed.train.out_dir == str(run)
    with pytest.raises(LmkitError, match="no run to resume"):
        training_config(None, [f"out_dir={tmp_path / 'none'}"], resume=True)
    with pytest.raises(LmkitError, match="needs --set out_dir"):
        training_config(None, [], resume=True)


def test_wordpiece_decoding_joins_cjk_characters():
    from lmkit.tokenizer import Tokenizer
    tok = Tokenizer.train(["床前明月光，疑是地上霜 hello world"] * 50, kind="wordpiece", vocab_size=120)
    assert tok.decode(tok.encode("床前明月光，疑是地上霜 hello world")) == "床前明月光，疑是地上霜 hello world"
