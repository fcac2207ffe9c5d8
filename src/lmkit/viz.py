"""Pictures of training: the loss curve every run writes as loss.png."""
from __future__ import annotations

import json
from pathlib import Path

from .errors import LmkitError
from .io import atomic_path


CJK_FONTS = ("Noto Sans CJK SC", "Noto Sans SC", "Source Han Sans SC", "WenQuanYi Zen Hei", "WenQuanYi Micro Hei",
             "PingFang SC", "Microsoft YaHei", "SimHei", "Arial Unicode MS")


def use_cjk_fonts(plt) -> None:
    """Let labels in Chinese (a run's name, say) render: the CJK fonts this machine has go before the defaults."""
    from matplotlib import font_manager
    have = {f.name for f in font_manager.fontManager.ttflist}
    extra = [n for n in CJK_FONTS if n in have and n not in plt.rcParams["font.sans-serif"]]
    plt.rcParams["font.sans-serif"] = extra + list(plt.rcParams["font.sans-serif"])


def save_figure(fig, out_png: str | Path) -> Path:
    """Lay out, write atomically as PNG (no half-written file), and free the figure. A character no font has is
    drawn as a box, without a warning per glyph."""
    import warnings

    import matplotlib.pyplot as plt
    out_png = Path(out_png)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Glyph .* missing from")
        fig.tight_layout()
        with atomic_path(out_png) as tmp:
            fig.savefig(tmp, format="png")
    plt.close(fig)
    return out_png


def metric_records(path: str | Path) -> list[dict]:
    """The records of a metrics.jsonl, each a JSON object with a numeric step. A last line cut short (the
    process was killed mid-write) is left out; any other bad line is an LmkitError naming file and line."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise LmkitError(f"{path}: cannot read ({e.strerror})") from None
    lines, recs = raw.split(b"\n"), []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line.decode("utf-8"))
        except ValueError:
            if n == len(lines):  # no newline after it: a partial write
                break
            raise LmkitError(f"{path}:{n}: corrupt metrics line (not JSON)") from None
        if not (isinstance(rec, dict) and "step" in rec and all(
                type(rec[k]) in (int, float) for k in ("step", "tokens", "loss", "val_loss") if k in rec)):
            raise LmkitError(f"{path}:{n}: corrupt metrics line (needs a numeric step, and numeric losses)")
        recs.append(rec)
    return recs


def read_metrics(path: str | Path) -> tuple[list, list]:
    recs = metric_records(path)
    return ([(r["step"], r["loss"]) for r in recs if "loss" in r],
            [(r["step"], r["val_loss"]) for r in recs if "val_loss" in r])


def plot_runs(runs: list[str | Path], out_png: str | Path) -> Path:
    """Train and val loss of several runs on one figure: by step (left) and by tokens seen (right)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    use_cjk_fonts(plt)
    fig, (by_step, by_tokens) = plt.subplots(1, 2, figsize=(12, 4.5), dpi=100)
    for i, run in enumerate(runs):
        f = Path(run) / "metrics.jsonl"
        if not f.is_file():
            raise LmkitError(f"{run}: no metrics.jsonl (not a training run directory)")
        recs = metric_records(f)
        colour = f"C{i % 10}"
        for key, style, label in (("loss", "-", "train"), ("val_loss", "o--", "val")):
            pts = [(r["step"], r.get("tokens", 0), r[key]) for r in recs if key in r]
            if pts:
                steps, tokens, vals = zip(*pts)
                kw = dict(color=colour, alpha=0.5 if key == "loss" else 1.0, markersize=3,
                          label=f"{Path(run).name} {label}")
                by_step.plot(steps, vals, style, **kw)
                by_tokens.plot(tokens, vals, style, **kw)
    for ax, xl in ((by_step, "step"), (by_tokens, "tokens seen")):
        ax.set_xlabel(xl)
        ax.set_ylabel("cross-entropy (nats/token)")
        ax.grid(alpha=0.3)
    by_tokens.legend(fontsize=8)
    return save_figure(fig, out_png)


def plot_loss(metrics_path: str | Path, out_png: str | Path, title: str | None = None) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    use_cjk_fonts(plt)
    train, val = read_metrics(metrics_path)
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=100)
    if train:
        ax.plot(*zip(*train), label="train loss (batch)", alpha=0.6, linewidth=1)
    if val:
        ax.plot(*zip(*val), "o-", label="val loss", markersize=3)
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title(title or Path(out_png).parent.name)
    ax.grid(alpha=0.3)
    ax.legend()
    save_figure(fig, out_png)
