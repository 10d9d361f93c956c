"""The ONNX plan: quantization names, the int8 recipe that suits a CPU, the memory
estimate of each type, and plan_onnx's choice."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from edgeshrink.errors import QuantizationError, UnsupportedFormatError
from edgeshrink.formats.base import MemoryEstimate, ModelInfo
from edgeshrink.formats.onnx.constants import FORMAT, INT8_QUANTS, MIB, PLAN_ORDER, QUANT_TYPES
from edgeshrink.plan import Ladder, ShrinkOptions
from edgeshrink.profiles import HardwareProfile

if TYPE_CHECKING:
    from edgeshrink.plan import Candidate, ShrinkOptions, ShrinkPlan

# Peak RSS of the agent (Python, numpy, onnxruntime) running a tiny model,
# measured here: 74-75 MB on x86_64 with onnxruntime 1.32 (about 43 MB of it
# file-backed: the shared libraries).
RUNTIME_OVERHEAD_BYTES = 72 * MIB
_ALIASES = {
    "float32": "fp32",
    "f32": "fp32",
    "float16": "fp16",
    "f16": "fp16",
    "dynamic": "int8-dynamic",
    "static": "int8-static",
    "int8-qdq": "int8-static",
    "qdq": "int8-static",
    "qoperator": "int8-static-qoperator",
    "int8-qoperator": "int8-static-qoperator",
}


def normalize_quant(name: str) -> str:
    key = name.strip().lower().replace("_", "-")
    key = _ALIASES.get(key, key)
    if key not in QUANT_TYPES:
        raise QuantizationError(
            f"'{name}' is not an ONNX quantization edgeshrink makes",
            hint=f"use one of: {', '.join(QUANT_TYPES)}",
        )
    return key


@dataclass(frozen=True)
class Int8Recipe:
    """The integer types and options of one int8 quantization, and why they suit the CPU."""

    activation_type: str  # uint8 | int8
    weight_type: str  # int8
    symmetric_activations: bool
    reduce_range: bool
    per_channel: bool
    why: str

    def describe(self) -> str:
        parts = [
            f"activations {self.activation_type}"
            + (" symmetric" if self.symmetric_activations else ""),
            f"weights {self.weight_type} {'per-channel' if self.per_channel else 'per-tensor'}",
        ]
        if self.reduce_range:
            parts.append("7-bit weight range")
        return ", ".join(parts)


def _has_vnni(profile: HardwareProfile) -> bool:
    return any(profile.has_feature(f) for f in ("avx512_vnni", "avx_vnni", "amx_int8"))


def int8_recipe(profile: HardwareProfile, options: ShrinkOptions, quant: str) -> Int8Recipe:
    """onnxruntime's CPU guidance (quantize_static's docstring) applied to the profile."""
    per_channel = True if options.per_channel is None else options.per_channel
    if profile.arch == "aarch64":
        if quant == "int8-dynamic":
            why = "dynamic int8 quantizes activations to uint8 at run time; ARM runs u8s8 MatMulInteger"
            return Int8Recipe("uint8", "int8", False, False, per_channel, why)
        why = "ARM kernels prefer symmetric int8 activations and weights"
        return Int8Recipe("int8", "int8", True, False, per_channel, why)
    vnni = _has_vnni(profile)
    if profile.arch == "x86_64":
        why = "x86 runs uint8 activations with int8 weights (u8s8" + (
            ", VNNI)" if vnni else "; no VNNI, so weights use a 7-bit range against saturation)"
        )
        return Int8Recipe("uint8", "int8", False, not vnni, per_channel, why)
    return Int8Recipe("uint8", "int8", False, False, per_channel, "uint8 activations, int8 weights")


def _weights_bytes(info: ModelInfo, quant: str) -> int:
    meta = dict(info.metadata)
    float_params = int(meta.get("float_params", 0))
    other = int(meta.get("other_bytes", 0))
    if quant == "fp32":
        return float_params * 4 + other
    if quant == "fp16":
        return float_params * 2 + other
    key = "dynamic_quantizable_params" if quant == "int8-dynamic" else "static_quantizable_params"
    quantized = int(meta.get(key, 0))
    return quantized + (float_params - quantized) * 4 + other


def estimate_onnx_memory(
    info: ModelInfo, quant: str, profile: HardwareProfile | None = None
) -> MemoryEstimate:
    """Peak RSS of onnxruntime on the CPU running one batch of the model.

    Weights as stored; compute: the largest activation three times over (input,
    output and a workspace; ORT's planner reuses buffers), plus an fp32 copy of
    the weights for fp16 models on CPUs without fp16 arithmetic (onnxruntime
    inserts casts there); overhead: Python, numpy and onnxruntime themselves.
    """
    meta = dict(info.metadata)
    weights = _weights_bytes(info, quant)
    compute = 3 * 4 * int(meta.get("compute", {}).get("largest_activation_elems", 0))
    if quant == "fp16" and not (
        profile is not None
        and any(profile.has_feature(f) for f in ("asimdhp", "fphp", "avx512_fp16"))
    ):
        compute += _weights_bytes(info, "fp32")
    return MemoryEstimate(
        weights_bytes=weights,
        kv_cache_bytes=0,
        compute_bytes=compute,
        overhead_bytes=RUNTIME_OVERHEAD_BYTES,
        context=0,
    )


def _shares(info: ModelInfo) -> tuple[str, str]:
    compute = dict(info.metadata).get("compute", {})
    share = float(compute.get("conv_share", 0.0))
    kind = compute.get("kind", "other")
    if kind == "conv":
        return kind, f"{share:.0%} of its multiply-adds are in Conv"
    if kind == "matmul":
        return kind, f"{1 - share:.0%} of its multiply-adds are in MatMul/Gemm"
    return kind, "it has no Conv, MatMul or Gemm"


def plan_onnx(
    info: ModelInfo, profile: HardwareProfile, options: ShrinkOptions | None = None
) -> ShrinkPlan:

    options = options or ShrinkOptions()
    if info.format != FORMAT:
        raise UnsupportedFormatError(f"{info.path}: is {info.format}, not ONNX")
    ladder = Ladder(
        info, profile, options, PLAN_ORDER,
        lambda quant: estimate_onnx_memory(info, quant, profile), label="ONNX",
    )  # fmt: skip
    _check_source_type(info, options.quant and normalize_quant(options.quant))
    kind, share_text = _shares(info)

    def smaller_that_fits(quant: str) -> Candidate | None:
        """The largest smaller type that fits; of the int8 ones, the one suiting the model."""
        rank = PLAN_ORDER.index("int8-static" if quant == "int8-static-qoperator" else quant)
        int8_order = ("int8-static", "int8-dynamic")
        if kind != "conv":
            int8_order = int8_order[::-1]
        order = [q for q in ("fp16", *int8_order) if PLAN_ORDER.index(q) > rank]
        return next((c for q in order if (c := ladder.candidate(q)).fits), None)

    if options.quant is not None:
        wanted = normalize_quant(options.quant)
        chosen, reason = ladder.asked(wanted, smaller_that_fits)
        return ladder.plan(chosen, reason + _recipe_reason(profile, options, wanted))

    default = normalize_quant(profile.default_quant_for(FORMAT))
    if default in INT8_QUANTS:
        if kind == "conv":
            quant = "int8-static" if default != "int8-static-qoperator" else default
            why = (
                f"the profile's default is int8 and {share_text}: static QDQ keeps convolutions "
                "fast, dynamic int8 does not (it made a small conv net 7.6x slower than fp32 "
                "on x86, measured)"
            )
        elif kind == "matmul":
            quant = "int8-dynamic"
            why = (
                f"the profile's default is int8 and {share_text}: dynamic int8 needs no "
                "calibration data and runs MatMul about 2x faster than fp32 (measured on MLPs)"
            )
        else:
            quant = default
            why = f"the profile's default ({default}); {share_text}"
    else:
        quant = default
        why = f"the profile's default for ONNX on {profile.id}"
    chosen, reason = ladder.step_down(quant, why, smaller_that_fits)
    quant = chosen.quant
    if quant.startswith("int8-static") and options.calibration is None:
        reason += (
            "; static int8 needs calibration data (--calibration, or --allow-random-calibration)"
            if not options.allow_random_calibration
            else "; calibrating on random inputs as asked"
        )
    return ladder.plan(chosen, reason + _recipe_reason(profile, options, quant))


def _recipe_reason(profile: HardwareProfile, options: ShrinkOptions, quant: str) -> str:
    if quant in INT8_QUANTS:
        recipe = int8_recipe(profile, options, quant)
        described = recipe.describe()
        if quant != "int8-dynamic" and options.per_channel is None:
            described = described.replace(
                "per-channel", "per-channel or per-tensor (whichever measures better)"
            )
        return f". {described}: {recipe.why}"
    if quant == "fp16":
        return ". fp16 weights and compute, fp32 inputs and outputs (keep_io_types)"
    return ""


def _check_source_type(info: ModelInfo, wanted: str | None) -> None:
    if info.is_quantized:
        raise QuantizationError(
            f"{info.path.name} is already quantized ({info.file_type}); quantizing it "
            "again would compound the error",
            hint="benchmark it as it is (edgeshrink bench), or shrink the float original",
        )
    if info.file_type == "FP16" and wanted != "fp16":
        raise QuantizationError(
            f"{info.path.name} is already FP16; onnxruntime's int8 quantizers and this "
            "plan start from an FP32 model",
            hint="shrink the FP32 export of the model",
        )
    if info.file_type == "FP16" and wanted == "fp16":
        raise QuantizationError(
            f"{info.path.name} is already FP16", hint="benchmark it as it is (edgeshrink bench)"
        )
