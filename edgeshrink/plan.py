"""Choose the quantization for one model on one device, and say why.

The rule: walk llama.cpp's types from the highest quality down and take the
first whose estimated peak memory fits the profile's budget ("quality", the
default).  With ``prefer="speed"`` start at the profile's default type instead:
the type its CPU has fast kernels for (Q4_0 is repacked at load time for ARM
dotprod/i8mm and x86 AVX2).  Generation on these CPUs is memory-bound, so the
speed estimate is the profile's memory bandwidth divided by the weight bytes.
"""

from __future__ import annotations

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
        }


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
    budget = profile.budget_mb

    def candidate(name: str) -> Candidate:
        weights = gguf.estimate_weight_bytes(shapes, name)
        est = gguf.estimate_memory(info, weights, ctx)
        tok_s = (
            profile.memory_bandwidth_gbs * 1e9 * BANDWIDTH_EFFICIENCY / weights
            if profile.memory_bandwidth_gbs and weights
            else None
        )
        return Candidate(name, weights, est, est.total_mb <= budget, tok_s)

    ladder = [candidate(name) for name in gguf.PLAN_LADDER]
    need = f"needs ~{{mb:.0f}} MB at context {ctx}, the budget of {profile.id} is {budget} MB"
    if quant is not None:
        wanted = gguf.quant_type(quant).name
        chosen = next((c for c in ladder if c.quant == wanted), None) or candidate(wanted)
        if not chosen.fits and options.check_fit:
            smaller = next((c.quant for c in ladder if c.fits), None)
            raise DoesNotFitError(
                f"{info.path.name} at {wanted} does not fit {profile.id}: "
                + need.format(mb=chosen.estimate.total_mb),
                hint=(f"try --quant {smaller}" if smaller else "no llama.cpp type fits: ")
                + (" or a shorter --ctx" if smaller else "use a smaller model or a larger device"),
            )
        reason = f"{wanted} as asked; it " + need.format(mb=chosen.estimate.total_mb)
        return _plan(info, profile, chosen, ladder, reason, ctx, prefer)

    fitting = [c for c in ladder if c.fits]
    if not fitting:
        smallest = ladder[-1]
        raise DoesNotFitError(
            f"{info.path.name} does not fit {profile.id} at any llama.cpp type: the smallest, "
            f"{smallest.quant}, " + need.format(mb=smallest.estimate.total_mb),
            hint="use a smaller model, a shorter --ctx, or a device with more memory",
        )
    if prefer == "speed":
        default = gguf.quant_type(profile.default_quant_for("gguf")).name
        start = next((i for i, c in enumerate(ladder) if c.quant == default), 0)
        chosen = next((c for c in ladder[start:] if c.fits), fitting[0])
        reason = (
            f"{chosen.quant}: the profile's speed choice for this CPU that fits; it "
            + need.format(mb=chosen.estimate.total_mb)
        )
    else:
        chosen = fitting[0]
        higher = (
            "the highest-quality type"
            if chosen is ladder[0]
            else (
                f"the highest-quality type that fits ({ladder[ladder.index(chosen) - 1].quant} "
                "does not)"
            )
        )
        reason = f"{chosen.quant}: {higher}; it " + need.format(mb=chosen.estimate.total_mb)
    note = _fast_kernel_note(profile)
    if note and chosen.quant not in ("Q4_0", "Q8_0"):
        reason += f". {note}: --prefer speed picks it"
    return _plan(info, profile, chosen, ladder, reason, ctx, prefer)


def _plan(
    info: ModelInfo,
    profile: HardwareProfile,
    chosen: Candidate,
    ladder: list[Candidate],
    reason: str,
    ctx: int,
    prefer: str,
) -> ShrinkPlan:
    return ShrinkPlan(
        model=info.path,
        format=info.format,
        profile_id=profile.id,
        quant=chosen.quant,
        reason=reason,
        context=ctx,
        threads=profile.threads,
        budget_mb=profile.budget_mb,
        chosen=chosen,
        candidates=tuple(ladder),
        prefer=prefer,
    )
