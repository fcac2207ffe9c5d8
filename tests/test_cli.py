"""The command line: real subprocesses, so exit codes and stderr are what a user sees."""
import os
import subprocess
import sys


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


def test_help_explains_every_command():
    p = lmkit_cmd("--help")
    for cmd in ("quickstart", "tokenizer", "prepare", "train", "generate"):
        assert cmd in p.stdout
    p = lmkit_cmd("train", "--help")
    assert "--resume" in p.stdout and "--overwrite" in p.stdout and "--set" in p.stdout
