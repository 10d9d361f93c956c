"""Self-contained SVG plots (no plotting library, no network to view them)."""

from __future__ import annotations

import math
import os
from html import escape
from pathlib import Path
from typing import Any

from edgeshrink.util import atomic_path

WIDTH, HEIGHT = 460, 340
MARGIN = {"left": 70, "right": 20, "top": 40, "bottom": 50}
COLORS = {"front": "#1f6feb", "other": "#8b949e", "nofit": "#d0d7de", "pick": "#d1242f"}


def axis_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = min((m * mag for m in (1, 2, 5, 10) if m * mag >= raw), default=raw)
    start = math.ceil(lo / step) * step
    return [
        start + i * step
        for i in range(int((hi - start) / step) + 2)
        if start + i * step <= hi + 1e-12
    ]


def _fmt(value: float) -> str:
    return f"{value:.3g}"


def _fmt_axis(value: float) -> str:
    # .3g writes 100000 as 1e+05: large values (speeds) read better in full.
    return f"{value:,.0f}" if abs(value) >= 1000 else _fmt(value)


def scatter_panel(
    points: list[dict[str, Any]],
    *,
    x_label: str,
    y_label: str,
    title: str,
    front: tuple[str, ...],
    pick: str | None,
    offset_x: int = 0,
    hline: float | None = None,
) -> str:
    """One scatter panel; ``points`` carry name, x, y and fits; ``hline`` is a budget drawn
    across the panel (a loss above it is too much)."""
    xs = [p["x"] for p in points]
    ys = [p["y"] for p in points]
    x_lo, x_hi = min(xs), max(xs)
    # Losses can be negative (a candidate more accurate than its original) or all zero.
    y_lo, y_hi = min(0.0, min(ys)), max([*ys, *([hline] if hline is not None else [])])
    span = y_hi - y_lo
    if span == 0:
        y_hi = y_lo + 1.0
    else:
        y_hi += 0.1 * span
        y_lo -= 0.05 * span if y_lo < 0 else 0.0
    pad = (x_hi - x_lo) * 0.08 or 1.0
    x_lo, x_hi = x_lo - pad, x_hi + pad
    plot_w = WIDTH - MARGIN["left"] - MARGIN["right"]
    plot_h = HEIGHT - MARGIN["top"] - MARGIN["bottom"]

    def sx(x: float) -> float:
        return offset_x + MARGIN["left"] + (x - x_lo) / (x_hi - x_lo) * plot_w

    def sy(y: float) -> float:
        return MARGIN["top"] + plot_h - (y - y_lo) / (y_hi - y_lo) * plot_h

    out = [
        f'<text x="{offset_x + WIDTH / 2}" y="22" text-anchor="middle" font-weight="bold">{escape(title)}</text>'
    ]
    out.append(
        f'<rect x="{sx(x_lo)}" y="{MARGIN["top"]}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#57606a"/>'
    )
    for t in axis_ticks(x_lo, x_hi):
        out.append(
            f'<text x="{sx(t):.1f}" y="{HEIGHT - 30}" text-anchor="middle" font-size="11">{_fmt_axis(t)}</text>'
        )
    for t in axis_ticks(y_lo, y_hi):
        out.append(
            f'<text x="{sx(x_lo) - 6:.1f}" y="{sy(t) + 4:.1f}" text-anchor="end" font-size="11">{_fmt_axis(t)}</text>'
        )
        out.append(
            f'<line x1="{sx(x_lo)}" x2="{sx(x_hi)}" y1="{sy(t):.1f}" y2="{sy(t):.1f}" stroke="#eaeef2"/>'
        )
    out.append(
        f'<text x="{offset_x + MARGIN["left"] + plot_w / 2}" y="{HEIGHT - 10}" text-anchor="middle">{escape(x_label)}</text>'
    )
    out.append(
        f'<text transform="translate({offset_x + 13},{MARGIN["top"] + plot_h / 2}) rotate(-90)" '
        f'text-anchor="middle">{escape(y_label)}</text>'
    )
    if hline is not None:
        out.append(
            f'<line class="budget" x1="{sx(x_lo)}" x2="{sx(x_hi)}" y1="{sy(hline):.1f}" '
            f'y2="{sy(hline):.1f}" stroke="{COLORS["pick"]}" stroke-dasharray="2 4"/>'
            f'<text x="{sx(x_hi) - 4:.1f}" y="{sy(hline) - 4:.1f}" text-anchor="end" font-size="10" '
            f'fill="{COLORS["pick"]}">budget {_fmt(hline)}</text>'
        )
    on_front = sorted((p for p in points if p["name"] in front), key=lambda p: p["x"])
    if len(on_front) > 1:
        path = " ".join(f"{sx(p['x']):.1f},{sy(p['y']):.1f}" for p in on_front)
        out.append(
            f'<polyline points="{path}" fill="none" stroke="{COLORS["front"]}" stroke-dasharray="4 3"/>'
        )
    for p in points:
        color = COLORS["pick"] if p["name"] == pick else (
            COLORS["nofit"] if not p["fits"] else COLORS["front"] if p["name"] in front else COLORS["other"]
        )  # fmt: skip
        radius = 6 if p["name"] == pick else 4
        out.append(
            f'<circle class="point" data-name="{escape(p["name"])}" cx="{sx(p["x"]):.1f}" cy="{sy(p["y"]):.1f}" '
            f'r="{radius}" fill="{color}"><title>{escape(p["name"])}: {_fmt_axis(p["x"])}, {_fmt(p["y"])}</title></circle>'
        )
    # One label per spot: candidates that landed on the same point share it.
    labels: dict[tuple[float, float], list[str]] = {}
    for p in points:
        labels.setdefault((round(sx(p["x"])), round(sy(p["y"]))), []).append(p["name"])
    placed: list[tuple[float, float, float, float]] = []
    for (x, y), names in labels.items():
        text = ", ".join(names)
        lx, ly, anchor = _label_spot(x, y, len(text) * CHAR_W, placed, offset_x)
        out.append(
            f'<text x="{lx}" y="{ly}" text-anchor="{anchor}" font-size="10">{escape(text)}</text>'
        )
    return "\n".join(out)


