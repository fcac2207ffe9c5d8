"""Watching a run: TensorBoard event files equal metrics.jsonl (also across a resume), the logger key, trackers
that are missing or fail, fine-tuning metrics, activation checkpointing and the memory estimate."""
import importlib.machinery
import json
import math
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

import lmkit
from lmkit import LmkitError
from lmkit.config import Config, load_config
from lmkit.models import build_model
from lmkit.train import resources, trackers
from lmkit.train.trainer import Trainer
from conftest import tiny_config

EventAccumulator = pytest.importorskip(
    "tensorboard.backend.event_processing.event_accumulator", reason="needs tensorboard").EventAccumulator


def events(run: Path) -> EventAccumulator:
    ea = EventAccumulator(str(run), size_guidance={"scalars": 0, "tensors": 0})
    ea.Reload()
    return ea


def tb_scalars(run: Path) -> dict[str, list[tuple[int, float]]]:
    ea = events(run)
    return {tag: [(e.step, e.value) for e in ea.Scalars(tag)] for tag in ea.Tags()["scalars"]}


def jsonl_scalars(run: Path) -> dict[str, list[tuple[int, float]]]:
    """What TensorBoard should hold: every finite number of metrics.jsonl under its tag, as float32."""
    out = {}
    for line in open(run / "metrics.jsonl", encoding="utf-8"):
        rec = json.loads(line)
        for tag, v in trackers.scalars(rec).items():
            out.setdefault(tag, []).append((rec["step"], float(np.float32(v))))
    return out


def test_tensorboard_holds_exactly_the_metrics_and_the_samples(text_file, tmp_path):
    run = lmkit.train(tiny_config(tmp_path / "run", text_file, max_iters=20, peak_tflops=0.01), progress=False).out_dir
    tb, ref = tb_scalars(run), jsonl_scalars(run)
    assert tb == ref
    for tag in ("loss/train", "loss/val", "loss/train_eval", "train/lr", "train/grad_norm", "throughput/tokens_per_s",
                "throughput/mfu", "memory/peak_gb"):
        assert len(tb[tag]) >= 3, tag
    assert [s for s, _ in tb["loss/val"]] == [0, 10, 20]
    grad_norms = [v for _, v in tb["train/grad_norm"]]
    assert all(0 < g < 100 for g in grad_norms)
    samples = [json.loads(l) for l in open(run / "samples.jsonl", encoding="utf-8")]
    assert [s["step"] for s in samples] == [0, 10, 20] and len(samples[0]["samples"]) == 2
    assert all(s["text"] for r in samples for s in r["samples"])
    text = events(run).Tensors("samples/0/text_summary")
    assert [e.step for e in text] == [0, 10, 20]
    assert samples[-1]["samples"][0]["text"].splitlines()[-1].strip() in text[-1].tensor_proto.string_val[0].decode()
    summary = json.loads((run / "summary.json").read_text())
    flops = summary["model"]["flops_per_token"]
    assert flops > 6 * 20000 and summary["sessions"][0]["to_step"] == 20
    for rec in map(json.loads, open(run / "metrics.jsonl", encoding="utf-8")):  # MFU = FLOPs/token × tokens/s / peak
        if "tok_per_s" in rec:
            assert rec["mfu"] == pytest.approx(flops * rec["tok_per_s"] / 1e10, rel=1e-3, abs=1e-5)
    assert {"data", "setup", "train", "evaluate", "checkpoint"} <= set(summary["sessions"][0]["phases"])


def test_a_resumed_run_continues_the_same_curves_without_a_step_twice(text_file, tmp_path):
    def crash_at_17(model, seen=[0]):
        seen[0] += 1
        if seen[0] == 17:
            raise RuntimeError("the machine went away")
    cfg = tiny_config(tmp_path / "run", text_file, max_iters=20)
    with pytest.raises(RuntimeError, match="went away"):
        Trainer(cfg, progress=False, after_step=crash_at_17).fit()
    run = tmp_path / "run"
    assert max(s for s, _ in tb_scalars(run)["loss/train"]) == 15  # logged past the checkpoint at step 10
    lmkit.train(cfg, resume=True, progress=False)
    assert len(list(run.glob("events.out.tfevents.*"))) == 2
    tb = tb_scalars(run)
    for tag, points in tb.items():
        steps = [s for s, _ in points]
        assert steps == sorted(set(steps)), (tag, steps)  # no step twice, in order
    assert tb == jsonl_scalars(run)
    assert [s for s, _ in tb["loss/train"]] == [5, 10, 15, 20] and [s for s, _ in tb["loss/val"]] == [0, 10, 20]
    samples = [json.loads(l)["step"] for l in open(run / "samples.jsonl", encoding="utf-8")]
    assert samples == [0, 10, 20]
    summary = json.loads((run / "summary.json").read_text())
    assert [(s["from_step"], s["resumed"]) for s in summary["sessions"]] == [(0, False), (10, True)]


