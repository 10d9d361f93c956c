"""Quantizing with ai-edge-quantizer (no TensorFlow): weight-only, dynamic-range and
calibrated full-integer int8, fp16 by float casting; then the operator versions fixed."""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeshrink.errors import QuantizationError, RuntimeMissingError
from edgeshrink.formats.base import ModelInfo
from edgeshrink.formats.tensors import InputBatches, calibration_feeds, fingerprint_calibration
from edgeshrink.formats.tflite.constants import STATIC_QUANTS, Progress
from edgeshrink.formats.tflite.flatbuffer import fix_operator_versions

if TYPE_CHECKING:
    from edgeshrink.plan import ShrinkOptions


@dataclass(frozen=True)
class QuantizeOutcome:
    path: Path
    notes: tuple[str, ...]
    recipe: str


def calibration_batches(
    info: ModelInfo, options: ShrinkOptions, quant: str = "int8"
) -> tuple[InputBatches, list[str]]:
    """The calibration feeds for full-integer quantization (the data reader shared with
    the ONNX backend, formats/tensors.py), and the notes they deserve."""
    return calibration_feeds(info, options, what=f"{quant} (full integer)", instead="dynamic-int8")


def check_calibration_method(options: ShrinkOptions) -> None:
    if options.calibration_method != "minmax":
        raise QuantizationError(
            f"--calibration-method {options.calibration_method} is onnxruntime's; TFLite full "
            "integer quantization (ai-edge-quantizer, TFLiteConverter) calibrates min/max ranges",
            hint="drop --calibration-method for TFLite models",
        )


def recipe_detail(quant: str, options: ShrinkOptions, calibration: str | None) -> str:
    granularity = "per-tensor" if options.per_channel is False else "per-channel"
    if quant == "float32":
        return "float32"
    if quant == "fp16":
        return "fp16 weight-only float_casting"
    if quant in STATIC_QUANTS:
        io = "int8" if quant == "int8-int8-io" else "float32"
        return f"{quant} a8w8 {granularity} io={io} calibration={calibration}"
    return f"{quant} w8 {granularity}"


def _import_quantizer() -> Any:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from ai_edge_quantizer import quantizer
    except ImportError as exc:
        raise RuntimeMissingError(
            f"ai-edge-quantizer is not installed: {exc}",
            hint="pip install 'edgeshrink[tflite]'",
        ) from exc
    return quantizer


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """ai-edge-quantizer prints progress and its interpreter warns: keep stdout for
    edgeshrink's own JSON, and warnings out of the user's way."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(sys.stderr):
        warnings.simplefilter("ignore")
        yield


def quantize_tflite(
    src: Path,
    dst: Path,
    quant: str,
    info: ModelInfo,
    options: ShrinkOptions,
    *,
    progress: Progress | None = None,
) -> QuantizeOutcome:
    """Write ``dst``: ``src`` at ``quant`` made by ai-edge-quantizer."""
    say = progress or (lambda _m: None)
    if quant == "float32":
        shutil.copyfile(src, dst)
        return QuantizeOutcome(dst, ("copied as float32",), "float32")
    quantizer_module = _import_quantizer()
    from ai_edge_quantizer import qtyping
    from ai_edge_quantizer.algorithm_manager import AlgorithmName

    granularity = (
        qtyping.QuantGranularity.TENSORWISE
        if options.per_channel is False
        else qtyping.QuantGranularity.CHANNELWISE
    )
    every_op = qtyping.TFLOperationName.ALL_SUPPORTED
    notes: list[str] = []
    calibration_id = None
    with _quiet():
        qt = quantizer_module.Quantizer(str(src))
        if quant == "fp16":
            say("casting weights to fp16 with ai-edge-quantizer")
            qt.add_weight_only_config(
                regex=".*", operation_name=every_op, num_bits=16,
                algorithm_key=AlgorithmName.FLOAT_CASTING,
            )  # fmt: skip
        elif quant == "weight-only-int8":
            say("quantizing weights to int8 (weight-only) with ai-edge-quantizer")
            qt.add_weight_only_config(
                regex=".*", operation_name=every_op, num_bits=8, granularity=granularity
            )
        elif quant == "dynamic-int8":
            say("quantizing to dynamic-range int8 with ai-edge-quantizer")
            qt.add_dynamic_config(
                regex=".*", operation_name=every_op, num_bits=8, granularity=granularity
            )
        else:
            qt.add_static_config(
                regex=".*", operation_name=every_op, activation_num_bits=8,
                weight_num_bits=8, weight_granularity=granularity,
            )  # fmt: skip
            if quant == "int8":
                for edge in (qtyping.TFLOperationName.INPUT, qtyping.TFLOperationName.OUTPUT):
                    qt.update_quantization_recipe(
                        regex=".*", operation_name=edge, algorithm_key=AlgorithmName.NO_QUANTIZE
                    )
        calibration_result = None
        if qt.need_calibration:
            batches, cal_notes = calibration_batches(info, options, quant)
            notes += cal_notes
            key = dict(info.metadata).get("signature_key")
            if key is None:
                raise QuantizationError(
                    f"{src.name} has no signature; ai-edge-quantizer calibrates through one",
                    hint="convert the model with a signature (TFLiteConverter writes "
                    "serving_default), or use --quant dynamic-int8",
                )
            say(f"calibrating on {batches.n_rows} samples with ai-edge-litert")
            calibration_result = qt.calibrate(
                {key: list(batches.feeds)}, num_threads=options.threads or os.cpu_count() or 1
            )
            calibration_id = (
                "random" if options.calibration is None else fingerprint_calibration(batches)
            )
            say(f"quantizing to {quant} with ai-edge-quantizer")
        result = qt.quantize(calibration_result, enable_progress_report=False)
    data, version_notes = fix_operator_versions(bytes(result.quantized_model))
    notes += version_notes
    dst.write_bytes(data)
    return QuantizeOutcome(dst, tuple(notes), recipe_detail(quant, options, calibration_id))
