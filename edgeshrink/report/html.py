"""The lab report as ONE self-contained HTML page: inline CSS and SVG, no script, no network.

Top: the newest run against its baseline (regressed / failed / improved).
Middle: a trend plot per metric for each device and job over the window, each
run's point coloured by that run's own verdict (red: regressed, green:
improved, a red cross: the job failed).  Bottom: tables (findings, failures,
device snapshots, runs).
"""

from __future__ import annotations

import os
from html import escape
from pathlib import Path
from typing import Any

from edgeshrink.report.plot import axis_ticks
from edgeshrink.util import atomic_path

RED, GREEN, AMBER, BLUE, GREY = "#d1242f", "#1a7f37", "#9a6700", "#0969da", "#8c959f"
PLOT_W, PLOT_H = 330, 190
MARGIN = {"left": 58, "right": 12, "top": 28, "bottom": 34}

CSS = f"""
body {{ font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 24px auto;
       max-width: 1400px; padding: 0 16px; color: #1f2328; background: #fff; }}
h1 {{ font-size: 26px; margin: 0 0 4px; }}
h2 {{ font-size: 20px; border-bottom: 1px solid #d0d7de; padding-bottom: 4px; margin-top: 32px; }}
h3 {{ font-size: 17px; margin: 20px 0 6px; }}
h4 {{ font-size: 14px; margin: 10px 0 4px; color: #57606a; }}
.meta, .rule, .legend {{ color: #57606a; font-size: 13px; }}
.summary {{ display: flex; gap: 16px; flex-wrap: wrap; margin-top: 16px; }}
.box {{ flex: 1 1 300px; border: 2px solid #d0d7de; border-radius: 8px; padding: 10px 14px; }}
.box h2 {{ border: none; margin: 0 0 6px; font-size: 18px; }}
.box .count {{ font-size: 28px; font-weight: bold; margin-left: 6px; }}
.box ul {{ margin: 0; padding-left: 18px; font-size: 13px; }}
.box li {{ margin: 3px 0; }}
.box.regressed {{ border-color: {RED}; background: #fff5f5; }}
.box.regressed .count, .box.regressed h2 {{ color: {RED}; }}
.box.failed {{ border-color: {AMBER}; background: #fff8e5; }}
.box.failed .count, .box.failed h2 {{ color: {AMBER}; }}
.box.improved {{ border-color: {GREEN}; background: #f0fff4; }}
.box.improved .count, .box.improved h2 {{ color: {GREEN}; }}
.box.none {{ border-color: #d0d7de; background: #f6f8fa; }}
.box.none .count, .box.none h2 {{ color: #57606a; }}
.plots {{ display: flex; flex-wrap: wrap; gap: 8px; }}
svg.trend {{ border: 1px solid #d0d7de; border-radius: 6px; background: #fff; }}
svg.trend.regressed {{ border: 2px solid {RED}; }}
table {{ border-collapse: collapse; font-size: 13px; margin: 8px 0 16px; }}
th, td {{ border: 1px solid #d0d7de; padding: 4px 8px; text-align: left; vertical-align: top; }}
th {{ background: #f6f8fa; }}
td.num {{ text-align: right; font-variant-numeric: tabular-nums; }}
tr.regressed td, tr.new-failure td {{ background: #ffebe9; }}
tr.failing td {{ background: #fff8e5; }}
tr.improved td, tr.fixed td {{ background: #dafbe1; }}
.verdict {{ font-weight: bold; }}
.verdict.regressed, .verdict.new-failure {{ color: {RED}; }}
.verdict.improved, .verdict.fixed {{ color: {GREEN}; }}
.verdict.failing {{ color: {AMBER}; }}
footer {{ margin-top: 40px; color: #57606a; font-size: 12px; }}
code {{ background: #f6f8fa; padding: 1px 4px; border-radius: 4px; }}
"""


