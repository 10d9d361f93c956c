"""Know when to stop: try a ladder of quantizations, measure each, pick one.

For every candidate of the ladder: its size, its estimated peak memory and
whether that fits the profile's budget, its quality against the original, and,
with a target, its speed and memory measured on the device, one candidate at a
time.  Quality is what the format allows:

- GGUF: llama-perplexity's KL divergence, PPL ratio and same-top-token over a
  text; the loss on the plots is the mean KL divergence.
- ONNX: output agreement on evaluation inputs (cosine, top-1 agreement) and,
  with labels, accuracy; the loss is the accuracy drop in points when there are
  labels, else 1 − the mean cosine of the worst output.

The pick is the fastest (or, with ``optimize="size"``, the smallest) candidate
that fits and meets every quality budget given.  Measurements already in the
store for the same bytes and settings are reused.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from edgeshrink.bench import BenchParams
from edgeshrink.deploy import bench_model, threads_for
from edgeshrink.errors import (
    DoesNotFitError,
    EdgeshrinkError,
    SweepError,  # noqa: F401 (re-exported)
)
from edgeshrink.formats import backend, detect_format, gguf
from edgeshrink.formats.gguf.plan import plan_gguf
from edgeshrink.formats.gguf.quality import LlmBudget as QualityBudget
from edgeshrink.formats.gguf.quality import default_eval_text, evaluate_llm
from edgeshrink.formats.onnx import OnnxBackend
from edgeshrink.plan import ShrinkOptions
from edgeshrink.profiles import HardwareProfile
from edgeshrink.quality import Metric, QualityReport
from edgeshrink.quality import QualityBudget as Bounds
from edgeshrink.report.plot import write_sweep_svg
from edgeshrink.shrink import shrink_gguf, shrink_model
from edgeshrink.store import ResultStore
from edgeshrink.targets import Target
from edgeshrink.util import human_bytes, sha256_file

Progress = Callable[[str], None]

DEFAULT_LADDER = ("Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q4_0", "IQ4_XS", "Q3_K_M", "Q2_K")
QUALITY_METHOD = "llm-kld/1"

ONNX_STEPS = OnnxBackend.STEPS
ONNX_LADDER = OnnxBackend.sweep_ladder
ONNX_QUALITY_METHOD = "onnx-agreement/1"
# Two measured speeds closer than this (relative) are tied: separate runs of the same
# model on one machine drift that much (FACTS.md: per-round ratios swing 5-25 %).
TIE_FLOOR = 0.05
KLD_LABEL = "mean KL divergence"
ACCURACY_DROP_LABEL = "accuracy drop (points)"
COSINE_LOSS_LABEL = "1 − mean cosine (worst output)"


@dataclass(frozen=True)
class OutputQualityBudget:
    """ONNX: bounds on output agreement, judged exactly as ``edgeshrink eval`` judges them.

    ``max_accuracy_drop`` is in points (percentage points of accuracy: 2 allows
    97.2% -> 95.2%), as in ``edgeshrink eval --max-accuracy-drop``.
    ``min_agreement`` is the top-1 agreement fraction of every classifier output,
    ``min_cosine`` the mean cosine of every output.
    """

    max_accuracy_drop: float | None = None
    min_agreement: float | None = None
    min_cosine: float | None = None

    def describe(self) -> str:
        parts = []
        if self.max_accuracy_drop is not None:
            parts.append(f"accuracy drop ≤ {self.max_accuracy_drop:.10g} points")
        if self.min_agreement is not None:
            parts.append(f"top-1 agreement ≥ {self.min_agreement:.1%}")
        if self.min_cosine is not None:
            parts.append(f"mean cosine ≥ {self.min_cosine:.10g}")
        return ", ".join(parts) or "no quality budget"

    def failures(self, quality: dict[str, Any]) -> list[str]:
        """What is outside the budget in a stored ``QualityReport.to_dict()``."""
        bounds = Bounds(
            min_cosine=self.min_cosine,
            min_top1_agreement=self.min_agreement,
            max_accuracy_drop=self.max_accuracy_drop,
        )
        metrics = tuple(
            Metric(
                m["name"], m["value"], m["higher_is_better"], m.get("output"), m.get("reference")
            )
            for m in quality["metrics"]
        )
        report = QualityReport(
            kind=quality["kind"], format=quality["format"], base=quality["base"],
            candidate=quality["candidate"], inputs=quality.get("inputs"),
            n_samples=quality["n_samples"], metrics=metrics,
        )  # fmt: skip
        failed = []
        for m in bounds.apply(report).metrics:
            if m.passed is not False:
                continue
            if m.name == "accuracy":
                drop = (m.reference - m.value) * 100
                failed.append(
                    f"accuracy {m.value:.2%} is {drop:.2f} points below {m.reference:.2%} "
                    f"(> {self.max_accuracy_drop:.10g})"
                )
            elif m.name == "top1_agreement":
                failed.append(f"top-1 agreement of '{m.output}' {m.value:.2%} < {m.threshold:.2%}")
            else:
                failed.append(f"mean cosine of '{m.output}' {m.value:.7f} < {m.threshold:.10g}")
        return failed


@dataclass(frozen=True)
class SweepCandidate:
    quant: str  # the ladder step: a GGUF type, or an ONNX step of ONNX_STEPS
    path: Path
    sha256: str
    size_bytes: int
    estimate_mb: float
    fits: bool
    est_tg_tok_s: float | None
    quality: dict[str, Any]
    quality_reused: bool
    quality_failures: tuple[str, ...]
    loss: float  # lower is better: KLD (GGUF); accuracy drop in points or 1 - cosine (ONNX)
    measured: dict[str, Any] | None = None
    measured_reused: bool = False
    format: str = "gguf"
    warnings: tuple[str, ...] = ()  # from the artifact's manifest (random calibration)
    # The backend's way of measuring quality: "llm-text" (KLD; speed in tokens/s) or
    # "outputs" (agreement; speed in inferences/s).
    evaluation: str = "llm-text"

    @property
    def by_text(self) -> bool:
        return self.evaluation == "llm-text"

    @property
    def meets_quality(self) -> bool:
        return not self.quality_failures

    @property
    def ran_on_device(self) -> bool:
        """False when the device run failed: such a candidate is never picked."""
        return self.measured is None or self.measured.get("status") == "ok"

    @property
    def tg_tok_s(self) -> float | None:
        """GGUF: measured generation speed when there is one, else the estimate."""
        if self.measured and self.measured.get("tg_tok_s"):
            return float(self.measured["tg_tok_s"])
        return self.est_tg_tok_s

    @property
    def speed(self) -> float | None:
        """Higher is faster: tokens/s generated (GGUF), inferences/s measured (ONNX)."""
        if self.by_text and self.tg_tok_s:
            return self.tg_tok_s
        measured = self.measured or {}
        if measured.get("throughput_per_s"):
            return float(measured["throughput_per_s"])
        if measured.get("latency_p50_ms"):
            return 1000.0 / float(measured["latency_p50_ms"])
        return None

    @property
    def speed_noise(self) -> float | None:
        """The relative uncertainty of a measured speed (None for an estimate): the spread
        of the repetitions (GGUF: stddev / mean of tg; ONNX: the standard error of the mean
        latency), at least TIE_FLOOR, the drift between separate runs on one machine."""
        measured = self.measured or {}
        if self.by_text and measured.get("tg_tok_s"):
            spread = (measured.get("tg_tok_s_stddev") or 0.0) / float(measured["tg_tok_s"])
        elif not self.by_text and measured.get("latency_mean_ms"):
            count = max(int(measured.get("latency_count") or 1), 1)
            stddev = measured.get("latency_stddev_ms") or 0.0
            spread = stddev / float(measured["latency_mean_ms"]) / math.sqrt(count)
        else:
            return None
        return max(TIE_FLOOR, spread)

    @property
    def kld(self) -> float:
        """GGUF only: the mean KL divergence."""
        return float(self.quality["kld_mean"]["value"])

    def to_dict(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["path"] = str(self.path)
        doc["meets_quality"] = self.meets_quality
        doc["tg_tok_s"] = self.tg_tok_s
        doc["speed"] = self.speed
        return doc


@dataclass(frozen=True)
class SweepResult:
    model: Path
    profile_id: str
    target: str | None
    budget: QualityBudget | OutputQualityBudget
    optimize: str  # what was asked
    speed_source: str  # "measured on TARGET", "estimated from memory bandwidth", "not measured"
    candidates: tuple[SweepCandidate, ...]
    pareto_size: tuple[str, ...]
    pareto_speed: tuple[str, ...]
    pick: str | None
    reason: str
    plot: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    format: str = "gguf"
    loss_label: str = KLD_LABEL
    speed_label: str = "generation tok/s"
    picked_by: str = ""  # "speed" or "size": differs from optimize when there is no speed
    skipped: tuple[tuple[str, str], ...] = ()  # (step, why) of ladder steps not made
    quality_source: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": str(self.model),
            "format": self.format,
            "profile": self.profile_id,
            "target": self.target,
            "budget": asdict(self.budget),
            "optimize": self.optimize,
            "picked_by": self.picked_by or self.optimize,
            "speed_source": self.speed_source,
            "quality_source": self.quality_source,
            "loss": self.loss_label,
            "speed_unit": self.speed_label,
            "candidates": [c.to_dict() for c in self.candidates],
            "skipped": [{"quant": q, "reason": why} for q, why in self.skipped],
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


def _fronts(candidates: list[SweepCandidate]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    size_front = pareto_front([(c.quant, c.loss, c.size_bytes) for c in candidates])
    if not any(c.speed for c in candidates):
        return size_front, ()
    speed_front = pareto_front([(c.quant, c.loss, -(c.speed or 0.0)) for c in candidates])
    return size_front, speed_front


def _quality_summary(c: SweepCandidate) -> str:
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


def _speed_summary(c: SweepCandidate, speed_source: str) -> str:
    if c.by_text:
        return f"{c.tg_tok_s:.1f} tok/s generation, {speed_source}"
    measured = c.measured or {}
    p50 = measured.get("latency_p50_ms")
    latency = f", p50 {p50:.3f} ms" if p50 else ""
    return f"{c.speed:,.1f} inferences/s{latency}, {speed_source}"


def _size_text(c: SweepCandidate) -> str:
    return f"{c.size_bytes / 2**20:.1f} MiB" if c.by_text else human_bytes(c.size_bytes)


def _choose(
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
        why = f"the smallest ({_size_text(pick)})"
    else:
        fastest = max(eligible, key=lambda c: c.speed or 0.0)
        tied = speed_ties(fastest, eligible)
        pick = min(tied, key=lambda c: (c.size_bytes, c.loss))
        why = f"the fastest ({_speed_summary(pick, speed_source)})"
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
                + f" of them ({_speed_summary(pick, speed_source)}, {_size_text(pick)})"
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
        f"({_quality_summary(pick)}){tail}{failed_text}"
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


def _check_optimize(optimize: str) -> None:
    if optimize not in ("speed", "size"):
        raise EdgeshrinkError(f"optimize must be 'speed' or 'size', not {optimize!r}")


def _finish(
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
    size_front, speed_front = _fronts(candidates)
    pick, why = _choose(candidates, budget, picked_by, speed_source, preface=preface)
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
    _check_optimize(optimize)
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
            assert quality is not None
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
                    loss=float(quality["kld_mean"]["value"]),
                )
            )
    speed_source = "estimated from memory bandwidth"
    if target is not None:
        candidates = _measure_on_target(
            candidates, profile, target, params or BenchParams(), db, remeasure, say
        )
        speed_source = f"measured on {target.name}"
    return _finish(
        model, profile, target, budget, optimize, speed_source, candidates, plot,
        quality_source=f"{candidates[0].quality['n_scored']} tokens" if candidates else "",
    )  # fmt: skip


# --------------------------------------------------------------------------- ONNX


def onnx_ladder_step(name: str) -> str:
    """The ONNX ladder step a user's name means (quantization type names work too)."""
    return backend("onnx").sweep_step(name)


