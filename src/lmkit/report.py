"""`lmkit report RUN`: one self-contained HTML page of what a run was and how it went (also written as
report.html at the end of training).

Read from the run directory: config.json; metrics.jsonl (loss curves by step and by tokens, learning rate,
gradient norm, tokens/s, MFU, memory); samples.jsonl (the texts generated at each evaluation); summary.json
(parameters, FLOPs per token, the memory estimate and peak, the machine and wall time per phase of each
session); the prepared data's meta.json (sources, tokens, split); and every evaluation result there
(eval*.json, bench*.json, *results*.json, as `lmkit evaluate --json` writes them), or given with --eval.
The charts are inline SVG (report_svg.py): no script, no network, nothing beside the page.
"""
from __future__ import annotations

import json
import math
import struct
from html import escape
from pathlib import Path

from .errors import LmkitError
from .io import atomic_write_text
from .report_svg import line_chart
from .viz import metric_records

EVAL_PATTERNS = ("eval*.json", "bench*.json", "*results*.json")
STYLE = """body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"Noto Sans","Noto Sans CJK SC","PingFang SC",
"Microsoft YaHei","WenQuanYi Micro Hei",sans-serif;margin:2em auto;max-width:1340px;padding:0 1em;color:#222}
h1{font-size:1.6em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ddd;padding:.25em .6em;text-align:left;
vertical-align:top}th{background:#f6f6f6}td.n{text-align:right;font-variant-numeric:tabular-nums}
.charts{display:flex;flex-wrap:wrap;gap:12px}.chart{border:1px solid #eee;max-width:100%;height:auto}
pre{white-space:pre-wrap;background:#f8f8f8;padding:.5em;border-radius:4px;margin:.2em 0 .8em}
.prompt{font-weight:bold;color:#1f4e8c}.muted{color:#777}.grid{display:flex;flex-wrap:wrap;gap:2em}"""


def _json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _jsonl(path: Path) -> list[dict]:
    out = []
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue  # a line a kill cut short
            if isinstance(rec, dict):
                out.append(rec)
    return out


def _fmt(v) -> str:
    if isinstance(v, bool) or v is None:
        return str(v).lower() if isinstance(v, bool) else "—"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return "—" if not math.isfinite(v) else f"{v:,.0f}" if abs(v) >= 1e4 else f"{v:.4g}"
    if isinstance(v, (list, dict)):
        return json.dumps(v, ensure_ascii=False)
    return str(v)


def table(rows, head: tuple = ()) -> str:
    """rows of cells -> an HTML table (numbers right-aligned)."""
    out = ["<table>"]
    if head:
        out.append("<tr>" + "".join(f"<th>{escape(str(h))}</th>" for h in head) + "</tr>")
    for row in rows:
        cells = [f'<td class="n">{escape(_fmt(c))}</td>' if isinstance(c, (int, float)) and not isinstance(c, bool)
                 else f"<td>{escape(_fmt(c))}</td>" for c in row]
        out.append("<tr>" + "".join(cells) + "</tr>")
    return "".join(out) + "</table>"


def _gb(x) -> str:
    return "—" if x is None else f"{x / 1024 ** 3:.2f} GB"


def weights_parameters(path: Path) -> int | None:
    """Parameters in a safetensors file, from its header alone (runs trained before summary.json)."""
    try:
        with open(path, "rb") as f:
            n = struct.unpack("<Q", f.read(8))[0]
            header = json.loads(f.read(n))
    except (OSError, ValueError, struct.error):
        return None
    return sum(math.prod(v["shape"]) for k, v in header.items() if k != "__metadata__")


def _points(recs: list[dict], x: str, y: str) -> list:
    return [(r[x], r[y]) for r in recs if x in r and y in r]


def curves(recs: list[dict]) -> str:
    """Loss by step and by tokens; learning rate, gradient norm, tokens/s, MFU and memory by step."""
    def loss(x):
        return [{"label": "train (batch)", "points": _points(recs, x, "loss")},
                {"label": "val", "points": _points(recs, x, "val_loss"), "markers": True},
                {"label": "train (eval)", "points": _points(recs, x, "train_loss"), "markers": True}]
    charts = [line_chart(loss("step"), "step", "loss (nats/token)", "loss by step"),
              line_chart(loss("tokens"), "tokens seen", "loss (nats/token)", "loss by tokens")]
    for key, label, title in (("tok_per_s", "tokens/s", "throughput"), ("mfu", "MFU", "model FLOPs utilisation"),
                              ("lr", "learning rate", "learning rate"), ("grad_norm", "gradient norm", "gradient norm"),
                              ("memory_gb", "GB", "peak memory")):
        pts = _points(recs, "step", key)
        if pts:
            charts.append(line_chart([{"label": label, "points": pts}], "step", label, title))
    evals = sorted({k for r in recs if "val_loss" in r for k, v in r.items() if type(v) in (int, float)}
                   - {"step", "tokens", "val_loss", "train_loss", "epoch"})
    if evals:
        charts.append(line_chart([{"label": k, "points": _points(recs, "step", k), "markers": True} for k in evals],
                                 "step", "value", "evaluation metrics"))
    return '<div class="charts" id="curves">' + "".join(charts) + "</div>"


