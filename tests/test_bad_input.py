"""Bad input gives exit 2 and one `error:` line naming the flag or file, never a traceback; and text is read
without quiet surprises.

- numeric flags: every one declares its range (flags.number) and is checked before the command does any work;
  the library functions the commands call check the same values for Python callers;
- single-file outputs: a folder (or a path under a file) is refused by io.check_file_target, which
  atomic_path calls for every writer and commands call before their slow part;
- vocabulary sizes: bounded by what each tokenizer type needs and by tokenizer.MAX_VOCAB;
- search indexes: each file is checked as it is read, and the one that is wrong is named;
- a UTF-8 BOM and CRLF / CR line ends are read as plain LF text unless --keep-line-ends;
- a char tokenizer warns once, with a count, when text maps to <unk>.
"""
import argparse
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from lmkit import LmkitError, Tokenizer
from lmkit.cli import build_parser, flags, main
from lmkit.data.shards import build_tokenizer, prepare
from lmkit.data.sources import iter_documents


def run(*argv) -> int:
    return main([str(a) for a in argv])


def one_error(capsys, argv, *fragments) -> str:
    rc = run(*argv)
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert rc == 2 and "Traceback" not in err and len(errors) == 1, err
    for fragment in fragments:
        assert fragment in errors[0], (fragment, errors[0])
    return errors[0]


