"""Choose the quantization for one model on one device, and say why.

Every format walks a :class:`Ladder` of its types (largest first) with their
estimated peak memory; the rules below are the GGUF ones.

The rule: walk llama.cpp's types from the highest quality down and take the
first whose estimated peak memory fits the profile's budget ("quality", the
default).  With ``prefer="speed"`` start at the profile's default type instead:
the type its CPU has fast kernels for (Q4_0 is repacked at load time for ARM
dotprod/i8mm and x86 AVX2).  Generation on these CPUs is memory-bound, so the
speed estimate is the profile's memory bandwidth divided by the weight bytes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from edgeshrink.errors import DoesNotFitError, UnsupportedFormatError
from edgeshrink.formats import gguf
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

    def plan(self, chosen: Candidate, reason: str) -> ShrinkPlan:
        known = chosen.quant in self._by_quant
        return ShrinkPlan(
            model=self.info.path,
            format=self.info.format,
            profile_id=self.profile.id,
            quant=chosen.quant,
            reason=reason,
            context=self.context,
            threads=self.profile.threads,
            budget_mb=self.profile.budget_mb,
            chosen=chosen,
            candidates=tuple(self.candidates if known else [*self.candidates, chosen]),
            prefer=self.options.prefer,
            warnings=self.warnings,
        )


def _fast_kernel_note(profile: HardwareProfile) -> str | None:
    if profile.arch == "aarch64" and (
        profile.has_feature("i8mm") or profile.has_feature("asimddp")
    ):
        return "Q4_0 is repacked at load time for this CPU's dotprod/i8mm kernels"
    if profile.arch == "x86_64" and profile.has_feature("avx2"):
        return "Q4_0 is repacked at load time for this CPU's AVX2 kernels"
    return None


def plan_gguf(
    info: ModelInfo, profile: HardwareProfile, options: ShrinkOptions | None = None
) -> ShrinkPlan:
    if info.format != gguf.FORMAT:
        raise UnsupportedFormatError(f"{info.path}: is {info.format}, not GGUF")
    return plan_llm(info, profile, options or ShrinkOptions(), gguf.tensor_shapes(info.path))


def context_warnings(
    info: ModelInfo, context: int | None, *, asked: str | None = None, remedy: str | None = None
) -> tuple[str, ...]:
    """A context the user asked for (``asked`` says how; default ``--ctx N``) beyond the one
    the model was trained at (the GGUF's ``<arch>.context_length``): it fits in memory, but
    the model's output degrades."""
    trained = info.llm.context_length if info.llm else None
    if not context or not trained or context <= trained:
        return ()
    return (
        f"{asked or f'--ctx {context}'} is beyond the context {info.path.name} was trained at "
        f"({trained}, {info.architecture}.context_length): its output degrades past "
        f"{trained} tokens; {remedy or f'use --ctx {trained} or less'}",
    )


def plan_llm(
    info: ModelInfo,
    profile: HardwareProfile,
    options: ShrinkOptions,
    shapes: list[tuple[str, tuple[int, ...], str]],
) -> ShrinkPlan:
    """Plan for an LLM whose GGUF tensors are ``shapes`` (read from a GGUF, or what a
    conversion would write)."""
    quant, context, prefer = options.quant, options.context, options.prefer
    shape = info.llm
    if context:
        ctx = context
    elif shape and shape.context_length:
        ctx = min(shape.context_length, DEFAULT_CONTEXT)
    else:
        ctx = DEFAULT_CONTEXT
    ladder = Ladder(
        info, profile, options, gguf.PLAN_LADDER,
        lambda name: gguf.estimate_memory(info, gguf.estimate_weight_bytes(shapes, name), ctx),
        label="llama.cpp", context=ctx,
        speed=lambda weights: (
            profile.memory_bandwidth_gbs * 1e9 * BANDWIDTH_EFFICIENCY / weights
            if profile.memory_bandwidth_gbs and weights
            else None
        ),
    )  # fmt: skip
    ladder.warnings = context_warnings(info, context)
    candidates = ladder.candidates
    fitting = [c for c in candidates if c.fits]
    if quant is not None:
        wanted = gguf.quant_type(quant).name
        return ladder.plan(*ladder.asked(wanted, lambda _q: next(iter(fitting), None)))

    if not fitting:
        smallest = candidates[-1]
        raise DoesNotFitError(
            f"{info.path.name} does not fit {profile.id} at any llama.cpp type: the smallest, "
            f"{smallest.quant}, " + ladder.need(smallest),
            hint="use a smaller model, a shorter --ctx, or a device with more memory",
        )
    if prefer == "speed":
        default = gguf.quant_type(profile.default_quant_for("gguf")).name
        start = next((i for i, c in enumerate(candidates) if c.quant == default), 0)
        chosen = next((c for c in candidates[start:] if c.fits), fitting[0])
        reason = (
            f"{chosen.quant}: the profile's speed choice for this CPU that fits; it "
            + ladder.need(chosen)
        )
    else:
        chosen = fitting[0]
        higher = (
            "the highest-quality type"
            if chosen is candidates[0]
            else (
                "the highest-quality type that fits "
                f"({candidates[candidates.index(chosen) - 1].quant} does not)"
            )
        )
        reason = f"{chosen.quant}: {higher}; it " + ladder.need(chosen)
    note = _fast_kernel_note(profile)
    if note and chosen.quant not in ("Q4_0", "Q8_0"):
        reason += f". {note}: --prefer speed picks it"
    return ladder.plan(chosen, reason)
