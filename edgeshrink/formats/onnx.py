"""ONNX backend: inspect, plan and shrink with onnxruntime's own tooling.

- inspect: opsets, inputs/outputs (symbolic dimensions keep their names),
  operator histogram, initializer parameters and bytes by type, whether the
  graph is already quantized (QDQ, QOperator or dynamic), external data files,
  and where the multiply-adds are (Conv versus MatMul/Gemm).
- plan: fp32, fp16, int8-dynamic and int8-static as candidates with their
  estimated size and memory; the profile's default decides, except that an int8
  default becomes static for conv-heavy models and dynamic for matmul-heavy ones
  (measured here on x86: dynamic int8 made a small conv net 7.6x slower than
  fp32, static QDQ kept it fast; for MLPs both were ~2x faster than fp32).
- shrink: ``quant_pre_process`` (symbolic shape inference, optimisation, ONNX
  shape inference), then ``quantize_dynamic`` / ``quantize_static`` (QDQ by
  default, QOperator as ``int8-static-qoperator``) or onnxconverter-common's
  float16 conversion.  The result must load and run in onnxruntime before it
  is renamed into place.

onnx, onnxruntime and numpy are imported inside the functions that need them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import os
import shutil
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
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
from edgeshrink.util import first_line, make_work_dir

if TYPE_CHECKING:
    import numpy as np

    from edgeshrink.plan import Candidate, ShrinkOptions, ShrinkPlan
    from edgeshrink.shrink import ShrinkResult

FORMAT = "onnx"
MIB = 1024 * 1024
Progress = Callable[[str], None]

# Operators that mark a graph as already quantized, by representation.
QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear"})
DYNAMIC_OPS = frozenset(
    {"DynamicQuantizeLinear", "MatMulInteger", "ConvInteger", "DynamicQuantizeMatMul",
     "MatMulIntegerToFloat", "DynamicQuantizeLSTM"}
)  # fmt: skip
QOPERATOR_OPS = frozenset(
    {"QLinearConv", "QLinearMatMul", "QGemm", "QLinearAdd", "QLinearMul", "QLinearSigmoid",
     "QLinearLeakyRelu", "QLinearConcat", "QLinearGlobalAveragePool", "QLinearAveragePool",
     "QLinearSoftmax", "QLinearWhere", "QAttention", "QEmbedLayerNormalization",
     "MatMulNBits", "MatMulBnb4"}
)  # fmt: skip
CONV_OPS = frozenset({"Conv", "ConvTranspose"})
MATMUL_OPS = frozenset({"MatMul", "Gemm"})
FLOAT_TYPES = {"FLOAT": 4, "FLOAT16": 2, "BFLOAT16": 2, "DOUBLE": 8}
FILE_TYPE_OF_FLOAT = {"FLOAT": "FP32", "FLOAT16": "FP16", "BFLOAT16": "BF16", "DOUBLE": "FP64"}

# Weight inputs the quantizers turn into int8, by operator: (op, input index).
# quantize_dynamic's IntegerOps cover MatMul/Conv/Gather (not Gemm); the static
# QDQ and QOperator quantizers also cover Gemm and ConvTranspose.
_DYNAMIC_WEIGHTS = {("MatMul", 1), ("Conv", 1), ("Gather", 0)}
_STATIC_WEIGHTS = _DYNAMIC_WEIGHTS | {("Gemm", 1), ("ConvTranspose", 1)}

# Peak RSS of the agent (Python, numpy, onnxruntime) running a tiny model,
# measured here: 74-75 MB on x86_64 with onnxruntime 1.32 (about 43 MB of it
# file-backed: the shared libraries).
RUNTIME_OVERHEAD_BYTES = 72 * MIB
# Above this the protobuf limit (2 GiB) is near: write external data.
EXTERNAL_DATA_THRESHOLD = int(1.8 * 1024**3)
# Calibration collects activation statistics for every sample: bound the count.
MAX_CALIBRATION_SAMPLES = 512
RANDOM_CALIBRATION_SAMPLES = 32
MAX_BATCH_ROWS = 32

QUANT_TYPES = ("fp32", "fp16", "int8-dynamic", "int8-static", "int8-static-qoperator")
PLAN_ORDER = ("fp32", "fp16", "int8-static", "int8-dynamic")  # largest first
INT8_QUANTS = ("int8-dynamic", "int8-static", "int8-static-qoperator")
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


# --------------------------------------------------------------------------- io specs


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output: name, element type and shape.

    A dimension is an int when fixed, its name (str) when symbolic, None when unknown.
    """

    name: str
    elem_type: str  # ONNX name: FLOAT, FLOAT16, INT64, ...
    dtype: str  # numpy name: float32, float16, int64, ...
    shape: tuple[int | str | None, ...]

    @property
    def symbolic(self) -> tuple[str, ...]:
        return tuple(str(d) for d in self.shape if not isinstance(d, int))

    def concrete_shape(self, fill: int = 1) -> tuple[int, ...]:
        return tuple(d if isinstance(d, int) else fill for d in self.shape)

    def describe(self) -> str:
        dims = ", ".join("?" if d is None else str(d) for d in self.shape)
        return f"[{dims}] {self.dtype}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": self.elem_type,
            "dtype": self.dtype,
            "shape": list(self.shape),
        }

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> TensorSpec:
        return cls(doc["name"], doc["type"], doc["dtype"], tuple(doc["shape"]))


