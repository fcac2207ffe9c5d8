"""Line charts as inline SVG for the run report: no JavaScript, no files beside the page, text that stays text
(so that any script, Chinese included, renders in the browser's own fonts)."""
from __future__ import annotations

import math
from html import escape

COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b"]
W, H, LEFT, RIGHT, TOP, BOTTOM = 640, 300, 64, 16, 28, 44


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About n round tick values covering [lo, hi] (steps of 1, 2 or 5 × a power of ten)."""
    if hi <= lo:
        hi = lo + (abs(lo) or 1.0)
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    first, last = math.floor(lo / step + 1e-9), math.ceil(hi / step - 1e-9)
    return [round(k * step, 12) for k in range(first, last + 1)]


def _label(v: float) -> str:
    if v == 0:
        return "0"
    a = abs(v)
    if a >= 1e9:
        return f"{v / 1e9:g}G"
    if a >= 1e6:
        return f"{v / 1e6:g}M"
    if a >= 1e4:
        return f"{v / 1e3:g}k"
    return f"{v:.4g}"


def line_chart(series: list[dict], x_label: str, y_label: str, title: str = "") -> str:
    """series: [{"label", "points": [(x, y), ...], "markers": bool}] -> an <svg> element. Points that are not
    finite numbers are left out; a chart with no points says so."""
    clean = []
    for s in series:
        pts = [(float(x), float(y)) for x, y in s["points"]
               if isinstance(x, (int, float)) and isinstance(y, (int, float)) and math.isfinite(x) and math.isfinite(y)]
        if pts:
            clean.append({**s, "points": pts})
    head = (f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {H}" width="{W}" height="{H}" '
            f'role="img" aria-label="{escape(title or y_label)}">')
    parts = [head, f'<rect x="0" y="0" width="{W}" height="{H}" fill="#ffffff"/>']
    if title:
        parts.append(f'<text x="{W / 2}" y="18" text-anchor="middle" font-size="14">{escape(title)}</text>')
    if not clean:
        parts.append(f'<text x="{W / 2}" y="{H / 2}" text-anchor="middle" fill="#888">no data</text></svg>')
        return "".join(parts)
    xs = [x for s in clean for x, _ in s["points"]]
    ys = [y for s in clean for _, y in s["points"]]
    xt, yt = nice_ticks(min(xs), max(xs)), nice_ticks(min(ys), max(ys))
    x0, x1, y0, y1 = xt[0], xt[-1], yt[0], yt[-1]
    pw, ph = W - LEFT - RIGHT, H - TOP - BOTTOM

    def px(x: float) -> float:
        return LEFT + (x - x0) / ((x1 - x0) or 1) * pw

    def py(y: float) -> float:
        return TOP + ph - (y - y0) / ((y1 - y0) or 1) * ph

    for t in yt:
        parts.append(f'<line x1="{LEFT}" x2="{W - RIGHT}" y1="{py(t):.1f}" y2="{py(t):.1f}" stroke="#e5e5e5"/>'
                     f'<text x="{LEFT - 6}" y="{py(t) + 4:.1f}" text-anchor="end" font-size="11">{_label(t)}</text>')
    for t in xt:
        parts.append(f'<line x1="{px(t):.1f}" x2="{px(t):.1f}" y1="{TOP}" y2="{TOP + ph}" stroke="#f0f0f0"/>'
                     f'<text x="{px(t):.1f}" y="{TOP + ph + 16}" text-anchor="middle" font-size="11">{_label(t)}</text>')
    parts.append(f'<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>')
    parts.append(f'<text x="{LEFT + pw / 2}" y="{H - 6}" text-anchor="middle" font-size="12">{escape(x_label)}</text>')
    parts.append(f'<text transform="translate(14 {TOP + ph / 2}) rotate(-90)" text-anchor="middle" '
                 f'font-size="12">{escape(y_label)}</text>')
    lines = [f'<polyline class="series" fill="none" stroke="{COLOURS[i % len(COLOURS)]}" stroke-width="1.8" points="'
             + " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in s["points"]) + '"/>' for i, s in enumerate(clean)]
    parts += lines + [f'<rect x="{W - RIGHT - 156}" y="{TOP + 2}" width="152" height="{16 * len(clean) + 4}" '
                      f'fill="#ffffff" fill-opacity="0.85"/>']  # the legend, over the curves
    for i, s in enumerate(clean):
        colour = COLOURS[i % len(COLOURS)]
        if s.get("markers") or len(s["points"]) == 1:
            parts += [f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="2.8" fill="{colour}"/>' for x, y in s["points"]]
        ly = TOP + 14 + 16 * i
        parts.append(f'<line x1="{W - RIGHT - 150}" x2="{W - RIGHT - 130}" y1="{ly - 4}" y2="{ly - 4}" '
                     f'stroke="{colour}" stroke-width="2.5"/><text x="{W - RIGHT - 124}" y="{ly}" '
                     f'font-size="11">{escape(s["label"])}</text>')
    parts.append("</svg>")
    return "".join(parts)
