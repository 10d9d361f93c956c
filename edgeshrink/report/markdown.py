"""The lab report in Markdown, for chat and CI comments: the summary, tables, sparklines."""

from __future__ import annotations

import html
import os
from pathlib import Path
from typing import Any

from edgeshrink.util import atomic_path, terminal_safe

SPARKS = "▁▂▃▄▅▆▇█"


def _num(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    text = f"{value:,.1f}" if abs(value) >= 100 else f"{value:.4g}"
    return f"{text} {unit}".strip()


def markdown_cell(text: str) -> str:
    """A table cell from any text, a device's error included: no control characters, no
    raw HTML (Markdown renderers pass it through, e.g. a <script>), no cell breaks."""
    return html.escape(terminal_safe(text), quote=False).replace("|", "\\|")


def sparkline(values: list[float | None]) -> str:
    """One character per run, scaled from 0 to the largest value; ✗ for a failed run."""
    present = [v for v in values if v is not None]
    top = max(present, default=0.0)
    out = []
    for v in values:
        if v is None:
            out.append("✗")
        elif top <= 0:
            out.append(SPARKS[0])
        else:
            out.append(SPARKS[min(len(SPARKS) - 1, int(v / top * (len(SPARKS) - 1) + 0.5))])
    return "".join(out)


def _findings_table(findings: list[Any]) -> list[str]:
    lines = [
        "| device | job | metric | baseline | now | change | p | what changed / why |",
        "|---|---|---|---:|---:|---:|---:|---|",
    ]
    for f in findings:
        if f.metric == "status":
            detail = ("new: " if f.verdict == "new-failure" else "") + f.message
        else:
            detail = "; ".join(c.describe() for c in f.changed) or "nothing recorded changed"
        lines.append(
            f"| {markdown_cell(f.device)} | {markdown_cell(f.job)} | {markdown_cell(f.label if f.metric != 'status' else 'status')} "
            f"| {_num(f.baseline, f.unit)} | {_num(f.current, f.unit)} "
            f"| {f'{f.change:+.1%}' if f.change is not None else '-'} "
            f"| {f'{f.p_value:.2g}' if f.p_value is not None else '-'} | {markdown_cell(detail)} |"
        )
    return lines


def render_markdown(report: Any) -> str:
    """Markdown for a :class:`~edgeshrink.lab.reporting.LabReport`."""
    comp = report.comparison
    suite = report.suite_name or "all suites"
    lines = [f"# Device lab: {suite}" + (f" — run #{comp.run.id}" if comp else ""), ""]
    if comp is None:
        lines.append(f"No lab runs since {report.since} in `{report.db_path}`.")
        return "\n".join(lines) + "\n"
    base = ", ".join(f"#{i}" for i in sorted(comp.baseline_runs)) or "none"
    lines += [
        f"Run #{comp.run.id} ({comp.run.started_at[:16].replace('T', ' ')} UTC, {comp.run.status}) "
        f"against {comp.baseline_spec} (runs {base}).",
        "",
        f"**{len(comp.metric_regressions)} regressed · {len(comp.failures)} failed "
        f"({len(comp.new_failures)} new) · "
        f"{len(comp.improvements)} improved** · {comp.count('unchanged')} unchanged",
        "",
    ]
    for title, findings in (
        ("Regressed", comp.metric_regressions),
        ("Failed", comp.failures),
        ("Improved", comp.improvements),
    ):
        if findings:
            lines += [f"## {title}", "", *_findings_table(findings), ""]
    trend = [
        s for s in report.series
        if s.metric in ("tg_tok_s", "pp_tok_s", "ttft_ms", "peak_rss_mb", "latency_p50_ms", "kld_mean")
    ]  # fmt: skip
    if trend:
        lines += [
            "## Trends (oldest → newest)",
            "",
            "| device | job | metric | trend | newest | runs |",
            "|---|---|---|---|---:|---:|",
        ]
        for s in trend:
            values = [p.value for p in s.points]
            # The newest run's own value: when it failed, say so, not the last good one.
            last = s.points[-1]
            newest = "✗ failed" if last.status == "failed" else _num(last.value, s.unit)
            flag = " ⚠" if s.regressed else ""
            lines.append(
                f"| {markdown_cell(s.device)} | {markdown_cell(s.job)} | {s.label} | `{sparkline(values)}`{flag} "
                f"| {newest} | {len(values)} |"
            )
        lines.append("")
    runs = report.view.runs
    if runs:
        lines += ["## Runs", "", "| run | started (UTC) | status | ok | failed | devices failed |",
                  "|---|---|---|---:|---:|---|"]  # fmt: skip
        for run in reversed(runs):
            s = run.summary or {}
            lines.append(
                f"| #{run.id} | {run.started_at[:16].replace('T', ' ')} | {run.status} | {s.get('ok', '-')} "
                f"| {s.get('failed', '-')} | {markdown_cell(', '.join(s.get('devices_failed', [])) or '-')} |"
            )
        lines.append("")
    lines.append(
        f"_Generated {report.generated_at[:16].replace('T', ' ')} UTC from `{report.db_path}`._"
    )
    return "\n".join(lines) + "\n"


def write_markdown(report: Any, path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(render_markdown(report), encoding="utf-8")
    return path
