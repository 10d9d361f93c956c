"""Quantizing with onnxruntime's own tooling: quant_pre_process, dynamic and static int8
(calibrated; per-channel measured against per-tensor weights), fp16 with
onnxconverter-common and the graph fixes it needs, and saving with external data."""

from __future__ import annotations

import dataclasses
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeshrink.formats.base import ModelInfo
from edgeshrink.formats.onnx.constants import Progress
from edgeshrink.formats.onnx.inspect import import_onnx
from edgeshrink.formats.onnx.plan import Int8Recipe, int8_recipe
from edgeshrink.formats.onnx.runtime import import_ort, open_session, working_directory
from edgeshrink.formats.tensors import InputBatches, calibration_feeds, fingerprint_calibration
from edgeshrink.profiles import HardwareProfile
from edgeshrink.util import first_line

if TYPE_CHECKING:
    from edgeshrink.plan import ShrinkOptions


@dataclass(frozen=True)
class QuantizeOutcome:
    path: Path
    data_files: tuple[Path, ...]
    notes: tuple[str, ...]
    recipe: str


def calibration_batches(
    info: ModelInfo, options: ShrinkOptions, *, seed: int = 0
) -> tuple[InputBatches, list[str]]:
    """The calibration feeds for static int8, and the notes they deserve."""
    return calibration_feeds(info, options, what="static int8", instead="int8-dynamic", seed=seed)


def _preprocess(src: Path, dst: Path, external: bool) -> tuple[Path, str]:
    """quant_pre_process with the symbolic-shape fallback; the source itself if it fails."""
    from onnxruntime.quantization import quant_pre_process

    kw: dict[str, Any] = {}
    if external:
        kw = {
            "save_as_external_data": True,
            "all_tensors_to_one_file": True,
            "external_data_location": dst.name + ".data",
        }
    src, dst = src.resolve(), dst.resolve()  # before any chdir below
    logger = logging.getLogger("onnxruntime")
    level = logger.level
    logger.setLevel(logging.CRITICAL)  # its failures are reported by our note, not logged
    try:
        try:
            with working_directory(dst.parent):
                quant_pre_process(str(src), str(dst), **kw)
            return dst, "pre-processed with quant_pre_process (shape inference, optimisation)"
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises bare Exception here
            if "Incomplete symbolic shape inference" not in str(exc):
                raise
        with working_directory(dst.parent):
            quant_pre_process(str(src), str(dst), skip_symbolic_shape=True, **kw)
        return dst, (
            "pre-processed with quant_pre_process(skip_symbolic_shape=True): symbolic shape "
            "inference was incomplete"
        )
    except Exception as exc:  # noqa: BLE001
        first = first_line(exc)
        return src, f"pre-processing skipped: quant_pre_process failed ({first})"
    finally:
        logger.setLevel(level)


def _quant_types(recipe: Int8Recipe) -> tuple[Any, Any]:
    from onnxruntime.quantization import QuantType

    names = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
    return names[recipe.activation_type], names[recipe.weight_type]


class _FeedReader:
    """A CalibrationDataReader over prepared feeds (get_next until None)."""

    def __init__(self, batches: InputBatches) -> None:
        self._feeds = iter(batches.feeds)

    def get_next(self) -> dict[str, Any] | None:
        return next(self._feeds, None)


CHOICE_FEEDS = 32  # calibration feeds that decide per-channel against per-tensor


def calibration_agreement(base: Path, candidate: Path, batches: InputBatches) -> float:
    """Mean cosine similarity of ``candidate``'s float outputs to ``base``'s, per row,
    over the first CHOICE_FEEDS calibration feeds (1.0 = the same outputs)."""
    import numpy as np

    reference, trial = open_session(base), open_session(candidate)
    names = [o.name for o in reference.get_outputs()]
    cosines: list[float] = []
    for feed in batches.feeds[:CHOICE_FEEDS]:
        for want, got in zip(reference.run(names, feed), trial.run(names, feed), strict=True):
            want, got = np.asarray(want), np.asarray(got)
            if want.dtype.kind != "f" or want.shape != got.shape or want.ndim == 0:
                continue
            a = want.reshape(want.shape[0], -1).astype(np.float64)
            b = got.reshape(got.shape[0], -1).astype(np.float64)
            norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
            cos = np.where(norms > 0, np.sum(a * b, axis=1) / np.maximum(norms, 1e-300), 1.0)
            cosines.extend(np.nan_to_num(cos, nan=-1.0).tolist())
    return float(np.mean(cosines)) if cosines else 1.0


