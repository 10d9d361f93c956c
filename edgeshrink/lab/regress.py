"""Regression detection: each (device, job, settings) metric of a run against its baseline.

The baseline of a run is the lab runs of the same suite before it
(``last-7-nights``: the 7 runs before it; a lab run is a night) or runs named
by id (``run:12,13``).  Per (device, job, settings key) only the baseline runs
where that job measured ``ok`` count.  The rules:

Speed, from the repetition samples (pp_tok_s, tg_tok_s, ttft_ms)
    ``b`` = median of the baseline runs' medians, ``c`` = median of this run's
    samples.  The "worse factor" is b / c for speeds, c / b for times (2.0 =
    twice as slow).  The limit is ``max(threshold, exp(noise_factor × s) - 1)``
    where ``s`` is 1.4826 × MAD of the logarithms of the baseline runs' medians:
    how much nights differ when nothing changed.  **Regressed** when the worse
    factor exceeds 1 + limit AND a one-sided Mann–Whitney U test of this run's
    samples against the pooled samples of the baseline runs gives p < alpha.
    Improved: the same the other way.  Over the limit but not significant: "not
    significant", not flagged.  Judged only with at least ``min_baseline_runs``
    good baseline runs (fewer cannot tell the noise between nights): "short
    baseline" otherwise.  Defaults: threshold 0.10, noise_factor 3, alpha 0.01,
    min_baseline_runs 3.

Memory and other one-value-per-run metrics (peak_rss_mb, latency_p50_ms)
    The same worse factor and limit (``memory_threshold`` for memory) on one
    value per run, and it must also be worse than every baseline run (one value
    per run allows no test on samples).

Quality (kld_mean, ppl_ratio, same_top, measured on the host per artifact)
    Deterministic for the same bytes: regressed when worse than the baseline
    median by more than ``quality_threshold`` (relative), or when the quality
    budget fails now and passed in the baseline.

Quality on the device (device_kld_mean, device_ppl_ratio, device_same_top)
    Measured in the job's own run on each device against a reference of the
    source model: the same rule as quality, per device, from one good baseline
    run on (a runtime or driver update that changes the device's arithmetic
    shows here while the host's figures stay put).

Failures
    A job that has no good measurement now (device offline, agent error,
    timeout, OOM) while it was ok in a baseline run: **new failure** (a
    regression).  Failing in every baseline run too: "failing" (reported, not
    a regression).  Failing before and ok now: "fixed".

Every finding says what changed between the baseline and now: model and
source hashes, quantization, quantizer and runtime versions, agent, OS,
kernel, Python, CPU, threads, clock (> 5%), temperature (> 5 °C), throttling
and memory limit.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from edgeshrink.lab.config import (
    LabConfigError,
    RegressionPolicy,
    parse_baseline,
    read_regression_policy,
)
from edgeshrink.lab.findings import (
    ALL_METRICS,
    CLOCK_TOLERANCE,
    CONTEXT_FIELDS,
    DEVICE_QUALITY_METRICS,
    QUALITY_METRICS,
    REGRESSION_VERDICTS,
    RUN_METRICS,
    SAMPLED_METRICS,
    TEMP_TOLERANCE_C,
    Change,
    Comparison,
    Finding,
)
from edgeshrink.lab.history import BuildRecord, JobRecord, LabHistory, LabRun
from edgeshrink.lab.stats import log_spread, mann_whitney_u, median

__all__ = [
    "ALL_METRICS",
    "CLOCK_TOLERANCE",
    "CONTEXT_FIELDS",
    "DEVICE_QUALITY_METRICS",
    "QUALITY_METRICS",
    "REGRESSION_VERDICTS",
    "RUN_METRICS",
    "SAMPLED_METRICS",
    "TEMP_TOLERANCE_C",
    "Change",
    "Comparison",
    "Finding",
    "LabHistoryView",
    "baseline_runs",
    "compare",
    "compare_in",
    "compare_run_metric",
    "compare_sampled",
    "evaluate",
    "load_view",
    "policy_of",
    "what_changed",
    "worse_factor",
]

# --------------------------------------------------------------------------- rules


def worse_factor(baseline: float, current: float, better: str) -> float:
    """How many times worse ``current`` is (1.0 = the same, 0.5 = twice as good)."""
    if better == "higher":
        baseline, current = current, baseline
    if baseline <= 0:
        return 1.0 if current <= 0 else math.inf
    return current / baseline


def _verdict(factor: float, limit: float, worse_ok: bool, better_ok: bool) -> str:
    if factor - 1.0 > limit and worse_ok:
        return "regressed"
    if factor > 0 and 1.0 / factor - 1.0 > limit and better_ok:
        return "improved"
    if factor - 1.0 > limit or (factor > 0 and 1.0 / factor - 1.0 > limit):
        return "not significant"
    return "unchanged"


def compare_sampled(
    metric: str,
    current: list[float],
    baseline: list[list[float]],
    policy: RegressionPolicy,
) -> dict[str, Any]:
    """The speed rule on samples: verdict, figures and p-value (see the module docstring)."""
    _unit, better, _label = SAMPLED_METRICS[metric]
    medians = [median(s) for s in baseline if s]
    pooled = [v for s in baseline for v in s]
    b, c = median(medians), median(current)
    factor = worse_factor(b, c, better)
    limit = max(policy.threshold, math.exp(policy.noise_factor * log_spread(medians)) - 1.0)
    toward_worse = "less" if better == "higher" else "greater"
    toward_better = "greater" if better == "higher" else "less"
    p_worse = mann_whitney_u(current, pooled, toward_worse).p_value
    p_better = mann_whitney_u(current, pooled, toward_better).p_value
    verdict = _verdict(factor, limit, p_worse < policy.alpha, p_better < policy.alpha)
    return {"verdict": verdict, "baseline": b, "current": c, "change": c / b - 1.0 if b else 0.0,
            "factor": factor, "limit": limit, "p_value": p_worse if factor >= 1 else p_better,
            "n_baseline_runs": len(medians), "n_baseline_samples": len(pooled),
            "n_current_samples": len(current)}  # fmt: skip


def compare_run_metric(
    metric: str, current: float, baseline: list[float], threshold: float, noise_factor: float
) -> dict[str, Any]:
    """The one-value-per-run rule (memory, latency percentiles, quality)."""
    better = ALL_METRICS[metric][1]
    b = median(baseline)
    factor = worse_factor(b, current, better)
    limit = max(threshold, math.exp(noise_factor * log_spread(baseline)) - 1.0)
    worst = max(baseline) if better == "lower" else min(baseline)
    best = min(baseline) if better == "lower" else max(baseline)
    beyond_worse = worse_factor(worst, current, better) > 1.0
    beyond_better = worse_factor(best, current, better) < 1.0
    verdict = _verdict(factor, limit, beyond_worse, beyond_better)
    if verdict == "not significant":
        verdict = "unchanged"  # within the range the baseline runs already showed
    return {"verdict": verdict, "baseline": b, "current": current,
            "change": current / b - 1.0 if b else 0.0, "factor": factor, "limit": limit,
            "n_baseline_runs": len(baseline)}  # fmt: skip


def what_changed(current: dict[str, Any], baseline: list[dict[str, Any]]) -> tuple[Change, ...]:
    """Recorded facts that differ between the baseline (most common value) and now."""
    changes: list[Change] = []
    for key, label in CONTEXT_FIELDS:
        values = [b.get(key) for b in baseline if b.get(key) is not None]
        if not values or current.get(key) is None:
            continue
        usual = Counter(values).most_common(1)[0][0]
        if usual != current.get(key):
            changes.append(Change(label, usual, current.get(key)))
    clocks = [b["cpu_mhz"] for b in baseline if b.get("cpu_mhz")]
    if clocks and current.get("cpu_mhz"):
        usual = median(clocks)
        if abs(current["cpu_mhz"] / usual - 1) > CLOCK_TOLERANCE:
            changes.append(
                Change("clock (MHz, median before the run)", round(usual, 1), current["cpu_mhz"])
            )
    temps = [b["temp_c"] for b in baseline if b.get("temp_c") is not None]
    if temps and current.get("temp_c") is not None:
        usual = median(temps)
        if abs(current["temp_c"] - usual) > TEMP_TOLERANCE_C:
            changes.append(Change("temperature before (°C)", round(usual, 1), current["temp_c"]))
    return tuple(changes)


def _describe_changes(changes: tuple[Change, ...]) -> str:
    if not changes:
        return "nothing recorded changed (model, runtime, OS, clock and temperature are the same)"
    return "changed: " + "; ".join(c.describe() for c in changes)


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    text = f"{value:,.1f}" if abs(value) >= 100 else f"{value:.4g}"
    return f"{text} {unit}".strip()


def _message(metric: str, figures: dict[str, Any], changes: tuple[Change, ...]) -> str:
    unit, _better, label = ALL_METRICS[metric]
    verdict = figures["verdict"]
    factor = figures["factor"]
    if abs(factor - 1.0) < 0.005:
        how = "the same"
    elif factor > 1.0:
        how = f"{factor:.2f}× worse"
    else:
        how = f"{1 / factor:.2f}× better" if factor > 0 else "much better"
    text = (
        f"{label} {_fmt(figures['current'], unit)} vs baseline {_fmt(figures['baseline'], unit)} "
        f"({figures['change']:+.1%}, {how}; limit {1 + figures['limit']:.2f}×"
    )
    if figures.get("p_value") is not None:
        text += f", Mann–Whitney p={figures['p_value']:.2g}"
    text += f", {figures['n_baseline_runs']} baseline run(s))"
    if verdict in ("regressed", "improved"):
        text += "; " + _describe_changes(changes)
    return text


# --------------------------------------------------------------------------- evaluation


def _key(job: JobRecord) -> tuple[str, str, str]:
    return (job.device, job.job, job.settings_key)


def evaluate(
    current: list[JobRecord],
    baseline: list[JobRecord],
    current_builds: list[BuildRecord],
    baseline_builds: list[BuildRecord],
    policy: RegressionPolicy,
    *,
    run_id: int | None = None,
) -> list[Finding]:
    """Findings of one run's jobs and builds against the baseline's (pure: no database)."""
    by_key: dict[tuple[str, str, str], list[JobRecord]] = {}
    for job in baseline:
        by_key.setdefault(_key(job), []).append(job)
    findings: list[Finding] = []
    for job in current:
        if job.status in ("pending", "running"):
            continue
        base = by_key.get(_key(job), [])
        good = [b for b in base if b.ok]
        common = {
            "device": job.device,
            "job": job.job,
            "run_id": run_id,
            "result_id": job.result_id,
        }
        if job.failed:
            why = job.error or job.result_status or "failed"
            if job.status == "done":
                why = f"{job.result_status}: {job.error or 'no detail'}"
            if good:
                changes = (
                    what_changed(job.context, [g.context for g in good]) if job.context else ()
                )
                findings.append(Finding(metric="status", verdict="new-failure", message=(
                    f"failed ({why}); ok in {len(good)} of {len(base)} baseline run(s)"),
                    n_baseline_runs=len(base), changed=changes, **common))  # fmt: skip
            else:
                findings.append(Finding(metric="status", verdict="failing", message=(
                    f"failed ({why})" + (f"; failed in all {len(base)} baseline run(s) too" if base else "")),
                    n_baseline_runs=len(base), **common))  # fmt: skip
            continue
        if not good:
            verdict = "fixed" if base else "no-baseline"
            message = (
                f"ok now; failed in all {len(base)} baseline run(s)" if base
                else "no baseline yet: nothing to compare with"
            )  # fmt: skip
            findings.append(Finding(metric="status", verdict=verdict, message=message,
                                    n_baseline_runs=len(base), **common))  # fmt: skip
            continue
        changes = what_changed(job.context, [g.context for g in good])
        # Deterministic for the same bytes and runtime: one good night is a baseline.
        for metric in DEVICE_QUALITY_METRICS:
            value = job.metrics.get(metric)
            base_values = [g.metrics[metric] for g in good if g.metrics.get(metric) is not None]
            if value is None or not base_values:
                continue
            figures = compare_run_metric(metric, value, base_values, policy.quality_threshold, 0.0)
            findings.append(Finding(metric=metric, message=_message(metric, figures, changes),
                                    changed=changes if figures["verdict"] != "unchanged" else (),
                                    **figures, **common))  # fmt: skip
        if len(good) < policy.min_baseline_runs:
            findings.append(Finding(metric="status", verdict="short baseline", message=(
                f"ok; only {len(good)} good baseline run(s), {policy.min_baseline_runs} are needed "
                "to tell a change from the noise between nights"),
                n_baseline_runs=len(good), **common))  # fmt: skip
            continue
        for metric in SAMPLED_METRICS:
            samples = job.samples.get(metric)
            base_samples = [g.samples[metric] for g in good if g.samples.get(metric)]
            if not samples or not base_samples:
                continue
            figures = compare_sampled(metric, samples, base_samples, policy)
            findings.append(Finding(metric=metric, message=_message(metric, figures, changes),
                                    changed=changes if figures["verdict"] != "unchanged" else (),
                                    **figures, **common))  # fmt: skip
        for metric in RUN_METRICS:
            value = job.metrics.get(metric)
            base_values = [g.metrics[metric] for g in good if g.metrics.get(metric) is not None]
            if value is None or not base_values:
                continue
            threshold = policy.memory_threshold if metric == "peak_rss_mb" else policy.threshold
            figures = compare_run_metric(metric, value, base_values, threshold, policy.noise_factor)
            findings.append(Finding(metric=metric, message=_message(metric, figures, changes),
                                    changed=changes if figures["verdict"] != "unchanged" else (),
                                    **figures, **common))  # fmt: skip
    findings.extend(_evaluate_quality(current_builds, baseline_builds, policy, run_id))
    return findings


def _evaluate_quality(
    current: list[BuildRecord],
    baseline: list[BuildRecord],
    policy: RegressionPolicy,
    run_id: int | None,
) -> list[Finding]:
    findings = []
    for build in current:
        if build.quality_status not in ("ok", "failed-budget"):
            continue
        base = [b for b in baseline if b.job == build.job and b.quant == build.quant
                and b.quality_status in ("ok", "failed-budget")]  # fmt: skip
        if not base:
            continue
        changes = what_changed(_build_context(build), [_build_context(b) for b in base])
        common = {"device": "host", "job": f"{build.job}" + (f" ({build.quant})" if build.quant else ""),
                  "run_id": run_id}  # fmt: skip
        newly_failed = build.quality_status == "failed-budget" and all(
            b.quality_status == "ok" for b in base
        )
        if newly_failed:
            reasons = "; ".join((build.quality or {}).get("failures", [])) or "over budget"
            findings.append(Finding(metric="kld_mean", verdict="regressed", message=(
                f"quality budget fails now ({reasons}), passed in {len(base)} baseline run(s); "
                + _describe_changes(changes)), baseline=median([b.kld_mean for b in base if b.kld_mean is not None] or [0.0]),
                current=build.kld_mean, n_baseline_runs=len(base), changed=changes, **common))  # fmt: skip
            continue
        for metric in QUALITY_METRICS:
            value = getattr(build, metric)
            values = [getattr(b, metric) for b in base if getattr(b, metric) is not None]
            if value is None or not values:
                continue
            figures = compare_run_metric(metric, value, values, policy.quality_threshold, 0.0)
            findings.append(Finding(metric=metric, message=_message(metric, figures, changes),
                                    changed=changes if figures["verdict"] != "unchanged" else (),
                                    **figures, **common))  # fmt: skip
    return findings


def _build_context(build: BuildRecord) -> dict[str, Any]:
    return {
        "artifact_sha256": build.artifact_sha256,
        "source_sha256": build.source_sha256,
        "quant": build.quant,
        "quantizer": (build.tool_versions or {}).get("llama-cpp-python"),
    }


# --------------------------------------------------------------------------- from the database


def policy_of(run: LabRun) -> RegressionPolicy:
    """The [regression] table of the suite a run was started with (paths are not checked)."""
    return read_regression_policy(run.suite_path, run.suite)


def baseline_runs(
    hist: LabHistory, run: LabRun, spec: str, *, cache: list[LabRun] | None = None
) -> list[LabRun]:
    count, ids = parse_baseline(spec)
    if ids:
        runs = [hist.get_run(i) for i in ids]
        missing = [i for i, r in zip(ids, runs, strict=True) if r is None]
        if missing:
            raise LabConfigError(
                f"baseline {spec}: no lab run {', '.join(map(str, missing))} in {hist.store.path}",
                hint="`edgeshrink lab status` lists the runs",
            )
        return [r for r in runs if r is not None]
    candidates = cache if cache is not None else hist.list_runs(
        suite_name=run.suite_name, before_id=run.id, statuses=("finished",)
    )  # fmt: skip
    earlier = [r for r in candidates if r.id < run.id and r.suite_name == run.suite_name
               and r.status == "finished"]  # fmt: skip
    return earlier[:count]


def compare(
    db: str | os.PathLike[str] | None = None,
    *,
    run_id: int | None = None,
    suite_name: str | None = None,
    baseline: str | None = None,
    overrides: dict[str, Any] | None = None,
) -> Comparison:
    """Compare a run (default: the newest) with its baseline; nothing is written.  It reads
    one snapshot of the database: runs that are writing meanwhile are seen as they were."""
    with LabHistory.open(db) as hist, hist.store.snapshot():
        return compare_in(hist, run_id=run_id, suite_name=suite_name, baseline=baseline,
                          overrides=overrides)  # fmt: skip


def compare_in(
    hist: LabHistory,
    *,
    run_id: int | None = None,
    suite_name: str | None = None,
    baseline: str | None = None,
    overrides: dict[str, Any] | None = None,
) -> Comparison:
    if run_id is not None:
        run = hist.get_run(run_id)
        if run is None:
            raise LabConfigError(
                f"no lab run {run_id} in {hist.store.path}",
                hint="`edgeshrink lab status` lists the runs",
            )
    else:
        run = hist.latest_run(suite_name)
        if run is None:
            raise LabConfigError(
                f"no lab runs{f' of suite {suite_name}' if suite_name else ''} in {hist.store.path}",
                hint="start one with `edgeshrink lab run --inventory ... --suite ...`",
            )
    policy = policy_of(run)
    if overrides:
        policy = replace(policy, **{k: v for k, v in overrides.items() if v is not None})
    spec = baseline or policy.baseline
    base = baseline_runs(hist, run, spec)
    ids = [r.id for r in base]
    findings = evaluate(
        hist.jobs(run.id), hist.jobs_of_runs(ids), hist.builds([run.id]), hist.builds(ids),
        policy, run_id=run.id,
    )  # fmt: skip
    return Comparison(run, spec, tuple(sorted(ids)), policy, tuple(_ordered(findings)))


_ORDER = {"new-failure": 0, "regressed": 1, "failing": 2, "not significant": 3, "improved": 4,
          "fixed": 5, "no-baseline": 6, "short baseline": 7, "unchanged": 8}  # fmt: skip


def _ordered(findings: Iterable[Finding]) -> list[Finding]:
    return sorted(findings, key=lambda f: (_ORDER.get(f.verdict, 9), f.device, f.job, f.metric))


@dataclass(frozen=True)
class LabHistoryView:
    """Runs of a window with every job, build and snapshot, and each run's own verdicts."""

    runs: tuple[LabRun, ...]  # oldest first
    jobs: dict[int, list[JobRecord]]
    builds: dict[int, list[BuildRecord]]
    snapshots: list[dict[str, Any]]
    verdicts: dict[tuple[int, str, str, str], str] = field(default_factory=dict)


