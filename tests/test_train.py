import json
import os
import pickle
import signal
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import lmkit
from lmkit import LmkitError
from lmkit.cli import main
from lmkit.config import load_config, load_json as load_config_json
from lmkit.data.batches import make_batches
from lmkit.data.shards import open_split
from lmkit.models import build_model
from lmkit.train import distributed, trainer as trainer_module
from lmkit.train.dcp_read import read_metadata
from lmkit.train.optim import make_optimizer
from lmkit.train.task import EVAL_SEED
from lmkit.train.trainer import Trainer
from conftest import tiny_config


def _weights(run):
    return load_file(str(run / "model.safetensors"))


def test_loss_falls_and_run_directory_is_complete(text_file, tmp_path):
    result = lmkit.train(tiny_config(tmp_path / "run", text_file, max_iters=60), progress=False)
    run = result.out_dir
    for f in ("config.json", "tokenizer.json", "model.safetensors", "train_state.pt", "metrics.jsonl", "loss.png"):
        assert (run / f).is_file(), f
    evals = [json.loads(l) for l in open(run / "metrics.jsonl") if "val_loss" in l]
    assert evals[0]["step"] == 0 and evals[-1]["step"] == 60
    assert evals[-1]["val_loss"] < 0.6 * evals[0]["val_loss"]
    assert not list(run.glob(".*.tmp")), "no temp files left behind"


def test_resume_gives_the_same_weights_as_one_straight_run(text_file, tmp_path):
    # the same schedule in both (lr_decay_iters), stopped after 9 steps, then continued to 16
    cfg = tiny_config(tmp_path / "b", text_file, max_iters=9, lr_decay_iters=16)
    cfg.model.dropout = 0.1  # dropout draws from the RNG, which must be restored too
    straight_cfg = tiny_config(tmp_path / "c", text_file, max_iters=16, lr_decay_iters=16)
    straight_cfg.model.dropout = 0.1
    straight = lmkit.train(straight_cfg, progress=False)
    lmkit.train(cfg, progress=False)
    cfg.train.max_iters = 16
    resumed = lmkit.train(cfg, resume=True, progress=False)
    assert resumed.step == 16
    a, b = _weights(straight.out_dir), _weights(resumed.out_dir)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_ctrl_c_saves_a_checkpoint_and_resume_continues_exactly(text_file, tmp_path, monkeypatch):
    straight = lmkit.train(tiny_config(tmp_path / "a", text_file, max_iters=12, gradient_accumulation_steps=2),
                           progress=False)
    cfg = tiny_config(tmp_path / "b", text_file, max_iters=12, gradient_accumulation_steps=2)
    trainer = Trainer(cfg, progress=False)
    real_next, calls = trainer.train_batches.next, {"n": 0}

    def interrupting_next():
        calls["n"] += 1
        if calls["n"] == 14:  # the second micro-batch of step 7
            raise KeyboardInterrupt
        return real_next()

    monkeypatch.setattr(trainer.train_batches, "next", interrupting_next)
    result = trainer.fit()
    assert result.interrupted and result.step == 6
    resumed = lmkit.train(cfg, resume=True, progress=False)
    a, b = _weights(straight.out_dir), _weights(resumed.out_dir)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_ctrl_c_during_an_evaluation_resumes_exactly(text_file, tmp_path, monkeypatch):
    # between steps (here: in the evaluation at step 10) the checkpoint holds the sampler/RNG state of now
    configs = [tiny_config(tmp_path / d, text_file, max_iters=14) for d in ("a", "b")]
    for c in configs:
        c.model.dropout = 0.1  # the RNG state matters
    straight = lmkit.train(configs[0], progress=False)
    trainer = Trainer(configs[1], progress=False)
    real_evaluate, calls = trainer.evaluate, {"n": 0}

    def interrupting_evaluate():
        calls["n"] += 1
        if calls["n"] == 2:  # the evaluation at step 10
            raise KeyboardInterrupt
        return real_evaluate()

    monkeypatch.setattr(trainer, "evaluate", interrupting_evaluate)
    result = trainer.fit()
    assert result.interrupted and result.step == 10
    resumed = lmkit.train(configs[1], resume=True, progress=False)
    a, b = _weights(straight.out_dir), _weights(resumed.out_dir)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_time_budget_stops_evaluates_and_saves(text_file, tmp_path, capsys):
    cfg = tiny_config(tmp_path / "run", text_file, max_iters=10_000, max_minutes=1e-6)
    result = lmkit.train(cfg)
    assert result.step == cfg.train.log_interval  # the budget is checked at the first log
    assert result.history[-1]["step"] == result.step and "val_loss" in result.history[-1]
    # the checkpoint is the stopping step's: weights and training state agree on it
    assert lmkit.load(tmp_path / "run").run.step == result.step
    assert torch.load(tmp_path / "run" / "train_state.pt", weights_only=True)["step"] == result.step
    captured = capsys.readouterr()
    assert "max_minutes = 1e-06 is spent" in captured.out + captured.err


