"""What a plan is, for every format: the options a user gives a shrink, the candidates
a planner weighs and the plan it returns, and the :class:`Ladder` every format walks
(its types, largest first, with their estimated peak memory against the budget).

Each backend's own rules are in its package (formats/gguf/plan.py, formats/onnx/plan.py,
formats/tflite/plan.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from edgeshrink.errors import DoesNotFitError
from edgeshrink.formats.base import MemoryEstimate, ModelInfo
from edgeshrink.profiles import HardwareProfile

MIB = 1024 * 1024
# Share of peak memory bandwidth llama.cpp's CPU generation reaches in
# practice on small boards (llama.cpp discussions on Pi 4/5 and RK3588).
BANDWIDTH_EFFICIENCY = 0.6
DEFAULT_CONTEXT = 2048


@dataclass(frozen=True)
class ShrinkOptions:
    """What the user asked of a shrink; each backend reads the fields that apply to it."""

    quant: str | None = None
    context: int | None = None
    prefer: str = "quality"  # quality | speed
    allow_requantize: bool = False
    threads: int | None = None
    force: bool = False
    # ONNX / TFLite: calibration data for static int8 (.npz file or a directory of .npy/.npz)
    calibration: Path | None = None
    calibration_method: str = "minmax"  # minmax | entropy | percentile
    per_channel: bool | None = None  # None: the backend decides
    allow_random_calibration: bool = False
    to_format: str | None = None  # convert to another format first (e.g. a SavedModel to tflite)
    # A sweep makes candidates that do not fit too, to show what they would cost.
    check_fit: bool = True
    # Hugging Face checkpoints: the GGUF type they are converted to before quantizing
    # (auto keeps BF16 and F16, turns F32 into F16).
    convert_type: str = "auto"
    # Passes before the quantize step, as edgeshrink.passes steps (e.g. prune).
    passes: tuple[Any, ...] = ()
    # GGUF importance matrix: None lets the backend decide (types below 5 bits use one),
    # False never, True always; ``imatrix`` is a file to use instead of computing one over
    # ``imatrix_text`` (None: the calibration text edgeshrink ships).
    use_imatrix: bool | None = None
    imatrix: Path | None = None
    imatrix_text: Path | None = None
    # GGUF: a file-size budget in bytes met by a type per tensor; ``fit`` takes it from the
    # profile's memory budget less the KV cache at the context and the runtime's overhead.
    max_size: int | None = None
    fit: bool = False
    # distill: the training text (its sha256 is in the step), the teacher when the model
    # given is already the student, and whether to go on from an interrupted run.
    text: str | None = None
    teacher: Path | None = None
    resume: bool = False

    def __post_init__(self) -> None:
        if self.prefer not in ("quality", "speed"):
            raise ValueError(f"prefer must be 'quality' or 'speed', not {self.prefer!r}")


@dataclass(frozen=True)
class Candidate:
    quant: str
    weights_bytes: int
    estimate: MemoryEstimate
    fits: bool
    est_tg_tok_s: float | None

    def to_dict(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["estimate"] = self.estimate.to_dict()
        return doc


@dataclass(frozen=True)
class ShrinkPlan:
    model: Path
    format: str
    profile_id: str
    quant: str
    reason: str
    context: int | None
    threads: int
    budget_mb: int
    chosen: Candidate
    candidates: tuple[Candidate, ...]
    prefer: str
    # What the user should know before using the result (a context beyond the trained one).
    warnings: tuple[str, ...] = ()
    # A size budget in bytes the file is mixed to fit (``quant`` is the type it starts from).
    max_size: int | None = None

    @property
    def label(self) -> str:
        """What the artifact is called after: its type, or its size budget for a mix."""
        if not self.max_size:
            return self.quant
        giga = self.max_size >= 1e9
        return f"mix-{self.max_size / (1e9 if giga else 1e6):.3g}{'gb' if giga else 'mb'}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": str(self.model),
            "format": self.format,
            "profile": self.profile_id,
            "quant": self.quant,
            "reason": self.reason,
            "context": self.context,
            "threads": self.threads,
            "budget_mb": self.budget_mb,
            "prefer": self.prefer,
            "chosen": self.chosen.to_dict(),
            "candidates": [c.to_dict() for c in self.candidates],
            "warnings": list(self.warnings),
            "max_size": self.max_size,
        }


class Ladder:
    """A format's types, largest first, each with its estimated peak memory against the
    profile's budget: what every planner walks, and the words it explains itself with.

    ``label`` names the format's types in messages ("llama.cpp", "ONNX", "TFLite");
    ``context`` is the LLM context the estimates are for (None for other models);
    ``speed(weights_bytes)`` estimates generation tokens/s where that means something.
    """

    def __init__(
        self,
        info: ModelInfo,
        profile: HardwareProfile,
        options: ShrinkOptions,
        quants: tuple[str, ...] | list[str],
        estimate: Callable[[str], MemoryEstimate],
        *,
        label: str,
        context: int | None = None,
        speed: Callable[[int], float | None] | None = None,
    ) -> None:
        self.info, self.profile, self.options = info, profile, options
        self.label, self.context = label, context
        self._estimate, self._speed = estimate, speed
        self.warnings: tuple[str, ...] = ()
        self._by_quant: dict[str, Candidate] = {}
        self.candidates = [self.candidate(q) for q in quants]
        self._by_quant = {c.quant: c for c in self.candidates}

    def candidate(self, quant: str) -> Candidate:
        if quant in self._by_quant:
            return self._by_quant[quant]
        est = self._estimate(quant)
        speed = self._speed(est.weights_bytes) if self._speed else None
        fits = est.total_mb <= self.profile.budget_mb
        return Candidate(quant, est.weights_bytes, est, fits, speed)

    def need(self, c: Candidate) -> str:
        at = f" at context {self.context}" if self.context else ""
        return (
            f"needs ~{c.estimate.total_mb:.0f} MB{at}, the budget of {self.profile.id} is "
            f"{self.profile.budget_mb} MB"
        )

    def asked(
        self, wanted: str, smaller_that_fits: Callable[[str], Candidate | None]
    ) -> tuple[Candidate, str]:
        """The type the user asked for, and why; DoesNotFitError if it does not fit
        (unless the options say not to check, as a sweep's do)."""
        chosen = self.candidate(wanted)
        if not chosen.fits and self.options.check_fit:
            smaller = smaller_that_fits(wanted)
            shorter = " or a shorter --ctx" if self.context else ""
            raise DoesNotFitError(
                f"{self.info.path.name} at {wanted} does not fit {self.profile.id}: "
                + self.need(chosen),
                hint=f"try --quant {smaller.quant}{shorter}"
                if smaller
                else f"no {self.label} type fits: use a smaller model or a device with more memory",
            )
        return chosen, f"{wanted} as asked; it " + self.need(chosen)

    def step_down(
        self, quant: str, why: str, smaller_that_fits: Callable[[str], Candidate | None]
    ) -> tuple[Candidate, str]:
        """``quant`` (chosen because ``why``), or else the next smaller type that fits."""
        chosen = self.candidate(quant)
        if not chosen.fits and self.options.check_fit:
            smaller = smaller_that_fits(quant)
            if smaller is None:
                last = self.candidates[-1]
                raise DoesNotFitError(
                    f"{self.info.path.name} does not fit {self.profile.id} at any {self.label} "
                    f"type: even {last.quant} " + self.need(last),
                    hint="use a smaller model or a device with more memory",
                )
            why += f"; {quant} does not fit (" + self.need(chosen) + ")"
            chosen = smaller
        return chosen, f"{chosen.quant}: {why}; it " + self.need(chosen)

    def plan(self, chosen: Candidate, reason: str, quant: str | None = None,
             max_size: int | None = None) -> ShrinkPlan:  # fmt: skip
        known = chosen.quant in self._by_quant
        return ShrinkPlan(
            model=self.info.path,
            format=self.info.format,
            profile_id=self.profile.id,
            quant=quant or chosen.quant,
            reason=reason,
            context=self.context,
            threads=self.profile.threads,
            budget_mb=self.profile.budget_mb,
            chosen=chosen,
            candidates=tuple(self.candidates if known else [*self.candidates, chosen]),
            prefer=self.options.prefer,
            warnings=self.warnings,
            max_size=max_size,
        )
