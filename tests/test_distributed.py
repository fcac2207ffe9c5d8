"""torchrun on the CPU with gloo, 2 ranks, tiny configs: DDP and FSDP2 take the steps of one process with
the global batch, checkpoints move between world sizes, and a dead rank stops the job."""
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import lmkit
from lmkit.data.batches import CausalBatches
from lmkit.data.shards import prepare
from lmkit.tokenizer import Tokenizer

pytestmark = [pytest.mark.distributed,
              pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                                 reason="torch.distributed with the gloo backend is not available")]

# bias = false: a key bias has an exactly zero true gradient (softmax ignores a shift shared by all keys), so
# Adam turns its rounding noise into ±lr updates that depend on the summation order of the reduction
CONFIG = """\
data = "{data}"
n_layer = 2
n_head = 2
n_embd = 32
block_size = 32
bias = false
batch_size = {batch_size}
gradient_accumulation_steps = 2
max_iters = 20
lr_decay_iters = 30
warmup_iters = 2
learning_rate = 3e-3
min_lr = 3e-4
eval_interval = 20
eval_iters = 2
log_interval = 1
dtype = "float32"
num_threads = 1
dist_timeout = 20
"""


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Prepared data, a config with micro-batch 2 per rank, and 1-process runs with batch 4 to match:
    20 steps, and 30 steps straight through (the same schedule, lr_decay_iters = 30)."""
    base = tmp_path_factory.mktemp("dist")
    text = "".join(f"{i} little pigs went to market; 小猪{i}去市场。\n" for i in range(300))
    tok = Tokenizer.train([text], kind="char")
    (base / "text.txt").write_text(text, encoding="utf-8")
    prepare(str(base / "text.txt"), base / "data", tok, 0.1, progress=False)
    cfg = base / "tiny.toml"
    cfg.write_text(CONFIG.format(data=base / "data", batch_size=2))
    one = lmkit.train(cfg, overrides=[f"out_dir={base / 'one'}", "batch_size=4"], progress=False)
    lmkit.train(cfg, overrides=[f"out_dir={base / 'one30'}", "batch_size=4", "max_iters=30"], progress=False)
    return base, cfg, one.out_dir


@pytest.fixture(scope="module")
def fsdp_run(runs):
    base, cfg, one = runs
    r = _run(["train", str(cfg), "--set", f"out_dir={base / 'fsdp'}", "parallel=fsdp"])
    assert r.returncode == 0, r.stderr[-3000:]
    return base / "fsdp", r.stdout


def _run(args, timeout=90, script=None, env=None, launcher_flags=()):
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *launcher_flags]
    cmd = launcher + ([script] if script else ["-m", "lmkit"]) + args
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


def _losses(run):
    return [json.loads(l)["loss"] for l in open(Path(run) / "metrics.jsonl") if '"loss"' in l]


def _max_weight_diff(a, b):
    wa, wb = load_file(str(Path(a) / "model.safetensors")), load_file(str(Path(b) / "model.safetensors"))
    assert sorted(wa) == sorted(wb)
    return max((wa[k] - wb[k]).abs().max().item() for k in wa)


def _check_same_run(run, one, tol, steps=20):
    losses, ref = _losses(run), _losses(one)
    assert len(losses) == len(ref) == steps  # rank 0 alone writes metrics.jsonl
    diffs = [abs(a - b) for a, b in zip(losses, ref)]
    assert max(diffs) < tol, diffs
    assert ref[-1] < ref[0] - 0.5  # it did learn: the comparison is not between two idle models
    assert _max_weight_diff(run, one) < tol


def test_rank_slices_of_one_draw_are_the_batch_of_one_process():
    tokens = torch.arange(1000).numpy()
    whole = CausalBatches(tokens, 8, 6, seed=3)
    ranks = [CausalBatches(tokens, 8, 3, seed=3, rank=r, world_size=2) for r in range(2)]
    for _ in range(3):
        x, y = whole.next()
        parts = [b.next() for b in ranks]
        assert torch.equal(x, torch.cat([p[0] for p in parts])) and torch.equal(y, torch.cat([p[1] for p in parts]))
        assert not torch.equal(parts[0][0], parts[1][0])


def test_ddp_two_ranks_match_one_process_with_twice_the_batch(runs, tmp_path):
    base, cfg, one = runs
    # `lmkit train --nproc 2` launches torchrun; parallel = none under torchrun means ddp
    r = subprocess.run([sys.executable, "-m", "lmkit", "train", str(cfg), "--nproc", "2", "--quiet",
                        "--set", f"out_dir={tmp_path / 'ddp'}"], capture_output=True, text=True, timeout=90,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("step 20: val loss") == 1, r.stdout  # only rank 0 reports
    _check_same_run(tmp_path / "ddp", one, 1e-5)


def test_fsdp_two_ranks_match_one_process_with_twice_the_batch(runs, fsdp_run):
    base, cfg, one = runs
    run, stdout = fsdp_run
    assert "fsdp on 2 ranks: global batch = 2 (micro-batch) × 2 (accumulation) × 2 (ranks) = 8 sequences" in stdout
    _check_same_run(run, one, 1e-4)


def test_save_on_two_ranks_resume_on_one(runs, fsdp_run, tmp_path):
    base, cfg, one = runs
    run = tmp_path / "run"
    shutil.copytree(fsdp_run[0], run)
    assert (run / "train_state" / ".metadata").is_file()  # sharded model + optimizer (DCP)
    assert "optimizer" not in torch.load(run / "train_state.pt", weights_only=True)
    # one process; batch_size 4 keeps the global batch of 2 ranks × 2; DCP reshards the 2 ranks' shards
    lmkit.train(cfg, resume=True, overrides=[f"out_dir={run}", "batch_size=4", "max_iters=30"], progress=False)
    _check_same_run(run, base / "one30", 1e-5, steps=30)
    lm = lmkit.load(run)  # the single-file export serves generation
    assert lm.generate("1 little", max_new_tokens=8, temperature=0) == lmkit.load(base / "one30").generate(
        "1 little", max_new_tokens=8, temperature=0)


FAULT = """\
import os, sys
from lmkit.train import trainer
from lmkit.cli import main
real = trainer.lr_at
def lr_at(step, cfg):
    if step == 3 and os.environ["RANK"] == "1":
        os._exit(3)  # rank 1 dies in the middle of the run
    return real(step, cfg)