def _inputs_fingerprint(path: Path) -> str:
    """The sha256 of an inputs file, or of every .npy/.npz of a directory with its name."""
    if path.is_file():
        return sha256_file(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in path.iterdir() if p.suffix in (".npy", ".npz")):
        digest.update(file.name.encode())
        digest.update(sha256_file(file).encode())
    return digest.hexdigest()


def _onnx_loss(quality: dict[str, Any]) -> float:
    metrics = quality["metrics"]
    accuracy = next((m for m in metrics if m["name"] == "accuracy"), None)
    if accuracy is not None and accuracy.get("reference") is not None:
        return (accuracy["reference"] - accuracy["value"]) * 100
    return 1.0 - min(m["value"] for m in metrics if m["name"] == "cosine_mean")


def _onnx_quality_columns(quality: dict[str, Any]) -> dict[str, float | None]:
    metrics = quality["metrics"]
    agreement = [m["value"] for m in metrics if m["name"] == "top1_agreement"]
    accuracy = next((m["value"] for m in metrics if m["name"] == "accuracy"), None)
    return {"agreement": min(agreement) if agreement else None, "accuracy": accuracy}


def sweep_outputs(
    model: str | os.PathLike[str],
    profile: HardwareProfile,
    *,
    budget: OutputQualityBudget,
    ladder: tuple[str, ...] | None = None,
    calibration: str | os.PathLike[str] | None = None,
    calibration_method: str = "minmax",
    allow_random_calibration: bool = False,
    eval_inputs: str | os.PathLike[str] | None = None,
    labels: str | None = None,
    samples: int = 64,
    seed: int = 0,
    target: Target | None = None,
    params: BenchParams | None = None,
    optimize: str = "speed",
    output_dir: str | os.PathLike[str] | None = None,
    db: str | os.PathLike[str] | None = None,
    remeasure: bool = False,
    plot: str | os.PathLike[str] | None = None,
    progress: Progress | None = None,
) -> SweepResult:
    """The ladder of a model judged by its outputs (ONNX, TFLite): each step shrunk with
    the format's own tools, judged against ``model``.

    Quality runs on this machine, on ``eval_inputs`` (an .npz keyed by input
    name, or a directory of .npy/.npz) or, without them, on ``samples`` random
    inputs (agreement only); ``labels`` names the label array in ``eval_inputs``.
    Speed is measured only on a ``target``: there is no ONNX speed estimate, and
    without one the pick falls back to the smallest candidate.
    """
    _check_optimize(optimize)
    say = progress or (lambda _m: None)
    model = Path(model)
    fmt = backend(detect_format(model))
    steps = tuple(fmt.sweep_step(s) for s in (ladder or fmt.sweep_ladder))
    if labels is not None and eval_inputs is None:
        raise SweepError(
            "--labels needs --eval: random inputs have no labels",
            hint="pass --eval data.npz holding the inputs and the labels",
        )
    if budget.max_accuracy_drop is not None and labels is None:
        raise SweepError(
            "an accuracy budget (--max-accuracy-drop) needs labels to measure accuracy",
            hint="pass --eval data.npz --labels KEY, or budget with --min-agreement / --min-cosine",
        )
    info = fmt.inspect(model)
    fmt.check_sweep_base(info)
    quality_method = f"{fmt.format}-agreement/1"
    out_dir = Path(output_dir) if output_dir else Path.cwd() / f"{model.stem}-sweep"
    out_dir.mkdir(parents=True, exist_ok=True)
    eval_path = Path(eval_inputs) if eval_inputs is not None else None
    settings = json.dumps(
        {"inputs_sha256": _inputs_fingerprint(eval_path) if eval_path else None,
         "labels": labels, "samples": None if eval_path else samples,
         "seed": None if eval_path else seed},
        sort_keys=True,
    )  # fmt: skip
    if eval_path is None:
        quality_source = f"{samples} random inputs (agreement only)"
    else:
        labelled = f", labels '{labels}'" if labels else ""
        quality_source = f"{eval_path.name}{labelled}"

    candidates: list[SweepCandidate] = []
    skipped: list[tuple[str, str]] = []
    with ResultStore(db) as store:
        for step in steps:
            step_options = fmt.step_options(step)
            quant = step_options["quant"]
            estimate = fmt.estimate(info, quant, profile)
            fits = estimate.total_mb <= profile.budget_mb
            needs_data = fmt.needs_calibration(quant) and calibration is None
            if needs_data and not allow_random_calibration:
                skipped.append((step, "static int8 needs calibration data (--calibration "
                                      "cal.npz, or --allow-random-calibration)"))  # fmt: skip
                continue
            options = ShrinkOptions(
                **step_options,
                calibration=Path(calibration) if calibration is not None else None,
                calibration_method=calibration_method,
                allow_random_calibration=allow_random_calibration,
                check_fit=False,
            )
            say(f"{step}: shrinking")
            try:
                shrunk = shrink_model(
                    model, profile, options, info=info,
                    output=out_dir / f"{model.stem}-{step}{model.suffix}",
                )  # fmt: skip
            except DoesNotFitError:
                # The backend refuses to make a type that does not fit the profile.
                skipped.append((step, f"does not fit {profile.id}: needs ~{estimate.total_mb:.0f} "
                                      f"MB, the budget is {profile.budget_mb} MB"))  # fmt: skip
                continue
            art = shrunk.artifact
            quality = store.find_quality(quality_method, art.source_sha256, art.sha256, settings)
            reused = quality is not None and not remeasure
            if not reused:
                say(f"{step}: measuring quality against {model.name}")
                report = fmt.evaluate(
                    model, art.path, inputs=eval_path, labels=labels, samples=samples, seed=seed
                )
                quality = report.to_dict()
                store.add_quality(
                    {
                        "method": quality_method, "base_sha256": art.source_sha256,
                        "candidate_sha256": art.sha256, "settings": settings,
                        "candidate_name": art.path.name, "quant": step,
                        **_onnx_quality_columns(quality),
                    },
                    quality,
                )  # fmt: skip
            assert quality is not None
            if budget.min_agreement is not None and not any(
                m["name"] == "top1_agreement" for m in quality["metrics"]
            ):
                raise SweepError(
                    f"--min-agreement needs a classifier output ([N, C], C > 1); {model.name} "
                    f"has {', '.join(o['name'] + ' ' + str(o['shape']) for o in quality['outputs'])}",
                    hint="budget with --min-cosine instead",
                )
            candidates.append(
                SweepCandidate(
                    quant=step,
                    path=art.path,
                    sha256=art.sha256,
                    size_bytes=art.size_bytes,
                    estimate_mb=round(estimate.total_mb, 1),
                    fits=fits,
                    est_tg_tok_s=None,
                    quality=quality,
                    quality_reused=reused,
                    quality_failures=tuple(budget.failures(quality)),
                    loss=_onnx_loss(quality),
                    format=fmt.format,
                    evaluation=fmt.evaluation,
                    warnings=tuple(n for n in art.notes if n.startswith("WARNING")),
                )
            )
    speed_source = "not measured"
    picked_by, preface = optimize, ""
    if target is not None:
        candidates = _measure_on_target(
            candidates, profile, target, params or BenchParams(), db, remeasure, say
        )
        speed_source = f"measured on {target.name}"
    elif optimize == "speed":
        # This machine is not the device: int8 kernels that are fast on one CPU can be
        # several times slower than fp32 on another, so a host timing would mislead.
        picked_by = "size"
        preface = (
            f"no speed without --target (there is no {fmt.label} speed estimate, and this machine's "
            "timings say little about the device's int8 kernels), so by size instead: "
        )
    no_candidate = None
    if not candidates and not all(why.startswith("does not fit") for _, why in skipped):
        no_candidate = "no candidate was made: " + "; ".join(f"{q}: {why}" for q, why in skipped)
    return _finish(
        model, profile, target, budget, optimize, speed_source, candidates, plot,
        picked_by=picked_by, preface=preface, reason=no_candidate, format=fmt.format,
        loss_label=ACCURACY_DROP_LABEL if labels else COSINE_LOSS_LABEL,
        speed_label="inferences/s", skipped=tuple(skipped), quality_source=quality_source,
    )  # fmt: skip


