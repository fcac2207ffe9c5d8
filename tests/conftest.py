import os
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
sys.path.insert(0, str(SRC))  # test this checkout's code, whatever is installed
os.environ["PYTHONPATH"] = os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])  # and in subprocesses

import pytest  # noqa: E402
import torch  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
MIXED = "Hello, world! 你好，世界。床前明月光，疑是地上霜。🎉🦄 naïve café — “quotes” \t tabs\r\nnew\nlines 123\n"

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture
def corpus_dir(tmp_path: Path) -> Path:
    """Thirty small documents in English and Chinese, one per file."""
    d = tmp_path / "corpus"
    d.mkdir()
    for i in range(30):
        text = (f"Document {i}. The quick brown fox jumps over the lazy dog {i} times.\n"
                f"第{i}篇：白日依山尽，黄河入海流。欲穷千里目，更上一层楼。\n") * 20
        (d / f"doc{i:02d}.txt").write_text(text, encoding="utf-8")
    return d


def tiny_config(out_dir, data, **train):
    """A config small enough to train in seconds on two CPU cores."""
    from lmkit import Config
    cfg = Config()
    cfg.data.data = str(data)
    cfg.data.tokenizer = "char"
    m = cfg.model
    m.n_layer, m.n_head, m.n_embd, m.block_size = 2, 2, 32, 32
    t = cfg.train
    t.out_dir, t.batch_size, t.max_iters, t.eval_interval, t.eval_iters, t.log_interval = str(out_dir), 8, 20, 10, 2, 5
    t.warmup_iters, t.learning_rate, t.min_lr, t.dtype = 2, 3e-3, 3e-4, "float32"
    for k, v in train.items():
        setattr(t, k, v)
    return cfg


@pytest.fixture
def text_file(tmp_path):
    """A small mixed English/Chinese text file (300 lines)."""
    f = tmp_path / "text.txt"
    f.write_text("".join(f"{i} little pigs went to market; 小猪{i}去市场。\n" for i in range(300)), encoding="utf-8")
    return f


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> Path:
    """One small trained run shared by the tests that only read it."""
    from lmkit import train
    base = tmp_path_factory.mktemp("trained")
    data = base / "text.txt"
    data.write_text(("To be, or not to be, that is the question.\n" * 50 + "床前明月光\n" * 20), encoding="utf-8")
    result = train(tiny_config(base / "run", data, max_iters=60), progress=False)
    return result.out_dir
