"""The lab report's trend plots: one wild repetition must not flatten every median."""

from __future__ import annotations

import re

from edgeshrink.lab.reporting import TrendPoint, TrendSeries
from edgeshrink.report.html import trend_svg


def _series(medians: list[float], wild_high: float) -> TrendSeries:
    points = tuple(
        TrendPoint(run_id=i + 1, started_at=f"2026-12-0{i + 1}T02:00:00Z", value=m,
                   low=m * 0.97, high=wild_high if i == 1 else m * 1.03, verdict=None, status="ok")
        for i, m in enumerate(medians)
    )  # fmt: skip
    return TrendSeries(device="pi", job="gen", metric="tg_tok_s", points=points)


def test_a_wild_whisker_is_cut_and_the_medians_keep_their_spread() -> None:
    """Before: the axis ran to the highest repetition (10,000 tok/s here), so medians of
    90 and 110 tok/s sat within a pixel of each other at the bottom."""
    svg = trend_svg(_series([90.0, 100.0, 110.0, 95.0], wild_high=10_000.0))
    ys = [float(y) for y in re.findall(r'<circle class="point[^"]*" cx="[^"]+" cy="([^"]+)"', svg)]
    assert len(ys) == 4
    assert max(ys) - min(ys) > 15, ys  # 90 vs 110 tok/s: visibly apart
    assert svg.count('class="clipped"') == 1
    assert "the whisker goes on to 10,000.0 tok/s" in svg
    assert "max 10,000.0" in svg  # the point's own tooltip keeps the full range


def test_whiskers_inside_the_plot_are_not_marked() -> None:
    svg = trend_svg(_series([90.0, 100.0, 110.0], wild_high=104.0))
    assert 'class="clipped"' not in svg
