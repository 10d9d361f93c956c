"""What `inspect` reports of a .tflite model, from its flatbuffer: signatures, inputs and
outputs with their quantization, operators with their versions, constant tensors by
type, how it is quantized, and where its multiply-adds are (inspect_tflite)."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any

from edgeshrink.errors import ModelFileError
from edgeshrink.formats.base import ModelInfo, TensorTypeCount
from edgeshrink.formats.tflite.constants import FORMAT
from edgeshrink.formats.tflite.flatbuffer import read_tflite

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
