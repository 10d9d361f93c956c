"""onnxruntime on this machine: importing it, a CPU session, why a model does not load
(in words), and the check that a shrunk model runs."""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from edgeshrink.errors import (
    EdgeshrinkError,
    ModelFileError,
    QuantizationError,
    RuntimeMissingError,
    UnsupportedFormatError,
)
from edgeshrink.formats.base import ModelInfo
from edgeshrink.formats.tensors import int_bounds_of, io_specs, random_batches


def import_ort() -> Any:
    try:
        import onnxruntime
    except ImportError as exc:
        raise RuntimeMissingError(
            f"onnxruntime is not installed: {exc}", hint="pip install 'edgeshrink[onnx]'"
        ) from exc
    # Its C++ logger writes coloured warning lines straight to stderr (graph
    # optimiser and quantizer chatter): errors only, ours say what matters.
    onnxruntime.set_default_logger_severity(3)
    return onnxruntime


@contextlib.contextmanager
def working_directory(path: Path) -> Iterator[None]:
    """Run inside ``path``: onnxruntime's tools drop temporary files (e.g. symbolic shape
    inference's sym_shape_infer_temp.onnx and its .data) into the current directory."""
    before = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


def ort_load_error(
    path: Path, exc: Exception, opsets: Mapping[str, int] | None = None
) -> EdgeshrinkError:
    """One clear edgeshrink error for why onnxruntime could not load ``path``."""

    ort = import_ort()
    message = str(exc)
    version = ort.__version__
    opset = (opsets or {}).get("ai.onnx")
    if "INVALID_PROTOBUF" in message or "Protobuf parsing failed" in message:
        return ModelFileError(
            f"{path}: onnxruntime cannot parse it (truncated or corrupt)",
            hint="copy or export the model again",
        )
    match = re.search(
        r"Unsupported model IR version: (\d+), max supported IR version: (\d+)", message
    )
    if match:
        return UnsupportedFormatError(
            f"{path}: ONNX IR version {match[1]}; onnxruntime {version} reads up to {match[2]}",
            hint="upgrade onnxruntime, or re-export the model with an older onnx",
        )
    match = re.search(r"support for domain (\S+) is till opset (\d+)", message)
    if match:
        return UnsupportedFormatError(
            f"{path}: uses opset {opset if opset is not None else '?'} of {match[1]}; "
            f"onnxruntime {version} runs up to opset {match[2]}",
            hint=f"convert it with onnx.version_converter.convert_version(model, {match[2]}), "
            "or upgrade onnxruntime",
        )
    if "NOT_IMPLEMENTED" in message and opset is not None and opset < 7:
        return UnsupportedFormatError(
            f"{path}: uses opset {opset} of ai.onnx, older than onnxruntime {version} runs (7+)",
            hint="convert it with onnx.version_converter.convert_version(model, 13)",
        )
    if "NOT_IMPLEMENTED" in message:
        first = message.split(":", 3)[-1].strip().splitlines()[0]
        return UnsupportedFormatError(
            f"{path}: onnxruntime {version} has no CPU kernel for part of it: {first}",
            hint="re-export with standard operators, or a newer opset",
        )
    if "external" in message.lower() or "No such file" in message:
        return ModelFileError(
            f"{path}: onnxruntime cannot read its external data: {message.splitlines()[0]}",
            hint="copy the .onnx together with its data file(s), keeping their names",
        )
    first = message.strip().splitlines()[0] if message.strip() else type(exc).__name__
    return ModelFileError(f"{path}: onnxruntime cannot load it: {first}")


def open_session(
    path: str | os.PathLike[str],
    *,
    threads: int | None = None,
    opsets: Mapping[str, int] | None = None,
) -> Any:
    """An onnxruntime CPU session on ``path``, or one clear edgeshrink error."""
    ort = import_ort()
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: warnings go to stderr unasked otherwise
    if threads:
        options.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own classes
        raise ort_load_error(Path(path), exc, opsets) from exc


def verify_runs(
    path: Path,
    info: ModelInfo,
    *,
    threads: int | None = None,
    feed: Mapping[str, Any] | None = None,
) -> None:
    """Load ``path`` in onnxruntime and run it once: on ``feed`` (the user's calibration
    data) when given, else on valid random inputs of the declared shapes."""
    import numpy as np

    inputs, _ = io_specs(info)
    session = open_session(path, threads=threads)
    if feed is None:
        feed = random_batches(inputs, samples=1, seed=0, int_bounds=int_bounds_of(info)).feeds[0]
    try:
        outputs = session.run(None, feed)
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own classes
        raise QuantizationError(
            f"{path.name}: the shrunk model loads but fails to run: {exc}",
            hint="try another --quant, or report the model to edgeshrink",
        ) from exc
    for meta, value in zip(session.get_outputs(), outputs, strict=False):
        array = np.asarray(value)
        if array.dtype.kind == "f" and not np.all(np.isfinite(array)):
            raise QuantizationError(
                f"{path.name}: output '{meta.name}' is not finite after shrinking",
                hint="try fp16 or int8 with --calibration on real data",
            )