CHAR_W = 5.6  # the average width of a 10 px sans-serif character, to keep labels apart
LABEL_H = 11


def _label_spot(
    x: float, y: float, width: float, placed: list[tuple[float, float, float, float]], offset_x: int
) -> tuple[float, float, str]:
    """Where a point's label goes: above right, else below right, above left, below left.

    The first spot that overlaps no label placed before wins (``placed`` grows);
    when every spot overlaps, the first one.
    """
    right_edge = offset_x + WIDTH - MARGIN["right"]
    spots = [(x + 7, y - 6, "start"), (x + 7, y + 14, "start"),
             (x - 7, y - 6, "end"), (x - 7, y + 14, "end")]  # fmt: skip
    if x + 7 + width > right_edge:  # a label that would run out of the panel goes left first
        spots = spots[2:] + spots[:2]

    def box(spot: tuple[float, float, str]) -> tuple[float, float, float, float]:
        lx, ly, anchor = spot
        left = lx if anchor == "start" else lx - width
        return (left, ly - LABEL_H + 2, left + width, ly + 2)

    def free(b: tuple[float, float, float, float]) -> bool:
        return not any(b[0] < o[2] and o[0] < b[2] and b[1] < o[3] and o[1] < b[3] for o in placed)

    spot = next((s for s in spots if free(box(s))), spots[0])
    placed.append(box(spot))
    return spot


def empty_panel(*, title: str, message: str, offset_x: int = 0) -> str:
    """A panel with nothing to plot, saying why."""
    plot_w = WIDTH - MARGIN["left"] - MARGIN["right"]
    plot_h = HEIGHT - MARGIN["top"] - MARGIN["bottom"]
    left = offset_x + MARGIN["left"]
    return "\n".join([
        f'<text x="{offset_x + WIDTH / 2}" y="22" text-anchor="middle" font-weight="bold">{escape(title)}</text>',
        f'<rect x="{left}" y="{MARGIN["top"]}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#d0d7de"/>',
        f'<text x="{left + plot_w / 2}" y="{MARGIN["top"] + plot_h / 2}" text-anchor="middle" '
        f'fill="#57606a">{escape(message)}</text>',
    ])  # fmt: skip


def sweep_legend(result: Any) -> str:
    """What each colour on the plots means, for the colours the points really have (a
    point's colour is per panel: on the size plot's front, or the speed plot's)."""
    cands = result.candidates
    fronts = [set(result.pareto_size)]
    if any(c.speed for c in cands):
        fronts.append(set(result.pareto_speed))
    others = [c for c in cands if c.fits and c.quant != result.pick]
    parts = ["red: the pick"] if result.pick else []
    if any(c.quant in front for c in others for front in fronts):
        parts.append("blue, dashed: Pareto front")
    if any(c.quant not in front for c in others for front in fronts):
        parts.append("grey: fits, but off the Pareto front of that plot")
    if any(not c.fits for c in cands):
        parts.append("light grey: does not fit the memory budget")
    return "; ".join(parts)


