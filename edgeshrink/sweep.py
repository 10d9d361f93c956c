"""Know when to stop: try a ladder of quantizations, measure each, pick one.

For every candidate of the ladder: its size, its estimated peak memory and
whether that fits the profile's budget, its quality against the original
(llama-perplexity's KL divergence, PPL ratio and same-top-token), and, with a
target, its speed and memory measured on the device, one candidate at a time.
The pick is the fastest (or, with ``optimize="size"``, the smallest) candidate
that fits and meets every quality budget given.  Measurements already in the
store for the same bytes and settings are reused.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgeshrink.bench import BenchParams
from edgeshrink.errors import EdgeshrinkError
from edgeshrink.formats import gguf
from edgeshrink.llm_quality import default_eval_text, evaluate_llm
from edgeshrink.plan import ShrinkOptions, plan_gguf
from edgeshrink.profiles import HardwareProfile
from edgeshrink.shrink import shrink_gguf
from edgeshrink.store import ResultStore
from edgeshrink.targets import Target
from edgeshrink.util import sha256_file

Progress = Callable[[str], None]

DEFAULT_LADDER = ("Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q4_0", "IQ4_XS", "Q3_K_M", "Q2_K")
QUALITY_METHOD = "llm-kld/1"


@dataclass(frozen=True)
class QualityBudget:
    max_kld: float | None = None
    max_ppl_increase: float | None = None  # a fraction: 0.05 allows PPL 5% above the original
    min_same_top: float | None = None  # a fraction: 0.9 asks for 90% same top token

    def describe(self) -> str:
        parts = []
        if self.max_kld is not None:
            parts.append(f"KLD ≤ {self.max_kld:g}")
        if self.max_ppl_increase is not None:
            parts.append(f"PPL ≤ +{self.max_ppl_increase:.1%}")
        if self.min_same_top is not None:
            parts.append(f"same top token ≥ {self.min_same_top:.1%}")
        return ", ".join(parts) or "no quality budget"

    def failures(self, quality: dict[str, Any]) -> list[str]:
        failed = []
        kld = quality["kld_mean"]["value"]
        ratio = quality["ppl_ratio"]["value"]
        same = quality["same_top"]["value"]
        if self.max_kld is not None and kld > self.max_kld:
            failed.append(f"KLD {kld:.4f} > {self.max_kld:g}")
        if self.max_ppl_increase is not None and ratio - 1 > self.max_ppl_increase:
            failed.append(f"PPL +{ratio - 1:.2%} > +{self.max_ppl_increase:.1%}")
        if self.min_same_top is not None and same < self.min_same_top:
            failed.append(f"same top {same:.1%} < {self.min_same_top:.1%}")
        return failed


@dataclass(frozen=True)
class SweepCandidate:
    quant: str
    path: Path
    sha256: str
    size_bytes: int
    estimate_mb: float
    fits: bool
    est_tg_tok_s: float | None
    quality: dict[str, Any]
    quality_reused: bool
    quality_failures: tuple[str, ...]
    measured: dict[str, Any] | None = None
    measured_reused: bool = False

    @property
    def meets_quality(self) -> bool:
        return not self.quality_failures

    @property
    def tg_tok_s(self) -> float | None:
        """Measured generation speed when there is one, else the estimate."""
        if self.measured and self.measured.get("tg_tok_s"):
            return float(self.measured["tg_tok_s"])
        return self.est_tg_tok_s

    @property
    def kld(self) -> float:
        return float(self.quality["kld_mean"]["value"])

    def to_dict(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["path"] = str(self.path)
        doc["meets_quality"] = self.meets_quality
        doc["tg_tok_s"] = self.tg_tok_s
        return doc


@dataclass(frozen=True)
class SweepResult:
    model: Path
    profile_id: str
    target: str | None
    budget: QualityBudget
    optimize: str
    speed_source: str  # "measured on TARGET" or "estimated from memory bandwidth"
    candidates: tuple[SweepCandidate, ...]
    pareto_size: tuple[str, ...]
    pareto_speed: tuple[str, ...]
    pick: str | None
    reason: str
    plot: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": str(self.model),
            "profile": self.profile_id,
            "target": self.target,
            "budget": asdict(self.budget),
            "optimize": self.optimize,
            "speed_source": self.speed_source,
            "candidates": [c.to_dict() for c in self.candidates],
            "pareto_size": list(self.pareto_size),
            "pareto_speed": list(self.pareto_speed),
            "pick": self.pick,
            "reason": self.reason,
            "plot": str(self.plot) if self.plot else None,
        }


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


def _choose(
    candidates: list[SweepCandidate], budget: QualityBudget, optimize: str, speed_source: str
) -> tuple[str | None, str]:
    eligible = [c for c in candidates if c.fits and c.meets_quality]
    if not eligible:
        fitting = [c for c in candidates if c.fits]
        if not fitting:
            return None, "no candidate fits the device's memory budget"
        best = min(fitting, key=lambda c: c.kld)
        return None, (
            f"no candidate that fits meets the quality budget ({budget.describe()}); "
            f"the closest is {best.quant}: {'; '.join(best.quality_failures)}"
        )
    if optimize == "size":
        pick = min(eligible, key=lambda c: c.size_bytes)
        why = f"the smallest ({pick.size_bytes / 2**20:.1f} MiB)"
    else:
        pick = max(eligible, key=lambda c: c.tg_tok_s or 0.0)
        why = f"the fastest ({pick.tg_tok_s:.1f} tok/s generation, {speed_source})"
    rejected = [c.quant for c in candidates if c.fits and not c.meets_quality]
    tail = f"; {', '.join(rejected)} lose too much quality" if rejected else ""
    return pick.quant, (
        f"{pick.quant} is {why} of the {len(eligible)} candidate(s) that fit and meet "
        f"{budget.describe()} (KLD {pick.kld:.4f}, same top token "
        f"{pick.quality['same_top']['value']:.1%}){tail}"
    )


def sweep_gguf(
    model: str | os.PathLike[str],
    profile: HardwareProfile,
    *,
    budget: QualityBudget,
    ladder: tuple[str, ...] = DEFAULT_LADDER,
    target: Target | None = None,
    params: BenchParams | None = None,
    optimize: str = "speed",
    text: str | None = None,
    eval_ctx: int = 512,
    eval_chunks: int | None = None,
    context: int | None = None,
    output_dir: str | os.PathLike[str] | None = None,
    db: str | os.PathLike[str] | None = None,
    remeasure: bool = False,
    plot: str | os.PathLike[str] | None = None,
    progress: Progress | None = None,
) -> SweepResult:
    if optimize not in ("speed", "size"):
        raise EdgeshrinkError(f"optimize must be 'speed' or 'size', not {optimize!r}")
    say = progress or (lambda _m: None)
    model = Path(model)
    info = gguf.inspect_gguf(model)
    if info.is_quantized:
        raise EdgeshrinkError(
            f"{model.name} is already quantized ({info.file_type}); a sweep starts from the original",
            hint="give the F32/F16/BF16 model",
        )
    out_dir = Path(output_dir) if output_dir else Path.cwd() / f"{model.stem}-sweep"
    out_dir.mkdir(parents=True, exist_ok=True)
    text = text if text is not None else default_eval_text()
    base_sha = sha256_file(model)
    settings = json.dumps(
        {"text_sha256": hashlib.sha256(text.encode()).hexdigest(),
         "n_ctx": eval_ctx, "chunks": eval_chunks},
        sort_keys=True,
    )  # fmt: skip
    candidates: list[SweepCandidate] = []
    with ResultStore(db) as store:
        for quant in ladder:
            options = ShrinkOptions(quant=quant, context=context, check_fit=False)
            estimate = plan_gguf(info, profile, options).chosen
            say(f"{quant}: quantizing")
            art = shrink_gguf(
                model,
                profile,
                options,
                output=out_dir / f"{model.stem}-{quant.lower()}.gguf",
                info=info,
            ).artifact
            quality = store.find_quality(QUALITY_METHOD, base_sha, art.sha256, settings)
            reused = quality is not None and not remeasure
            if not reused:
                say(f"{quant}: measuring quality against {model.name}")
                report = evaluate_llm(
                    model, art.path, text=text, n_ctx=eval_ctx, max_chunks=eval_chunks
                )
                quality = report.to_dict()
                store.add_quality(
                    {
                        "method": QUALITY_METHOD, "base_sha256": base_sha, "candidate_sha256": art.sha256,
                        "settings": settings, "candidate_name": art.path.name, "quant": quant,
                        "kld_mean": report.kld_mean.value, "ppl_ratio": report.ppl_ratio.value,
                        "same_top": report.same_top.value,
                    },
                    quality,
                )  # fmt: skip
            candidates.append(
                SweepCandidate(
                    quant=quant,
                    path=art.path,
                    sha256=art.sha256,
                    size_bytes=art.size_bytes,
                    estimate_mb=round(estimate.estimate.total_mb, 1),
                    fits=estimate.fits,
                    est_tg_tok_s=estimate.est_tg_tok_s,
                    quality=quality,
                    quality_reused=reused,
                    quality_failures=tuple(budget.failures(quality)),
                )
            )
    speed_source = "estimated from memory bandwidth"
    if target is not None:
        candidates = _measure_on_target(
            candidates, profile, target, params or BenchParams(), db, remeasure, say
        )
        speed_source = f"measured on {target.name}"
    size_front = pareto_front([(c.quant, c.kld, c.size_bytes) for c in candidates])
    speed_front = pareto_front([(c.quant, c.kld, -(c.tg_tok_s or 0.0)) for c in candidates])
    pick, reason = _choose(candidates, budget, optimize, speed_source)
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
        reason=reason,
    )
    if plot:
        from dataclasses import replace

        from edgeshrink.report.plot import write_sweep_svg

        result = replace(result, plot=write_sweep_svg(result, plot))
    return result


def _measure_on_target(
    candidates: list[SweepCandidate],
    profile: HardwareProfile,
    target: Target,
    params: BenchParams,
    db: str | os.PathLike[str] | None,
    remeasure: bool,
    say: Progress,
) -> list[SweepCandidate]:
    """Benchmark each fitting candidate on the device, one at a time (never two at once)."""
    from dataclasses import replace

    from edgeshrink.deploy import _threads_for, bench_model

    asked = replace(params, threads=_threads_for(target, profile, params.threads))
    measured = []
    with ResultStore(db) as store:
        for cand in candidates:
            if not cand.fits:
                measured.append(cand)
                continue
            found = None if remeasure else store.find_result(cand.sha256, target.name, asked.key())
            if found is not None:
                doc = {"tg_tok_s": found.tg_tok_s, "pp_tok_s": found.pp_tok_s,
                       "peak_rss_mb": found.peak_rss_mb, "ttft_ms": found.ttft_ms,
                       "status": found.status, "result_id": found.id}  # fmt: skip
                measured.append(replace(cand, measured=doc, measured_reused=True))
                continue
            say(f"{cand.quant}: benchmarking on {target.name}")
            outcome = bench_model(cand.path, target, asked, profile=profile, db=db, progress=None)
            r = outcome.result
            doc = {"tg_tok_s": r.tg_tok_s.mean if r.tg_tok_s else None,
                   "pp_tok_s": r.pp_tok_s.mean if r.pp_tok_s else None,
                   "peak_rss_mb": r.peak_rss_mb, "ttft_ms": r.ttft_ms.mean if r.ttft_ms else None,
                   "status": r.status, "result_id": outcome.result_id}  # fmt: skip
            measured.append(replace(cand, measured=doc))
    return measured
