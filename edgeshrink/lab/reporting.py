"""What a lab report shows, as data: the writers in edgeshrink/report/ only render it.

A report covers a window of runs (``--since 30d``): the newest run against
its baseline at the top (regressed / failed / improved), one trend series per
(device, job, metric) over the window with each run's own verdict, and the
runs, failures and device snapshots as tables.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from edgeshrink.lab.config import LabConfigError
from edgeshrink.lab.history import LabHistory, now_iso
from edgeshrink.lab.regress import (
    ALL_METRICS,
    DEVICE_QUALITY_METRICS,
    QUALITY_METRICS,
    RUN_METRICS,
    SAMPLED_METRICS,
    Comparison,
    LabHistoryView,
    compare_in,
    load_view,
)
from edgeshrink.lab.stats import median

_SINCE_RE = re.compile(r"^(\d+)\s*([hdw])$")
TREND_METRICS = ("tg_tok_s", "pp_tok_s", "ttft_ms", "peak_rss_mb", "latency_p50_ms",
                 "device_kld_mean")  # fmt: skip
ONE_VALUE_METRICS = {**RUN_METRICS, **DEVICE_QUALITY_METRICS}


def since_iso(text: str, *, now: datetime | None = None) -> str:
    """``30d`` / ``12h`` / ``2w`` / an ISO date -> an ISO timestamp (UTC) to compare with."""
    now = now or datetime.now(timezone.utc)
    match = _SINCE_RE.match(text.strip())
    if match:
        amount, unit = int(match.group(1)), match.group(2)
        delta = {"h": timedelta(hours=amount), "d": timedelta(days=amount),
                 "w": timedelta(weeks=amount)}[unit]  # fmt: skip
        return (now - delta).isoformat(timespec="milliseconds")
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError as exc:
        raise LabConfigError(
            f"--since {text!r} is neither a duration nor a date",
            hint="e.g. 30d, 12h, 2w or 2026-11-01",
        ) from exc
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when.astimezone(timezone.utc).isoformat(timespec="milliseconds")


@dataclass(frozen=True)
class TrendPoint:
    run_id: int
    started_at: str
    value: float | None  # None: the job failed in this run
    low: float | None
    high: float | None
    verdict: str | None  # that run's verdict for this metric, against its own baseline
    status: str  # ok | failed
    note: str = ""


@dataclass(frozen=True)
class TrendSeries:
    device: str
    job: str
    metric: str
    points: tuple[TrendPoint, ...]

    @property
    def unit(self) -> str:
        return ALL_METRICS[self.metric][0]

    @property
    def label(self) -> str:
        return ALL_METRICS[self.metric][2]

    @property
    def better(self) -> str:
        return ALL_METRICS[self.metric][1]

    @property
    def regressed(self) -> bool:
        return bool(self.points) and self.points[-1].verdict in ("regressed", "new-failure")


@dataclass(frozen=True)
class LabReport:
    generated_at: str
    db_path: Path
    since: str | None
    suite_name: str | None
    comparison: Comparison | None
    view: LabHistoryView
    series: tuple[TrendSeries, ...]

    @property
    def devices(self) -> list[str]:
        return sorted({s.device for s in self.series if s.device != "host"})

    def to_dict(self) -> dict[str, Any]:
        return {
            "generated_at": self.generated_at,
            "db": str(self.db_path),
            "since": self.since,
            "suite": self.suite_name,
            "comparison": self.comparison.to_dict() if self.comparison else None,
            "runs": [r.to_dict() for r in self.view.runs],
            "series": [
                {"device": s.device, "job": s.job, "metric": s.metric, "unit": s.unit,
                 "points": [p.__dict__ for p in s.points]}
                for s in self.series
            ],
        }  # fmt: skip


def _series(view: LabHistoryView) -> list[TrendSeries]:
    keys: dict[tuple[str, str], None] = {}
    for run in view.runs:
        for job in view.jobs[run.id]:
            keys.setdefault((job.device, job.job), None)
    out: list[TrendSeries] = []
    for device, job_name in sorted(keys):
        for metric in TREND_METRICS:
            points = []
            for run in view.runs:
                record = next(
                    (j for j in view.jobs[run.id] if j.device == device and j.job == job_name), None
                )
                if record is None or record.status in ("pending", "running"):
                    continue
                verdict = view.verdicts.get((run.id, device, job_name, metric))
                status_verdict = view.verdicts.get((run.id, device, job_name, "status"))
                if record.failed:
                    why = record.error or record.result_status or "failed"
                    points.append(TrendPoint(run.id, run.started_at, None, None, None,
                                             status_verdict, "failed", why))  # fmt: skip
                    continue
                samples = record.samples.get(metric)
                if samples:
                    points.append(TrendPoint(run.id, run.started_at, median(samples), min(samples),
                                             max(samples), verdict, "ok"))  # fmt: skip
                elif record.metrics.get(metric) is not None and metric in ONE_VALUE_METRICS:
                    value = float(record.metrics[metric])
                    points.append(
                        TrendPoint(run.id, run.started_at, value, None, None, verdict, "ok")
                    )
            if any(p.value is not None for p in points):
                out.append(TrendSeries(device, job_name, metric, tuple(points)))
    # Quality, measured on the host once per artifact.
    quality_keys = sorted({(b.job, b.quant) for bs in view.builds.values() for b in bs
                           if b.kld_mean is not None})  # fmt: skip
    for job_name, quant in quality_keys:
        label = f"{job_name} ({quant})" if quant else job_name
        for metric in QUALITY_METRICS:
            points = []
            for run in view.runs:
                build = next((b for b in view.builds[run.id] if b.job == job_name and b.quant == quant
                              and getattr(b, metric) is not None), None)  # fmt: skip
                if build is None:
                    continue
                verdict = view.verdicts.get((run.id, "host", label, metric))
                points.append(TrendPoint(run.id, run.started_at, float(getattr(build, metric)), None,
                                         None, verdict, "ok"))  # fmt: skip
            if points:
                out.append(TrendSeries("host", label, metric, tuple(points)))
    return out


def build_report(
    db: str | os.PathLike[str] | None = None,
    *,
    since: str | None = "30d",
    suite_name: str | None = None,
    baseline: str | None = None,
) -> LabReport:
    """The report of the runs since ``since`` (a duration like 30d or a date)."""
    since_at = since_iso(since) if since else None
    with LabHistory.open(db) as hist, hist.store.snapshot():  # one consistent view of every run
        view = load_view(hist, since=since_at, suite_name=suite_name, baseline=baseline)
        comparison = None
        if view.runs:
            newest = view.runs[-1]
            comparison = compare_in(hist, run_id=newest.id, baseline=baseline)
            suite_name = suite_name or newest.suite_name
        return LabReport(
            generated_at=now_iso(),
            db_path=hist.store.path,
            since=since,
            suite_name=suite_name,
            comparison=comparison,
            view=view,
            series=tuple(_series(view)),
        )


__all__ = ["SAMPLED_METRICS", "LabReport", "TrendPoint", "TrendSeries", "build_report", "since_iso"]
