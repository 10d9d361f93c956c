"""The TFLite plan: quantization names, the memory estimate of each type, and
plan_tflite's choice for a profile."""

from __future__ import annotations

from typing import TYPE_CHECKING

from edgeshrink.errors import QuantizationError, UnsupportedFormatError
from edgeshrink.formats.base import MemoryEstimate, ModelInfo
from edgeshrink.formats.tflite.constants import FORMAT, MIB, QUANT_TYPES, STATIC_QUANTS
from edgeshrink.plan import Ladder, ShrinkOptions
from edgeshrink.profiles import HardwareProfile

if TYPE_CHECKING:
    from edgeshrink.plan import Candidate, ShrinkOptions, ShrinkPlan

# Peak RSS of the agent (Python, numpy, the runtime) running a tiny model,
# measured here on x86_64: 60-64 MB with ai-edge-litert 2.3 (about half of it
# file-backed: the shared libraries), 48-50 MB with tflite-runtime 2.14.
RUNTIME_OVERHEAD_BYTES = 62 * MIB
_ALIASES = {
    "fp32": "float32",
    "f32": "float32",
    "float": "float32",
    "float16": "fp16",
    "f16": "fp16",
    "dynamic": "dynamic-int8",
    "int8-dynamic": "dynamic-int8",
    "dynamic-range": "dynamic-int8",
    "weight-only": "weight-only-int8",
    "int8-weight-only": "weight-only-int8",
    "static": "int8",
    "int8-static": "int8",
    "full-int8": "int8",
    "int8-float-io": "int8",
    "int8-io": "int8-int8-io",
}


def normalize_quant(name: str) -> str:
    key = name.strip().lower().replace("_", "-")
    key = _ALIASES.get(key, key)
    if key not in QUANT_TYPES:
        raise QuantizationError(
            f"'{name}' is not a TFLite quantization edgeshrink makes",
            hint=f"use one of: {', '.join(QUANT_TYPES)}",
        )
    return key


def _weights_bytes(info: ModelInfo, quant: str) -> int:
    meta = dict(info.metadata)
    float_params = int(meta.get("float_params", 0))
    quantizable = int(meta.get("quantizable_params", 0))
    other = int(meta.get("other_bytes", 0))
    if quant == "float32":
        return float_params * 4 + other
    if quant == "fp16":
        return quantizable * 2 + (float_params - quantizable) * 4 + other
    # int8 biases become int32 in full-integer models: same bytes as float32.
    return quantizable + (float_params - quantizable) * 4 + other


def estimate_tflite_memory(info: ModelInfo, quant: str) -> MemoryEstimate:
    """Peak RSS of the LiteRT interpreter on the CPU running one batch of the model.

    Weights as stored (the interpreter maps the file); compute: the largest
    activation three times over (TFLite's arena planner reuses buffers), plus, for
    fp16 and weight-only-int8, an fp32 copy of the dequantized weights (the
    DEQUANTIZE of a constant runs once at prepare time and its output stays
    resident); overhead: Python, numpy and the runtime themselves.
    """
    meta = dict(info.metadata)
    weights = _weights_bytes(info, quant)
    compute = 3 * 4 * int(meta.get("compute", {}).get("largest_activation_elems", 0))
    if quant in ("fp16", "weight-only-int8"):
        compute += int(meta.get("quantizable_params", 0)) * 4
    return MemoryEstimate(
        weights_bytes=weights,
        kv_cache_bytes=0,
        compute_bytes=compute,
        overhead_bytes=RUNTIME_OVERHEAD_BYTES,
        context=0,
    )


def _npu_delegate(profile: HardwareProfile) -> str | None:
    """The profile's external delegate, when an NPU is reached through it."""
    if not profile.external_delegate:
        return None
    if any(acc.kind == "npu" and any(u.startswith("tflite:") for u in acc.usable_by)
           for acc in profile.accelerators):  # fmt: skip
        return profile.external_delegate
    return None