def overview(run: Path, cfg: dict, recs: list[dict], summary: dict) -> str:
    train = [r for r in recs if "loss" in r]
    evals = [r for r in recs if "val_loss" in r and isinstance(r["val_loss"], (int, float))]
    speeds = [r["tok_per_s"] for r in train if "tok_per_s" in r]
    mfus = [r["mfu"] for r in train if "mfu" in r]
    sessions = summary.get("sessions", [])
    wall = sum(sum(s.get("phases", {}).values()) for s in sessions)
    rows = [("model", cfg.get("model", {}).get("type", "?")), ("steps", max((r["step"] for r in recs), default=0)),
            ("tokens seen", max((r.get("tokens", 0) for r in recs), default=0)),
            ("last train loss (batch)", train[-1]["loss"] if train else None),
            ("last val loss", evals[-1]["val_loss"] if evals else None),
            ("best val loss", min((r["val_loss"] for r in evals), default=None)),
            ("mean tokens/s", sum(speeds) / len(speeds) if speeds else None),
            ("mean MFU", f"{100 * sum(mfus) / len(mfus):.1f}%" if mfus else "— (peak unknown: set peak_tflops)"),
            ("wall time", f"{wall:.1f} s over {len(sessions)} session(s)" if sessions else None)]
    return table(rows)


def data_section(run: Path, cfg: dict) -> str:
    source = str(cfg.get("data", {}).get("data", ""))
    meta = next((m for p in (run / "data" / "meta.json", Path(source) / "meta.json") if (m := _json(p))), None)
    if not isinstance(meta, dict):
        return f"<p>data: {escape(source)} <span class='muted'>(no meta.json found: not prepared here)</span></p>"
    rows = [(k, v) for k, v in meta.items() if k not in ("sources", "cleaning")]
    out = table(rows, ("field", "value"))
    if isinstance(meta.get("sources"), list):
        keys = list(dict.fromkeys(k for s in meta["sources"] if isinstance(s, dict) for k in s))
        out += "<h3>sources</h3>" + table([[s.get(k) for k in keys] for s in meta["sources"]], keys)
    if isinstance(meta.get("cleaning"), dict):
        out += "<h3>cleaning</h3>" + table(list(meta["cleaning"].items()), ("field", "value"))
    return out


def model_section(run: Path, cfg: dict, summary: dict) -> str:
    m, mem = summary.get("model", {}), summary.get("memory", {})
    n = m.get("parameters") or weights_parameters(run / "model.safetensors")
    rows = [("parameters", n), ("parameters counted for FLOPs (no position table)", m.get("counted_parameters")),
            ("training FLOPs per token (6·N + 12·L·d·T)", m.get("flops_per_token")),
            ("peak FLOP/s for MFU", m.get("peak_flops"))]
    est = mem.get("estimate") or {}
    rows += [(f"memory estimate: {k}", _gb(v)) for k, v in est.items()]
    rows += [(f"measured peak ({mem.get('measured', '?')})", _gb(mem.get("peak"))),
             ("of it held before the run started (Python, torch)", _gb(mem.get("before_run"))),
             ("activation checkpointing", mem.get("activation_checkpointing"))]
    return table(rows) + "<h3>model settings</h3>" + table(list(cfg.get("model", {}).items()), ("key", "value"))


def sessions_section(summary: dict) -> str:
    out = []
    for i, s in enumerate(summary.get("sessions", []), 1):
        phases = s.get("phases", {})
        total = sum(phases.values()) or 1.0
        rows = [(k, round(v, 2), f"{100 * v / total:.0f}%") for k, v in phases.items()]
        info = (f"<p>session {i}: {escape(str(s.get('started')))} → {escape(str(s.get('ended')))}, steps "
                f"{s.get('from_step')} → {s.get('to_step')}{' (resumed)' if s.get('resumed') else ''}, "
                f"{escape(str(s.get('parallel')))} × {s.get('world_size')}, {escape(str(s.get('dtype')))}</p>")
        out.append(f"<div>{info}{table(rows, ('phase', 'seconds', 'share'))}"
                   f"{table(list((s.get('machine') or {}).items()), ('machine', ''))}</div>")
    return '<div class="grid">' + "".join(out) + "</div>" if out else "<p class='muted'>no summary.json</p>"


