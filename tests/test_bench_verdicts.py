"""The benchmark scripts' verdicts: a spread too wide to judge is NOISY, never PASS or FAIL."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

from bench_agent_vs_llama_bench import band_verdict  # noqa: E402
from bench_push import verdict as push_verdict  # noqa: E402


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
    ],
)
def test_agent_benchmark_band_verdict(ratios: list[float], expected: str) -> None:
    assert band_verdict(ratios, 0.05) == expected


@pytest.mark.parametrize(
    ("ratios", "expected"),
    [
        ([0.99, 1.00, 0.78, 1.17, 1.02], "PASS"),
        ([0.81, 0.83, 0.85, 0.86, 0.89], "FAIL"),
        ([0.80, 0.85, 0.88, 0.95, 1.00], "NOISY"),
    ],
)
def test_push_benchmark_verdict(ratios: list[float], expected: str) -> None:
    assert push_verdict(ratios, 0.9).split()[0] == expected
