"""The statistics and the regression rule, on numbers chosen to sit on each side of the rule.

The Mann–Whitney U test is checked against scipy where scipy is installed;
the rule's cases use fixed pseudo-random samples (nights of repetitions).
"""

from __future__ import annotations

import random

import pytest

from edgeshrink.lab.config import RegressionPolicy
from edgeshrink.lab.history import JobRecord
from edgeshrink.lab.regress import compare_run_metric, compare_sampled, evaluate, what_changed
from edgeshrink.lab.reporting import since_iso
from edgeshrink.lab.stats import log_spread, mann_whitney_u, median
from edgeshrink.report.markdown import markdown_cell, sparkline

POLICY = RegressionPolicy()


def test_mann_whitney_u_matches_scipy() -> None:
    stats = pytest.importorskip("scipy.stats")
    rng = random.Random(7)
    for _ in range(300):
        n1, n2 = rng.randint(1, 12), rng.randint(1, 45)
        digits = 1 if rng.random() < 0.3 else 6  # one in three with ties (the asymptotic path)
        x = [round(rng.gauss(0, 1), digits) for _ in range(n1)]
        y = [round(rng.gauss(0.4, 1), digits) for _ in range(n2)]
        for alternative in ("two-sided", "less", "greater"):
            ours = mann_whitney_u(x, y, alternative)
            theirs = stats.mannwhitneyu(x, y, alternative=alternative)
            assert ours.u == pytest.approx(float(theirs.statistic))
            assert ours.p_value == pytest.approx(float(theirs.pvalue), abs=1e-12)


def test_mann_whitney_u_exact_small_cases() -> None:
    assert mann_whitney_u([1, 2, 3], [4, 5, 6], "less").p_value == pytest.approx(1 / 20)
    assert mann_whitney_u([1, 2, 3], [4, 5, 6], "greater").p_value == pytest.approx(1.0)
    assert mann_whitney_u([1, 2, 3], [4, 5, 6]).p_value == pytest.approx(0.1)
    assert mann_whitney_u([5.0], [5.0]).p_value == 1.0  # all tied: no evidence either way


def nights(
    centres: list[float], reps: int = 8, noise: float = 0.04, seed: int = 1
) -> list[list[float]]:
    rng = random.Random(seed)
    return [[c * (1 + rng.gauss(0, noise)) for _ in range(reps)] for c in centres]


def test_an_unchanged_night_is_not_flagged() -> None:
    base = nights([100, 102, 98, 101, 99])
    (now,) = nights([100], seed=99)
    assert compare_sampled("tg_tok_s", now, base, POLICY)["verdict"] == "unchanged"


def test_a_2x_slowdown_is_flagged_and_a_2x_speedup_is_an_improvement() -> None:
    base = nights([100, 102, 98, 101, 99])
    (slow,) = nights([50], seed=3)
    figures = compare_sampled("tg_tok_s", slow, base, POLICY)
    assert figures["verdict"] == "regressed" and figures["factor"] == pytest.approx(2.0, rel=0.1)
    assert figures["p_value"] < 1e-6 and figures["n_baseline_samples"] == 40
    (fast,) = nights([200], seed=4)
    assert compare_sampled("tg_tok_s", fast, base, POLICY)["verdict"] == "improved"
    # Times: longer is worse.
    assert compare_sampled("ttft_ms", fast, base, POLICY)["verdict"] == "regressed"


def test_a_change_inside_the_nights_own_spread_is_not_flagged() -> None:
    # These nights differ by ~40% with nothing changed: a 30% drop is within that.
    base = nights([100, 60, 140, 100, 85])
    (now,) = nights([70], seed=5)
    figures = compare_sampled("tg_tok_s", now, base, POLICY)
    assert figures["limit"] > 0.43 and figures["verdict"] in ("unchanged", "not significant")


def test_a_change_over_the_threshold_needs_significance() -> None:
    base = nights([100, 100, 100], reps=2)
    figures = compare_sampled("tg_tok_s", [60.0], base, POLICY)  # one repetition says little
    assert figures["factor"] > 1.5 and figures["verdict"] == "not significant"
    assert figures["p_value"] > POLICY.alpha


def test_memory_growth_rule() -> None:
    base = [55.1, 55.2, 55.0, 55.3]
    assert compare_run_metric("peak_rss_mb", 70.0, base, 0.10, 3.0)["verdict"] == "regressed"
    assert compare_run_metric("peak_rss_mb", 56.0, base, 0.10, 3.0)["verdict"] == "unchanged"
    assert compare_run_metric("peak_rss_mb", 40.0, base, 0.10, 3.0)["verdict"] == "improved"


def test_log_spread_and_median() -> None:
    assert median([3, 1, 2]) == 2 and median([4, 1, 3, 2]) == 2.5
    assert log_spread([100, 100]) == 0.0  # too few nights to say
    assert log_spread([50, 100, 200]) == pytest.approx(1.4826 * 0.6931, rel=1e-3)


