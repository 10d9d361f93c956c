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

The package, one module per concern: constants.py (the format's name and quantization
types), flatbuffer.py (the file itself), inspect.py, plan.py, runtime.py (the
interpreter), quantize.py, build.py and backend.py.  Inputs and outputs are described
and fed with the graph helpers of edgeshrink/formats/tensors.py, shared with ONNX.

numpy, flatbuffers, ai_edge_litert and ai_edge_quantizer are imported inside the
functions that need them.
"""

from __future__ import annotations

from edgeshrink.errors import CalibrationError
from edgeshrink.formats.tensors import RANDOM_CALIBRATION_SAMPLES, io_specs
from edgeshrink.formats.tflite.backend import TfliteBackend
from edgeshrink.formats.tflite.constants import FORMAT, MIB, QUANT_TYPES, STATIC_QUANTS, Progress
from edgeshrink.formats.tflite.flatbuffer import (
    FLATBUFFER_LIMIT,
    MAGIC,
    fix_operator_versions,
    read_tflite,
    tflite_schema,
)
from edgeshrink.formats.tflite.inspect import (
    CONV_OPS,
    MATMUL_OPS,
    NEWER_THAN_TFLITE_RUNTIME,
    QUANTIZED_ACTIVATION_TYPES,
    QUANTIZED_WEIGHT_TYPES,
    WEIGHT_OPS,
    compute_profile,
    inspect_tflite,
    runtime_notes,
)
from edgeshrink.formats.tflite.plan import (
    RUNTIME_OVERHEAD_BYTES,
    estimate_tflite_memory,
    normalize_quant,
    plan_tflite,
)
from edgeshrink.formats.tflite.quantize import (
    QuantizeOutcome,
    calibration_batches,
    check_calibration_method,
    quantize_tflite,
    recipe_detail,
)
from edgeshrink.formats.tflite.runtime import (
    TfliteRunner,
    dequantize_values,
    open_interpreter,
    quantize_values,
    tflite_load_error,
    verify_runs,
)

__all__ = [
    "BACKEND",
    "CONV_OPS",
    "CalibrationError",
    "FLATBUFFER_LIMIT",
    "FORMAT",
    "MAGIC",
    "MATMUL_OPS",
    "MIB",
    "NEWER_THAN_TFLITE_RUNTIME",
    "Progress",
    "QUANTIZED_ACTIVATION_TYPES",
    "QUANTIZED_WEIGHT_TYPES",
    "QUANT_TYPES",
    "QuantizeOutcome",
    "RANDOM_CALIBRATION_SAMPLES",
    "RUNTIME_OVERHEAD_BYTES",
    "STATIC_QUANTS",
    "TfliteBackend",
    "TfliteRunner",
    "WEIGHT_OPS",
    "calibration_batches",
    "check_calibration_method",
    "compute_profile",
    "dequantize_values",
    "estimate_tflite_memory",
    "fix_operator_versions",
    "inspect_tflite",
    "io_specs",
    "normalize_quant",
    "open_interpreter",
    "plan_tflite",
    "quantize_tflite",
    "quantize_values",
    "read_tflite",
    "recipe_detail",
    "runtime_notes",
    "tflite_load_error",
    "tflite_schema",
    "verify_runs",
]

BACKEND = TfliteBackend()
