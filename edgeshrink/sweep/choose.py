"""Choosing among a sweep's candidates: the Pareto fronts, the pick and why."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any

from edgeshrink.errors import EdgeshrinkError
from edgeshrink.profiles import HardwareProfile
from edgeshrink.report.plot import write_sweep_svg
from edgeshrink.sweep.types import (
    OutputQualityBudget,
    QualityBudget,
    SweepCandidate,
    SweepResult,
)
from edgeshrink.targets import Target
from edgeshrink.util import human_bytes


def pareto_front(points: list[tuple[str, float, float]]) -> tuple[str, ...]:
    """Names of the points no other point beats on both axes (lower is better on both)."""
    front = []
    for name, x, y in points:
        dominated = any(
            (ox <= x and oy <= y) and (ox < x or oy < y)
            for oname, ox, oy in points
            if oname != name
        )
        if not dominated:
            front.append(name)
    return tuple(front)


def fronts(candidates: list[SweepCandidate]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    size_front = pareto_front([(c.quant, c.loss, c.size_bytes) for c in candidates])
    if not any(c.speed for c in candidates):
        return size_front, ()
    speed_front = pareto_front([(c.quant, c.loss, -(c.speed or 0.0)) for c in candidates])
    return size_front, speed_front


def quality_summary(c: SweepCandidate) -> str:
    if c.by_text:
        return f"KLD {c.kld:.4f}, same top token {c.quality['same_top']['value']:.1%}"
    metrics = c.quality["metrics"]
    parts = []
    accuracy = next((m for m in metrics if m["name"] == "accuracy"), None)
    if accuracy is not None:
        change = (accuracy["value"] - accuracy["reference"]) * 100
        parts.append(f"accuracy {accuracy['value']:.2%}, {change:+.2f} points")
    agreement = [m["value"] for m in metrics if m["name"] == "top1_agreement"]
    if agreement:
        parts.append(f"top-1 agreement {min(agreement):.2%}")
    cosines = [m["value"] for m in metrics if m["name"] == "cosine_mean"]
    parts.append(f"mean cosine {min(cosines):.6f}")
    return ", ".join(parts)


def speed_summary(c: SweepCandidate, speed_source: str) -> str:
    if c.by_text:
        return f"{c.tg_tok_s:.1f} tok/s generation, {speed_source}"
    measured = c.measured or {}
    p50 = measured.get("latency_p50_ms")
    latency = f", p50 {p50:.3f} ms" if p50 else ""
    return f"{c.speed:,.1f} inferences/s{latency}, {speed_source}"


def size_text(c: SweepCandidate) -> str:
    return f"{c.size_bytes / 2**20:.1f} MiB" if c.by_text else human_bytes(c.size_bytes)


def choose(
    candidates: list[SweepCandidate],
    budget: QualityBudget | OutputQualityBudget,
    optimize: str,
    speed_source: str,
    *,
    preface: str = "",
) -> tuple[str | None, str]:
    """The pick and the sentence saying why; ``preface`` (how it was picked) leads a pick."""
    eligible = [c for c in candidates if c.fits and c.meets_quality and c.ran_on_device]
    failed = [c.quant for c in candidates if c.fits and not c.ran_on_device]
    failed_text = f"; {', '.join(failed)} failed on the device" if failed else ""
    if not eligible:
        fitting = [c for c in candidates if c.fits and c.ran_on_device]
        if not fitting:
            if failed:
                return None, f"no candidate that fits ran on the device{failed_text}"
            return None, "no candidate fits the device's memory budget"
        best = min(fitting, key=lambda c: c.loss)
        return None, (
            f"no candidate that fits meets the quality budget ({budget.describe()}); "
            f"the closest is {best.quant}: {'; '.join(best.quality_failures)}{failed_text}"
        )
    if optimize == "size":
        pick = min(eligible, key=lambda c: c.size_bytes)
        why = f"the smallest ({size_text(pick)})"
    else:
        fastest = max(eligible, key=lambda c: c.speed or 0.0)
        tied = speed_ties(fastest, eligible)
        pick = min(tied, key=lambda c: (c.size_bytes, c.loss))
        why = f"the fastest ({speed_summary(pick, speed_source)})"
        if len(tied) > 1:
            others = ", ".join(f"{c.quant} {c.speed:,.1f}" for c in tied if c is not pick)
            why = (
                f"tied for the fastest with {others} (within the measurement noise,"
                f" ±{max(c.speed_noise or 0.0 for c in tied):.0%}) and the "
                + (
                    "smallest"
                    if pick.size_bytes < max(c.size_bytes for c in tied)
                    else "best quality"
                )
                + f" of them ({speed_summary(pick, speed_source)}, {size_text(pick)})"
            )
    rejected = [c.quant for c in candidates if c.fits and not c.meets_quality]
    tail = f"; {', '.join(rejected)} lose too much quality" if rejected else ""
    meet = budget.describe()
    meet = (
        "fit (no quality budget was given)"
        if meet == "no quality budget"
        else f"fit and meet {meet}"
    )
    return pick.quant, (
        f"{preface}{pick.quant} is {why} of the {len(eligible)} candidate(s) that {meet} "
        f"({quality_summary(pick)}){tail}{failed_text}"
    )


def speed_ties(fastest: SweepCandidate, eligible: list[SweepCandidate]) -> list[SweepCandidate]:
    """The candidates whose measured speed is within the noise of the fastest one's (the
    larger of the two noises): they are tied, and no speed figure can tell them apart.
    Estimated speeds are exact figures of a model: only equal ones tie."""
    top = fastest.speed or 0.0
    tied = []
    for c in eligible:
        speed = c.speed or 0.0
        if c.speed_noise is None or fastest.speed_noise is None:
            if speed == top:
                tied.append(c)
        elif speed >= top * (1 - max(c.speed_noise, fastest.speed_noise)):
            tied.append(c)
    return tied


def check_optimize(optimize: str) -> None:
    if optimize not in ("speed", "size"):
        raise EdgeshrinkError(f"optimize must be 'speed' or 'size', not {optimize!r}")


def finish(
    model: Path,
    profile: HardwareProfile,
    target: Target | None,
    budget: QualityBudget | OutputQualityBudget,
    optimize: str,
    speed_source: str,
    candidates: list[SweepCandidate],
    plot: str | os.PathLike[str] | None,
    *,
    picked_by: str | None = None,
    preface: str = "",
    reason: str | None = None,
    **fields: Any,
) -> SweepResult:
    """The fronts, the pick and its reason (``reason`` overrides it), and the plot."""
    picked_by = picked_by or optimize
    size_front, speed_front = fronts(candidates)
    pick, why = choose(candidates, budget, picked_by, speed_source, preface=preface)
    result = SweepResult(
        model=model,
        profile_id=profile.id,
        target=target.name if target else None,
        budget=budget,
        optimize=optimize,
        speed_source=speed_source,
        candidates=tuple(candidates),
        pareto_size=size_front,
        pareto_speed=speed_front,
        pick=pick,
        reason=reason or why,
        picked_by=picked_by,
        **fields,
    )
    if not plot:
        return result

    return replace(result, plot=write_sweep_svg(result, plot))