def _import_onnx() -> Any:
    try:
        import onnx
    except ImportError as exc:
        raise RuntimeMissingError(
            f"the onnx package is not installed: {exc}", hint="pip install 'edgeshrink[onnx]'"
        ) from exc
    return onnx


def _text(value: Any) -> str:
    """A protobuf string field: bytes when the file holds invalid UTF-8 there."""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _import_ort() -> Any:
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


def _value_spec(value: Any) -> TensorSpec:
    import onnx

    tensor = value.type.tensor_type
    elem = onnx.TensorProto.DataType.Name(tensor.elem_type) if tensor.elem_type else "UNDEFINED"
    try:
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name
    except (KeyError, TypeError, ValueError):
        dtype = elem.lower()
    shape: list[int | str | None] = []
    if tensor.HasField("shape"):
        for dim in tensor.shape.dim:
            if dim.HasField("dim_value"):
                shape.append(int(dim.dim_value))
            elif dim.HasField("dim_param"):
                shape.append(dim.dim_param)
            else:
                shape.append(None)
    return TensorSpec(value.name, elem, dtype, tuple(shape))


def graph_io(model: Any) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """The graph's real inputs (initializers listed as inputs left out) and outputs."""
    initializers = {init.name for init in model.graph.initializer}
    inputs = tuple(_value_spec(v) for v in model.graph.input if v.name not in initializers)
    outputs = tuple(_value_spec(v) for v in model.graph.output)
    return inputs, outputs


def io_specs(info: ModelInfo) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    meta = dict(info.metadata)
    return (
        tuple(TensorSpec.from_dict(d) for d in meta.get("inputs", ())),
        tuple(TensorSpec.from_dict(d) for d in meta.get("outputs", ())),
    )


# --------------------------------------------------------------------------- loading


def _looks_like_onnx(head: bytes) -> bool:
    # ModelProto field 1 (ir_version, varint) comes first in every file onnx writes.
    return len(head) >= 2 and head[0] == 0x08 and 1 <= head[1] <= 20


def load_model_proto(path: str | os.PathLike[str]) -> Any:
    """The ModelProto of ``path`` without its external data, or one clear error
    (not ONNX, truncated, external data missing or short, fails onnx's checker)."""
    onnx = _import_onnx()
    from google.protobuf.message import DecodeError

    path = Path(path)
    if not path.exists():
        raise ModelFileError(f"{path}: no such file", hint="check the path")
    if path.is_dir():
        raise UnsupportedFormatError(
            f"{path}: is a directory, not an .onnx file", hint="pass the .onnx file itself"
        )
    size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(16)
    if size == 0:
        raise ModelFileError(f"{path}: is empty (0 bytes)", hint="copy the model again")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, RuntimeError, ValueError) as exc:
        if _looks_like_onnx(head):
            raise ModelFileError(
                f"{path}: truncated or corrupt ONNX file ({size:,} bytes): {exc}",
                hint="the file was cut short or damaged; copy or export it again",
            ) from exc
        raise UnsupportedFormatError(
            f"{path}: not an ONNX file (it starts with {head[:8]!r})",
            hint="pass an .onnx model exported by torch.onnx, tf2onnx, skl2onnx or similar",
        ) from exc
    if not model.graph.node and not model.graph.output:
        raise ModelFileError(
            f"{path}: parses as protobuf but holds no ONNX graph ({size:,} bytes)",
            hint="the file is damaged or of another kind; export the model again",
        )
    _check_external_data(path, external_data_files(model, path.parent))
    try:
        # By path, so that external data is looked up beside the model.
        onnx.checker.check_model(str(path))
    except (onnx.checker.ValidationError, UnicodeDecodeError) as exc:  # damaged names decode badly
        first = first_line(exc)
        raise ModelFileError(
            f"{path}: not a valid ONNX model: {first}",
            hint="the file may be truncated; copy or export it again",
        ) from exc
    return model


def external_data_files(model: Any, base_dir: Path) -> list[dict[str, Any]]:
    """External data files the initializers point to: present, large enough, how many tensors."""
    from onnx.external_data_helper import ExternalDataInfo, uses_external_data

    files: dict[str, dict[str, Any]] = {}
    for tensor in model.graph.initializer:
        if not uses_external_data(tensor):
            continue
        ext = ExternalDataInfo(tensor)
        entry = files.setdefault(
            ext.location, {"file": ext.location, "tensors": 0, "needed_bytes": 0}
        )
        entry["tensors"] += 1
        end = (ext.offset or 0) + (ext.length or 0)
        entry["needed_bytes"] = max(entry["needed_bytes"], end)
    for entry in files.values():
        where = base_dir / entry["file"]
        entry["present"] = where.is_file()
        entry["bytes"] = where.stat().st_size if entry["present"] else None
        entry["complete"] = bool(entry["present"] and entry["bytes"] >= entry["needed_bytes"])
    return list(files.values())


def _check_external_data(path: Path, files: list[dict[str, Any]]) -> None:
    missing = [f["file"] for f in files if not f["present"]]
    if missing:
        raise ModelFileError(
            f"{path}: external data file(s) missing: {', '.join(missing)} "
            f"(expected beside the model in {path.parent})",
            hint="copy the .onnx together with its data file(s), keeping their names",
        )
    short = [f for f in files if not f["complete"]]
    if short:
        f = short[0]
        raise ModelFileError(
            f"{path}: external data file {f['file']} is truncated: {f['bytes']:,} bytes, "
            f"the tensors need {f['needed_bytes']:,}",
            hint="copy the data file again and compare its size",
        )