trainer.lr_at = lr_at
sys.exit(main(sys.argv[1:]))
"""


def test_a_dead_rank_stops_the_job_with_a_clear_message(runs, tmp_path):
    base, cfg, one = runs
    script = tmp_path / "faulty.py"
    script.write_text(FAULT)
    t0 = time.perf_counter()
    # torchrun looks at its workers every 2 s here (default 0.1 s), so that under a loaded CPU rank 0 has
    # surely noticed the broken connection and printed its message before torchrun stops it
    r = _run(["train", str(cfg), "--quiet", "--set", f"out_dir={tmp_path / 'run'}"], script=str(script),
             launcher_flags=("--monitor-interval", "2"))
    assert time.perf_counter() - t0 < 60
    assert r.returncode != 0
    assert "error: rank 0: lost contact with the other ranks at step 3" in r.stderr, r.stderr[-3000:]
    assert "exitcode  : 3" in r.stderr  # torchrun names the rank that died first


def test_launcher_and_parallel_outside_torchrun(runs, tmp_path, capsys):
    base, cfg, one = runs
    from lmkit.cli import main
    assert main(["train", str(cfg), "--nproc", "0"]) == 2
    assert "error: --nproc must be >= 1 (got 0)" in capsys.readouterr().err
    # without torchrun `parallel` does not apply: one process trains, and says so
    lmkit.train(cfg, overrides=[f"out_dir={tmp_path / 'r'}", "parallel=fsdp", "max_iters=1"], progress=False)
    assert "parallel = 'fsdp' takes effect under torchrun" in capsys.readouterr().out


class Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def test_values_in_a_distributed_checkpoint_are_never_unpickled(runs, fsdp_run, tmp_path):
    # a real FSDP checkpoint whose optimizer learning rate (a non-tensor value, stored as a pickle in a .distcp
    # file) is replaced by a payload: resuming in one process refuses it in one line and runs nothing
    import dataclasses
    import io
    import pickle
    from lmkit.train.dcp_read import read_metadata
    base, cfg, one = runs
    run, marker = tmp_path / "run", tmp_path / "pwned"
    shutil.copytree(fsdp_run[0], run)
    assert json.loads((run / "config.json").read_text())["train"]["parallel"] == "fsdp"
    md = read_metadata(run / "train_state")
    index = next(i for i in md.storage_data if i.fqn == "optim.param_groups.0.lr")
    info = md.storage_data[index]
    buf = io.BytesIO()
    torch.save(Payload(marker), buf)
    data = run / "train_state" / info.relative_path
    offset = data.stat().st_size
    data.write_bytes(data.read_bytes() + buf.getvalue())
    md.storage_data[index] = dataclasses.replace(info, offset=offset, length=len(buf.getvalue()))
    (run / "train_state" / ".metadata").write_bytes(pickle.dumps(md))
    with pytest.raises(lmkit.LmkitError, match="cannot read the distributed checkpoint .*lr holds more than plain"):
        lmkit.train(cfg, resume=True, overrides=[f"out_dir={run}", "batch_size=4", "max_iters=30"], progress=False)
    assert not marker.exists()