sweep_onnx = sweep_outputs  # the name the ONNX sweep was first known by


# --------------------------------------------------------------------------- on the device


def _gguf_measured(r: Any, result_id: int | None) -> dict[str, Any]:
    return {"tg_tok_s": r.tg_tok_s.mean if r.tg_tok_s else None,
            "tg_tok_s_stddev": r.tg_tok_s.stddev if r.tg_tok_s else None,
            "pp_tok_s": r.pp_tok_s.mean if r.pp_tok_s else None,
            "peak_rss_mb": r.peak_rss_mb, "ttft_ms": r.ttft_ms.mean if r.ttft_ms else None,
            "status": r.status, "result_id": result_id}  # fmt: skip


def _onnx_measured(r: Any, result_id: int | None) -> dict[str, Any]:
    lat = r.latency_ms
    return {"latency_p50_ms": lat.p50 if lat else None, "latency_p90_ms": lat.p90 if lat else None,
            "latency_mean_ms": lat.mean if lat else None, "throughput_per_s": r.throughput_per_s,
            "latency_stddev_ms": lat.stddev if lat else None, "latency_count": lat.samples if lat else None,
            "peak_rss_mb": r.peak_rss_mb, "status": r.status, "error": r.error_message,
            "result_id": result_id}  # fmt: skip