def samples_section(run: Path) -> str:
    recs = _jsonl(run / "samples.jsonl")
    if not recs:
        return "<p class='muted'>no samples (samples.jsonl: written for causal language models)</p>"
    out = []
    for r in recs:
        out.append(f"<h3>step {escape(_fmt(r.get('step')))}</h3>")
        for s in r.get("samples", []):
            out.append(f"<pre class='sample'><span class='prompt'>{escape(str(s.get('prompt', '')))}</span>"
                       f"{escape(str(s.get('text', '')))}</pre>")
    return "".join(out)


def eval_section(files: list[Path]) -> str:
    """Each evaluation JSON: its numbers and short strings as one table; a nested object of numbers (one per
    benchmark or subject) as a table of its own; lists (per-example scores) counted, not shown."""
    out = []
    for f in files:
        d = _json(f)
        if not isinstance(d, dict):
            continue
        flat = [(k, v) for k, v in d.items() if not isinstance(v, (dict, list))]
        lists = [f"{k}: {len(v)} entries" for k, v in d.items() if isinstance(v, list)]
        out.append(f"<h3>{escape(f.name)}</h3>" + table(flat, ("field", "value")))
        for k, v in d.items():
            if isinstance(v, dict):
                inner = [(ik, iv) for ik, iv in v.items() if not isinstance(iv, dict)]
                nested = {ik: iv for ik, iv in v.items() if isinstance(iv, dict)}
                if nested:
                    cols = list(dict.fromkeys(c for r in nested.values() for c in r if not isinstance(r[c], (dict, list))))
                    out.append(f"<h4>{escape(k)}</h4>" + table([[n] + [r.get(c) for c in cols] for n, r in nested.items()],
                                                               ("", *cols)))
                if inner:
                    out.append(f"<h4>{escape(k)}</h4>" + table(inner))
        if lists:
            out.append(f"<p class='muted'>{escape('; '.join(lists))}</p>")
    return "".join(out) or "<p class='muted'>no evaluation results in the run directory (lmkit evaluate RUN --json " \
                            "RUN/eval.json puts them here)</p>"


def build_report(run_dir: str | Path, evals: list[str | Path] = ()) -> str:
    """The page for the run at `run_dir` (LmkitError if it is no training run)."""
    run = Path(run_dir)
    cfg = _json(run / "config.json")
    if not (run / "metrics.jsonl").is_file() or not isinstance(cfg, dict) or "train" not in cfg:
        raise LmkitError(f"{run}: not a training run directory (needs config.json and metrics.jsonl)")
    recs = metric_records(run / "metrics.jsonl")
    summary = _json(run / "summary.json") or {}
    files = sorted({f for pat in EVAL_PATTERNS for f in run.glob(pat) if f.is_file()})
    for e in evals:
        if not Path(e).is_file():
            raise LmkitError(f"--eval {e}: no such file")
        files.append(Path(e))
    sections = [("overview", overview(run, cfg, recs, summary)), ("curves", curves(recs)),
                ("samples at each evaluation", samples_section(run)), ("evaluations", eval_section(files)),
                ("data", data_section(run, cfg)), ("model", model_section(run, cfg, summary)),
                ("machine and wall time per phase", sessions_section(summary))]
    sections += [(f"config: {k}", table(list(v.items()), ("key", "value")))
                 for k, v in cfg.items() if isinstance(v, dict)]
    body = "".join(f"<section><h2>{escape(title)}</h2>{html}</section>" for title, html in sections)
    name = escape(run.resolve().name)
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{name}: lmkit run report</title>'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><link rel="icon" href="data:,">'
            f"<style>{STYLE}</style></head><body><h1>{name} <span class='muted'>lmkit run report</span></h1>"
            f"<p class='muted'>{escape(str(run.resolve()))}</p>{body}</body></html>\n")


def write_report(run_dir: str | Path, out: str | Path | None = None, evals: list[str | Path] = ()) -> Path:
    """Write the page (default RUN/report.html) atomically; returns its path."""
    out = Path(out) if out is not None else Path(run_dir) / "report.html"
    atomic_write_text(out, build_report(run_dir, evals))
    return out