def quantize_onnx(
    src: Path,
    work: Path,
    quant: str,
    info: ModelInfo,
    profile: HardwareProfile,
    options: ShrinkOptions,
    *,
    out_name: str,
    external: bool,
    progress: Progress | None = None,
) -> QuantizeOutcome:
    """Write ``work/out_name`` (and its data file when ``external``) at ``quant``."""
    say = progress or (lambda _m: None)
    onnx = import_onnx()
    import_ort()
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        quantize_dynamic,
        quantize_static,
    )

    dst = work / out_name
    notes: list[str] = []
    if quant == "fp32":
        model = onnx.load(str(src), load_external_data=True)
        _save(model, dst, external)
        return QuantizeOutcome(dst, _data_files(dst, external), ("copied as fp32",), "fp32")
    if quant == "fp16":
        from onnxconverter_common import float16

        say("converting to fp16 with onnxconverter-common (inputs and outputs stay fp32)")
        model = onnx.load(str(src), load_external_data=True)
        _isolate_graph_outputs(model)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # one line per clipped tiny weight
            converted = float16.convert_float_to_float16(
                model, keep_io_types=True, disable_shape_infer=external
            )
        _fix_float_casts(converted)
        _save(converted, dst, external)
        recipe = "fp16 keep_io_types=True"
        return QuantizeOutcome(dst, _data_files(dst, external), (), recipe)

    recipe = int8_recipe(profile, options, quant)
    batches = None
    if quant != "int8-dynamic":
        batches, cal_notes = calibration_batches(info, options)
        notes += cal_notes
    say("pre-processing with quant_pre_process")
    pre, pre_note = _preprocess(src, work / "preprocessed.onnx", external)
    notes.append(pre_note)
    activation_type, weight_type = _quant_types(recipe)
    if quant == "int8-dynamic":
        say("quantizing to dynamic int8 with onnxruntime")
        quantize_dynamic(
            str(pre),
            str(dst),
            per_channel=recipe.per_channel,
            reduce_range=recipe.reduce_range,
            weight_type=weight_type,
            use_external_data_format=external,
        )
        spec = f"int8-dynamic weight={recipe.weight_type}"
    else:
        assert batches is not None
        method = {
            "minmax": CalibrationMethod.MinMax,
            "entropy": CalibrationMethod.Entropy,
            "percentile": CalibrationMethod.Percentile,
        }[options.calibration_method]
        fmt = QuantFormat.QOperator if quant == "int8-static-qoperator" else QuantFormat.QDQ
        say(
            f"calibrating ({options.calibration_method}, {batches.n_rows} samples) and quantizing "
            f"to static int8 ({'QOperator' if fmt == QuantFormat.QOperator else 'QDQ'})"
        )

        def quantize_static_to(target: Path, per_channel: bool) -> None:
            quantize_static(
                str(pre),
                str(target),
                _FeedReader(batches),
                quant_format=fmt,
                per_channel=per_channel,
                reduce_range=recipe.reduce_range,
                activation_type=activation_type,
                weight_type=weight_type,
                use_external_data_format=external,
                calibrate_method=method,
                extra_options={"ActivationSymmetric": recipe.symmetric_activations},
            )

        quantize_static_to(dst, recipe.per_channel)
        if options.per_channel is None and not external:
            # Per-channel weights are usually the better choice, but not always (with
            # symmetric activations a small MLP lost 2 points of accuracy per-channel
            # and none per-tensor): measure both on the calibration data, keep the better.
            say("measuring per-channel against per-tensor weights on the calibration data")
            per_tensor = work / f"per-tensor-{out_name}"
            quantize_static_to(per_tensor, False)
            scores = {
                True: calibration_agreement(pre, dst, batches),
                False: calibration_agreement(pre, per_tensor, batches),
            }
            chosen = scores[False] > scores[True]
            if chosen:
                os.replace(per_tensor, dst)
            else:
                per_tensor.unlink()
            recipe = dataclasses.replace(recipe, per_channel=not chosen)
            notes.append(
                f"weights {'per-tensor' if chosen else 'per-channel'}: output cosine on the "
                f"calibration data {scores[True]:.5f} per-channel vs {scores[False]:.5f} per-tensor"
            )
        calibration = "random" if options.calibration is None else fingerprint_calibration(batches)
        spec = (
            f"{quant} act={recipe.activation_type}"
            f"{'-sym' if recipe.symmetric_activations else ''} weight={recipe.weight_type} "
            f"method={options.calibration_method} calibration={calibration}"
        )
    spec += f" per_channel={recipe.per_channel} reduce_range={recipe.reduce_range}"
    notes.append(f"int8: {recipe.describe()} ({recipe.why})")
    if external:
        # The quantizers name the data file after their own output: rewrite it
        # under the final name so the model finds it after the rename.
        model = onnx.load(str(dst), load_external_data=True)
        for stale in work.glob(out_name + "*.data"):
            stale.unlink()
        _save(model, dst, True)
    return QuantizeOutcome(dst, _data_files(dst, external), tuple(notes), spec)


def _isolate_graph_outputs(model: Any) -> None:
    """Give every graph output that other nodes also read its own Identity node.

    onnxconverter-common (1.16) with keep_io_types casts such an output back to
    fp32 and then feeds the fp32 tensor to the fp16 consumers, which onnxruntime
    rejects ("Type (tensor(float16)) of output arg ... does not match").
    """
    from onnx import helper

    outputs = {o.name for o in model.graph.output}
    consumed = {name for node in model.graph.node for name in node.input}
    for name in sorted(outputs & consumed):
        inner = f"{name}__edgeshrink_inner"
        for node in model.graph.node:
            for i, value in enumerate(node.output):
                if value == name:
                    node.output[i] = inner
            for i, value in enumerate(node.input):
                if value == name:
                    node.input[i] = inner
        model.graph.node.append(
            helper.make_node("Identity", [inner], [name], name=f"{name}__edgeshrink_output")
        )


def _fix_float_casts(model: Any) -> None:
    """Cast(to=float) nodes inside the graph whose output the converter declared fp16
    (onnxconverter-common issue #320): make them cast to fp16."""
    from onnx import TensorProto

    declared = {v.name: v.type.tensor_type.elem_type for v in model.graph.value_info}
    for node in model.graph.node:
        if node.op_type != "Cast" or declared.get(node.output[0]) != TensorProto.FLOAT16:
            continue
        for attr in node.attribute:
            if attr.name == "to" and attr.i == TensorProto.FLOAT:
                attr.i = TensorProto.FLOAT16


def _save(model: Any, dst: Path, external: bool) -> None:
    import onnx

    if external:
        onnx.save_model(
            model,
            str(dst),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=dst.name + ".data",
            size_threshold=1024,
        )
    else:
        onnx.save_model(model, str(dst))


def _data_files(dst: Path, external: bool) -> tuple[Path, ...]:
    if not external:
        return ()
    data = dst.with_name(dst.name + ".data")
    return (data,) if data.exists() else ()