def _num(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    text = f"{value:,.1f}" if abs(value) >= 100 else f"{value:.4g}"
    return f"{text} {unit}".strip()


def _tick(value: float) -> str:
    """10,000 rather than 1e+04: speeds on an axis read in full."""
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def _point_color(verdict: str | None) -> tuple[str, float, str]:
    if verdict in ("regressed", "new-failure"):
        return RED, 5.5, "regressed"
    if verdict in ("improved", "fixed"):
        return GREEN, 5.0, "improved"
    if verdict == "not significant":
        return AMBER, 4.0, "not-significant"
    return BLUE, 3.5, "ok"


def trend_svg(series: Any, baseline: float | None = None) -> str:
    """One small trend plot: the median of each run (whiskers: min-max of its samples).

    The axis is scaled to the medians (and the baseline), not to the whiskers: on a noisy
    host one wild repetition would otherwise squash every median into a flat line. A
    whisker longer than the plot is cut at its top and marked with an arrow; its tooltip
    keeps the full range.
    """
    points = list(series.points)
    n = max(len(points), 1)
    values = [p.value for p in points if p.value is not None]
    top = max([*values, *([baseline] if baseline else [])] or [1.0])
    y_lo, y_hi = 0.0, (top * 1.25) or 1.0
    plot_w = PLOT_W - MARGIN["left"] - MARGIN["right"]
    plot_h = PLOT_H - MARGIN["top"] - MARGIN["bottom"]

    def sx(i: int) -> float:
        return MARGIN["left"] + (i + 0.5) * plot_w / n

    def sy(y: float) -> float:
        return MARGIN["top"] + plot_h - (y - y_lo) / (y_hi - y_lo) * plot_h

    title = f"{series.label} ({series.unit})" if series.unit else series.label
    better = "higher is better" if series.better == "higher" else "lower is better"
    css = "trend regressed" if series.regressed else "trend"
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="{css}" width="{PLOT_W}" height="{PLOT_H}" '
        f'viewBox="0 0 {PLOT_W} {PLOT_H}" font-family="sans-serif" font-size="11" '
        f'data-device="{escape(series.device)}" data-job="{escape(series.job)}" data-metric="{series.metric}" '
        f'role="img" aria-label="{escape(title)} of {escape(series.job)} on {escape(series.device)}">',
        f"<title>{escape(title)}: {escape(series.job)} on {escape(series.device)} ({better})</title>",
        f'<text x="{MARGIN["left"]}" y="17" font-weight="bold" font-size="12">{escape(title)}</text>',
        f'<text x="{PLOT_W - MARGIN["right"]}" y="17" text-anchor="end" fill="#57606a">{better}</text>',
        f'<rect x="{MARGIN["left"]}" y="{MARGIN["top"]}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#d0d7de"/>',
    ]
    for t in axis_ticks(y_lo, y_hi, 4):
        out.append(
            f'<line x1="{MARGIN["left"]}" x2="{MARGIN["left"] + plot_w}" y1="{sy(t):.1f}" y2="{sy(t):.1f}" stroke="#eaeef2"/>'
            f'<text x="{MARGIN["left"] - 5}" y="{sy(t) + 4:.1f}" text-anchor="end" fill="#57606a">{_tick(t)}</text>'
        )
    if baseline:
        out.append(
            f'<line class="baseline" x1="{MARGIN["left"]}" x2="{MARGIN["left"] + plot_w}" '
            f'y1="{sy(baseline):.1f}" y2="{sy(baseline):.1f}" stroke="{GREY}" stroke-dasharray="5 3">'
            f"<title>baseline median {_num(baseline, series.unit)}</title></line>"
        )
    step = max(1, round(n / 10))
    for i, p in enumerate(points):
        if i % step == 0 or i == n - 1:
            out.append(
                f'<text x="{sx(i):.1f}" y="{PLOT_H - MARGIN["bottom"] + 14}" text-anchor="middle" '
                f'fill="#57606a">#{p.run_id}</text>'
            )
    line = [f"{sx(i):.1f},{sy(p.value):.1f}" for i, p in enumerate(points) if p.value is not None]
    if len(line) > 1:
        out.append(
            f'<polyline points="{" ".join(line)}" fill="none" stroke="{BLUE}" stroke-width="1.5"/>'
        )
    for i, p in enumerate(points):
        when = p.started_at[:16].replace("T", " ")
        if p.value is None:
            y = MARGIN["top"] + plot_h - 8
            out.append(
                f'<text class="failed" x="{sx(i):.1f}" y="{y + 5:.1f}" text-anchor="middle" font-size="16" '
                f'font-weight="bold" fill="{RED}">×<title>run #{p.run_id} ({when}): failed: '
                f"{escape(p.note)}</title></text>"
            )
            continue
        if p.low is not None and p.high is not None and p.high > p.low:
            high = min(p.high, y_hi)
            out.append(
                f'<line x1="{sx(i):.1f}" x2="{sx(i):.1f}" y1="{sy(p.low):.1f}" y2="{sy(high):.1f}" '
                f'stroke="{GREY}" stroke-width="1"/>'
            )
            if p.high > y_hi:
                x, y = sx(i), sy(y_hi)
                out.append(
                    f'<path class="clipped" d="M{x - 3:.1f},{y + 5:.1f} L{x:.1f},{y:.1f} L{x + 3:.1f},{y + 5:.1f}" '
                    f'fill="none" stroke="{GREY}" stroke-width="1.2"><title>the whisker goes on to '
                    f"{_num(p.high, series.unit)}</title></path>"
                )
        color, radius, cls = _point_color(p.verdict)
        spread = f" (min {_num(p.low)}, max {_num(p.high)})" if p.low is not None else ""
        out.append(
            f'<circle class="point {cls}" cx="{sx(i):.1f}" cy="{sy(p.value):.1f}" r="{radius}" fill="{color}">'
            f"<title>run #{p.run_id} ({when}): {_num(p.value, series.unit)}{spread}"
            f"{' — ' + escape(p.verdict) if p.verdict else ''}</title></circle>"
        )
    out.append("</svg>")
    return "\n".join(out)


