"""The TFLite interpreter on this machine (ai-edge-litert, else tflite-runtime): opening a
model, why it does not load (in words), running feeds through it with integer inputs
and outputs (de)quantized, and the check that a shrunk model runs."""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Mapping
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
from edgeshrink.formats.tensors import io_specs, random_batches
from edgeshrink.util import first_line


def _import_interpreter() -> tuple[Any, str]:
    """The host's TFLite Interpreter class and the runtime's name: ai-edge-litert first."""
    with contextlib.suppress(ImportError):
        from ai_edge_litert.interpreter import Interpreter

        return Interpreter, "ai-edge-litert"
    with contextlib.suppress(ImportError):
        from tflite_runtime.interpreter import Interpreter

        return Interpreter, "tflite-runtime"
    raise RuntimeMissingError(
        "running .tflite models on this machine needs ai-edge-litert (or tflite-runtime)",
        hint="pip install 'edgeshrink[tflite]'",
    )


_OP_VERSION_RE = re.compile(r"Didn't find op for builtin opcode '(\w+)' version '(\d+)'")


def tflite_load_error(path: Path, exc: Exception, runtime: str) -> EdgeshrinkError:
    """One clear edgeshrink error for why ``runtime`` could not load ``path``."""
    message = str(exc)
    first = message.strip().splitlines()[0] if message.strip() else type(exc).__name__
    match = _OP_VERSION_RE.search(message)
    if match:
        op, version = match[1], int(match[2])
        return UnsupportedFormatError(
            f"{path}: {runtime} has no kernel for {op} version {version}",
            hint="run it with a newer runtime (ai-edge-litert), or shrink the float original "
            "for this runtime",
        )
    if "Encountered unresolved custom op" in message or "custom op" in message.lower():
        return UnsupportedFormatError(
            f"{path}: {runtime} cannot run a custom operator in it: {first}",
            hint="register the custom op, or convert the model with builtin operators only",
        )
    if "not a valid flatbuffer" in message.lower() or "identifier" in message.lower():
        return ModelFileError(
            f"{path}: {runtime} cannot parse it (truncated or corrupt): {first}",
            hint="copy or convert the model again",
        )
    return ModelFileError(f"{path}: {runtime} cannot load it: {first}")


def open_interpreter(
    path: str | os.PathLike[str], *, threads: int | None = None
) -> tuple[Any, str]:
    """An allocated interpreter on ``path`` on this machine, and the runtime's name."""
    interpreter_class, runtime = _import_interpreter()
    try:
        interpreter = interpreter_class(model_path=str(path), num_threads=threads or os.cpu_count())
        interpreter.allocate_tensors()
    except Exception as exc:  # noqa: BLE001 - the runtimes raise ValueError/RuntimeError
        raise tflite_load_error(Path(path), exc, runtime) from exc
    return interpreter, runtime


def quantize_values(np: Any, array: Any, quantization: Mapping[str, Any], dtype: str) -> Any:
    """float -> the tensor's integer type with its (per-tensor) scale and zero point."""
    scale = float(quantization["scale"][0])
    zero_point = int(quantization["zero_point"][0]) if quantization["zero_point"] else 0
    info = np.iinfo(np.dtype(dtype))
    scaled = np.round(np.asarray(array, np.float64) / scale) + zero_point
    return np.clip(scaled, info.min, info.max).astype(dtype)


def dequantize_values(np: Any, array: Any, quantization: Mapping[str, Any] | None) -> Any:
    if quantization is None:
        return np.asarray(array)
    scale = float(quantization["scale"][0])
    zero_point = int(quantization["zero_point"][0]) if quantization["zero_point"] else 0
    return ((np.asarray(array, np.float64) - zero_point) * scale).astype(np.float32)


