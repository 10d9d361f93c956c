"""The ONNX backend's name and quantization types, shared by its modules."""

from __future__ import annotations

from collections.abc import Callable

FORMAT = "onnx"
MIB = 1024 * 1024
Progress = Callable[[str], None]

QUANT_TYPES = ("fp32", "fp16", "int8-dynamic", "int8-static", "int8-static-qoperator")
PLAN_ORDER = ("fp32", "fp16", "int8-static", "int8-dynamic")  # largest first
INT8_QUANTS = ("int8-dynamic", "int8-static", "int8-static-qoperator")