def write_sweep_svg(result: Any, path: str | os.PathLike[str]) -> Path:
    """Quality loss against size and against speed, Pareto fronts dashed, the pick in red.

    The loss is the result's ``loss_label`` (lower is better): the mean KL
    divergence for GGUF; the accuracy drop in points or 1 − cosine for ONNX.
    Without any speed (ONNX without a target) the speed panel says so.
    """
    cands = result.candidates
    small = bool(cands) and max(c.size_bytes for c in cands) < 2**20
    unit, scale = ("KiB", 2**10) if small else ("MiB", 2**20)
    size_points = [
        {"name": c.quant, "x": c.size_bytes / scale, "y": c.loss, "fits": c.fits} for c in cands
    ]
    if cands:
        left = scatter_panel(
            size_points, x_label=f"size ({unit})", y_label=result.loss_label,
            title="quality vs size", front=result.pareto_size, pick=result.pick,
        )  # fmt: skip
    else:
        left = empty_panel(title="quality vs size", message="no candidate was made")
    if not cands:
        right = empty_panel(
            title="quality vs speed", message="no candidate was made", offset_x=WIDTH
        )
    elif any(c.speed for c in cands):
        speed_points = [
            {"name": c.quant, "x": c.speed or 0.0, "y": c.loss, "fits": c.fits} for c in cands
        ]
        right = scatter_panel(
            speed_points, x_label=f"{result.speed_label} ({result.speed_source})",
            y_label=result.loss_label, title="quality vs speed", front=result.pareto_speed,
            pick=result.pick, offset_x=WIDTH,
        )  # fmt: skip
    else:
        right = empty_panel(
            title="quality vs speed", message="speed not measured: pass --target", offset_x=WIDTH
        )
    caption = escape(
        f"{result.model.name} on {result.profile_id}: pick {result.pick or 'none'}; "
        + sweep_legend(result)
    )
    svg = (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{2 * WIDTH}" height="{HEIGHT + 24}" '
        f'font-family="sans-serif" font-size="12">\n<rect width="100%" height="100%" fill="white"/>\n'
        f"{left}\n{right}\n"
        f'<text x="{WIDTH}" y="{HEIGHT + 16}" text-anchor="middle" font-size="11">{caption}'
        f"</text>\n</svg>\n"
    )
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(svg, encoding="utf-8")
    return path


def write_layer_scores_svg(scores: Any, removed: Any, path: str | os.PathLike[str]) -> Path:
    """One bar per block: its influence (1 - cos between input and output); the removed
    blocks in red. ``scores`` is a passes.prune.LayerScores."""
    values = list(scores.influence)
    n = len(values)
    width = max(WIDTH, MARGIN["left"] + MARGIN["right"] + 18 * n)
    plot_w = width - MARGIN["left"] - MARGIN["right"]
    plot_h = HEIGHT - MARGIN["top"] - MARGIN["bottom"]
    top = max(values) if values and max(values) > 0 else 1.0
    ticks = axis_ticks(0.0, top)
    top = max(top, ticks[-1])
    slot = plot_w / max(n, 1)
    parts = []
    for t in ticks:
        y = MARGIN["top"] + plot_h * (1 - t / top)
        parts.append(f'<line x1="{MARGIN["left"]}" x2="{width - MARGIN["right"]}" y1="{y:.1f}" '
                     f'y2="{y:.1f}" stroke="#eaeef2"/><text x="{MARGIN["left"] - 6}" y="{y + 4:.1f}" '
                     f'text-anchor="end" font-size="11">{_fmt(t)}</text>')  # fmt: skip
    cut = set(removed)
    for i, v in enumerate(values):
        h = plot_h * v / top
        x = MARGIN["left"] + i * slot + slot * 0.15
        color = COLORS["pick"] if i in cut else COLORS["front"]
        parts.append(f'<rect x="{x:.1f}" y="{MARGIN["top"] + plot_h - h:.1f}" width="{slot * 0.7:.1f}" '
                     f'height="{h:.1f}" fill="{color}"><title>block {i}: {v:.4f}</title></rect>')  # fmt: skip
        if n <= 40 or i % 5 == 0:
            parts.append(f'<text x="{x + slot * 0.35:.1f}" y="{HEIGHT - MARGIN["bottom"] + 14}" '
                         f'text-anchor="middle" font-size="10">{i}</text>')  # fmt: skip
    title = escape(f"{Path(scores.model).name}: block influence over {scores.n_tokens} tokens"
                   + (f"; removed {', '.join(map(str, sorted(cut)))}" if cut else ""))  # fmt: skip
    svg = (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{HEIGHT}" '
        f'font-family="sans-serif"><rect width="100%" height="100%" fill="white"/>'
        f'<text x="{width / 2:.0f}" y="20" text-anchor="middle" font-size="13">{title}</text>'
        + "".join(parts)
        + f'<text x="{width / 2:.0f}" y="{HEIGHT - 12}" text-anchor="middle" font-size="11">'
        f"block (0-based)</text>"
        f'<text x="16" y="{MARGIN["top"] + plot_h / 2:.0f}" font-size="11" text-anchor="middle" '
        f'transform="rotate(-90 16 {MARGIN["top"] + plot_h / 2:.0f})">1 − cos(input, output)</text></svg>\n'
    )
    with atomic_path(path) as tmp:
        tmp.write_text(svg, encoding="utf-8")
    return Path(path)
