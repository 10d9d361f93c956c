"""The .tflite flatbuffer itself, read lazily with the schema ai-edge-litert ships: the
header check, buffer extents, read_tflite's plain-Python view of the model, and
fix_operator_versions (which re-packs it)."""

from __future__ import annotations

import contextlib
import importlib
import mmap
import os
import re
import struct
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from edgeshrink.errors import (
    EdgeshrinkError,
    ModelFileError,
    RuntimeMissingError,
    UnsupportedFormatError,
)

MAGIC = b"TFL3"  # the flatbuffer file identifier, at offset 4
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


# --------------------------------------------------------------------------- operator versions


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