def _stored_measured(store: ResultStore, found: Any, by_text: bool) -> dict[str, Any]:
    if by_text:
        return {"tg_tok_s": found.tg_tok_s, "tg_tok_s_stddev": found.tg_tok_s_stddev,
                "pp_tok_s": found.pp_tok_s,
                "peak_rss_mb": found.peak_rss_mb, "ttft_ms": found.ttft_ms,
                "status": found.status, "result_id": found.id}  # fmt: skip
    # p50 has no column of its own: it is in the agent's document beside the row.
    latency = store.get_document(found.id).get("latency_ms") or {}
    return {"latency_p50_ms": latency.get("p50"), "latency_p90_ms": found.latency_p90_ms,
            "latency_mean_ms": found.latency_ms, "throughput_per_s": found.throughput_per_s,
            "latency_stddev_ms": latency.get("stddev"), "latency_count": latency.get("count"),
            "peak_rss_mb": found.peak_rss_mb, "status": found.status, "error": None,
            "result_id": found.id}  # fmt: skip


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

    asked = replace(params, threads=threads_for(target, profile, params.threads))
    measured = []
    with ResultStore(db) as store:
        for cand in candidates:
            if not cand.fits:
                measured.append(cand)
                continue
            found = None if remeasure else store.find_result(cand.sha256, target.name, asked.key())
            if found is not None:
                doc = _stored_measured(store, found, cand.by_text)
                measured.append(replace(cand, measured=doc, measured_reused=True))
                continue
            say(f"{cand.quant}: benchmarking on {target.name}")
            outcome = bench_model(cand.path, target, asked, profile=profile, db=db, progress=None)
            shape = _gguf_measured if cand.by_text else _onnx_measured
            measured.append(replace(cand, measured=shape(outcome.result, outcome.result_id)))
    return measured