def test_existing_run_is_refused_unless_resume_or_overwrite(text_file, tmp_path):
    cfg = tiny_config(tmp_path / "run", text_file, max_iters=2)
    lmkit.train(cfg, progress=False)
    with pytest.raises(LmkitError, match="already holds a run.*--resume.*--overwrite"):
        lmkit.train(cfg, progress=False)
    (tmp_path / "run" / "notes.txt").write_text("mine")
    lmkit.train(cfg, overwrite=True, progress=False)
    assert (tmp_path / "run" / "notes.txt").read_text() == "mine"  # only lmkit's own files are replaced


def test_truncated_checkpoint_is_reported(text_file, tmp_path):
    cfg = tiny_config(tmp_path / "run", text_file, max_iters=2)
    lmkit.train(cfg, progress=False)
    w = tmp_path / "run" / "model.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    with pytest.raises(LmkitError, match="model.safetensors: corrupt or truncated"):
        lmkit.load(tmp_path / "run")
    s = tmp_path / "run" / "train_state.pt"
    s.write_bytes(s.read_bytes()[:100])
    cfg.train.max_iters = 4
    with pytest.raises(LmkitError, match="train_state.pt: corrupt or truncated"):
        lmkit.train(cfg, resume=True, progress=False)


def test_saved_weights_are_the_last_evaluated_ones_and_reload_identically(trained_run):
    lm = lmkit.load(trained_run)
    cfg = lm.config
    # the last evaluation's val loss, recomputed with the reloaded weights on the same windows
    batches = make_batches(open_split(trained_run / "data", "val"), cfg, EVAL_SEED, lm.tokenizer, name="val")
    with torch.no_grad():
        losses = [lm.model(*batches.next())[1].item() for _ in range(cfg.train.eval_iters)]
    evals = [json.loads(line) for line in open(trained_run / "metrics.jsonl") if "val_loss" in line]
    first, last = evals[0], evals[-1]
    assert last["step"] == 60 and lm.run.step == 60
    assert sum(losses) / len(losses) == pytest.approx(last["val_loss"], abs=1e-5)
    assert last["val_loss"] < first["val_loss"] - 0.3  # trained weights, not the fresh model's of step 0
    ids = torch.tensor([lm.tokenizer.encode("To be, or not")])
    again = lmkit.load(trained_run)
    with torch.no_grad():
        assert torch.equal(lm.model(ids)[0], again.model(ids)[0])


def test_generate_api(trained_run):
    lm = lmkit.load(trained_run)
    greedy = lm.generate("To be", max_new_tokens=20, temperature=0)
    assert greedy == lm.generate("To be", max_new_tokens=20, temperature=0)
    assert "".join(lm.stream("To be", max_new_tokens=20, temperature=0)) == greedy
    samples = lm.generate("To be", num_samples=3, max_new_tokens=10, temperature=1.0, seed=1)
    assert len(samples) == 3 and samples == lm.generate("To be", num_samples=3, max_new_tokens=10,
                                                        temperature=1.0, seed=1)
    assert len(lm.generate("床前", max_new_tokens=5, temperature=0)) <= 5


