"""Progressive stacking vs training the deep model from scratch, tiny-shakespeare (character level).

    python benchmarks/grow.py [--config examples/shakespeare_char.toml] [--iters 600] [--shallow 2] [--set k=v ...]

From scratch: n_layer (from the config) for --iters steps. Grown: --shallow layers for half the steps,
`lmkit grow` to n_layer, then the other half with init_from. Same schedule shape in each phase; the
table gives val loss and training time (evaluations excluded) of both.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import report  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def train(config: str, overrides: list[str]) -> tuple[float, float, int]:
    """(final val loss, train seconds without evaluations, steps)."""
    import lmkit.viz
    from lmkit.config import load_config
    from lmkit.train.trainer import Trainer
    lmkit.viz.plot_loss = lambda *a, **k: None
    cfg = load_config(ROOT / config, overrides)
    eval_s = [0.0]

    class Timed(Trainer):
        def evaluate(self):
            t0 = time.perf_counter()
            out = super().evaluate()
            eval_s[0] += time.perf_counter() - t0
            return out

    trainer = Timed(cfg, progress=False)
    t0 = time.perf_counter()
    result = trainer.fit()
    return result.val_loss, time.perf_counter() - t0 - eval_s[0], result.step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="examples/shakespeare_char.toml")
    ap.add_argument("--iters", type=int, default=600)
    ap.add_argument("--shallow", type=int, default=2, help="layers of the shallow phase")
    ap.add_argument("--set", dest="overrides", nargs="+", default=[])
    a = ap.parse_args()
    from lmkit.config import load_config
    from lmkit.train.grow import grow_run
    n_layer = load_config(ROOT / a.config, a.overrides).model.n_layer
    tmp = Path(tempfile.mkdtemp(prefix="lmkit-grow-"))
    half = a.iters // 2
    common = a.overrides + ["checkpoint_interval=1000000"]
    val_s, t_s, _ = train(a.config, common + [f"max_iters={a.iters}", f"lr_decay_iters={a.iters}",
                                              f"out_dir={tmp / 'scratch'}"])
    val_1, t_1, _ = train(a.config, common + [f"n_layer={a.shallow}", f"max_iters={half}", f"lr_decay_iters={half}",
                                              f"out_dir={tmp / 'shallow'}"])
    grow_run(tmp / "shallow", n_layer, tmp / "grown")
    val_2, t_2, _ = train(a.config, common + [f"init_from={tmp / 'grown'}", f"max_iters={a.iters - half}",
                                              f"lr_decay_iters={a.iters - half}", f"out_dir={tmp / 'deep'}"])
    report(f"progressive stacking ({a.config} {' '.join(a.overrides)})",
           ["run", "iters", "final val loss", "train s (evals excluded)"],
           [[f"{n_layer} layers from scratch", a.iters, f"{val_s:.3f}", f"{t_s:.0f}"],
            [f"{a.shallow} layers", half, f"{val_1:.3f}", f"{t_1:.0f}"],
            [f"then grown to {n_layer} layers", a.iters - half, f"{val_2:.3f}", f"{t_1 + t_2:.0f} (both phases)"]])


if __name__ == "__main__":
    main()