def test_logger_key_takes_a_list_a_comma_string_or_none(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text('logger = ["tensorboard", "mlflow"]\n')
    assert load_config(toml).train.logger == ["tensorboard", "mlflow"]
    assert load_config(None, ["logger=wandb, trackio"]).train.logger == ["wandb", "trackio"]
    assert load_config(None, ["logger=none"]).train.logger == []
    assert load_config(None).train.logger == ["tensorboard"]
    with pytest.raises(LmkitError, match="logger 'neptune' is not one of tensorboard, trackio, wandb, mlflow"):
        load_config(None, ["logger=tensorboard,neptune"])
    toml.write_text('logger = 3\n')
    with pytest.raises(LmkitError, match="logger = 3 is not a list"):
        load_config(toml)
    saved = Config()
    saved.train.logger = ["wandb"]
    assert Config.from_dict(json.loads(json.dumps(saved.to_dict()))).train.logger == ["wandb"]


def test_a_missing_tracker_package_stops_before_anything_is_written(text_file, tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n in ("wandb", "tensorboard") else real(n, *a))
    cfg = tiny_config(tmp_path / "run", text_file, logger=["wandb"])
    with pytest.raises(LmkitError, match=r"logger 'wandb' needs the wandb package.*pip install 'lmkit\[wandb\]'"):
        Trainer(cfg, progress=False)
    assert not (tmp_path / "run").exists()
    assert trackers.check(["tensorboard"], default=True) == []  # the default alone: a note, and the run goes on
    with pytest.raises(LmkitError, match=r"lmkit\[tensorboard\]"):
        trackers.check(["tensorboard"], default=False)


class FakeWandB(types.ModuleType):
    """Enough of wandb's API to see what lmkit sends; its log fails from the `fail_at`-th call on."""

    def __init__(self, fail_at=None):
        super().__init__("wandb")
        self.__spec__ = importlib.machinery.ModuleSpec("wandb", None)
        self.logged, self.inits, self.fail_at, self.finished = [], [], fail_at, 0

    def init(self, **kw):
        self.inits.append(kw)
        fake = self

        class Run:
            id = kw.get("id") or "run-abc"

            def log(self, values, step):
                if fake.fail_at is not None and len(fake.logged) + 1 >= fake.fail_at:
                    raise ConnectionError("W&B is offline")
                fake.logged.append((step, values))

            def finish(self):
                fake.finished += 1
        return Run()


def test_a_tracker_failing_mid_run_warns_once_and_training_goes_on(text_file, tmp_path, monkeypatch, capsys):
    fake = FakeWandB(fail_at=4)
    monkeypatch.setitem(sys.modules, "wandb", fake)
    cfg = tiny_config(tmp_path / "run", text_file, max_iters=20, logger=["tensorboard", "wandb"])
    result = lmkit.train(cfg, progress=False)
    assert result.step == 20
    err = capsys.readouterr().err
    assert err.count("warning: wandb logging failed (ConnectionError: W&B is offline); training goes on") == 1
    assert [s for s, _ in fake.logged] == [0, 5, 10]  # records before the failure, with their steps
    assert fake.logged[1][1]["loss/train"] == json.loads(open(result.out_dir / "metrics.jsonl").readlines()[1])["loss"]
    assert fake.inits[0]["name"] == "run" and fake.inits[0]["resume"] == "allow"
    assert json.loads((result.out_dir / "trackers.json").read_text()) == {"wandb": "run-abc"}
    assert tb_scalars(result.out_dir) == jsonl_scalars(result.out_dir)  # TensorBoard went on


def test_mlflow_continues_its_run_on_resume(tmp_path, monkeypatch):
    calls = []
    fake = types.ModuleType("mlflow")
    fake.start_run = lambda run_id=None, run_name=None: calls.append(("start", run_id, run_name)) or \
        types.SimpleNamespace(info=types.SimpleNamespace(run_id=run_id or "ml-1"))
    fake.log_params = lambda p: calls.append(("params", p["train.max_iters"]))
    fake.log_metrics = lambda m, step: calls.append(("metrics", step, m))
    fake.log_text = lambda text, name: calls.append(("text", name))
    fake.end_run = lambda: calls.append(("end",))
    monkeypatch.setitem(sys.modules, "mlflow", fake)
    cfg = Config().to_dict()
    t = trackers.Trackers(tmp_path, ["mlflow"], cfg, 0, resumed=False)
    t.scalars({"step": 3, "loss": 2.5, "tokens": 10, "accuracy": 0.75, "confusion": [[1]], "val_loss": math.nan})
    t.text(3, "samples/0", "hi")
    t.close()
    t = trackers.Trackers(tmp_path, ["mlflow"], cfg, 3, resumed=True)
    t.close()
    assert calls == [("start", None, tmp_path.name), ("params", 2000),
                     ("metrics", 3, {"loss/train": 2.5, "eval/accuracy": 0.75}), ("text", "samples/0/step_00000003.txt"),
                     ("end",), ("start", "ml-1", None), ("end",)]


def test_classifier_metrics_and_confusion_reach_tensorboard(tmp_path):
    from lmkit.finetune.fit import ClassifyConfig, finetune_classify
    from test_classify import write_tsv
    train, dev = write_tsv(tmp_path / "train.tsv", 60, 0), write_tsv(tmp_path / "dev.tsv", 20, 1)
    finetune_classify(ClassifyConfig(train=str(train), eval=str(dev), out=str(tmp_path / "cls"), progress=False,
                                     model="bag-of-embeddings", vocab_size=100, n_embd=16, epochs=2, batch_size=16))
    run = tmp_path / "cls"
    tb = tb_scalars(run)
    assert tb == jsonl_scalars(run)
    assert len(tb["eval/accuracy"]) == 3 and len(tb["eval/macro_f1"]) == 3 and "loss/val" in tb
    confusion = events(run).Tensors("eval/confusion/text_summary")
    assert len(confusion) == 3 and "predicted" in confusion[-1].tensor_proto.string_val[0].decode()


@pytest.mark.parametrize("family", ["gpt", "bert"])
def test_activation_checkpointing_gives_the_same_gradients(family):
    cfg = Config().model
    cfg.type, cfg.vocab_size, cfg.block_size, cfg.n_layer, cfg.n_head, cfg.n_embd = family, 50, 16, 3, 2, 32
    cfg.dropout = 0.1  # dropout masks drawn again in the recomputation must be the same ones
    torch.manual_seed(0)
    model = build_model(cfg).train()
    x = torch.randint(0, 50, (4, 16))
    y = x.clone() if family == "gpt" else torch.where(torch.rand(4, 16) < 0.3, x, -100)
    grads = []
    for on in (False, True):
        resources.set_checkpointing(model, on)
        model.zero_grad()
        torch.manual_seed(1)
        _, loss = model(x, y)
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 10
    for n in grads[0]:
        torch.testing.assert_close(grads[0][n], grads[1][n], rtol=0, atol=1e-6, msg=n)
    model.eval()  # evaluation and generation never recompute
    with torch.no_grad():
        assert model(x)[0].shape[0] == 4


def saved_bytes(model, x, y) -> int:
    """Bytes of the tensors autograd keeps for backward (parameters left out), each storage once."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen = {}

    def pack(t):
        s = t.untyped_storage()
        if s.data_ptr() not in params:
            seen[s.data_ptr()] = s.nbytes()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x, y)[1].backward()
    return sum(seen.values())


def test_the_activation_estimate_is_near_what_backward_keeps():
    cfg = Config()
    m = cfg.model
    m.vocab_size, m.block_size, m.n_layer, m.n_head, m.n_embd = 256, 64, 4, 4, 128
    cfg.train.batch_size = 4
    model = build_model(m).train()
    x = torch.randint(0, 256, (4, 64))
    measured = saved_bytes(model, x, x)
    est = resources.memory_estimate(model, cfg, torch.float32)
    assert 0.7 < est["activations"] / measured < 1.3, (est["activations"], measured)
    n = sum(p.numel() for p in model.parameters())
    assert est["parameters"] == 4 * n and est["optimizer"] == 8 * n
    cfg.train.activation_checkpointing = True  # kept: each block's input; one block at a time is recomputed
    assert resources.memory_estimate(model, cfg, torch.float32)["activations"] < 0.5 * est["activations"]
    resources.set_checkpointing(model, True)
    assert saved_bytes(model, x, x) < 0.2 * measured
