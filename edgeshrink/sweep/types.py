"""What a sweep is made of: its candidates, its result and the budgets it judges by."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgeshrink.formats.gguf.quality import LlmBudget as QualityBudget
from edgeshrink.formats.onnx import OnnxBackend
from edgeshrink.quality import Metric, QualityReport
from edgeshrink.quality import QualityBudget as Bounds

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
    type: str = ""  # the quantization type ("quant" is the candidate's name: Q4_0-prune2)
    pruned: tuple[int, ...] = ()  # the original's blocks removed
    healed: bool = False  # the pruned student was trained to imitate the original
    original: bool = False  # the model itself, unshrunk: what savings are measured against
    recipe: tuple[dict[str, Any], ...] = ()  # as the artifact's manifest records it
    beaten_by: str | None = None  # a plain quantization no larger, no worse and no slower
    quality_on: str | None = None  # the target that measured ``quality`` (None: this machine)
    host_quality: dict[str, Any] | None = None  # this machine's figures, when the device's rule

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