# --------------------------------------------------------------------------- inspect


def _walk_nodes(graph: Any) -> Iterable[Any]:
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.HasField("g"):
                yield from _walk_nodes(attr.g)
            for sub in attr.graphs:
                yield from _walk_nodes(sub)


def _tensor_elems(dims: Iterable[int]) -> int:
    count = 1
    for d in dims:
        count *= int(d)
    return count


def _initializer_bytes(tensor: Any, elem_size: int | None) -> int:
    from onnx.external_data_helper import ExternalDataInfo, uses_external_data

    if uses_external_data(tensor):
        return int(ExternalDataInfo(tensor).length or 0)
    if tensor.raw_data:
        return len(tensor.raw_data)
    n = _tensor_elems(tensor.dims)
    return n * (elem_size or 4)


def _known_shapes(model: Any) -> dict[str, tuple[int, ...]]:
    """Tensor shapes after ONNX shape inference, symbolic dimensions taken as 1."""
    onnx = _import_onnx()
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception:  # noqa: BLE001 - inference is a best effort for the MAC estimate
        inferred = model
    shapes: dict[str, tuple[int, ...]] = {}
    graph = inferred.graph
    for value in [*graph.input, *graph.value_info, *graph.output]:
        tensor = value.type.tensor_type
        if tensor.HasField("shape"):
            shapes[value.name] = tuple(
                int(d.dim_value) if d.HasField("dim_value") else 1 for d in tensor.shape.dim
            )
    for init in graph.initializer:
        shapes[init.name] = tuple(int(d) for d in init.dims)
    return shapes


def compute_profile(model: Any) -> dict[str, Any]:
    """Multiply-adds in Conv versus MatMul/Gemm (batch and other symbolic dims as 1).

    Falls back to weight parameters where shapes are unknown; ``kind`` is
    "conv" or "matmul" when one family has at least half of the work.
    """
    shapes = _known_shapes(model)
    conv = matmul = 0
    largest_activation = 0
    init_names = {i.name for i in model.graph.initializer}
    for name, shape in shapes.items():
        if name not in init_names:
            largest_activation = max(largest_activation, _tensor_elems(shape))
    for node in model.graph.node:
        if node.op_type in CONV_OPS and len(node.input) > 1:
            w = shapes.get(node.input[1])
            y = shapes.get(node.output[0])
            if w and y and len(w) >= 3:
                per_output = _tensor_elems(w[1:])  # C_in/group * kernel
                conv += _tensor_elems(y) * per_output
            elif w:
                conv += _tensor_elems(w)
        elif node.op_type in MATMUL_OPS and len(node.input) > 1:
            a = shapes.get(node.input[0])
            b = shapes.get(node.input[1])
            y = shapes.get(node.output[0])
            if node.op_type == "Gemm" and b and len(b) == 2:
                trans_b = any(a_.name == "transB" and a_.i for a_ in node.attribute)
                k = b[1] if trans_b else b[0]
            elif b and len(b) >= 2:
                k = b[-2]
            elif a:
                k = a[-1]
            else:
                k = 1
            if y:
                matmul += _tensor_elems(y) * k
            elif b:
                matmul += _tensor_elems(b)
    total = conv + matmul
    kind = "other"
    if total:
        kind = "conv" if conv >= matmul else "matmul"
    return {
        "conv_macs": conv,
        "matmul_macs": matmul,
        "conv_share": round(conv / total, 4) if total else 0.0,
        "kind": kind,
        "largest_activation_elems": largest_activation,
    }


def _weight_inputs(model: Any, pairs: set[tuple[str, int]]) -> set[str]:
    init_names = {i.name for i in model.graph.initializer}
    found = set()
    for node in model.graph.node:
        for op, index in pairs:
            if node.op_type == op and len(node.input) > index and node.input[index] in init_names:
                found.add(node.input[index])
    return found


