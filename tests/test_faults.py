"""Fault injection: a tiny fixed-seed run is killed with SIGKILL, or interrupted with SIGINT (Ctrl-C), at named
points (LMKIT_FAULT=<point>:<n>[:int], see lmkit.train.checkpoint) in every phase: a training step, the
optimizer step, an evaluation, inside each write of a checkpoint, inside the loss.png write. After each,
`lmkit train --resume` runs to the end and must end with the tensors of one uninterrupted run (weights and
optimizer state, torch.equal); after each kill the run must load (lmkit.load) and the next start must remove
the temp files the kill left."""
import contextlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import lmkit
from lmkit import LmkitError
from lmkit.cli import main
from lmkit.data.shards import prepare
from lmkit.runs.native import weights_metadata
from lmkit.tokenizer import Tokenizer

# 20 steps; evaluations at 0, 10, 20 (4 fault("eval") calls each); checkpoints at 4, 8, 12, 16 and 20; the
# start writes the weights once (the first reach of weights-rename)
SETTINGS = {"n_layer": 2, "n_head": 2, "n_embd": 32, "block_size": 32, "dropout": 0.1, "batch_size": 8,
            "max_iters": 20, "eval_interval": 10, "eval_iters": 2, "log_interval": 5, "checkpoint_interval": 4,
            "warmup_iters": 2, "learning_rate": 3e-3, "min_lr": 3e-4, "dtype": "float32", "num_threads": 1}
KILLS = {  # SIGKILL at the n-th reach of a point
    "weights:1": "before the first checkpoint (step 4): only the weights of the start exist",
    "weights-rename:3": "inside the weights write (step 8): the temp file is complete, not renamed",
    "state:3": "between model.safetensors and train_state.pt (step 12)",
    "state-rename:2": "inside the train_state.pt write (step 8)",
    "step:7": "mid training step (forward and backward done)",
    "optimizer:14": "after optimizer.step(), before the step counter",
    "eval:6": "mid evaluation (step 10)",
    "loss.png:2": "inside the loss.png write (step 10)",
    "eval:10": "mid final evaluation (step 20)",
}
INTERRUPTS = {  # SIGINT (Ctrl-C) at the n-th reach of a point
    "step:6:int": "mid training step",
    "optimizer:9:int": "inside the optimizer step (Ctrl-C waits for it)",
    "eval:7:int": "mid evaluation (step 10)",
    "state-rename:3:int": "inside a checkpoint's write (step 12)",
}
FIRST_WRITE = "weights-rename:1"  # a kill inside the start's weights write: the run has no weights yet


def _faulty_run(cfg: Path, run: Path, fault: str | None = None) -> subprocess.CompletedProcess:
    """`python -m lmkit train` in a subprocess, with LMKIT_FAULT = fault."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("LMKIT_FAULT", None)
    if fault:
        env["LMKIT_FAULT"] = fault
    cmd = [sys.executable, "-m", "lmkit", "train", str(cfg), "--quiet", "--set", f"out_dir={run}"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)


def _resume(cfg: Path, run: Path) -> tuple[int, str, str]:
    """`lmkit train CONFIG --resume --quiet` in this process (its CLI: exit code, output, one-line errors)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(["train", str(cfg), "--resume", "--quiet", "--set", f"out_dir={run}"])
    return rc, out.getvalue(), err.getvalue()


def _tensors(run: Path) -> dict:
    """The final weights and the optimizer's state tensors."""
    out = {f"w.{k}": v for k, v in load_file(str(run / "model.safetensors")).items()}
    optimizer = torch.load(run / "train_state.pt", weights_only=True)["optimizer"]["state"]
    out.update({f"o.{i}.{k}": v for i, s in optimizer.items() for k, v in s.items()})
    return out


def _leftovers(run: Path) -> list[str]:
    return sorted(p.name for p in run.iterdir() if p.name.startswith("."))