def load_view(
    hist: LabHistory, *, since: str | None, suite_name: str | None, baseline: str | None
) -> LabHistoryView:
    """The window of runs a report shows, each run judged against its own baseline."""
    window = list(reversed(hist.list_runs(suite_name=suite_name, since=since)))
    if not window:
        return LabHistoryView((), {}, {}, [])
    oldest = window[0]
    lookback = hist.list_runs(
        suite_name=suite_name, before_id=oldest.id, statuses=("finished",), limit=50
    )
    all_runs = {r.id: r for r in (*window, *lookback)}
    ids = sorted(all_runs)
    jobs: dict[int, list[JobRecord]] = {i: [] for i in ids}
    for record in hist.jobs_of_runs(ids):
        jobs[record.run_id].append(record)
    builds: dict[int, list[BuildRecord]] = {i: [] for i in ids}
    for build in hist.builds(ids):
        builds[build.run_id].append(build)
    newest_first = sorted(all_runs.values(), key=lambda r: -r.id)
    verdicts: dict[tuple[int, str, str, str], str] = {}
    for run in window:
        policy = policy_of(run)
        spec = baseline or policy.baseline
        try:
            base = baseline_runs(hist, run, spec, cache=newest_first)
        except LabConfigError:
            continue
        base_ids = [r.id for r in base]
        for f in evaluate(
            jobs[run.id], [j for i in base_ids for j in jobs.get(i, [])], builds[run.id],
            [b for i in base_ids for b in builds.get(i, [])], policy, run_id=run.id,
        ):  # fmt: skip
            verdicts[(run.id, f.device, f.job, f.metric)] = f.verdict
    return LabHistoryView(
        runs=tuple(window),
        jobs={r.id: jobs[r.id] for r in window},
        builds={r.id: builds[r.id] for r in window},
        snapshots=hist.snapshots([r.id for r in window]),
        verdicts=verdicts,
    )
