"""`lmkit quickstart`: the thread choice, the plan for --minutes, Ctrl-C (exit 130, a resume command that works),
the report of the step it ended at, and a model that export-hf writes for transformers."""
import json
import time

import pytest
import torch

from lmkit.cli import main
from lmkit.train import device, quickstart


@pytest.fixture(autouse=True)
def fresh_choice():
    threads = torch.get_num_threads()
    device.forget_threads()
    yield
    device.forget_threads()
    torch.set_num_threads(threads)


def test_the_probe_takes_the_fastest_count(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(device, "usable_cores", lambda: 4)
    busy = lambda: time.sleep(0.002 * torch.get_num_threads())  # a busy machine: more threads, slower  # noqa: E731
    choice = device.choose_threads(0, work=busy, reps=3)
    assert choice.threads == 1 and torch.get_num_threads() == 1 and "1 of 4 cores" in choice.note
    assert device.choose_threads(0) is choice  # once per process: the trainer gets the same answer
    device.forget_threads()
    idle = lambda: time.sleep(0.008 / torch.get_num_threads())  # noqa: E731
    choice = device.choose_threads(0, work=idle, reps=3)
    assert choice.threads == 4 and 0.001 < choice.seconds < 0.006
    assert device.choose_threads(3).threads == 3 and torch.get_num_threads() == 3  # num_threads wins
    assert "num_threads = 3" in device.choose_threads(3).note
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    device.forget_threads()
    assert "OMP_NUM_THREADS" in device.choose_threads(0, work=idle).note


def test_minutes_plan_as_many_steps_as_the_measured_speed_allows(monkeypatch, tmp_path):
    monkeypatch.delenv("LMKIT_SET", raising=False)
    monkeypatch.setattr(quickstart, "choose_threads",
                        lambda n, work, reps: device.ThreadChoice(1, "threads: 1", seconds=0.05))
    p = quickstart.plan(str(tmp_path / "q"))
    assert p.steps == 700 and p.cfg.model.pos == "learned" and p.cfg.train.lr_decay_iters == 0
    p = quickstart.plan(str(tmp_path / "q"), minutes=2)
    assert abs(p.eta_s - 120) < 5 and p.steps > 1500  # 0.05 s a step, its share of evaluations on top
    assert quickstart.plan(str(tmp_path / "q"), minutes=0.1).steps >= p.cfg.train.eval_interval


TINY = "n_layer=1 n_head=2 n_embd=32 block_size=32 batch_size=4 eval_iters=2 eval_interval=10 max_iters=20 " \
       "warmup_iters=2 dtype=float32 num_threads=1"


def test_interrupt_resume_report_and_export(monkeypatch, tmp_path, text_file, capsys):
    monkeypatch.setenv("LMKIT_SET", f"{TINY} data={text_file}")
    monkeypatch.setattr(quickstart, "PROMPTS", ["0 little"])
    out = tmp_path / "qs"
    from lmkit.train import trainer
    real_lr_at = trainer.lr_at

    def stop_at_13(step, t):
        if step == 13:
            raise KeyboardInterrupt
        return real_lr_at(step, t)
    monkeypatch.setattr(trainer, "lr_at", stop_at_13)
    assert main(["quickstart", "--out", str(out)]) == 130
    said = capsys.readouterr().out
    assert f"continue with lmkit quickstart --resume --out {out}" in said
    assert "val loss" in said and "at step 10" in said  # the last evaluation, named by its own step
    assert main(["quickstart", "--out", str(out)]) == 2  # a new run would replace it: refused, resume named
    assert "lmkit quickstart --resume" in capsys.readouterr().err
    monkeypatch.setattr(trainer, "lr_at", real_lr_at)
    assert main(["quickstart", "--resume", "--out", str(out)]) == 0
    said = capsys.readouterr().out
    last = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines() if "val_loss" in l][-1]
    assert last["step"] == 20 and f"val loss {last['val_loss']:.3f} after 20 steps" in said
    assert "0 little" in said and f"lmkit export-hf {out} --out {out}-hf" in said
    assert main(["export-hf", str(out), "--out", str(tmp_path / "hf")]) == 0
    hc = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert hc["architectures"] == ["GPT2LMHeadModel"]
    assert "AutoModelForCausalLM" in capsys.readouterr().out
    assert main(["quickstart", "--resume", "--out", str(tmp_path / "none")]) == 2
    assert main(["quickstart", "--resume", "--minutes", "1", "--out", str(out)]) == 2