def leaf_parsers(p, name="lmkit"):
    subs = [a for a in p._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield name, p
    for s in subs:
        for sub_name, child in s.choices.items():
            yield from leaf_parsers(child, f"{name} {sub_name}")


# ---- numeric flags ---------------------------------------------------------------------------------
def test_every_numeric_flag_declares_its_range():
    undeclared = [f"{name} {a.option_strings}" for name, p in leaf_parsers(build_parser()) for a in p._actions
                  if a.type in (int, float) and a not in getattr(p, "numbers", [])]
    assert not undeclared, undeclared


def test_each_declared_bound_is_enforced_naming_the_flag():
    checked = 0
    for name, p in leaf_parsers(build_parser()):
        for a in getattr(p, "numbers", []):
            lo, hi, lo_open, hi_open = a.bounds
            bad = ([lo - (0 if lo_open else 1)] if lo is not None else []) + \
                  ([hi + (0 if hi_open else 1)] if hi is not None else []) + ([float("nan")] if a.type is float else [])
            for value in bad:
                ns = argparse.Namespace(parser=p, **{b.dest: b.default for b in p.numbers})
                setattr(ns, a.dest, a.type(value))
                with pytest.raises(LmkitError, match=f"^{a.option_strings[-1]} must be "):
                    flags.check_numbers(ns)
                checked += 1
    assert checked >= 50


CLASSIFY = ["finetune", "classify", "--train", "t", "--eval", "e", "--out", "o", "--model", "gpt"]


@pytest.mark.parametrize("argv, fragment", [
    (["evaluate", "RUN", "--data", "x.txt", "--batch-size", "0"], "--batch-size must be >= 1 (got 0)"),
    (["evaluate", "RUN", "--data", "x.txt", "--batch-size", "-3"], "--batch-size must be >= 1 (got -3)"),
    (["evaluate", "RUN", "--data", "x.txt", "--max-tokens", "0"], "--max-tokens must be >= 1"),
    (["evaluate", "RUN", "--data", "x.json", "--task", "qa", "--limit", "-1"], "--limit must be >= 0"),
    (["explain", "RUN", "text", "--top-k", "0"], "--top-k must be >= 1"),
    (["search", "IDX", "query", "-k", "0"], "-k must be >= 1"),
    (["embed", "--data", "d", "--out", "o", "--chunk-tokens", "4"], "--chunk-tokens must be >= 8"),
    (["embed", "--data", "d", "--out", "o", "--overlap", "-1"], "--overlap must be >= 0"),
    (["generate", "RUN", "--num-samples", "0"], "--num-samples must be >= 1"),
    (["generate", "RUN", "--temperature", "nan"], "--temperature must be a finite number"),
    (["generate", "RUN", "--repetition-penalty", "inf"], "--repetition-penalty must be a finite number"),
    (["generate", "RUN", "--beams", "-1"], "--beams must be >= 0"),
    (["fill-mask", "RUN", "[MASK]", "--top-k", "0"], "--top-k must be >= 1"),
    (["serve", "RUN", "--port", "70000"], "--port must be in 1..65535"),
    (["serve", "RUN", "--threads", "100000"], "--threads must be in 0..1024"),
    (CLASSIFY + ["--max-len", "10000000000"], "--max-len must be in 3..65536"),
    (CLASSIFY + ["--learning-rate", "nan"], "--learning-rate must be a finite number"),
    (CLASSIFY + ["--n-embd", "65536", "--n-layer", "1024"], "a fresh model of about"),  # too big to allocate
    (["finetune", "sft", "--base", "b", "--data", "d", "--out", "o", "--lora-dropout", "1"],
     "--lora-dropout must be in [0, 1)"),
    (["prune", "RUN", "--out", "o", "--sparsity", "1.5"], "--sparsity must be in (0, 1)"),
    (["prune", "RUN", "--out", "o", "--finetune-iters", "-1"], "--finetune-iters must be >= 0"),
    (["grow", "RUN", "--out", "o", "--n-layer", "100000"], "--n-layer must be in 1..1024"),
    (["train", "c.toml", "--nproc", "0"], "--nproc must be >= 1"),
    (["quickstart", "--max-iters", "0"], "--max-iters must be >= 1"),
    (["prepare", "x.txt", "--out", "o", "--val-fraction", "0"], "--val-fraction must be in (0, 1)"),
    (["tokenizer", "train", "x.txt", "--out", "t.json", "--vocab-size", "0"], "--vocab-size must be >= 1"),
])
def test_out_of_range_flags_are_refused_before_any_work(capsys, argv, fragment):
    one_error(capsys, argv, fragment)  # the paths do not exist: nothing was read before the check


def test_library_edges_check_the_same_values(trained_run):
    import lmkit
    from lmkit.evaluate.lm import evaluate_lm
    from lmkit.explain import analyse
    lm = lmkit.load(trained_run)
    for kw in ({"batch_size": 0}, {"batch_size": -3}, {"max_tokens": 0}):
        with pytest.raises(LmkitError, match=f"{next(iter(kw))} must be an integer >= 1"):
            evaluate_lm(lm, "shakespeare", progress=False, **kw)
    with pytest.raises(LmkitError, match="top_k must be an integer >= 1"):
        analyse(lm, "To be", top_k=0)


def test_a_subprocess_sees_one_line_and_no_traceback():
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    p = subprocess.run([sys.executable, "-m", "lmkit", "evaluate", "RUN", "--data", "x.txt", "--batch-size", "0"],
                       capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 2 and p.stderr == "error: --batch-size must be >= 1 (got 0)\n", p.stderr


# ---- vocabulary sizes ------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["bpe", "wordpiece", "char"])
def test_vocab_size_is_bounded_for_every_type(kind, text_file, tmp_path, capsys):
    for size in (10**10, 2**20 + 1):
        one_error(capsys, ["tokenizer", "train", text_file, "--out", tmp_path / "t.json", "--type", kind,
                           "--vocab-size", size], f"vocab_size {size} is too large (at most 1,048,576")
    one_error(capsys, ["prepare", text_file, "--out", tmp_path / "d", "--tokenizer", kind, "--vocab-size", 10**10],
              "too large")
    for size in (0, -5, 1.5, True):
        with pytest.raises(LmkitError, match="vocab_size"):
            Tokenizer.train(["abc"], kind=kind, vocab_size=size)
    assert not (tmp_path / "t.json").exists() and not (tmp_path / "d").exists()


# ---- outputs that are folders ----------------------------------------------------------------------
@pytest.mark.parametrize("argv", [
    ["tokenizer", "train", "{text}", "--out", "{dir}"],
    ["evaluate", "RUN", "--data", "{text}", "--json", "{dir}"],
    ["evaluate", "RUN", "--data", "rows.json", "--task", "qa", "--json", "{dir}"],
    ["predict", "RUN", "--file", "{text}", "--out", "{dir}"],
    ["export-onnx", "RUN", "{dir}"],
    ["explain", "RUN", "text", "--out", "{dir}"],
    ["explain", "RUN", "--embeddings", "--out", "{dir}"],
    ["plot", "RUN", "--out", "{dir}"],
    ["tokenizer", "train", "{text}", "--out", "{text}/tok.json"],  # a folder on the way is a file
])
def test_an_output_file_that_is_a_folder_is_refused(argv, text_file, tmp_path, capsys):
    (tmp_path / "out").mkdir()
    argv = [a.format(text=text_file, dir=tmp_path / "out") for a in argv]
    target = next(a for a in argv if str(tmp_path / "out") in a or "tok.json" in a)
    one_error(capsys, argv, target)


def test_every_single_file_writer_refuses_a_folder(tmp_path):
    from lmkit.io import atomic_path, atomic_write_text
    tok = Tokenizer.train(["abc"], kind="char")
    for write in (lambda: atomic_write_text(tmp_path, "x"), lambda: tok.save(tmp_path),
                  lambda: atomic_path(tmp_path).__enter__()):
        with pytest.raises(LmkitError, match="is a folder; name a file to write"):
            write()
    assert list(tmp_path.iterdir()) == []  # and no temp file is left behind


# ---- corrupt search indexes ------------------------------------------------------------------------
def fake_index(d, n=3, dim=4):
    """An index folder as lmkit embed writes it (no encoder needed: files are checked before it loads)."""
    d.mkdir()
    (d / "meta.json").write_text(json.dumps({"model": str(d / "no-encoder"), "dim": dim, "chunks": n,
                                             "documents": 1, "chunk_tokens": 16, "overlap": 0, "source": "x"}))
    np.save(d / "vectors.npy", np.ones((n, dim), np.float32))
    (d / "chunks.jsonl").write_text("".join(json.dumps({"text": f"t{i}", "source": "x", "start": i, "end": i + 1})
                                            + "\n" for i in range(n)))
    return d


def _meta(**kw):
    def change(d):
        meta = {**json.loads((d / "meta.json").read_text()), **kw}
        (d / "meta.json").write_text(json.dumps({k: v for k, v in meta.items() if v is not None}))
    return change


CORRUPT = {
    "bad meta.json": ("meta.json", lambda d: (d / "meta.json").write_text("{nope")),
    "meta without model": ("meta.json", _meta(model=None)),
    "meta dim wrong": ("vectors.npy", _meta(dim=7)),
    "meta chunk_tokens bad": ("meta.json", _meta(chunk_tokens="many")),
    "model gone": ("no-encoder", lambda d: None),
    "vectors not npy": ("vectors.npy", lambda d: (d / "vectors.npy").write_text("hello")),
    "vectors ints": ("vectors.npy", lambda d: np.save(d / "vectors.npy", np.ones((3, 4), np.int64))),
    "vectors 1-D": ("vectors.npy", lambda d: np.save(d / "vectors.npy", np.ones(12, np.float32))),
    "vectors vs chunks": ("vectors.npy", lambda d: np.save(d / "vectors.npy", np.ones((2, 4), np.float32))),
    "vectors pickled": ("vectors.npy", lambda d: np.save(d / "vectors.npy", np.array([{}] * 3), allow_pickle=True)),
    "vectors nan": ("vectors.npy", lambda d: np.save(d / "vectors.npy", np.full((3, 4), np.nan, np.float32))),
    "vectors truncated": ("vectors.npy", lambda d: (d / "vectors.npy").write_bytes(b"\x93NUMPY" + b" " * 90)),
    "chunks missing": ("chunks.jsonl", lambda d: (d / "chunks.jsonl").unlink()),
    "chunks bad json": ("chunks.jsonl:row 2", lambda d: (d / "chunks.jsonl").write_text('{"text": "a", "source": "x", '
                                                                                    '"start": 0, "end": 1}\n{oops\n')),
    "chunks bad fields": ("chunks.jsonl:row 1", lambda d: (d / "chunks.jsonl").write_text('{"text": 1}\n' * 3)),
    "chunks not utf-8": ("chunks.jsonl:not UTF-8", lambda d: (d / "chunks.jsonl").write_bytes(b"\xff\xfe\n")),
    "faiss garbage": ("hnsw.faiss", lambda d: (d / "hnsw.faiss").write_bytes(b"not faiss" * 20)),
}


@pytest.mark.parametrize("case", list(CORRUPT))
def test_each_corrupt_index_file_is_named(case, tmp_path, capsys):
    if case == "faiss garbage":
        pytest.importorskip("faiss")
    named, corrupt = CORRUPT[case]
    d = fake_index(tmp_path / "idx")
    corrupt(d)
    one_error(capsys, ["search", d, "query"], str(d / named.split(":")[0]), *named.split(":")[1:])


# ---- BOM and line ends -----------------------------------------------------------------------------
BOM_CRLF = "\ufeffTo be, or not to be,\r\nthat is the question:\r\nWhether 'tis nobler\rin the mind\r\n"
LF = "To be, or not to be,\nthat is the question:\nWhether 'tis nobler\nin the mind\n"


def test_bom_and_crlf_are_read_as_lf_by_default(tmp_path, capsys, monkeypatch):
    f = tmp_path / "win.txt"
    f.write_bytes(BOM_CRLF.encode("utf-8"))
    assert "".join(t for _, t in iter_documents(str(f))) == LF
    monkeypatch.setattr("lmkit.data.sources.CHUNK_BYTES", 5)  # CRLF pairs and the BOM cut across reads
    assert "".join(t for _, t in iter_documents(str(f))) == LF
    assert "".join(t for _, t in iter_documents(str(f), normalize_newlines=False)) == BOM_CRLF
    rows = tmp_path / "rows.jsonl"
    rows.write_bytes(b"\xef\xbb\xbf" + json.dumps({"text": "a\r\nb\rc"}).encode() + b"\r\n")
    assert [t for _, t in iter_documents(str(rows))] == ["a\nb\nc"]

    assert run("prepare", f, "--out", tmp_path / "d", "--tokenizer", "char") == 0
    vocab = Tokenizer.load(tmp_path / "d").hf.get_vocab()
    assert "\r" not in vocab and "\ufeff" not in vocab and "\n" in vocab
    meta = json.loads((tmp_path / "d" / "meta.json").read_text())
    assert meta["train_tokens"] + meta["val_tokens"] == len(LF) + 1 and meta["normalize_newlines"] is True
    assert run("tokenizer", "train", f, "--out", tmp_path / "t.json", "--type", "char") == 0
    assert len(Tokenizer.load(tmp_path / "t.json").hf.get_vocab()) == len(set(LF)) + 2  # + <|endoftext|>, <unk>

    assert run("prepare", f, "--out", tmp_path / "keep", "--tokenizer", "char", "--keep-line-ends") == 0
    vocab = Tokenizer.load(tmp_path / "keep").hf.get_vocab()
    assert "\r" in vocab and "\ufeff" in vocab
    capsys.readouterr()


def test_a_csv_saved_with_a_bom_keeps_its_header(tmp_path):
    from lmkit.finetune.tabular import read_labeled
    f = tmp_path / "excel.csv"
    f.write_bytes(b"\xef\xbb\xbftext,label\r\ngood film,1\r\nbad film,0\r\n")
    rows = read_labeled(f)
    assert rows.text_field == "text" and rows.texts == ["good film", "bad film"] and rows.labels == ["1", "0"]


def test_a_corrupt_metrics_file_is_named_and_a_cut_last_line_is_left_out(tmp_path, capsys):
    d = tmp_path / "run"
    d.mkdir()
    good = '{"step": 0, "val_loss": 3.0, "tokens": 0}\n{"step": 5, "loss": 2.5, "tokens": 80}\n'
    (d / "metrics.jsonl").write_text(good + '{"step": 10, "lo')  # killed mid-write
    assert run("plot", d, "--out", tmp_path / "a.png") == 0 and (tmp_path / "a.png").is_file()
    (d / "metrics.jsonl").write_text(good + '{"step": "ten", "loss": 2}\n')
    one_error(capsys, ["plot", d, "--out", tmp_path / "b.png"], "metrics.jsonl:3", "corrupt metrics line")


def test_the_training_config_carries_the_option(tmp_path):
    from lmkit.config import load_config
    assert load_config(None, []).data.normalize_newlines is True
    d = load_config(None, ["normalize_newlines=false"]).data
    f = tmp_path / "win.txt"
    f.write_bytes(BOM_CRLF.encode("utf-8"))
    tok = build_tokenizer("char", str(f), progress=False, normalize_newlines=d.normalize_newlines)
    assert "\r" in tok.hf.get_vocab()
    meta = prepare(str(f), tmp_path / "d", tok, progress=False, normalize_newlines=d.normalize_newlines)
    assert meta["train_tokens"] + meta["val_tokens"] == len(BOM_CRLF) + 1


# ---- characters a char tokenizer never saw ---------------------------------------------------------
def test_unknown_characters_warn_once_with_a_count(capsys):
    tok = Tokenizer.train(["abc abc\n"], kind="char")
    unk = tok.hf.token_to_id("<unk>")
    assert tok.encode("ab<unk>") == tok.encode("ab") + [unk]  # <unk> spelled out: no warning
    assert capsys.readouterr().err == ""
    assert tok.encode("abЖЖé") == tok.encode("ab") + [unk] * 3
    err = capsys.readouterr().err
    assert err.count("warning:") == 1 and "3 characters (2 distinct: 'Ж', 'é')" in err and "<unk>" in err
    tok.encode("Жé")
    tok.encode_batch(["ЖЖ"])
    assert capsys.readouterr().err == ""  # once per tokenizer
    bpe = Tokenizer.train(["abc"] * 3, kind="bpe", vocab_size=260)
    bpe.encode("ЖЖé")
    assert capsys.readouterr().err == ""  # byte-level BPE has no unknown characters


def test_generate_warns_about_a_prompt_the_model_never_saw(trained_run, capsys):
    assert run("generate", trained_run, "--prompt", "ЖЖЖ", "--max-new-tokens", 3, "--seed", 1) == 0
    err = capsys.readouterr().err
    assert err.count("warning:") == 1 and "3 characters (1 distinct: 'Ж')" in err