def inspect_onnx(path: str | os.PathLike[str]) -> ModelInfo:
    """Describe an ONNX model without loading its weights into memory."""
    onnx = _import_onnx()
    path = Path(path)
    model = load_model_proto(path)
    ext_files = external_data_files(model, path.parent)

    opsets = {(o.domain or "ai.onnx"): int(o.version) for o in model.opset_import}
    inputs, outputs = graph_io(model)
    histogram = Counter(node.op_type for node in _walk_nodes(model.graph))
    ops = set(histogram)

    by_type: dict[str, list[int]] = {}
    float_params = 0
    float_types: Counter[str] = Counter()
    for init in model.graph.initializer:
        type_name = onnx.TensorProto.DataType.Name(init.data_type)
        try:
            elem_size = onnx.helper.tensor_dtype_to_np_dtype(init.data_type).itemsize
        except (KeyError, TypeError, ValueError):
            elem_size = None
        n = _tensor_elems(init.dims)
        nbytes = _initializer_bytes(init, elem_size)
        entry = by_type.setdefault(type_name, [0, 0, 0])
        entry[0] += 1
        entry[1] += n
        entry[2] += nbytes
        if type_name in FLOAT_TYPES:
            float_params += n
            float_types[type_name] += nbytes
    tensor_types = tuple(
        TensorTypeCount(type=name, count=c, n_params=n, n_bytes=b)
        for name, (c, n, b) in sorted(by_type.items(), key=lambda kv: -kv[1][2])
    )

    # QOperator and dynamic graphs also hold QuantizeLinear/DequantizeLinear at their
    # float boundaries, so they are recognised first.
    if ops & {"MatMulNBits", "MatMulBnb4"}:
        quantization, file_type = "qoperator", "INT4-WEIGHT-ONLY"
    elif ops & QOPERATOR_OPS:
        quantization, file_type = "qoperator", "INT8-QOPERATOR"
    elif ops & DYNAMIC_OPS:
        quantization, file_type = "dynamic", "INT8-DYNAMIC"
    elif ops & QDQ_OPS:
        quantization, file_type = "qdq", "INT8-QDQ"
    else:
        quantization = None
        if float_types:
            file_type = FILE_TYPE_OF_FLOAT[float_types.most_common(1)[0][0]]
        else:
            io_float = [s.elem_type for s in inputs if s.elem_type in FILE_TYPE_OF_FLOAT]
            file_type = FILE_TYPE_OF_FLOAT[io_float[0]] if io_float else "FP32"

    compute = compute_profile(model)
    dynamic_weights = _weight_inputs(model, _DYNAMIC_WEIGHTS)
    static_weights = _weight_inputs(model, _STATIC_WEIGHTS)
    inits = {i.name: i for i in model.graph.initializer}

    def float_elems(names: set[str]) -> int:
        return sum(
            _tensor_elems(inits[n].dims)
            for n in names
            if onnx.TensorProto.DataType.Name(inits[n].data_type) in FLOAT_TYPES
        )

    total_bytes = sum(b for _, _, b in by_type.values())
    metadata: dict[str, Any] = {
        "int_bounds": integer_input_bounds(model),
        "opset": opsets,
        "ir_version": int(model.ir_version),
        "producer": " ".join(_text(p) for p in (model.producer_name, model.producer_version) if p)
        or None,
        "inputs": [s.to_dict() for s in inputs],
        "outputs": [s.to_dict() for s in outputs],
        "op_histogram": dict(histogram.most_common()),
        "quantization": quantization,
        "external_data": ext_files,
        "compute": compute,
        "float_params": float_params,
        "other_bytes": total_bytes - sum(float_types.values()),
        "dynamic_quantizable_params": float_elems(dynamic_weights),
        "static_quantizable_params": float_elems(static_weights),
    }
    size = path.stat().st_size + sum(f["bytes"] or 0 for f in ext_files)
    return ModelInfo(
        path=path,
        format=FORMAT,
        size_bytes=size,
        architecture=model.graph.name or "onnx graph",
        name=metadata["producer"],
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
    from edgeshrink.plan import Ladder, ShrinkOptions

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


# --------------------------------------------------------------------------- input data


@dataclass(frozen=True)
class InputBatches:
    """Feeds for a session, cut from arrays stacked on their first axis.

    ``bounds[i]`` is the (start, stop) of batch i in the rows of the first axis,
    so labels (or any per-row data) can be cut the same way.
    """

    feeds: tuple[dict[str, Any], ...]
    bounds: tuple[tuple[int, int], ...]
    n_rows: int
    source: str


def read_arrays(path: str | os.PathLike[str], *, what: str = "input") -> dict[str, np.ndarray]:
    """Arrays of an .npz file, or of a directory of .npy/.npz files (concatenated on axis 0).

    In a directory, an .npz holds arrays keyed by input name; an .npy is named
    after its input (``input.npy``) or, for a single-input model, any name.
    """
    import numpy as np

    path = Path(path)
    if not path.exists():
        raise CalibrationError(f"{what} data {path}: no such file or directory")

    def load(file: Path) -> dict[str, np.ndarray]:
        try:
            if file.suffix == ".npy":
                return {file.stem: np.load(file, allow_pickle=False)}
            with np.load(file, allow_pickle=False) as npz:
                return {k: npz[k] for k in npz.files}
        except (OSError, ValueError, EOFError) as exc:
            raise CalibrationError(
                f"{what} data {file}: not a readable .npz/.npy file: {exc}",
                hint="write it with numpy.savez(path, input_name=array)",
            ) from exc

    if path.is_file():
        if path.suffix not in (".npz", ".npy"):
            raise CalibrationError(
                f"{what} data {path}: expected an .npz file or a directory of .npy/.npz files",
                hint="write it with numpy.savez(path, input_name=array)",
            )
        return load(path)
    files = sorted(p for p in path.iterdir() if p.suffix in (".npz", ".npy"))
    if not files:
        raise CalibrationError(f"{what} data {path}: the directory has no .npy or .npz files")
    parts: dict[str, list[np.ndarray]] = {}
    npy_unnamed: list[np.ndarray] = []
    for file in files:
        for key, array in load(file).items():
            parts.setdefault(key, []).append(array)
        if file.suffix == ".npy":
            npy_unnamed.append(parts[file.stem][-1])
    merged: dict[str, np.ndarray] = {}
    for key, arrays in parts.items():
        try:
            merged[key] = np.concatenate(arrays, axis=0) if len(arrays) > 1 else arrays[0]
        except ValueError as exc:
            raise CalibrationError(
                f"{what} data {path}: the arrays for '{key}' cannot be stacked: {exc}"
            ) from exc
    if npy_unnamed and len(parts) == len(npy_unnamed):
        # Every file was an .npy with its own name: for a single-input model they are
        # all samples of that input, whatever they are called.
        with contextlib.suppress(ValueError):
            merged["*"] = np.concatenate(npy_unnamed, axis=0)
    return merged


def _np_dtype(name: str) -> Any:
    import numpy as np

    try:
        return np.dtype(name)
    except TypeError:
        return None


def _kind(dtype: Any) -> str:
    import numpy as np

    if np.issubdtype(dtype, np.floating):
        return "float"
    if np.issubdtype(dtype, np.integer):
        return "int"
    if np.issubdtype(dtype, np.bool_):
        return "bool"
    return str(dtype)


def make_batches(
    arrays: Mapping[str, np.ndarray],
    specs: Iterable[TensorSpec],
    *,
    source: str,
    what: str = "input",
    max_rows: int = MAX_BATCH_ROWS,
    limit_rows: int | None = None,
) -> InputBatches:
    """Cut ``arrays`` into feeds that match the model's declared inputs.

    Each array holds samples stacked on its first axis: either the model's own
    rank (``[N, 64]`` for ``[batch, 64]``; a fixed first dimension d takes N in
    steps of d) or one more axis (``[N, 1, 3, 32, 32]`` for ``[1, 3, 32, 32]``).
    Names, ranks, fixed dimensions and dtypes are checked; each mismatch is one
    error naming the input and the shape the model expects.
    """
    import numpy as np

    specs = list(specs)
    arrays = {k: v for k, v in arrays.items()}
    named = [k for k in arrays if k != "*"]
    if len(specs) == 1 and specs[0].name not in arrays:
        # Unnamed data fits a single-input model: numpy.savez(path, array) writes
        # "arr_0", and a directory of .npy files is gathered as "*".
        if "*" in arrays:
            arrays[specs[0].name] = arrays["*"]
        elif named == ["arr_0"]:
            arrays[specs[0].name] = arrays["arr_0"]
    prepared: dict[str, tuple[np.ndarray, int, bool]] = {}  # name -> (array, step, stacked)
    for spec in specs:
        expected = f"{spec.describe()} (samples stacked on the first axis)"
        if spec.name not in arrays:
            raise CalibrationError(
                f"{source}: no array for input '{spec.name}'; the model expects {expected}; "
                f"the file has: {', '.join(named) or 'nothing'}",
                hint=f"save it with numpy.savez(path, **{{'{spec.name}': array}})",
            )
        array = np.asarray(arrays[spec.name])
        want = _np_dtype(spec.dtype)
        if want is not None and array.dtype != want:
            if _kind(array.dtype) != _kind(want):
                raise CalibrationError(
                    f"{source}: input '{spec.name}' is {array.dtype}, the model expects {expected}",
                    hint=f"convert it with array.astype(numpy.{want.name})",
                )
            array = array.astype(want)
        rank = len(spec.shape)
        if array.ndim == rank and rank > 0:
            stacked = False
            rest, model_rest = array.shape[1:], spec.shape[1:]
            first = spec.shape[0]
            step = first if isinstance(first, int) and first > 0 else max_rows
            if isinstance(first, int) and first > 0 and array.shape[0] % first:
                raise CalibrationError(
                    f"{source}: input '{spec.name}' has {array.shape[0]} rows, not a multiple "
                    f"of the model's fixed first dimension {first}; the model expects {expected}",
                    hint=f"give a multiple of {first} rows",
                )
        elif array.ndim == rank + 1:
            stacked, step = True, 1
            rest, model_rest = array.shape[1:], spec.shape
        else:
            raise CalibrationError(
                f"{source}: input '{spec.name}' has shape {list(array.shape)}, the model "
                f"expects {expected}",
                hint="stack the samples on a new first axis, or on the model's batch axis",
            )
        for got, declared in zip(rest, model_rest, strict=True):
            if isinstance(declared, int) and declared > 0 and got != declared:
                raise CalibrationError(
                    f"{source}: input '{spec.name}' has shape {list(array.shape)}, the model "
                    f"expects {expected}",
                    hint="resize or reshape the data to the model's input shape",
                )
        prepared[spec.name] = (array, step, stacked)
    rows = {name: a.shape[0] for name, (a, _, _) in prepared.items()}
    if len(set(rows.values())) > 1:
        listing = ", ".join(f"'{k}' {v}" for k, v in rows.items())
        raise CalibrationError(
            f"{source}: the inputs have different numbers of samples: {listing}",
            hint="give every input the same number of samples",
        )
    n_rows = next(iter(rows.values()), 0)
    if n_rows == 0:
        raise CalibrationError(f"{source}: the {what} data holds no samples")
    if limit_rows is not None:
        n_rows = min(n_rows, limit_rows)
    step = min(s for _, s, _ in prepared.values())
    feeds, bounds = [], []
    for start in range(0, n_rows, step):
        stop = min(start + step, n_rows)
        feed = {}
        for name, (array, _, stacked) in prepared.items():
            feed[name] = array[start] if stacked else array[start:stop]
        feeds.append(feed)
        bounds.append((start, stop))
    return InputBatches(tuple(feeds), tuple(bounds), n_rows, source)


# Ops an integer index passes through unchanged on its way to the Gather it feeds.
_INDEX_PASSTHROUGH = {"Cast", "Unsqueeze", "Squeeze", "Reshape", "Flatten", "Identity", "Expand"}


def integer_input_bounds(model: Any) -> dict[str, int]:
    """For each integer graph input that indexes a table (a Gather's indices, directly or
    through casts and reshapes), the table's first dimension: valid values are below it.
    A BERT export's token_type_ids index a 2-row table; random values up to 9 fail there."""
    initializers = {t.name: tuple(t.dims) for t in model.graph.initializer}
    consumers: dict[str, list[Any]] = {}
    for node in _walk_nodes(model.graph):
        for position, name in enumerate(node.input):
            consumers.setdefault(name, []).append((node, position))
    integer = {i.name for i in model.graph.input if i.type.tensor_type.elem_type in (6, 7, 12, 13)}
    bounds: dict[str, int] = {}
    for name in integer:
        pending, seen = [name], set()
        while pending:
            value = pending.pop()
            if value in seen:
                continue
            seen.add(value)
            for node, position in consumers.get(value, ()):
                if node.op_type == "Gather" and position == 1:
                    rows = initializers.get(node.input[0])
                    if rows and rows[0] > 0:
                        bounds[name] = min(bounds.get(name, rows[0]), int(rows[0]))
                elif node.op_type in _INDEX_PASSTHROUGH and position == 0:
                    pending.extend(node.output)
    return bounds


def random_integers(
    rng: Any, name: str, shape: tuple[int, ...], dtype: Any, bounds: Mapping[str, int]
) -> Any:
    """Valid random integers for an input (the agent's rule too): below the table the input
    indexes, masks all ones, token type ids zero."""
    import numpy as np

    lowered = name.lower()
    if "mask" in lowered:
        return np.ones(shape, dtype=dtype)
    if "token_type" in lowered or "segment" in lowered:
        return np.zeros(shape, dtype=dtype)
    return rng.integers(0, max(1, min(10, bounds.get(name, 10))), shape).astype(dtype)


def random_batches(
    specs: Iterable[TensorSpec],
    *,
    samples: int,
    seed: int,
    int_bounds: Mapping[str, int] | None = None,
) -> InputBatches:
    """Random inputs of the declared shapes (symbolic dimensions as 1), from a fixed seed;
    integers valid for what they index (see random_integers)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    feeds = []
    specs = list(specs)
    for _ in range(samples):
        feed = {}
        for spec in specs:
            shape = spec.concrete_shape(1)
            dtype = _np_dtype(spec.dtype) or np.dtype("float32")
            if _kind(dtype) == "float":
                feed[spec.name] = rng.standard_normal(shape).astype(dtype)
            elif _kind(dtype) == "bool":
                feed[spec.name] = rng.integers(0, 2, shape).astype(dtype)
            else:
                feed[spec.name] = random_integers(rng, spec.name, shape, dtype, int_bounds or {})
        feeds.append(feed)
    bounds = tuple((i, i + 1) for i in range(samples))
    return InputBatches(tuple(feeds), bounds, samples, "random inputs")


# --------------------------------------------------------------------------- onnxruntime


def ort_load_error(
    path: Path, exc: Exception, opsets: Mapping[str, int] | None = None
) -> EdgeshrinkError:
    """One clear edgeshrink error for why onnxruntime could not load ``path``."""
    import re

    ort = _import_ort()
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
    ort = _import_ort()
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: warnings go to stderr unasked otherwise
    if threads:
        options.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own classes
        raise ort_load_error(Path(path), exc, opsets) from exc


# --------------------------------------------------------------------------- shrink


@dataclass(frozen=True)
class QuantizeOutcome:
    path: Path
    data_files: tuple[Path, ...]
    notes: tuple[str, ...]
    recipe: str


def fingerprint_calibration(batches: InputBatches) -> str:
    digest = hashlib.sha256()
    for feed in batches.feeds:
        for name in sorted(feed):
            digest.update(name.encode())
            digest.update(feed[name].tobytes())
    return digest.hexdigest()[:16]


def calibration_batches(
    info: ModelInfo, options: ShrinkOptions, *, seed: int = 0
) -> tuple[InputBatches, list[str]]:
    """The calibration feeds for static int8, and the notes they deserve."""
    inputs, _ = io_specs(info)
    notes: list[str] = []
    if options.calibration is None:
        if not options.allow_random_calibration:
            shapes = "; ".join(f"'{s.name}' {s.describe()}" for s in inputs)
            raise CalibrationError(
                f"static int8 of {info.path.name} needs calibration data: a few hundred "
                f"representative inputs for {shapes}",
                hint="pass --calibration data.npz (keys: the input names), or "
                "--allow-random-calibration to calibrate on random inputs (recorded as a "
                "warning), or --quant int8-dynamic",
            )
        batches = random_batches(
            inputs, samples=RANDOM_CALIBRATION_SAMPLES, seed=seed, int_bounds=int_bounds_of(info)
        )
        symbolic = sorted({d for s in inputs for d in s.symbolic})
        notes.append(
            f"WARNING: calibrated on {RANDOM_CALIBRATION_SAMPLES} random inputs "
            "(standard normal floats) from the declared shapes"
            + (f", symbolic dimensions {', '.join(symbolic)} as 1" if symbolic else "")
            + ", not on real data: activation ranges, and so accuracy, may be poor"
        )
        return batches, notes
    arrays = read_arrays(options.calibration, what="calibration")
    batches = make_batches(
        arrays,
        inputs,
        source=f"calibration data {options.calibration}",
        what="calibration",
        limit_rows=MAX_CALIBRATION_SAMPLES,
    )
    notes.append(f"calibrated on {batches.n_rows} samples from {Path(options.calibration).name}")
    return batches, notes


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
    onnx = _import_onnx()
    _import_ort()
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


def int_bounds_of(info: ModelInfo) -> dict[str, int]:
    return dict(dict(info.metadata).get("int_bounds") or {})


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


def _source_sha256(src: Path, info: ModelInfo) -> str:
    from edgeshrink.util import sha256_file

    files = dict(info.metadata).get("external_data") or []
    if not files:
        return sha256_file(src)
    digest = hashlib.sha256(sha256_file(src).encode())
    for f in sorted(files, key=lambda f: f["file"]):
        digest.update(sha256_file(src.parent / f["file"]).encode())
    return digest.hexdigest()


def shrink_onnx(
    src: str | os.PathLike[str],
    profile: HardwareProfile,
    options: ShrinkOptions | None = None,
    *,
    output: str | os.PathLike[str] | None = None,
    progress: Progress | None = None,
    info: ModelInfo | None = None,
) -> ShrinkResult:
    from edgeshrink.artifacts import Artifact, load_artifact, tool_versions
    from edgeshrink.plan import ShrinkOptions
    from edgeshrink.shrink import ShrinkResult, quantizer_failures, resolve_output
    from edgeshrink.util import atomic_path, write_json_atomic

    options = options or ShrinkOptions()
    say = progress or (lambda _m: None)
    src = Path(src)
    info = info or inspect_onnx(src)
    plan = plan_onnx(info, profile, options)
    out = resolve_output(src, plan.quant, output)
    if plan.quant.startswith("int8-static"):
        # Fail on missing or mismatched calibration data before anything slow.
        calibration_batches(info, options)
    say(f"hashing {src.name}")
    source_sha = _source_sha256(src, info)
    external = bool(dict(info.metadata).get("external_data")) or (
        info.size_bytes > EXTERNAL_DATA_THRESHOLD
    )
    if not options.force and out.exists():
        with contextlib.suppress(EdgeshrinkError):
            existing = load_artifact(out, verify=True)
            if existing.source_sha256 == source_sha and existing.quant == plan.quant:
                expected = _expected_recipes(info, profile, options, plan.quant, external)
                if expected is None or existing.recipe_detail in expected:
                    return ShrinkResult(plan=plan, artifact=existing, reused=True, seconds=0.0)

    say(f"checking that onnxruntime runs {src.name}")
    open_session(src, opsets=dict(info.metadata).get("opset"))
    start = time.perf_counter()
    work = make_work_dir(out).resolve()
    try:
        with quantizer_failures(
            src, plan.quant, "onnxruntime's tooling",
            "try another --quant (fp16, int8-dynamic); EDGESHRINK_DEBUG=1 shows the traceback",
        ):  # fmt: skip
            outcome = quantize_onnx(
                src, work, plan.quant, info, profile, options,
                out_name=out.name, external=external, progress=say,
            )  # fmt: skip
        say(f"verifying {out.name} in onnxruntime")
        feed = None
        if options.calibration is not None:
            feed = calibration_batches(info, options)[0].feeds[0]
        verify_runs(outcome.path, info, feed=feed)
        out_info = inspect_onnx(outcome.path)
        with atomic_path(out) as tmp:
            for data in outcome.data_files:
                os.replace(data, out.parent / data.name)
            os.replace(outcome.path, tmp)
            versions = tool_versions()
            with contextlib.suppress(Exception):
                from importlib.metadata import version

                versions["onnxconverter-common"] = version("onnxconverter-common")
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
                notes=(plan.reason, *outcome.notes)
                + tuple(f"external data: {d.name}" for d in outcome.data_files),
                detail=outcome.recipe,
            )
            write_json_atomic(artifact.manifest_path, artifact.to_manifest())
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return ShrinkResult(
        plan=plan, artifact=artifact, reused=False, seconds=time.perf_counter() - start
    )


def _expected_recipes(
    info: ModelInfo, profile: HardwareProfile, options: ShrinkOptions, quant: str, external: bool
) -> tuple[str, ...] | None:
    """The recipe strings a fresh shrink could record, when they can be known cheaply
    (static int8 measures per-channel against per-tensor unless the user chose)."""
    if quant in ("fp32",):
        return ("fp32",)
    if quant == "fp16":
        return ("fp16 keep_io_types=True",)
    recipe = int8_recipe(profile, options, quant)

    def tail(per_channel: bool) -> str:
        return f" per_channel={per_channel} reduce_range={recipe.reduce_range}"

    if quant == "int8-dynamic":
        return (f"int8-dynamic weight={recipe.weight_type}" + tail(recipe.per_channel),)
    if options.calibration is None:
        calibration = "random"
    else:
        batches, _ = calibration_batches(info, options)
        calibration = fingerprint_calibration(batches)
    head = (
        f"{quant} act={recipe.activation_type}"
        f"{'-sym' if recipe.symmetric_activations else ''} weight={recipe.weight_type} "
        f"method={options.calibration_method} calibration={calibration}"
    )
    measured = options.per_channel is None and not external
    choices = (True, False) if measured else (recipe.per_channel,)
    return tuple(head + tail(per_channel) for per_channel in choices)


# --------------------------------------------------------------------------- the backend


class OnnxBackend(Backend):
    format = FORMAT
    label = "ONNX"
    runtime = "onnxruntime"
    quant_types = QUANT_TYPES
    sweep_ladder = (
        "fp32", "fp16", "int8-dynamic", "int8-static-per-tensor", "int8-static-per-channel",
    )  # fmt: skip
    # Each step of the ladder is a quantization type and its weight granularity
    # (None: the backend's default, per-channel).
    STEPS: dict[str, tuple[str, bool | None]] = {
        "fp32": ("fp32", None),
        "fp16": ("fp16", None),
        "int8-dynamic": ("int8-dynamic", None),
        "int8-static-per-tensor": ("int8-static", False),
        "int8-static-per-channel": ("int8-static", True),
        "int8-static-qoperator": ("int8-static-qoperator", None),
    }

    def inspect(self, path: str | os.PathLike[str]) -> ModelInfo:
        return inspect_onnx(path)

    def plan(self, info: ModelInfo, profile: Any, options: Any) -> Any:
        return plan_onnx(info, profile, options)

    def shrink(self, src: Any, profile: Any, options: Any, **kw: Any) -> Any:
        return shrink_onnx(src, profile, options, **kw)

    def normalize_quant(self, name: str) -> str:
        return normalize_quant(name)

    def estimate(self, info: ModelInfo, quant: str, profile: Any) -> MemoryEstimate:
        return estimate_onnx_memory(info, quant, profile)

    def inspect_details(self, info: ModelInfo) -> list[tuple[str, Any]]:
        return graph_details(info)

    def sweep_step(self, name: str) -> str:
        key = name.strip().lower().replace("_", "-")
        if key in self.STEPS:
            return key
        try:
            quant = normalize_quant(key)
        except QuantizationError:
            raise SweepError(
                f"'{name}' is not a step of the ONNX sweep ladder",
                hint=f"use some of: {', '.join(self.STEPS)}",
            ) from None
        # `shrink -q int8-static` makes per-channel weights; the same name means the same here.
        return "int8-static-per-channel" if quant == "int8-static" else quant

    def step_options(self, step: str) -> dict[str, Any]:
        quant, per_channel = self.STEPS[step]
        return {"quant": quant, "per_channel": per_channel}

    def needs_calibration(self, quant: str) -> bool:
        return quant.startswith("int8-static")

    def check_sweep_base(self, info: ModelInfo) -> None:
        if info.is_quantized or info.file_type == "FP16":
            raise SweepError(
                f"{info.path.name} is already {info.file_type}; an ONNX sweep starts from the "
                "FP32 original",
                hint="give the FP32 export of the model",
            )

    def evaluate(self, base: Any, candidate: Any, **kw: Any) -> Any:
        from edgeshrink.quality import evaluate_onnx  # quality reads this module's runtime

        return evaluate_onnx(base, candidate, **kw)

    def device_files(self, info: ModelInfo, model: Path) -> list[Path]:
        """The external data files the model finds by relative name, beside it."""
        entries = dict(info.metadata).get("external_data") or []
        return [
            model.parent / entry["file"]
            for entry in entries
            if isinstance(entry, dict) and entry.get("file")
        ]


def io_text(tensor: dict) -> str:
    """An input/output as stored: a quantized int8 tensor shows int8 with its scale and
    zero point (edgeshrink still accepts float data for it and quantizes it)."""
    shape = ",".join(str(d) for d in tensor["shape"])
    stored = tensor.get("storage_dtype") or tensor["dtype"]
    text = f"{tensor['name']} {stored}[{shape}]"
    quant = tensor.get("quantization")
    if quant and stored != tensor["dtype"]:
        scale, zero = quant.get("scale"), quant.get("zero_point")
        scale = scale[0] if isinstance(scale, list) and len(scale) == 1 else scale
        zero = zero[0] if isinstance(zero, list) and len(zero) == 1 else zero
        text += (
            f" (scale {scale:.4g}, zero point {zero})"
            if isinstance(scale, float)
            else " (quantized)"
        )
    return text


def graph_details(info: ModelInfo) -> list[tuple[str, Any]]:
    """The `inspect` lines of a graph model (ONNX, TFLite): its inputs, outputs, operators."""
    meta = dict(info.metadata)
    io = [io_text(t) for t in meta.get("inputs", [])]
    out = [io_text(t) for t in meta.get("outputs", [])]
    ops = sorted((meta.get("op_histogram") or {}).items(), key=lambda kv: -kv[1])
    if meta.get("operators"):  # TFLite: operator versions matter (old runtimes refuse new ones)
        ops = [(f"{o['op']} v{o['version']}", o["count"]) for o in meta["operators"]]
    compute = meta.get("compute") or {}
    return [
        ("opset", ", ".join(f"{d} {v}" for d, v in (meta.get("opset") or {}).items()) or "-"),
        ("inputs", "; ".join(io)),
        ("outputs", "; ".join(out)),
        ("operators", ", ".join(f"{op} {n}" for op, n in ops[:8]) + (" …" if len(ops) > 8 else "")),
        ("compute", f"{compute.get('kind', '?')}-heavy ({compute.get('conv_share', 0):.0%} of multiply-adds in Conv)"),
        ("quantization", meta.get("quantization") or "none"),
        ("external data", ", ".join(e["file"] for e in meta.get("external_data") or []) or "none"),
    ]  # fmt: skip


BACKEND = OnnxBackend()
