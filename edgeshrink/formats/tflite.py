"""TFLite / LiteRT backend: inspect, plan and shrink with Google's own tooling.

- inspect: the flatbuffer itself, read lazily with the schema ai-edge-litert ships
  (``schema_py_generated``; TensorFlow's copy also works): signatures, inputs and
  outputs with their quantization, operators with their versions, constant tensors
  by type, whether the model is quantized (full integer, dynamic range, weight-only,
  fp16) and per channel, and where the multiply-adds are.  No TensorFlow, no
  interpreter, no copy of the weights.
- plan: float32, fp16, weight-only-int8, dynamic-int8, int8 (full integer, float
  I/O) and int8-int8-io (full integer including the model's inputs and outputs)
  with their estimated size and memory; the profile's default decides (see
  ``plan_tflite``).
- shrink: ai-edge-quantizer (no TensorFlow): ``add_weight_only_config`` (int8 or,
  with float casting, fp16), ``add_dynamic_config``, ``add_static_config`` with
  calibration.  ai-edge-quantizer leaves operator versions at 1; the versions of
  the dynamic-range kernels are raised to what TFLite's own op_version.cc
  assigns, because tflite-runtime 2.14 silently returns zeros for a per-channel
  dynamic-range FULLY_CONNECTED declared as v1 (measured), while it refuses one
  declared as v12 with a clear error.  Every output must load and run in
  ai-edge-litert before it is renamed into place.

numpy, flatbuffers, ai_edge_litert and ai_edge_quantizer are imported inside the
functions that need them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import mmap
import os
import re
import shutil
import struct
import sys
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeshrink.errors import (
    CalibrationError,  # noqa: F401 (re-exported)
    EdgeshrinkError,
    ModelFileError,
    QuantizationError,
    RuntimeMissingError,
    SweepError,
    UnsupportedFormatError,
)
from edgeshrink.formats.base import Backend, MemoryEstimate, ModelInfo, TensorTypeCount
from edgeshrink.profiles import HardwareProfile
from edgeshrink.util import first_line

if TYPE_CHECKING:
    from edgeshrink.formats.onnx import InputBatches, TensorSpec
    from edgeshrink.plan import Candidate, ShrinkOptions, ShrinkPlan
    from edgeshrink.shrink import ShrinkResult

FORMAT = "tflite"
MAGIC = b"TFL3"  # the flatbuffer file identifier, at offset 4
MIB = 1024 * 1024
Progress = Callable[[str], None]

# Quantization types, largest first.  "int8" keeps float inputs and outputs (a
# QUANTIZE at the entry, a DEQUANTIZE at the exit), "int8-int8-io" does not.
QUANT_TYPES = ("float32", "fp16", "weight-only-int8", "dynamic-int8", "int8", "int8-int8-io")
STATIC_QUANTS = ("int8", "int8-int8-io")
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

# Operators whose input 1 is the weight ai-edge-quantizer quantizes (its
# float_casting / min-max lists), and how their multiply-adds are counted.
WEIGHT_OPS = frozenset(
    {"FULLY_CONNECTED", "CONV_2D", "DEPTHWISE_CONV_2D", "TRANSPOSE_CONV", "EMBEDDING_LOOKUP",
     "BATCH_MATMUL", "CONV_3D"}
)  # fmt: skip
CONV_OPS = frozenset({"CONV_2D", "DEPTHWISE_CONV_2D", "TRANSPOSE_CONV", "CONV_3D"})
MATMUL_OPS = frozenset({"FULLY_CONNECTED", "BATCH_MATMUL"})
QUANTIZED_ACTIVATION_TYPES = frozenset({"INT8", "UINT8", "INT16"})
QUANTIZED_WEIGHT_TYPES = frozenset({"INT8", "UINT8", "INT4", "INT2"})

# Operator versions that tflite-runtime 2.14 (the last tflite-runtime release,
# 2023) does not register, and what they are.  ai-edge-litert runs all of them.
NEWER_THAN_TFLITE_RUNTIME = {
    ("FULLY_CONNECTED", 12): "dynamic-range int8 with per-channel weights",
}

# Peak RSS of the agent (Python, numpy, the runtime) running a tiny model,
# measured here on x86_64: 60-64 MB with ai-edge-litert 2.3 (about half of it
# file-backed: the shared libraries), 48-50 MB with tflite-runtime 2.14.
RUNTIME_OVERHEAD_BYTES = 62 * MIB
RANDOM_CALIBRATION_SAMPLES = 32
FLATBUFFER_LIMIT = 2**31 - 1  # a flatbuffer addresses 2 GiB


# --------------------------------------------------------------------------- schema


def tflite_schema() -> Any:
    """The generated flatbuffer schema module: ai-edge-litert's copy, else TensorFlow's."""
    for name in (
        "ai_edge_litert.schema_py_generated",
        "tensorflow.lite.python.schema_py_generated",
    ):
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    raise RuntimeMissingError(
        "reading .tflite files needs the flatbuffer schema that ai-edge-litert ships "
        "(ai_edge_litert.schema_py_generated), and it is not installed",
        hint="pip install 'edgeshrink[tflite]' (ai-edge-litert and ai-edge-quantizer)",
    )


def _enum_names(enum_class: Any) -> dict[int, str]:
    return {
        v: k for k, v in vars(enum_class).items() if not k.startswith("_") and isinstance(v, int)
    }


# numpy dtype and bytes per element of each TFLite tensor type (None: not a plain array).
_TYPE_DTYPES = {
    "FLOAT32": ("float32", 4.0),
    "FLOAT16": ("float16", 2.0),
    "FLOAT64": ("float64", 8.0),
    "BFLOAT16": ("bfloat16", 2.0),
    "INT32": ("int32", 4.0),
    "UINT32": ("uint32", 4.0),
    "INT64": ("int64", 8.0),
    "UINT64": ("uint64", 8.0),
    "INT16": ("int16", 2.0),
    "UINT16": ("uint16", 2.0),
    "INT8": ("int8", 1.0),
    "UINT8": ("uint8", 1.0),
    "BOOL": ("bool", 1.0),
    "INT4": ("int4", 0.5),
    "INT2": ("int2", 0.25),
    "COMPLEX64": ("complex64", 8.0),
    "COMPLEX128": ("complex128", 16.0),
}


# --------------------------------------------------------------------------- io specs


def _spec_dict(
    name: str, tensor: dict[str, Any], index: int, subgraph_index: int = 0
) -> dict[str, Any]:
    """An input/output as metadata: the TensorSpec fields (name, type, dtype, shape) plus
    the TFLite ones.  ``dtype`` is what callers feed: float32 for a quantized int8
    input (edgeshrink quantizes with the tensor's scale and zero point)."""
    storage = _TYPE_DTYPES.get(tensor["type"], (tensor["type"].lower(), 0))[0]
    quant = tensor["quantization"]
    quantized = tensor["type"] in QUANTIZED_ACTIVATION_TYPES and quant is not None
    signature = tensor["shape_signature"] or tensor["shape"]
    shape: list[int | str | None] = []
    for axis, dim in enumerate(signature):
        if dim >= 0:
            shape.append(int(dim))
        else:
            shape.append("batch" if axis == 0 else None)
    return {
        "name": name,
        "type": tensor["type"],
        "dtype": "float32" if quantized else storage,
        "shape": shape,
        "tensor": tensor["name"],
        "index": index,
        "subgraph": subgraph_index,
        "storage_dtype": storage,
        "quantization": quant if quantized else None,
    }


def io_specs(info: ModelInfo) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """Inputs and outputs as the ONNX backend's TensorSpec (named by signature), so its
    calibration and evaluation data readers apply unchanged."""
    from edgeshrink.formats.onnx import TensorSpec

    meta = dict(info.metadata)
    return (
        tuple(TensorSpec.from_dict(d) for d in meta.get("inputs", ())),
        tuple(TensorSpec.from_dict(d) for d in meta.get("outputs", ())),
    )


# --------------------------------------------------------------------------- reading


@contextlib.contextmanager
def _mapped(path: Path) -> Iterator[Any]:
    with open(path, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        if size == 0:
            yield b""
            return
        view = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
        try:
            yield view
        finally:
            view.close()


def _check_header(path: Path) -> int:
    if not path.exists():
        raise ModelFileError(f"{path}: no such file", hint="check the path")
    if path.is_dir():
        raise UnsupportedFormatError(
            f"{path}: is a directory, not a .tflite file",
            hint="pass the .tflite file itself (a SavedModel directory converts with --to tflite)",
        )
    size = path.stat().st_size
    if size == 0:
        raise ModelFileError(f"{path}: is empty (0 bytes)", hint="copy the model again")
    with open(path, "rb") as handle:
        head = handle.read(8)
    if head[4:8] != MAGIC:
        raise UnsupportedFormatError(
            f"{path}: not a TFLite flatbuffer (bytes 4-8 are {head[4:8]!r}, not {MAGIC!r})",
            hint="pass a .tflite model written by TFLiteConverter, ai-edge-torch or ai-edge-quantizer",
        )
    (root,) = struct.unpack_from("<I", head, 0)
    if root + 4 > size:
        raise ModelFileError(
            f"{path}: truncated TFLite file ({size:,} bytes; its root table is at {root:,})",
            hint="the file was cut short; copy or convert it again",
        )
    return size


def _buffer_extent(buffer: Any) -> tuple[int, int, bool]:
    """(start, length, stored outside the flatbuffer) of a Buffer's bytes."""
    offset = int(buffer.Offset())
    if offset > 1:
        return offset, int(buffer.Size()), True
    o = buffer._tab.Offset(4)  # field 0: data
    if not o:
        return 0, 0, False
    return buffer._tab.Vector(o), buffer._tab.VectorLen(o), False


def _quantization(tensor: Any) -> dict[str, Any] | None:
    q = tensor.Quantization()
    if q is None or q.ScaleLength() == 0:
        return None
    scales = [float(q.Scale(i)) for i in range(q.ScaleLength())]
    zero_points = [int(q.ZeroPoint(i)) for i in range(q.ZeroPointLength())]
    doc = {
        "scale": scales if len(scales) <= 8 else [*scales[:8], "..."],
        "zero_point": zero_points if len(zero_points) <= 8 else [*zero_points[:8], "..."],
        "channels": len(scales),
        "per_channel": len(scales) > 1,
        "axis": int(q.QuantizedDimension()),
    }
    return doc


def _read_model(path: Path, data: Any, size: int) -> dict[str, Any]:
    """Everything inspect needs from the flatbuffer, as plain Python values."""
    s = tflite_schema()
    op_names = _enum_names(s.BuiltinOperator)
    type_names = _enum_names(s.TensorType)
    model = s.Model.GetRootAs(data, 0)
    buffers = []
    for b in range(model.BuffersLength()):
        start, length, outside = _buffer_extent(model.Buffers(b))
        if start + length > size:
            raise ModelFileError(
                f"{path}: truncated TFLite file: buffer {b} ends at byte {start + length:,}, "
                f"the file has {size:,}",
                hint="the file was cut short; copy or convert it again",
            )
        buffers.append((length, outside))
    opcodes = []
    for i in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(i)
        builtin = max(int(code.BuiltinCode()), int(code.DeprecatedBuiltinCode()))
        name = op_names.get(builtin, f"BUILTIN_{builtin}")
        if name == "CUSTOM":
            custom = code.CustomCode()
            name = f"CUSTOM:{custom.decode() if custom else '?'}"
        opcodes.append((name, int(code.Version())))
    subgraphs = []
    for g in range(model.SubgraphsLength()):
        graph = model.Subgraphs(g)
        tensors = []
        for t in range(graph.TensorsLength()):
            tensor = graph.Tensors(t)
            raw_name = tensor.Name()
            buffer_index = int(tensor.Buffer())
            length, outside = buffers[buffer_index] if buffer_index < len(buffers) else (0, False)
            tensors.append(
                {
                    "name": raw_name.decode("utf-8", "replace") if raw_name else f"tensor_{t}",
                    "type": type_names.get(int(tensor.Type()), str(tensor.Type())),
                    "shape": [int(d) for d in tensor.ShapeAsNumpy()]
                    if tensor.ShapeLength()
                    else [],
                    "shape_signature": (
                        [int(d) for d in tensor.ShapeSignatureAsNumpy()]
                        if tensor.ShapeSignatureLength()
                        else None
                    ),
                    "constant": length > 0,
                    "bytes": length,
                    "outside": outside,
                    "quantization": _quantization(tensor),
                    "variable": bool(tensor.IsVariable()),
                }
            )
        operators = []
        for o in range(graph.OperatorsLength()):
            op = graph.Operators(o)
            name, version = opcodes[op.OpcodeIndex()]
            inputs = [int(i) for i in op.InputsAsNumpy()] if op.InputsLength() else []
            outputs = [int(i) for i in op.OutputsAsNumpy()] if op.OutputsLength() else []
            operators.append({"op": name, "version": version, "inputs": inputs, "outputs": outputs})
        raw = graph.Name()
        subgraphs.append(
            {
                "name": raw.decode("utf-8", "replace") if raw else f"subgraph_{g}",
                "tensors": tensors,
                "operators": operators,
                "inputs": [int(i) for i in graph.InputsAsNumpy()] if graph.InputsLength() else [],
                "outputs": [int(i) for i in graph.OutputsAsNumpy()]
                if graph.OutputsLength()
                else [],
            }
        )
    signatures = []
    for i in range(model.SignatureDefsLength()):
        sig = model.SignatureDefs(i)
        key = sig.SignatureKey()
        signatures.append(
            {
                "key": key.decode() if key else f"signature_{i}",
                "subgraph": int(sig.SubgraphIndex()),
                "inputs": [
                    (sig.Inputs(j).Name().decode(), int(sig.Inputs(j).TensorIndex()))
                    for j in range(sig.InputsLength())
                ],
                "outputs": [
                    (sig.Outputs(j).Name().decode(), int(sig.Outputs(j).TensorIndex()))
                    for j in range(sig.OutputsLength())
                ],
            }
        )
    description = model.Description()
    metadata_names = []
    for i in range(model.MetadataLength()):
        name = model.Metadata(i).Name()
        metadata_names.append(name.decode("utf-8", "replace") if name else "")
    return {
        "schema_version": int(model.Version()),
        "description": description.decode("utf-8", "replace") if description else None,
        "opcodes": opcodes,
        "subgraphs": subgraphs,
        "signatures": signatures,
        "metadata": metadata_names,
        "outside_bytes": sum(length for length, outside in buffers if outside),
    }


def read_tflite(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The parsed flatbuffer of ``path`` (see ``_read_model``), or one clear error."""
    path = Path(path)
    size = _check_header(path)
    with _mapped(path) as data:
        try:
            return _read_model(path, data, size)
        except EdgeshrinkError:
            raise
        except (
            IndexError, struct.error, ValueError, TypeError, UnicodeDecodeError, AttributeError,
        ) as exc:  # a missing table reads as None  # fmt: skip
            beyond = re.search(r"at least (\d+) bytes", str(exc))
            if beyond and int(beyond[1]) > size:
                raise ModelFileError(
                    f"{path}: truncated TFLite file ({size:,} bytes; the flatbuffer points to "
                    f"byte {int(beyond[1]):,})",
                    hint="the file was cut short; copy or convert it again",
                ) from exc
            raise ModelFileError(
                f"{path}: truncated or corrupt TFLite file ({size:,} bytes): "
                f"{type(exc).__name__}: {exc}",
                hint="the file was cut short or damaged; copy or convert it again",
            ) from exc


# --------------------------------------------------------------------------- inspect


def _elems(shape: list[int]) -> int:
    count = 1
    for d in shape:
        count *= max(int(d), 1)
    return count


def _classify(graph: dict[str, Any], io_types: list[str]) -> tuple[str | None, str, bool]:
    """(quantization, file type, per channel) of one subgraph.

    Full integer: activations (non-constant tensors) are int8/uint8/int16 with
    quantization parameters.  Weight-only: quantized or fp16 constants that only a
    DEQUANTIZE reads.  Dynamic range: quantized constants read by a float op.
    """
    tensors = graph["tensors"]
    consumers: dict[int, list[str]] = {}
    for op in graph["operators"]:
        for i in op["inputs"]:
            if i >= 0:
                consumers.setdefault(i, []).append(op["op"])
    quantized_constants = [
        i
        for i, t in enumerate(tensors)
        if t["constant"] and t["type"] in QUANTIZED_WEIGHT_TYPES and t["quantization"] is not None
    ]
    per_channel = any(tensors[i]["quantization"]["per_channel"] for i in quantized_constants)
    activations = [
        t
        for t in tensors
        if not t["constant"]
        and t["type"] in QUANTIZED_ACTIVATION_TYPES
        and t["quantization"] is not None
    ]
    if activations:
        bits = "16x8" if any(t["type"] == "INT16" for t in activations) else "8"
        integer_io = any(t in QUANTIZED_ACTIVATION_TYPES for t in io_types)
        if bits == "16x8":
            return "int16x8", "INT16X8", per_channel
        return (
            ("int8-int8-io", "INT8 (int8 I/O)", per_channel)
            if integer_io
            else (
                "int8",
                "INT8",
                per_channel,
            )
        )
    if quantized_constants:
        dequantized = all(set(consumers.get(i, [])) <= {"DEQUANTIZE"} for i in quantized_constants)
        if dequantized:
            return "weight-only-int8", "INT8-WEIGHT-ONLY", per_channel
        return "dynamic-int8", "INT8-DYNAMIC", per_channel
    fp16 = [i for i, t in enumerate(tensors) if t["constant"] and t["type"] == "FLOAT16"]
    if fp16:
        return "fp16", "FP16", False
    return None, "FP32", False


def compute_profile(graph: dict[str, Any]) -> dict[str, Any]:
    """Multiply-adds in convolutions versus FULLY_CONNECTED/BATCH_MATMUL (dynamic
    dimensions as 1); ``kind`` is the family with at least half of them."""
    tensors = graph["tensors"]
    conv = matmul = 0
    for op in graph["operators"]:
        if len(op["inputs"]) < 2 or not op["outputs"] or op["inputs"][1] < 0:
            continue
        weight = tensors[op["inputs"][1]]["shape"]
        out = tensors[op["outputs"][0]]["shape"]
        if op["op"] in ("CONV_2D", "CONV_3D") and len(weight) >= 3:
            conv += _elems(out) * _elems(weight[1:])
        elif op["op"] == "DEPTHWISE_CONV_2D" and len(weight) == 4:
            conv += _elems(out) * weight[1] * weight[2]
        elif op["op"] == "TRANSPOSE_CONV" and len(weight) == 4:
            src = tensors[op["inputs"][2]]["shape"] if len(op["inputs"]) > 2 else []
            conv += _elems(src) * _elems(weight[:3])
        elif op["op"] == "FULLY_CONNECTED" and len(weight) == 2:
            matmul += _elems(out) * weight[1]
        elif op["op"] == "BATCH_MATMUL":
            a = tensors[op["inputs"][0]]["shape"]
            matmul += _elems(out) * (a[-1] if a else 1)
    total = conv + matmul
    kind = "other" if not total else ("conv" if conv >= matmul else "matmul")
    largest = max(
        (_elems(t["shape"]) for t in tensors if not t["constant"] and t["shape"]), default=0
    )
    return {
        "conv_macs": conv,
        "matmul_macs": matmul,
        "conv_share": round(conv / total, 4) if total else 0.0,
        "kind": kind,
        "largest_activation_elems": largest,
    }


def runtime_notes(operators: list[dict[str, Any]]) -> list[str]:
    """What older runtimes cannot run in this model, op by op."""
    notes = []
    for entry in operators:
        what = NEWER_THAN_TFLITE_RUNTIME.get((entry["op"], entry["version"]))
        if what:
            notes.append(
                f"{entry['op']} v{entry['version']} ({what}): tflite-runtime 2.14 does not "
                "run it; ai-edge-litert does"
            )
    return notes


def inspect_tflite(path: str | os.PathLike[str]) -> ModelInfo:
    """Describe a .tflite model from its flatbuffer, without an interpreter."""
    path = Path(path)
    parsed = read_tflite(path)
    if not parsed["subgraphs"]:
        raise ModelFileError(
            f"{path}: a TFLite flatbuffer without a subgraph", hint="convert the model again"
        )
    signature = next(
        (sig for sig in parsed["signatures"] if sig["key"] == "serving_default"),
        parsed["signatures"][0] if parsed["signatures"] else None,
    )
    main_index = signature["subgraph"] if signature else 0
    if not 0 <= main_index < len(parsed["subgraphs"]):
        raise ModelFileError(
            f"{path}: its signature names subgraph {main_index} of {len(parsed['subgraphs'])}",
            hint="the file is damaged; convert the model again",
        )
    main = parsed["subgraphs"][main_index]
    tensors = main["tensors"]
    named = [i for _, i in [*signature["inputs"], *signature["outputs"]]] if signature else []
    for i in named or [*main["inputs"], *main["outputs"]]:
        if not 0 <= i < len(tensors):
            raise ModelFileError(
                f"{path}: an input or output names tensor {i}, but subgraph {main_index} has "
                f"{len(tensors)} tensors",
                hint="the file is damaged; convert the model again",
            )
    if signature:
        inputs = [_spec_dict(n, tensors[i], i, main_index) for n, i in signature["inputs"]]
        outputs = [_spec_dict(n, tensors[i], i, main_index) for n, i in signature["outputs"]]
    else:
        inputs = [_spec_dict(tensors[i]["name"], tensors[i], i) for i in main["inputs"]]
        outputs = [_spec_dict(tensors[i]["name"], tensors[i], i) for i in main["outputs"]]

    by_type: dict[str, list[int]] = {}
    float_params = quantizable = other_bytes = 0
    weight_inputs = {
        (g, op["inputs"][1])
        for g, graph in enumerate(parsed["subgraphs"])
        for op in graph["operators"]
        if op["op"] in WEIGHT_OPS and len(op["inputs"]) > 1
    }
    for g, graph in enumerate(parsed["subgraphs"]):
        for t, tensor in enumerate(graph["tensors"]):
            if not tensor["constant"]:
                continue
            n = _elems(tensor["shape"]) if tensor["shape"] else 1
            entry = by_type.setdefault(tensor["type"], [0, 0, 0])
            entry[0] += 1
            entry[1] += n
            entry[2] += tensor["bytes"]
            if tensor["type"] in ("FLOAT32", "FLOAT16"):
                float_params += n
                if (g, t) in weight_inputs:
                    quantizable += n
            else:
                other_bytes += tensor["bytes"]
    tensor_types = tuple(
        TensorTypeCount(type=name, count=c, n_params=n, n_bytes=b)
        for name, (c, n, b) in sorted(by_type.items(), key=lambda kv: -kv[1][2])
    )
    quantization, file_type, per_channel = _classify(main, [s["type"] for s in inputs + outputs])
    if quantization is None and any(
        _classify(g, [])[0] for i, g in enumerate(parsed["subgraphs"]) if i != main_index
    ):
        quantization, file_type = "mixed", "MIXED"
    histogram: Counter[tuple[str, int]] = Counter(
        (op["op"], op["version"]) for graph in parsed["subgraphs"] for op in graph["operators"]
    )
    operators = [
        {"op": op, "version": version, "count": count}
        for (op, version), count in histogram.most_common()
    ]
    op_histogram: Counter[str] = Counter()
    for entry in operators:
        op_histogram[entry["op"]] += entry["count"]
    metadata: dict[str, Any] = {
        "schema_version": parsed["schema_version"],
        "description": parsed["description"],
        "signatures": [
            {
                "key": s["key"],
                "inputs": [n for n, _ in s["inputs"]],
                "outputs": [n for n, _ in s["outputs"]],
            }
            for s in parsed["signatures"]
        ],
        "signature_key": signature["key"] if signature else None,
        "subgraphs": len(parsed["subgraphs"]),
        "inputs": inputs,
        "outputs": outputs,
        "op_histogram": dict(op_histogram.most_common()),
        "operators": operators,
        "quantization": quantization,
        "per_channel": per_channel,
        "compute": compute_profile(main),
        "float_params": float_params,
        "quantizable_params": quantizable,
        "other_bytes": other_bytes,
        "outside_bytes": parsed["outside_bytes"],
        "flatbuffer_metadata": parsed["metadata"],
        "runtime_notes": runtime_notes(operators),
    }
    return ModelInfo(
        path=path,
        format=FORMAT,
        size_bytes=path.stat().st_size,
        architecture=main["name"] or "tflite graph",
        name=parsed["description"],
        n_params=sum(n for _, n, _ in by_type.values()),
        file_type=file_type,
        is_quantized=quantization is not None,
        tensor_types=tensor_types,
        llm=None,
        metadata=tuple(metadata.items()),
    )


# --------------------------------------------------------------------------- plan


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
    from edgeshrink.plan import Ladder, ShrinkOptions

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


# --------------------------------------------------------------------------- interpreter


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

    from edgeshrink.formats.onnx import random_batches

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


# --------------------------------------------------------------------------- shrink


@dataclass(frozen=True)
class QuantizeOutcome:
    path: Path
    notes: tuple[str, ...]
    recipe: str


def calibration_batches(
    info: ModelInfo, options: ShrinkOptions, quant: str = "int8"
) -> tuple[InputBatches, list[str]]:
    """The calibration feeds for full-integer quantization (the ONNX backend's reader),
    and the notes they deserve."""
    from edgeshrink.formats import onnx as onnx_backend

    if options.calibration is None and not options.allow_random_calibration:
        inputs, _ = io_specs(info)
        shapes = "; ".join(f"'{s.name}' {s.describe()}" for s in inputs)
        raise CalibrationError(
            f"{quant} (full integer) of {info.path.name} needs calibration data: a few hundred "
            f"representative inputs for {shapes}",
            hint="pass --calibration data.npz (keys: the input names), or "
            "--allow-random-calibration to calibrate on random inputs (recorded as a warning), "
            "or --quant dynamic-int8",
        )
    try:
        return onnx_backend.calibration_batches(info, options)
    except onnx_backend.CalibrationError as exc:
        raise CalibrationError(exc.message, hint=exc.hint) from exc


def check_calibration_method(options: ShrinkOptions) -> None:
    if options.calibration_method != "minmax":
        raise QuantizationError(
            f"--calibration-method {options.calibration_method} is onnxruntime's; TFLite full "
            "integer quantization (ai-edge-quantizer, TFLiteConverter) calibrates min/max ranges",
            hint="drop --calibration-method for TFLite models",
        )


def _recipe(quant: str, options: ShrinkOptions, calibration: str | None) -> str:
    granularity = "per-tensor" if options.per_channel is False else "per-channel"
    if quant == "float32":
        return "float32"
    if quant == "fp16":
        return "fp16 weight-only float_casting"
    if quant in STATIC_QUANTS:
        io = "int8" if quant == "int8-int8-io" else "float32"
        return f"{quant} a8w8 {granularity} io={io} calibration={calibration}"
    return f"{quant} w8 {granularity}"


def _hybrid_version(op: str, per_channel: bool, asymmetric_inputs: bool) -> int | None:
    """The version TFLite's op_version.cc gives a dynamic-range (float in, int8 weight,
    float out) kernel."""
    if op == "FULLY_CONNECTED":
        return 12 if per_channel else (9 if asymmetric_inputs else 3)
    if op == "CONV_2D":
        return 5 if per_channel else 2
    if op == "DEPTHWISE_CONV_2D":
        return 6 if per_channel else 4
    return None


def fix_operator_versions(model_bytes: bytes) -> tuple[bytes, list[str]]:
    """Raise the versions of dynamic-range kernels to what TFLite assigns them.

    Operators that share an OperatorCode but need different versions get one code
    each.  Returns the new bytes and one note per change.
    """
    import flatbuffers

    s = tflite_schema()
    op_names = _enum_names(s.BuiltinOperator)
    type_names = _enum_names(s.TensorType)
    model = s.ModelT.InitFromPackedBuf(bytearray(model_bytes), 0)
    codes = model.operatorCodes or []
    changes: Counter[tuple[str, int, int]] = Counter()
    for graph in model.subgraphs or []:
        tensors = graph.tensors or []
        for op in graph.operators or []:
            code = codes[op.opcodeIndex]
            name = op_names.get(max(code.builtinCode, code.deprecatedBuiltinCode), "")
            inputs = list(op.inputs) if op.inputs is not None else []
            if name not in ("FULLY_CONNECTED", "CONV_2D", "DEPTHWISE_CONV_2D") or len(inputs) < 2:
                continue
            x, w = tensors[inputs[0]], tensors[inputs[1]]
            y = tensors[op.outputs[0]]
            hybrid = (
                type_names.get(x.type) == "FLOAT32"
                and type_names.get(w.type) == "INT8"
                and type_names.get(y.type) == "FLOAT32"
            )
            if not hybrid:
                continue
            scales = w.quantization.scale if w.quantization is not None else None
            per_channel = scales is not None and len(scales) > 1
            asymmetric = bool(getattr(op.builtinOptions, "asymmetricQuantizeInputs", False))
            wanted = _hybrid_version(name, per_channel, asymmetric)
            if wanted is None or wanted <= code.version:
                continue
            match = next(
                (i for i, c in enumerate(codes)
                 if c.builtinCode == code.builtinCode and c.version == wanted
                 and c.deprecatedBuiltinCode == code.deprecatedBuiltinCode),
                None,
            )  # fmt: skip
            if match is None:
                new = s.OperatorCodeT()
                new.builtinCode = code.builtinCode
                new.deprecatedBuiltinCode = code.deprecatedBuiltinCode
                new.customCode = code.customCode
                new.version = wanted
                codes.append(new)
                match = len(codes) - 1
            changes[(name, code.version, wanted)] += 1
            op.opcodeIndex = match
    if not changes:
        return model_bytes, []
    if len(model_bytes) >= FLATBUFFER_LIMIT:
        return model_bytes, [
            "operator versions left as ai-edge-quantizer wrote them: the model is too large "
            "to re-pack as one flatbuffer"
        ]
    import numpy as np

    # Large buffers sit after the flatbuffer, addressed by file offset: re-packing
    # moves everything, so they go back inside it.
    for buffer in model.buffers or []:
        if buffer.offset > 1:
            buffer.data = np.frombuffer(model_bytes, np.uint8, buffer.size, buffer.offset)
            buffer.offset = buffer.size = 0
    model.operatorCodes = codes
    builder = flatbuffers.Builder(len(model_bytes) + 1024)
    builder.Finish(model.Pack(builder), file_identifier=MAGIC)
    notes = [
        f"operator version: {count} dynamic-range {name} v{old} -> v{new} (what TFLite "
        "assigns that kernel; ai-edge-quantizer leaves v1, which older runtimes then run "
        "wrongly instead of refusing)"
        for (name, old, new), count in sorted(changes.items())
    ]
    return bytes(builder.Output()), notes


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

    from edgeshrink.formats.onnx import fingerprint_calibration

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
    return QuantizeOutcome(dst, tuple(notes), _recipe(quant, options, calibration_id))


def _expected_recipe(info: ModelInfo, options: ShrinkOptions, quant: str) -> str:
    from edgeshrink.formats.onnx import fingerprint_calibration

    calibration = None
    if quant in STATIC_QUANTS:
        if options.calibration is None:
            calibration = "random"
        else:
            batches, _ = calibration_batches(info, options, quant)
            calibration = fingerprint_calibration(batches)
    return _recipe(quant, options, calibration)


def shrink_tflite(
    src: str | os.PathLike[str],
    profile: HardwareProfile,
    options: ShrinkOptions | None = None,
    *,
    output: str | os.PathLike[str] | None = None,
    progress: Progress | None = None,
    info: ModelInfo | None = None,
) -> ShrinkResult:
    from edgeshrink.plan import ShrinkOptions
    from edgeshrink.shrink import (
        ShrinkResult,
        quantizer_failures,
        resolve_output,
        reusable_artifact,
    )
    from edgeshrink.util import sha256_file

    options = options or ShrinkOptions()
    say = progress or (lambda _m: None)
    src = Path(src)
    info = info or inspect_tflite(src)
    plan = plan_tflite(info, profile, options)
    out = resolve_output(src, plan.quant, output)
    if plan.quant in STATIC_QUANTS:
        check_calibration_method(options)
        calibration_batches(info, options, plan.quant)  # fail before anything slow
    say(f"hashing {src.name}")
    source_sha = sha256_file(src)
    existing = None if options.force else reusable_artifact(out, source_sha, plan.quant)
    if existing and existing.recipe_detail == _expected_recipe(info, options, plan.quant):
        return ShrinkResult(plan=plan, artifact=existing, reused=True, seconds=0.0)

    say(f"checking that the host's TFLite runtime runs {src.name}")
    verify_runs(src, info, threads=options.threads)
    start = time.perf_counter()
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".work", dir=out.parent))
    try:
        with quantizer_failures(
            src, plan.quant, "ai-edge-quantizer",
            "try another --quant (fp16, dynamic-int8); EDGESHRINK_DEBUG=1 shows the traceback",
        ):  # fmt: skip
            outcome = quantize_tflite(src, work / out.name, plan.quant, info, options, progress=say)
        artifact = finish_artifact(
            outcome.path, out, plan, src, source_sha, profile,
            notes=(plan.reason, *outcome.notes), recipe=outcome.recipe,
            threads=options.threads, progress=say,
        )  # fmt: skip
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return ShrinkResult(
        plan=plan, artifact=artifact, reused=False, seconds=time.perf_counter() - start
    )


def finish_artifact(
    made: Path,
    out: Path,
    plan: ShrinkPlan,
    src: Path,
    source_sha: str,
    profile: HardwareProfile,
    *,
    notes: tuple[str, ...],
    recipe: str,
    threads: int | None = None,
    progress: Progress | None = None,
) -> Any:
    """Verify ``made`` in the host's runtime, rename it to ``out`` and write its manifest."""
    from edgeshrink.artifacts import Artifact, tool_versions
    from edgeshrink.util import atomic_path, write_json_atomic

    say = progress or (lambda _m: None)
    out_info = inspect_tflite(made)
    say(f"verifying {out.name} in the host's TFLite runtime")
    runtime = verify_runs(made, out_info, threads=threads)
    with atomic_path(out) as tmp:
        os.replace(made, tmp)
        versions = tool_versions()
        for dist in ("ai-edge-quantizer", "ai-edge-litert", "tflite-runtime", "tensorflow"):
            with contextlib.suppress(Exception):
                from importlib.metadata import version

                versions[dist] = version(dist)
        meta = dict(out_info.metadata)
        artifact = Artifact.of_file(
            out,
            written=tmp,
            format=FORMAT,
            quant=plan.quant,
            source=src,
            source_sha256=source_sha,
            profile_id=profile.id,
            tool_versions=versions,
            tensor_types=out_info.tensor_types,
            notes=(
                *notes,
                f"verified: loads and runs in {runtime} on the host",
                "operators: "
                + ", ".join(f"{o['op']} v{o['version']}" for o in meta.get("operators", [])),
                *meta.get("runtime_notes", []),
            ),
            detail=recipe,
        )
        # The manifest goes in first: an artifact without one is never reused.
        write_json_atomic(artifact.manifest_path, artifact.to_manifest())
    return artifact


# --------------------------------------------------------------------------- the backend


class TfliteBackend(Backend):
    format = FORMAT
    label = "TFLite"
    runtime = "ai-edge-litert (LiteRT) or tflite-runtime"
    quant_types = QUANT_TYPES
    sweep_ladder = ("float32", "fp16", "weight-only-int8", "dynamic-int8", "int8")

    def inspect(self, path: str | os.PathLike[str]) -> ModelInfo:
        return inspect_tflite(path)

    def plan(self, info: ModelInfo, profile: Any, options: Any) -> Any:
        return plan_tflite(info, profile, options)

    def shrink(self, src: Any, profile: Any, options: Any, **kw: Any) -> Any:
        return shrink_tflite(src, profile, options, **kw)

    def normalize_quant(self, name: str) -> str:
        return normalize_quant(name)

    def estimate(self, info: ModelInfo, quant: str, profile: Any) -> MemoryEstimate:
        return estimate_tflite_memory(info, quant)

    def inspect_details(self, info: ModelInfo) -> list[tuple[str, Any]]:
        from edgeshrink.formats.onnx import graph_details  # onnx imports nothing heavy at top

        meta = dict(info.metadata)
        return [
            *graph_details(info),
            ("per-channel", "yes" if meta.get("per_channel") else "no"),
            *(("note", note) for note in meta.get("runtime_notes") or []),
        ]

    def needs_calibration(self, quant: str) -> bool:
        return quant in STATIC_QUANTS

    def check_sweep_base(self, info: ModelInfo) -> None:
        if info.is_quantized or info.file_type != "FP32":
            raise SweepError(
                f"{info.path.name} is already {info.file_type}; a TFLite sweep starts from the "
                "float32 original",
                hint="give the float32 .tflite (or convert the SavedModel/Keras model with "
                "`edgeshrink shrink --to tflite --quant float32`)",
            )

    def evaluate(self, base: Any, candidate: Any, **kw: Any) -> Any:
        from edgeshrink.quality import evaluate_tflite  # quality reads this module's runtime

        return evaluate_tflite(base, candidate, **kw)

    def agent_args(self, params: Any, remote_inputs: str | None = None) -> list[str]:
        args = super().agent_args(params, remote_inputs)
        args += ["--tflite-runtime", params.tflite_runtime]
        if params.external_delegate:
            args += ["--external-delegate", params.external_delegate]
        return args

    def bench_params(
        self, info: ModelInfo, params: Any, profile: Any, *, on_this_machine: bool
    ) -> tuple[Any, str]:
        if params.external_delegate is None and profile and not on_this_machine:
            # The profile's delegate exists on that device, not on this machine.
            params = dataclasses.replace(params, external_delegate=profile.external_delegate)
        return super().bench_params(info, params, profile, on_this_machine=on_this_machine)


BACKEND = TfliteBackend()
