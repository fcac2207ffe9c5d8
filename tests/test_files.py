"""Files and folders lmkit writes get the user's umask (0644 / 0755 by default), not the temp files' 0600."""
import os
import stat

from lmkit.cli import main


def modes(root):
    for dirpath, dirs, files in os.walk(root):
        yield dirpath, True
        for f in files:
            yield os.path.join(dirpath, f), False


def test_runs_data_and_exports_are_written_with_the_users_umask(trained_run, text_file, tmp_path):
    umask = os.umask(0)
    os.umask(umask)
    assert main(["quantize", str(trained_run), "--out", str(tmp_path / "q")]) == 0
    assert main(["prepare", str(text_file), "--out", str(tmp_path / "data"), "--tokenizer", "char"]) == 0
    assert main(["export-hf", str(trained_run), str(tmp_path / "hf")]) == 0
    (tmp_path / "q" / "notes.txt").write_text("the user's own file stays")
    os.chmod(tmp_path / "q" / "notes.txt", 0o666 & ~umask)
    assert main(["quantize", str(trained_run), "--out", str(tmp_path / "q"), "--overwrite"]) == 0  # in place
    wrong = []
    for root in (trained_run, tmp_path / "q", tmp_path / "data", tmp_path / "hf"):
        for path, folder in modes(root):
            want = (0o777 if folder else 0o666) & ~umask
            got = stat.S_IMODE(os.stat(path).st_mode)
            if got != want:
                wrong.append(f"{path}: {oct(got)} (want {oct(want)})")
    assert not wrong, "\n".join(wrong)


def test_overwrite_removes_what_training_and_tracking_wrote_but_not_the_users_files(trained_run, tmp_path):
    """--overwrite onto a trained run: the old report, samples, TensorBoard events and PEFT folder go with it
    (a quantized model beside a stale report.html would be a lie); a file of the user's stays."""
    import shutil
    out = tmp_path / "run"
    shutil.copytree(trained_run, out)
    for name in ("report.html", "samples.jsonl", "summary.json", "events.out.tfevents.1.host", "notes.txt"):
        (out / name).write_text("old")
    (out / "peft").mkdir()
    (out / "peft" / "adapter_config.json").write_text("{}")
    assert main(["quantize", str(trained_run), "--out", str(out), "--overwrite"]) == 0
    left = sorted(p.name for p in out.iterdir())
    assert "notes.txt" in left and "model.safetensors" in left and "quantization.json" in left
    assert not {"report.html", "samples.jsonl", "summary.json", "events.out.tfevents.1.host", "peft"} & set(left)