def _summary_box(css: str, title: str, findings: list[Any], empty: str) -> str:
    items = "".join(
        f"<li><b>{escape(f.device)} / {escape(f.job)}</b>: "
        + ("<b>new</b> " if f.verdict == "new-failure" else "")
        + f"{escape(f.message)}</li>"
        for f in findings
    )

    box_css = css if findings else "none"
    body = f"<ul>{items}</ul>" if findings else f'<p class="meta">{escape(empty)}</p>'
    return (
        f'<div class="box {box_css}" id="{css}"><h2>{title}<span class="count">{len(findings)}</span></h2>'
        f"{body}</div>"
    )


def _rule_text(policy: Any) -> str:
    return (
        f"Rule: a speed metric (generation, prompt processing, time to first token) is regressed when it is "
        f"worse than the median of the baseline runs by more than max({policy.threshold:.0%}, "
        f"e^({policy.noise_factor:g}·s) − 1), s being the spread of the baseline nights (1.4826 × MAD of their "
        f"log medians), AND a one-sided Mann–Whitney U test of the repetition samples gives "
        f"p &lt; {policy.alpha:g}; it needs {policy.min_baseline_runs} good baseline runs. Memory: worse by more "
        f"than {policy.memory_threshold:.0%} and worse than every baseline run. Quality: worse by more than "
        f"{policy.quality_threshold:.0%} or the budget fails now. A job that was ok in the baseline and has no "
        f"good result now is a new failure."
    )