def _recipe_reason(quant: str, options: ShrinkOptions) -> str:
    per_channel = options.per_channel is not False
    weights = "per-channel" if per_channel else "per-tensor"
    if quant == "fp16":
        return ". fp16 weights (dequantized to fp32 at load), fp32 compute"
    if quant == "weight-only-int8":
        return (
            f". int8 {weights} weights dequantized to fp32 at load: the file shrinks ~4x, "
            "memory and speed stay those of fp32"
        )
    if quant == "dynamic-int8":
        tail = (
            "; per-channel dynamic FULLY_CONNECTED is v12, which tflite-runtime 2.14 does not "
            "run (--per-tensor makes v3 for it)"
            if per_channel
            else ""
        )
        return f". int8 {weights} weights, activations quantized at run time (dynamic range)" + tail
    if quant == "int8":
        return f". int8 {weights} weights and int8 activations, float32 inputs and outputs"
    if quant == "int8-int8-io":
        return f". int8 {weights} weights, int8 activations, inputs and outputs"
    return ""


def _check_source(info: ModelInfo) -> None:
    if info.is_quantized:
        raise QuantizationError(
            f"{info.path.name} is already quantized ({info.file_type}); quantizing it again "
            "would compound the error",
            hint="benchmark it as it is (edgeshrink bench), or shrink the float original",
        )


def plan_tflite(
    info: ModelInfo, profile: HardwareProfile, options: ShrinkOptions | None = None
) -> ShrinkPlan:
    """Choose the TFLite quantization for ``profile``.

    An asked --quant is taken if it fits.  Otherwise the profile's default
    decides; its "int8" (every built-in profile's) becomes:
    - int8-int8-io when the profile reaches an NPU through an external delegate
      (i.MX 8M Plus: the VX delegate runs only fully integer graphs, and integer
      inputs and outputs keep the QUANTIZE/DEQUANTIZE at the edges off the CPU);
    - int8 (full integer, float I/O) when calibration data is given;
    - dynamic-int8 otherwise: it needs no calibration data, and unlike
      onnxruntime's dynamic int8 on convolutions, XNNPACK runs it nearly as fast
      as full integer (measured here for an MLP and a conv net, see the reason).
    A type that does not fit steps down to the next smaller one.
    """

    options = options or ShrinkOptions()
    if info.format != FORMAT:
        raise UnsupportedFormatError(f"{info.path}: is {info.format}, not TFLite")
    ladder = Ladder(
        info, profile, options, QUANT_TYPES,
        lambda quant: estimate_tflite_memory(info, quant), label="TFLite",
    )  # fmt: skip

    def smaller_that_fits(quant: str) -> Candidate | None:
        order = QUANT_TYPES[QUANT_TYPES.index(quant) + 1 :]
        return next((c for q in order if (c := ladder.candidate(q)).fits), None)

    _check_source(info)
    if options.quant is not None:
        wanted = normalize_quant(options.quant)
        chosen, reason = ladder.asked(wanted, smaller_that_fits)
        return ladder.plan(
            chosen, reason + _calibration_reason(wanted, options) + _recipe_reason(wanted, options)
        )

    default = normalize_quant(profile.default_quant_for(FORMAT))
    delegate = _npu_delegate(profile)
    calibrated = options.calibration is not None or options.allow_random_calibration
    if default in STATIC_QUANTS and delegate:
        quant = "int8-int8-io"
        why = (
            f"the profile's default is int8 and {profile.id} reaches its NPU through "
            f"{delegate}: the NPU runs only fully integer graphs, and integer inputs and "
            "outputs keep the float conversions at the edges off the CPU"
        )
    elif default in STATIC_QUANTS and calibrated:
        quant = "int8"
        why = "the profile's default is int8 and calibration data is given: full integer"
    elif default in STATIC_QUANTS:
        quant = "dynamic-int8"
        why = (
            "the profile's default is int8 and no calibration data is given: dynamic range "
            "needs none, and XNNPACK ran it within 15% of full int8 (measured, 1 thread: an "
            "MLP 3.9 vs 3.4 us, a conv net 108 vs 103 us; fp32 14 and 315 us); pass "
            "--calibration for full int8"
        )
    else:
        quant = default
        why = f"the profile's default for TFLite on {profile.id}"
    chosen, reason = ladder.step_down(quant, why, smaller_that_fits)
    return ladder.plan(
        chosen,
        reason + _calibration_reason(chosen.quant, options) + _recipe_reason(chosen.quant, options),
    )


def _calibration_reason(quant: str, options: ShrinkOptions) -> str:
    if quant not in STATIC_QUANTS or options.calibration is not None:
        return ""
    if options.allow_random_calibration:
        return "; calibrating on random inputs as asked"
    return "; full integer needs calibration data (--calibration, or --allow-random-calibration)"