def test_config_errors(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text("n_layr = 4\n")
    with pytest.raises(LmkitError, match="unknown config key 'n_layr'; did you mean 'n_layer'"):
        load_config(f)
    f.write_text("n_embd = 130\nn_head = 4\n")
    with pytest.raises(LmkitError, match=r"n_embd \(130\) must be divisible by n_head \(4\)"):
        load_config(f)
    with pytest.raises(LmkitError, match="max_iters = 'ten' is not a valid int"):
        load_config(None, ["max_iters=ten"])
    with pytest.raises(LmkitError, match="pos = 'alibi' is not one of learned, sinusoidal, rope"):
        load_config(None, ["pos=alibi"])
    with pytest.raises(LmkitError, match=r"max_minutes must be >= 0 \(got -1.0\)"):
        load_config(None, ["max_minutes=-1"])
    f.write_text("[model]\nn_layer = 3\n[train]\nmax_iters = 7\n")
    cfg = load_config(f, ["model.n_embd=64", "n_head=4", "dropout=0.1", "bias=false"])
    assert (cfg.model.n_layer, cfg.train.max_iters, cfg.model.n_embd, cfg.model.dropout, cfg.model.bias) == \
        (3, 7, 64, 0.1, False)


def test_example_config_loads_with_nanogpt_names():
    example = Path(__file__).resolve().parents[1] / "examples" / "shakespeare_char_nanogpt.toml"
    cfg = load_config(example, ["max_iters=600", "out_dir=/tmp/r"])
    assert (cfg.model.n_layer, cfg.model.n_head, cfg.model.n_embd, cfg.model.block_size) == (4, 4, 128, 64)
    assert (cfg.train.batch_size, cfg.train.learning_rate, cfg.train.max_iters, cfg.train.out_dir) == \
        (12, 1e-3, 600, "/tmp/r")


class Payload:
    """A pickle that, when unpickled, creates `marker` (a folder): code run from a file lmkit was handed."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def _payload_run(text_file, tmp_path, parallel="none"):
    """A trained run whose train_state.pt lacks `optimizer` (as under torchrun) and whose
    train_state/.metadata is a pickle that would create a marker folder."""
    cfg = tiny_config(tmp_path / "run", text_file, max_iters=2)
    lmkit.train(cfg, progress=False)
    run, marker = tmp_path / "run", tmp_path / "pwned"
    state = torch.load(run / "train_state.pt", weights_only=True)
    del state["optimizer"], state["model"]
    torch.save(state, run / "train_state.pt")
    (run / "train_state").mkdir()
    (run / "train_state" / ".metadata").write_bytes(pickle.dumps(Payload(marker)))
    saved = json.loads((run / "config.json").read_text())
    saved["train"]["parallel"] = parallel
    (run / "config.json").write_text(json.dumps(saved))
    return run, marker


def _cli_resume(run, capsys) -> tuple[int, list[str]]:
    capsys.readouterr()
    rc = main(["train", "--resume", "--quiet", "--set", f"out_dir={run}", "max_iters=4"])
    return rc, capsys.readouterr().err.strip().splitlines()


@pytest.mark.parametrize("parallel", ["none", "ddp"])
def test_a_crafted_distributed_checkpoint_is_never_unpickled(text_file, tmp_path, capsys, parallel):
    # parallel = none: the run's own config says one process, so train_state/ is not even read; ddp: it is read
    # with the restricted unpickler, which refuses os.mkdir
    run, marker = _payload_run(text_file, tmp_path, parallel)
    rc, err = _cli_resume(run, capsys)
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: "), err
    assert ("parallel = none" if parallel == "none" else "not a distributed checkpoint's metadata") in err[0]
    assert not marker.exists()
    model, cfg = build_model(load_config_json(run / "config.json").model), load_config_json(run / "config.json")
    with pytest.raises(LmkitError):  # the loader itself, called directly
        distributed.load_checkpoint(model, make_optimizer(model, cfg.train, "cpu"), run, 2)
    with pytest.raises(LmkitError, match="posix.mkdir is not part of a checkpoint's metadata"):
        read_metadata(run / "train_state")
    assert not marker.exists()


def test_a_crafted_train_state_is_never_unpickled(text_file, tmp_path, capsys):
    cfg = tiny_config(tmp_path / "run", text_file, max_iters=2)
    lmkit.train(cfg, progress=False)
    marker = tmp_path / "pwned"
    torch.save({"step": 2, "payload": Payload(marker)}, tmp_path / "run" / "train_state.pt")
    rc, err = _cli_resume(tmp_path / "run", capsys)
    assert rc == 2 and len(err) == 1 and "lmkit never unpickles a file it is handed" in err[0], err
    assert not marker.exists()


def test_a_run_that_fails_before_its_first_checkpoint_removes_the_folder_it_made(text_file, tmp_path, monkeypatch):
    tiny = tmp_path / "tiny.txt"
    tiny.write_text("ab\n" * 3, encoding="utf-8")
    with pytest.raises(LmkitError, match="fewer than block_size"):  # fails while it reads the data
        lmkit.train(tiny_config(tmp_path / "new" / "run", tiny), progress=False)
    assert not (tmp_path / "new").exists()
    mine = tmp_path / "mine"  # a folder that was there before is left as it is
    mine.mkdir()
    with pytest.raises(LmkitError):
        lmkit.train(tiny_config(mine, tiny), progress=False)
    assert mine.is_dir()

    def failing_lr(step, cfg):
        raise RuntimeError("boom")

    # fails in the first step, after config, data, weights and the first evaluation, before the first checkpoint
    monkeypatch.setattr(trainer_module, "lr_at", failing_lr)
    with pytest.raises(RuntimeError, match="boom"):
        lmkit.train(tiny_config(tmp_path / "run2", text_file, checkpoint_interval=5), progress=False)
    assert not (tmp_path / "run2").exists()


def test_temp_files_of_a_killed_write_go_at_the_next_start_and_only_they(text_file, tmp_path):
    cfg = tiny_config(tmp_path / "run", text_file, max_iters=2)
    lmkit.train(cfg, progress=False)
    run = tmp_path / "run"
    left = [".model.safetensors.a1b2c3d4.tmp", ".train_state.pt.x_y_z_12.tmp", ".loss.png.qwertyui.tmp"]
    for name in left + [".notes.txt.abcdefgh.tmp", ".model.safetensors.mine"]:
        (run / name).write_bytes(b"partial")
    (run / ".data.k3j4h5g6").mkdir()
    (run / ".train_state.tmp").mkdir()  # a distributed checkpoint being written, and one between its renames
    (run / ".train_state.old").mkdir()
    (run / ".train_state.old" / ".metadata").write_bytes(b"")
    cfg.train.max_iters = 4
    lmkit.train(cfg, resume=True, progress=False)
    assert sorted(p.name for p in run.iterdir() if p.name.startswith(".")) == [".model.safetensors.mine",
                                                                              ".notes.txt.abcdefgh.tmp"]
    assert (run / "train_state" / ".metadata").is_file()  # switched back (this run's state is train_state.pt)


def test_ctrl_c_inside_the_optimizer_step_waits_for_it(text_file, tmp_path, monkeypatch):
    # SIGINT while the weights change: the step, its counters and the optimizer state finish together
    straight = lmkit.train(tiny_config(tmp_path / "a", text_file, max_iters=8), progress=False)
    cfg = tiny_config(tmp_path / "b", text_file, max_iters=8)
    trainer = Trainer(cfg, progress=False)
    real_step, calls = trainer.optimizer.step, {"n": 0}

    def interrupted_step(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            os.kill(os.getpid(), signal.SIGINT)  # arrives inside the step
        return real_step(*args, **kwargs)

    monkeypatch.setattr(trainer.optimizer, "step", interrupted_step)
    result = trainer.fit()
    assert result.interrupted and result.step == 5  # the step that was under way was completed
    resumed = lmkit.train(cfg, resume=True, progress=False)
    a, b = _weights(straight.out_dir), _weights(resumed.out_dir)
    assert all(torch.equal(a[k], b[k]) for k in a)
