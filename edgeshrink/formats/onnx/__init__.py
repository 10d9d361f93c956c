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

The package, one module per concern: constants.py (the format's name and quantization
types), inspect.py (reading the file), plan.py, runtime.py (onnxruntime sessions),
quantize.py, build.py (its part of edgeshrink.pipeline) and backend.py.  The input specs and data readers it shares with
the TFLite backend are in edgeshrink/formats/tensors.py; this package re-exports them.

onnx, onnxruntime and numpy are imported inside the functions that need them.
"""

from __future__ import annotations

from edgeshrink.errors import CalibrationError
from edgeshrink.formats.onnx.backend import OnnxBackend
from edgeshrink.formats.onnx.build import EXTERNAL_DATA_THRESHOLD
from edgeshrink.formats.onnx.constants import (
    FORMAT,
    INT8_QUANTS,
    MIB,
    PLAN_ORDER,
    QUANT_TYPES,
    Progress,
)
from edgeshrink.formats.onnx.inspect import (
    CONV_OPS,
    DYNAMIC_OPS,
    FILE_TYPE_OF_FLOAT,
    FLOAT_TYPES,
    MATMUL_OPS,
    QDQ_OPS,
    QOPERATOR_OPS,
    compute_profile,
    external_data_files,
    graph_io,
    import_onnx,
    inspect_onnx,
    integer_input_bounds,
    load_model_proto,
)
from edgeshrink.formats.onnx.plan import (
    RUNTIME_OVERHEAD_BYTES,
    Int8Recipe,
    estimate_onnx_memory,
    int8_recipe,
    normalize_quant,
    plan_onnx,
)
from edgeshrink.formats.onnx.quantize import (
    CHOICE_FEEDS,
    QuantizeOutcome,
    calibration_agreement,
    calibration_batches,
    quantize_onnx,
)
from edgeshrink.formats.onnx.runtime import (
    import_ort,
    open_session,
    ort_load_error,
    verify_runs,
    working_directory,
)
from edgeshrink.formats.tensors import (
    MAX_BATCH_ROWS,
    MAX_CALIBRATION_SAMPLES,
    RANDOM_CALIBRATION_SAMPLES,
    InputBatches,
    TensorSpec,
    fingerprint_calibration,
    graph_details,
    int_bounds_of,
    io_specs,
    io_text,
    make_batches,
    random_batches,
    random_integers,
    read_arrays,
)

__all__ = [
    "BACKEND",
    "CHOICE_FEEDS",
    "CONV_OPS",
    "CalibrationError",
    "DYNAMIC_OPS",
    "EXTERNAL_DATA_THRESHOLD",
    "FILE_TYPE_OF_FLOAT",
    "FLOAT_TYPES",
    "FORMAT",
    "INT8_QUANTS",
    "InputBatches",
    "Int8Recipe",
    "MATMUL_OPS",
    "MAX_BATCH_ROWS",
    "MAX_CALIBRATION_SAMPLES",
    "MIB",
    "OnnxBackend",
    "PLAN_ORDER",
    "Progress",
    "QDQ_OPS",
    "QOPERATOR_OPS",
    "QUANT_TYPES",
    "QuantizeOutcome",
    "RANDOM_CALIBRATION_SAMPLES",
    "RUNTIME_OVERHEAD_BYTES",
    "TensorSpec",
    "calibration_agreement",
    "calibration_batches",
    "compute_profile",
    "estimate_onnx_memory",
    "external_data_files",
    "fingerprint_calibration",
    "graph_details",
    "graph_io",
    "import_onnx",
    "import_ort",
    "inspect_onnx",
    "int8_recipe",
    "int_bounds_of",
    "integer_input_bounds",
    "io_specs",
    "io_text",
    "load_model_proto",
    "make_batches",
    "normalize_quant",
    "open_session",
    "ort_load_error",
    "plan_onnx",
    "quantize_onnx",
    "random_batches",
    "random_integers",
    "read_arrays",
    "verify_runs",
    "working_directory",
]

BACKEND = OnnxBackend()
