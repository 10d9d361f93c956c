"""How a GGUF model is planned for a device.

The rule: walk llama.cpp's types from the highest quality down and take the
first whose estimated peak memory fits the profile's budget ("quality", the
default).  With ``prefer="speed"`` start at the profile's default type instead:
the type its CPU has fast kernels for (Q4_0 is repacked at load time for ARM
dotprod/i8mm and x86 AVX2).  Generation on these CPUs is memory-bound, so the
speed estimate is the profile's memory bandwidth divided by the weight bytes.
"""

from __future__ import annotations

from collections.abc import Callable

from edgeshrink.errors import DoesNotFitError, UnsupportedFormatError
from edgeshrink.formats.base import ModelInfo
from edgeshrink.formats.gguf.estimate import MIB, estimate_memory, estimate_weight_bytes
from edgeshrink.formats.gguf.imatrix import wants_imatrix
from edgeshrink.formats.gguf.mix import fixed_bytes, megabytes, nearest_stock_type, smallest_bytes
from edgeshrink.formats.gguf.quant_types import FORMAT, PLAN_LADDER, quant_type
from edgeshrink.formats.gguf.reader import tensor_shapes
from edgeshrink.plan import (
    BANDWIDTH_EFFICIENCY,
    DEFAULT_CONTEXT,
    Candidate,
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
    options = options or ShrinkOptions()
    header = fixed_bytes(info.path) if options.max_size or options.fit else None
    return plan_llm(info, profile, options, tensor_shapes(info.path), header=header)


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
    header: int | None = None,
) -> ShrinkPlan:
    """Plan for an LLM whose GGUF tensors are ``shapes`` (read from a GGUF, or what a
    conversion would write; ``header``: the bytes of a quantized file no type changes,
    when known)."""
    quant, context, prefer = options.quant, options.context, options.prefer
    shape = info.llm
    if context:
        ctx = context
    elif shape and shape.context_length:
        ctx = min(shape.context_length, DEFAULT_CONTEXT)
    else:
        ctx = DEFAULT_CONTEXT

    def speed(weights: int) -> float | None:
        if profile.memory_bandwidth_gbs and weights:
            return profile.memory_bandwidth_gbs * 1e9 * BANDWIDTH_EFFICIENCY / weights
        return None

    ladder = Ladder(
        info, profile, options, PLAN_LADDER,
        lambda name: estimate_memory(info, estimate_weight_bytes(shapes, name), ctx),
        label="llama.cpp", context=ctx, speed=speed,
    )  # fmt: skip
    ladder.warnings = context_warnings(info, context)
    candidates = ladder.candidates
    fitting = [c for c in candidates if c.fits]
    if options.max_size or options.fit:
        return plan_mix(ladder, shapes, header, speed)
    if quant is not None:
        wanted = quant_type(quant).name
        chosen, why = ladder.asked(wanted, lambda _q: next(iter(fitting), None))
        return ladder.plan(chosen, why + imatrix_note(chosen.quant, options, info))

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
    return ladder.plan(chosen, reason + imatrix_note(chosen.quant, options, info))


def imatrix_note(quant: str, options: ShrinkOptions, info: ModelInfo, mix: bool = False) -> str:
    """How the plan's type is quantized, when it is with an importance matrix."""
    if not wants_imatrix(quant, options, info, mix=mix):
        return ""
    if options.imatrix is not None:
        return f"; quantized with the importance matrix {options.imatrix.name}"
    text = options.imatrix_text.name if options.imatrix_text else "edgeshrink's calibration text"
    return f"; quantized with an importance matrix computed over {text}"


def plan_mix(
    ladder: Ladder,
    shapes: list[tuple[str, tuple[int, ...], str]],
    header: int | None,
    speed: Callable[[int], float | None],
) -> ShrinkPlan:
    """A type per tensor within the size budget (--max-size, or the profile's memory
    less what the context and the runtime need, --fit), starting from the nearest stock type."""
    info, profile, options, ctx = ladder.info, ladder.profile, ladder.options, ladder.context
    with_imatrix = options.use_imatrix is not False or options.imatrix is not None
    fixed = header if header is not None else 0
    around = estimate_memory(info, 0, ctx or DEFAULT_CONTEXT)
    if options.fit:
        budget = profile.budget_mb * MIB - around.total_bytes
        how = (
            f"the budget of {profile.id}, {profile.budget_mb} MB, less the KV cache at context "
            f"{ctx}, the compute buffer and the runtime's overhead "
            f"({around.total_bytes / MIB:.0f} MB)"
        )
        if budget <= 0:
            raise DoesNotFitError(
                f"{info.path.name} cannot fit {profile.id} at context {ctx}: the KV cache, the "
                f"compute buffer and the runtime alone need ~{around.total_mb:.0f} MB, the "
                f"budget is {profile.budget_mb} MB",
                hint="use a shorter --ctx or a device with more memory",
            )
    else:
        assert options.max_size is not None
        budget, how = options.max_size, "--max-size"
    smallest = fixed + smallest_bytes(shapes, with_imatrix)
    if budget < smallest:
        raise DoesNotFitError(
            f"{info.path.name} cannot be made that small: the smallest mix is "
            f"{megabytes(smallest)}; the budget is {megabytes(budget)}",
            hint=f"give a budget of at least {megabytes(smallest)}, or use a smaller model",
        )
    start = nearest_stock_type(shapes, budget - fixed, with_imatrix)
    estimate = estimate_memory(info, budget - fixed, ctx or DEFAULT_CONTEXT)
    mix = Candidate(
        quant=f"mix≤{megabytes(budget).replace(' ', '')}",
        weights_bytes=budget - fixed,
        estimate=estimate,
        fits=estimate.total_mb <= profile.budget_mb,
        est_tg_tok_s=speed(budget - fixed),
    )
    if not mix.fits and options.check_fit:
        raise DoesNotFitError(
            f"a {megabytes(budget)} file of {info.path.name} does not fit {profile.id}: "
            + ladder.need(mix),
            hint="give a smaller --max-size, or --fit to take the device's budget",
        )
    reason = (
        f"a type per tensor within {megabytes(budget)} ({how}), starting from {start}, the "
        "stock type nearest that size: the tensors that lose most move up, those that lose "
        "least move down (each tensor's loss measured with llama.cpp's quantizer); it "
        + ladder.need(mix)
    )
    reason += imatrix_note(start, options, info, mix=True)
    return ladder.plan(mix, reason, quant=start, max_size=budget)
