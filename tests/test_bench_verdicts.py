"""The benchmark scripts' verdicts: a spread too wide to judge is NOISY, never PASS or FAIL."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

from bench_stats import at_least_verdict, band_verdict, median_interval  # noqa: E402


@pytest.mark.parametrize(
    ("ratios", "expected"),
    [
        ([0.98, 1.01, 1.03, 0.97, 1.00], "PASS"),
        ([0.80, 0.82, 0.84, 0.85, 0.86], "FAIL"),
        ([1.10, 1.12, 1.15, 1.20, 1.09], "FAIL"),
        # measured at 1 thread, tg64, 2026-12-07: the middle rounds straddle the band
        # without one inside it; the median 0.886 alone would say FAIL
        ([0.886, 1.332, 1.178, 0.836, 0.807], "NOISY"),
        ([0.90, 0.93, 0.96, 0.97, 0.80], "NOISY"),  # a middle round inside the band
        ([0.70, 0.93, 1.40], "NOISY"),
        # 2026-12-07, 1 thread, tg64, 6 rounds: the median 1.041 lies in the band, the
        # rounds range 0.78-1.22: not a pass
        ([0.777, 1.217, 1.172, 0.911, 1.188, 0.782], "NOISY"),
        # 15 rounds of it: 0.947-1.051, still just across an edge
        (
            [
                0.955,
                0.976,
                0.999,
                1.093,
                1.116,
                1.114,
                0.953,
                0.967,
                0.788,
                1.002,
                1.250,
                0.992,
                0.985,
                1.035,
                1.105,
            ],
            "NOISY",
        ),
        ([1.001, 0.981, 0.979, 0.890, 0.988], "PASS"),
    ],
)
def test_agent_benchmark_band_verdict(ratios: list[float], expected: str) -> None:
    assert band_verdict(ratios, 0.05) == expected


@pytest.mark.parametrize(
    ("ratios", "expected"),
    [
        ([1.05, 1.09, 1.02, 0.87, 0.87, 1.17, 0.93, 1.12, 1.00], "PASS"),
        ([0.99, 1.00, 0.78, 1.17, 1.02], "PASS"),  # two outliers do not widen the IQR
        ([0.81, 0.83, 0.85, 0.86, 0.89], "FAIL"),
        ([0.80, 0.85, 0.88, 0.95, 1.00], "NOISY"),
    ],
)
def test_push_benchmark_verdict(ratios: list[float], expected: str) -> None:
    assert at_least_verdict(ratios, 0.9) == expected


def test_the_median_interval_narrows_with_rounds() -> None:
    few = [0.9, 1.1, 1.0, 0.95, 1.05]
    median, low, high = median_interval(few)
    assert median == 1.0 and low < median < high
    _, low4, high4 = median_interval(few * 4)
    assert high4 - low4 == pytest.approx((high - low) / 2, rel=0.1)
    assert median_interval([0.8, 1.2]) == (1.0, 1.0, 1.0)  # too few rounds for a spread
