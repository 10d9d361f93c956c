"""The verdict of a benchmark that compares per-round ratios with a target.

Both comparison scripts (bench_agent_vs_llama_bench.py, bench_push.py) judge the
median of their per-round ratios, and both say NOISY instead of PASS or FAIL when
the rounds spread too wide to tell: the median's interval (McGill's notch, about
95%: median ± 1.58 IQR / √n) reaches across the target.  A median that happens to
land inside the band while the rounds range 0.78-1.22 is not a pass.
"""

from __future__ import annotations

import math
import statistics


def median_interval(ratios: list[float]) -> tuple[float, float, float]:
    """(median, low, high): the median and its ~95% interval.  Under three rounds the
    interval is the median alone (no spread to judge by)."""
    median = statistics.median(ratios)
    if len(ratios) < 3:
        return median, median, median
    q1, _q2, q3 = statistics.quantiles(ratios, n=4, method="inclusive")
    notch = 1.58 * (q3 - q1) / math.sqrt(len(ratios))
    return median, median - notch, median + notch


def band_verdict(ratios: list[float], tolerance: float) -> str:
    """Within 1 ± tolerance: PASS when the median's interval lies inside the band, FAIL
    when it lies wholly outside, NOISY when it crosses an edge."""
    _median, low, high = median_interval(ratios)
    if 1.0 - tolerance <= low and high <= 1.0 + tolerance:
        return "PASS"
    if high < 1.0 - tolerance or low > 1.0 + tolerance:
        return "FAIL"
    return "NOISY"


def at_least_verdict(ratios: list[float], target: float) -> str:
    """At least ``target``: PASS when the median's interval lies above it, FAIL when it
    lies below, NOISY when it reaches across."""
    _median, low, high = median_interval(ratios)
    if low >= target:
        return "PASS"
    if high < target:
        return "FAIL"
    return "NOISY"