@pytest.fixture(scope="module")
def faults(tmp_path_factory):
    """Every faulty run (two subprocesses at a time: two cores, one thread each), a copy of what each left, and
    its resume to the end, in this process one after the other."""
    base = tmp_path_factory.mktemp("faults")
    text = "".join(f"{i} little pigs went to market; 小猪{i}去市场。\n" for i in range(300))
    (base / "text.txt").write_text(text, encoding="utf-8")
    prepare(str(base / "text.txt"), base / "data", Tokenizer.train([text], kind="char"), 0.1, progress=False)
    cfg = base / "tiny.toml"
    cfg.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in {"data": str(base / "data"), **SETTINGS}.items()))
    names = [*KILLS, *INTERRUPTS, FIRST_WRITE]
    with ThreadPoolExecutor(2) as pool:
        straight = pool.submit(_faulty_run, cfg, base / "straight")
        firsts = dict(zip(names, pool.map(lambda f: _faulty_run(cfg, base / f.replace(":", "_"), f), names)))
    assert straight.result().returncode == 0, straight.result().stderr[-2000:]
    results = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("LMKIT_FAULT", raising=False)
        threads = torch.get_num_threads()
        for fault in names:
            run = base / fault.replace(":", "_")
            left = base / "left" / run.name
            shutil.copytree(run, left)
            rc, out, err = _resume(cfg, run)
            results[fault] = {"rc": firsts[fault].returncode, "first": firsts[fault], "left": left, "run": run,
                              "resumed": (rc, out, err), "leftovers": _leftovers(left), "after": _leftovers(run)}
        torch.set_num_threads(threads)
    return _tensors(base / "straight"), results


def _equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_kill_or_ctrl_c_at_any_point_resumes_to_the_uninterrupted_tensors(faults):
    straight, results = faults
    figures = {"kills tried": 0, "interrupts tried": 0, "resumes equal": 0, "runs unloadable": 0}
    problems = []
    for fault, r in results.items():
        interrupt = fault.endswith(":int")
        figures["interrupts tried" if interrupt else "kills tried"] += 1
        want = 130 if interrupt else -signal.SIGKILL
        if r["rc"] != want:
            problems.append(f"{fault}: exit {r['rc']}, not {want} (point not reached?) {r['first'].stderr[-500:]}")
        if interrupt and "interrupted: checkpoint saved" not in r["first"].stdout:
            problems.append(f"{fault}: no checkpoint on Ctrl-C: {r['first'].stdout[-300:]}")
        if r["resumed"][0] != 0:
            problems.append(f"{fault}: resume failed: {r['resumed'][2][-800:]}")
            continue
        if _equal(_tensors(r["run"]), straight):
            figures["resumes equal"] += 1
        else:
            problems.append(f"{fault}: resumed run ends with other tensors")
        if r["after"]:
            problems.append(f"{fault}: left behind after the resume: {r['after']}")
        if fault == FIRST_WRITE:
            continue
        try:
            lmkit.load(r["left"])
        except LmkitError as e:
            figures["runs unloadable"] += 1
            problems.append(f"{fault}: the killed run does not load: {e}")
    print("\nfault injection: " + ", ".join(f"{k} {v}" for k, v in figures.items()))
    assert not problems, "\n".join(problems)
    assert figures["kills tried"] >= 10 and figures["interrupts tried"] >= 3
    assert figures["resumes equal"] == len(results)


def test_kills_inside_a_write_leave_temp_files_that_the_next_start_removes(faults):
    _, results = faults
    assert any(n.startswith(".model.safetensors.") for n in results["weights-rename:3"]["leftovers"])
    assert any(n.startswith(".train_state.pt.") for n in results["state-rename:2"]["leftovers"])
    assert any(n.startswith(".loss.png.") for n in results["loss.png:2"]["leftovers"])
    # between the two files: the weights are a checkpoint ahead of the state; the resume continues from the
    # state (which holds its own weights), and the weights follow it
    left = results["state:3"]["left"]
    assert weights_metadata(left / "model.safetensors")["step"] == "12"
    assert torch.load(left / "train_state.pt", weights_only=True)["step"] == 8
    assert "step 20" in results["state:3"]["resumed"][1]


def test_a_kill_inside_the_very_first_weights_write_starts_the_run_again(faults):
    _, results = faults
    r = results[FIRST_WRITE]
    assert r["rc"] == -signal.SIGKILL
    assert not (r["left"] / "model.safetensors").exists() and not (r["left"] / "train_state.pt").exists()
    with pytest.raises(LmkitError, match="model.safetensors"):  # nothing to load yet, said in one line
        lmkit.load(r["left"])
    assert r["resumed"][0] == 0 and not r["resumed"][2]
