"""The TFLite backend's name and quantization types, shared by its modules."""

from __future__ import annotations

from collections.abc import Callable

FORMAT = "tflite"
MIB = 1024 * 1024
Progress = Callable[[str], None]

# Quantization types, largest first.  "int8" keeps float inputs and outputs (a
# QUANTIZE at the entry, a DEQUANTIZE at the exit), "int8-int8-io" does not.
QUANT_TYPES = ("float32", "fp16", "weight-only-int8", "dynamic-int8", "int8", "int8-int8-io")
STATIC_QUANTS = ("int8", "int8-int8-io")