def record(run_id: int, status: str = "done", result: str | None = "ok", *, tg: float = 100.0,
           context: dict | None = None, device: str = "d", error: str | None = None) -> JobRecord:  # fmt: skip
    samples = (
        {"tg_tok_s": [tg * f for f in (0.98, 1.0, 1.02, 0.99, 1.01)]} if result == "ok" else {}
    )
    return JobRecord(
        id=run_id, run_id=run_id, device=device, job="j", settings_key="k", build_key="b",
        status=status, attempts=1, started_at=None, finished_at=None, seconds=None,
        result_id=run_id if status == "done" else None, result_status=result if status == "done" else None,
        error=error, cooldown=None, temp_before_c=None, temp_after_c=None, cpu_mhz_before=None,
        cpu_mhz_after=None, throttled=None, snapshot_id=None, samples=samples,
        metrics={"peak_rss_mb": 55.0} if result == "ok" else {}, context=context or {},
    )  # fmt: skip


def verdicts(current: JobRecord, baseline: list[JobRecord]) -> dict[str, str]:
    return {f.metric: f.verdict for f in evaluate([current], baseline, [], [], POLICY)}


def test_failures_new_failing_fixed_and_short_baselines() -> None:
    good = [record(i) for i in range(1, 5)]
    gone = record(9, "failed", error="device failed after 3 attempt(s): connection refused")
    assert verdicts(gone, good) == {"status": "new-failure"}
    oom = record(9, "done", "oom", error="killed by SIGKILL")
    assert verdicts(oom, good) == {"status": "new-failure"}
    assert verdicts(gone, [record(i, "failed") for i in range(1, 4)]) == {"status": "failing"}
    assert verdicts(record(9), [record(i, "failed") for i in range(1, 4)]) == {"status": "fixed"}
    assert verdicts(record(9), []) == {"status": "no-baseline"}
    assert verdicts(record(9), good[:2]) == {"status": "short baseline"}
    assert verdicts(record(9, tg=40.0), good)["tg_tok_s"] == "regressed"
    assert verdicts(record(9, tg=101.0), good) == {
        "tg_tok_s": "unchanged",
        "peak_rss_mb": "unchanged",
    }


def test_quality_measured_on_the_device_is_judged_from_one_good_night() -> None:
    """A runtime update on the board that changes its arithmetic: the device's KLD moves while
    the bytes stay the same; one good night before is baseline enough (it is deterministic)."""
    from dataclasses import replace

    def night(run_id: int, kld: float, runtime: str) -> JobRecord:
        base = record(run_id, context={"runtime_version": runtime})
        metrics = {**base.metrics, "device_kld_mean": kld, "device_same_top": 0.9}
        return replace(base, metrics=metrics)

    before = [night(1, 0.050, "0.3.36")]
    same = verdicts(night(2, 0.0502, "0.3.36"), before)
    assert same["device_kld_mean"] == "unchanged" and same["status"] == "short baseline"
    findings = evaluate([night(2, 0.065, "0.3.37")], before, [], [], POLICY)
    kld = next(f for f in findings if f.metric == "device_kld_mean")
    assert kld.verdict == "regressed" and "runtime version: 0.3.36 → 0.3.37" in kld.message
    assert "mean KL divergence on the device" in kld.message


def test_what_changed_names_runtime_model_clock_and_temperature() -> None:
    base = [
        {
            "runtime_version": "0.3.36",
            "artifact_sha256": "a" * 64,
            "cpu_mhz": 2400.0,
            "temp_c": 48.0,
        }
    ] * 3
    now = {
        "runtime_version": "0.3.37",
        "artifact_sha256": "b" * 64,
        "cpu_mhz": 1500.0,
        "temp_c": 81.0,
    }
    described = [c.describe() for c in what_changed(now, base)]
    assert described == [
        "model hash: aaaaaaaaaaaa… → bbbbbbbbbbbb…",
        "runtime version: 0.3.36 → 0.3.37",
        "clock (MHz, median before the run): 2400 → 1500",
        "temperature before (°C): 48 → 81",
    ]
    assert what_changed(base[0], base) == ()


def test_since_and_sparkline() -> None:
    from datetime import datetime, timezone

    now = datetime(2026, 11, 29, 12, 0, tzinfo=timezone.utc)
    assert since_iso("30d", now=now).startswith("2026-10-30T12:00")
    assert since_iso("12h", now=now).startswith("2026-11-29T00:00")
    assert since_iso("2026-11-01").startswith("2026-11-01T00:00")
    assert sparkline([1.0, 2.0, None, 4.0]) == "▃▅✗█"


def test_device_text_in_a_markdown_cell_is_inert() -> None:
    """A device's error reaches the Markdown report as text: no HTML a renderer would run,
    no escape sequences, no cell or row breaks."""
    hostile = "<script>alert(1)</script>\x1b[2J\x1b[31mred\x1b[0m | next\ncell"
    cell = markdown_cell(hostile)
    assert cell == "&lt;script&gt;alert(1)&lt;/script&gt;red \\| next cell"
