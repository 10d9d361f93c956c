"""Reading an ONNX file: the ModelProto and its external data, the graph's inputs and
outputs, where its multiply-adds are, and what `inspect` reports (inspect_onnx)."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from edgeshrink.errors import ModelFileError, RuntimeMissingError, UnsupportedFormatError
from edgeshrink.formats.base import ModelInfo, TensorTypeCount
from edgeshrink.formats.onnx.constants import FORMAT
from edgeshrink.formats.tensors import TensorSpec
from edgeshrink.util import first_line

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


def import_onnx() -> Any:
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


# --------------------------------------------------------------------------- loading


def _looks_like_onnx(head: bytes) -> bool:
    # ModelProto field 1 (ir_version, varint) comes first in every file onnx writes.
    return len(head) >= 2 and head[0] == 0x08 and 1 <= head[1] <= 20


def load_model_proto(path: str | os.PathLike[str]) -> Any:
    """The ModelProto of ``path`` without its external data, or one clear error
    (not ONNX, truncated, external data missing or short, fails onnx's checker)."""
    onnx = import_onnx()
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
    onnx = import_onnx()
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


def inspect_onnx(path: str | os.PathLike[str]) -> ModelInfo:
    """Describe an ONNX model without loading its weights into memory."""
    onnx = import_onnx()
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