class TfliteRunner:
    """Runs a model on this machine on feeds keyed by its input names (signature names),
    quantizing integer inputs and dequantizing integer outputs.

    A feed with more rows than the model's batch runs as consecutive batches of the
    declared shape: the interpreter is never resized, because resizing a model made
    by ai-edge-quantizer corrupted the heap in ai-edge-litert 2.3 ("free(): invalid
    next size" on a static int8 MLP, measured).
    """

    def __init__(
        self, path: str | os.PathLike[str], info: ModelInfo, *, threads: int | None = None
    ) -> None:
        self.path = Path(path)
        meta = dict(info.metadata)
        self.inputs = list(meta.get("inputs", ()))
        self.outputs = list(meta.get("outputs", ()))
        self.interpreter, self.runtime = open_interpreter(self.path, threads=threads)
        details = self.interpreter.get_tensor_details()
        self.shapes = {
            spec["name"]: tuple(int(d) for d in details[spec["index"]]["shape"])
            for spec in self.inputs
        }

    def run(self, feed: Mapping[str, Any]) -> dict[str, Any]:
        import numpy as np

        arrays = {spec["name"]: np.asarray(feed[spec["name"]]) for spec in self.inputs}
        rows = None
        for name, array in arrays.items():
            shape = self.shapes[name]
            if tuple(array.shape) == shape:
                continue
            batch = shape[0] if shape else 0
            if (
                not shape
                or tuple(array.shape[1:]) != shape[1:]
                or batch < 1
                or array.shape[0] % batch
                or rows not in (None, array.shape[0])
            ):
                raise QuantizationError(
                    f"{self.path.name}: input '{name}' has shape {list(array.shape)}, the "
                    f"interpreter expects {list(shape)}",
                    hint="give inputs of the model's declared shape, samples on the first axis",
                )
            rows = array.shape[0]
        if rows is None:
            return self._invoke(arrays)
        parts: list[dict[str, Any]] = []
        for start in range(0, rows, max(self.shapes[s["name"]][0] for s in self.inputs)):
            parts.append(
                self._invoke(
                    {
                        name: array[start : start + self.shapes[name][0]]
                        for name, array in arrays.items()
                    }
                )
            )
        return {name: np.concatenate([p[name] for p in parts], axis=0) for name in parts[0]}

    def _invoke(self, arrays: Mapping[str, Any]) -> dict[str, Any]:
        import numpy as np

        interpreter = self.interpreter
        for spec in self.inputs:
            array = arrays[spec["name"]]
            if spec["quantization"] is not None and array.dtype.kind == "f":
                array = quantize_values(np, array, spec["quantization"], spec["storage_dtype"])
            else:
                array = array.astype(spec["storage_dtype"], copy=False)
            interpreter.set_tensor(spec["index"], np.ascontiguousarray(array))
        try:
            interpreter.invoke()
        except Exception as exc:  # noqa: BLE001
            first = first_line(exc)
            raise QuantizationError(
                f"{self.path.name}: {self.runtime} fails to run it: {first}",
                hint="check the inputs' shapes and types (edgeshrink inspect)",
            ) from exc
        return {
            spec["name"]: dequantize_values(
                np, interpreter.get_tensor(spec["index"]), spec["quantization"]
            )
            for spec in self.outputs
        }


def verify_runs(path: Path, info: ModelInfo, *, threads: int | None = None) -> str:
    """Load ``path`` in the host's runtime, run it once on random inputs of the declared
    shapes, and check that every float output is finite; returns the runtime's name."""
    import numpy as np

    inputs, _ = io_specs(info)
    runner = TfliteRunner(path, info, threads=threads)
    feed = random_batches(inputs, samples=1, seed=0).feeds[0]
    for name, array in runner.run(feed).items():
        array = np.asarray(array)
        if array.dtype.kind == "f" and not np.all(np.isfinite(array)):
            raise QuantizationError(
                f"{path.name}: output '{name}' is not finite after shrinking",
                hint="try fp16, or int8 with --calibration on real data",
            )
    return runner.runtime