def _table(
    headers: list[str],
    rows: list[tuple[str, list[str]]],
    numeric: frozenset[int] | set[int] = frozenset(),
) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = []
    for css, cells in rows:
        tds = "".join(
            f'<td class="num">{c}</td>' if i in numeric else f"<td>{c}</td>"
            for i, c in enumerate(cells)
        )
        body.append(f'<tr class="{css}">{tds}</tr>')
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def render_html(report: Any) -> str:
    """The whole page for a :class:`~edgeshrink.lab.reporting.LabReport`."""
    comp = report.comparison
    suite = report.suite_name or "all suites"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>edgeshrink device lab: {escape(suite)}"
        + (f" — run #{comp.run.id}" if comp else "")
        + "</title>",
        f"<style>{CSS}</style></head><body>",
        f"<header><h1>Device lab: {escape(suite)}</h1>",
    ]
    window = f"since {report.since}" if report.since else "all runs"
    runs = report.view.runs
    if comp:
        base = ", ".join(f"#{i}" for i in sorted(comp.baseline_runs)) or "none"
        parts.append(
            f'<p class="meta">Newest run <b>#{comp.run.id}</b> (started {escape(comp.run.started_at[:19].replace("T", " "))} UTC '
            f"on {escape(comp.run.host)}, {escape(comp.run.status)}) against <b>{escape(comp.baseline_spec)}</b> "
            f"(runs {escape(base)}). Window: {escape(window)}, {len(runs)} run(s). Generated "
            f"{escape(report.generated_at[:19].replace('T', ' '))} UTC from {escape(str(report.db_path))}.</p>"
        )
    else:
        parts.append(
            f'<p class="meta">No lab runs {escape(window)} in {escape(str(report.db_path))}.</p>'
        )
    parts.append("</header>")

    parts.append('<section id="summary" class="summary">')
    if comp:
        parts.append(
            _summary_box("regressed", "Regressed", comp.metric_regressions, "nothing regressed")
        )
        parts.append(_summary_box("failed", "Failed", comp.failures, "every job measured"))
        parts.append(_summary_box("improved", "Improved", comp.improvements, "nothing improved"))
    parts.append("</section>")
    if comp:
        unchanged = comp.count("unchanged")
        other = ", ".join(
            f"{comp.count(v)} {v}"
            for v in ("not significant", "short baseline", "no-baseline")
            if comp.count(v)
        )
        parts.append(
            f'<p class="rule">{unchanged} metric(s) unchanged{", " + escape(other) if other else ""}. '
            f"{_rule_text(comp.policy)}</p>"
        )

    parts.append('<section id="trends"><h2>Trends</h2>')
    parts.append(
        '<p class="legend">One point per run (its median; the grey whisker spans its repetitions, '
        "cut at the top of the plot with an arrow when it runs past it). "
        f'<span style="color:{RED}">●</span> regressed in that run against its own baseline, '
        f'<span style="color:{GREEN}">●</span> improved, <span style="color:{AMBER}">●</span> over the limit but '
        f'not significant, <span style="color:{RED}">×</span> the job failed. Dashed: the newest run\'s baseline.</p>'
    )
    baselines: dict[tuple[str, str, str], float] = {}
    if comp:
        for f in comp.findings:
            if f.baseline is not None:
                baselines[(f.device, f.job, f.metric)] = f.baseline
    groups: dict[str, dict[str, list[Any]]] = {}
    for s in report.series:
        groups.setdefault(s.device, {}).setdefault(s.job, []).append(s)
    for device in sorted(groups, key=lambda d: (d == "host", d)):
        title = "host (quality, measured once per artifact)" if device == "host" else device
        parts.append(f'<div class="device" id="device-{escape(device)}"><h3>{escape(title)}</h3>')
        for job, series in groups[device].items():
            parts.append(f'<div class="job"><h4>{escape(job)}</h4><div class="plots">')
            for s in series:
                parts.append(trend_svg(s, baselines.get((s.device, s.job, s.metric))))
            parts.append("</div></div>")
        parts.append("</div>")
    if not groups:
        parts.append('<p class="meta">No measurements in the window.</p>')
    parts.append("</section>")

    parts.append('<section id="tables">')
    if comp:
        parts.append(f"<h2>Run #{comp.run.id} against its baseline</h2>")
        rows = []
        for f in comp.findings:
            changed = "; ".join(c.describe() for c in f.changed)
            rows.append((f.verdict.replace(" ", "-"), [
                f'<span class="verdict {escape(f.verdict.replace(" ", "-"))}">{escape(f.verdict)}</span>',
                escape(f.device), escape(f.job), escape(f.label if f.metric != "status" else "status"),
                _num(f.baseline, f.unit), _num(f.current, f.unit),
                f"{f.change:+.1%}" if f.change is not None else "-",
                f"{f.p_value:.2g}" if f.p_value is not None else "-",
                escape(changed or f.message),
            ]))  # fmt: skip
        parts.append(_table(
            ["verdict", "device", "job", "metric", "baseline", "now", "change", "p", "detail"],
            rows, numeric={4, 5, 6, 7},
        ))  # fmt: skip
    failures = []
    for run in reversed(runs):
        for j in report.view.jobs[run.id]:
            if j.failed:
                why = j.error or j.result_status or "failed"
                if j.status == "done":
                    why = f"{j.result_status}: {j.error or ''}"
                failures.append(("failing", [f"#{run.id}", escape(run.started_at[:16].replace("T", " ")),
                                             escape(j.device), escape(j.job), escape(why), str(j.attempts)]))  # fmt: skip
    parts.append(f"<h2>Failures in the window ({len(failures)})</h2>")
    parts.append(
        _table(["run", "started (UTC)", "device", "job", "why", "attempts"], failures)
        if failures
        else '<p class="meta">none</p>'
    )
    if runs:
        newest = runs[-1].id
        snaps = [s for s in report.view.snapshots if s["run_id"] == newest]
        parts.append(f"<h2>Devices in run #{newest}</h2>")
        snap_rows = []
        for s in snaps:
            runtimes = ", ".join(f"{k} {v}" for k, v in (s.get("runtimes") or {}).items())
            clocks = [v for v in (s.get("cpu_mhz") or {}).values() if isinstance(v, (int, float))]
            temps = [v for v in (s.get("temps_c") or {}).values() if isinstance(v, (int, float))]
            snap_rows.append(("", [
                escape(s["device"]), escape(s.get("os") or "-"), escape(s.get("kernel") or "-"),
                escape(s.get("python") or "-"), escape(f"{s.get('cpu') or '-'} ×{s.get('cores') or '?'}"),
                _num(s.get("ram_mb"), "MB"), _num(s.get("memory_limit_mb"), "MB"),
                escape(runtimes or "-"),
                f"{max(clocks):.0f} MHz" if clocks else "not readable",
                f"{max(temps):.1f} °C" if temps else "not readable",
            ]))  # fmt: skip
        parts.append(_table(
            ["device", "OS", "kernel", "Python", "CPU", "RAM", "memory limit", "runtimes", "clock", "temperature"],
            snap_rows,
        ) if snap_rows else '<p class="meta">no snapshots</p>')  # fmt: skip
        parts.append(f"<h2>Runs ({len(runs)})</h2>")
        run_rows = []
        for run in reversed(runs):
            summary = run.summary or {}
            run_rows.append(("", [
                f"#{run.id}", escape(run.suite_name), escape(run.status),
                escape(run.started_at[:19].replace("T", " ")),
                escape((run.finished_at or "-")[:19].replace("T", " ")), escape(run.host),
                str(summary.get("ok", "-")), str(summary.get("failed", "-")),
                escape(", ".join(summary.get("devices_failed", [])) or "-"),
                str(run.resumes),
            ]))  # fmt: skip
        parts.append(_table(
            ["run", "suite", "status", "started (UTC)", "finished", "host", "ok", "failed",
             "devices failed", "resumes"], run_rows, numeric={6, 7, 9},
        ))  # fmt: skip
    parts.append("</section>")
    parts.append(
        "<footer>edgeshrink lab report: one self-contained file (inline SVG, no scripts, no network). "
        "Every figure traces to a row of the results database: <code>lab_jobs.result_id → results</code>.</footer>"
    )
    parts.append("</body></html>\n")
    return "\n".join(parts)


def write_html(report: Any, path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(render_html(report), encoding="utf-8")
    return path
