"""GGUF (llama.cpp) backend: inspect, quantization types, memory estimate, quantize.

gguf-py is the single source of truth for keys and tensor types; llama.cpp's own
quantizer (``llama_model_quantize`` through llama-cpp-python) does the work.
The quantizer runs in a child process: llama.cpp aborts the whole process on
some malformed inputs, and a child's abort is an error message, not a crash.

The package, one module per concern: quant_types.py (the types and their table),
reader.py (inspect), estimate.py (memory), quantize.py and backend.py (BACKEND, which
the registry loads; it is not imported here, so that the modules the build uses, the
distiller's among them, can import this package's readers first).  Importing it
imports neither numpy nor gguf-py: QUANT_TYPES is built when first read.
"""

from __future__ import annotations

from typing import Any

from edgeshrink.formats.gguf.estimate import MIB, estimate_memory, estimate_weight_bytes
from edgeshrink.formats.gguf.quant_types import (
    FORMAT,
    LLAMA_QUANTIZE_TYPES,
    PLAN_LADDER,
    UNQUANTIZED,
    GgufQuantType,
    quant_type,
    quant_types_table,
    supported_by_llama_cpp,
)
from edgeshrink.formats.gguf.quantize import (
    QuantizeOutcome,
    check_prune_layers,
    llama_cpp_version,
    off_type_tensors,
    quantize_gguf,
)
from edgeshrink.formats.gguf.reader import (
    GGUF_MAGIC,
    MAX_ARRAY_NESTING,
    MAX_DIMS,
    POSITION_ROWS,
    POSITION_TABLE,
    check_gguf_layout,
    inspect_gguf,
    is_encoder,
    position_rows,
    read_gguf,
    tensor_shapes,
)

__all__ = [
    "FORMAT",
    "GGUF_MAGIC",
    "GgufQuantType",
    "LLAMA_QUANTIZE_TYPES",
    "MAX_ARRAY_NESTING",
    "MAX_DIMS",
    "MIB",
    "PLAN_LADDER",
    "POSITION_ROWS",
    "POSITION_TABLE",
    "QuantizeOutcome",
    "check_prune_layers",
    "UNQUANTIZED",
    "check_gguf_layout",
    "estimate_memory",
    "estimate_weight_bytes",
    "inspect_gguf",
    "is_encoder",
    "llama_cpp_version",
    "off_type_tensors",
    "position_rows",
    "quant_type",
    "quant_types_table",
    "quantize_gguf",
    "read_gguf",
    "supported_by_llama_cpp",
    "tensor_shapes",
]


def __getattr__(name: str) -> Any:
    if name == "QUANT_TYPES":  # gguf.QUANT_TYPES still works, read lazily
        return quant_types_table()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
