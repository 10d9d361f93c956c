"""How a GGUF model is planned for a device.

The rule: walk llama.cpp's types from the highest quality down and take the
first whose estimated peak memory fits the profile's budget ("quality", the
default).  With ``prefer="speed"`` start at the profile's default type instead:
the type its CPU has fast kernels for (Q4_0 is repacked at load time for ARM
dotprod/i8mm and x86 AVX2).  Generation on these CPUs is memory-bound, so the
speed estimate is the profile's memory bandwidth divided by the weight bytes.
"""

from __future__ import annotations

from edgeshrink.errors import DoesNotFitError, UnsupportedFormatError
from edgeshrink.formats.base import ModelInfo
from edgeshrink.formats.gguf.estimate import estimate_memory, estimate_weight_bytes
from edgeshrink.formats.gguf.quant_types import FORMAT, PLAN_LADDER, quant_type
from edgeshrink.formats.gguf.reader import tensor_shapes
from edgeshrink.plan import (
    BANDWIDTH_EFFICIENCY,
    DEFAULT_CONTEXT,
    Ladder,
    ShrinkOptions,
    ShrinkPlan,
)
from edgeshrink.profiles import HardwareProfile


def fast_kernel_note(profile: HardwareProfile) -> str | None:
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
    if info.format != FORMAT:
        raise UnsupportedFormatError(f"{info.path}: is {info.format}, not GGUF")
    return plan_llm(info, profile, options or ShrinkOptions(), tensor_shapes(info.path))


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
        info, profile, options, PLAN_LADDER,
        lambda name: estimate_memory(info, estimate_weight_bytes(shapes, name), ctx),
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
        wanted = quant_type(quant).name
        return ladder.plan(*ladder.asked(wanted, lambda _q: next(iter(fitting), None)))

    if not fitting:
        smallest = candidates[-1]
        raise DoesNotFitError(
            f"{info.path.name} does not fit {profile.id} at any llama.cpp type: the smallest, "
            f"{smallest.quant}, " + ladder.need(smallest),
            hint="use a smaller model, a shorter --ctx, or a device with more memory",
        )
    if prefer == "speed":
        default = quant_type(profile.default_quant_for("gguf")).name
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
    note = fast_kernel_note(profile)
    if note and chosen.quant not in ("Q4_0", "Q8_0"):
        reason += f". {note}: --prefer speed picks it"
    return ladder.plan(chosen, reason)
