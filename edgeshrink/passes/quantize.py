"""The quantize pass: fewer bits per weight, with each format's own quantizer.

The type vocabulary belongs to each backend (llama.cpp's types, ONNX's and TFLite's
modes); the pass only says that a recipe ends in one type.
"""

from __future__ import annotations

from edgeshrink.passes.base import Pass, Setting

QUANTIZE = Pass(
    name="quantize",
    summary="store the weights in fewer bits with the format's own quantizer",
    formats=("gguf", "onnx", "tflite", "hf"),
    produces="a model of the same format and architecture, smaller",
    settings=(
        Setting(
            "type",
            str,
            "a type of the model's format (`edgeshrink plan` lists them)",
            check=lambda v: None if v.strip() else "empty type",
        ),
        Setting(
            "imatrix",
            str,
            "GGUF: the sha256 of the importance matrix the quantizer weighs its errors with",
            default=None,
        ),
        Setting(
            "imatrix_text",
            str,
            "GGUF: the sha256 of the calibration text the importance matrix was computed over "
            "(for a file made elsewhere, the texts it names)",
            default=None,
        ),
        Setting(
            "max_size",
            int,
            "GGUF: a size budget in bytes; each tensor gets the type that fits it with the "
            "least estimated loss (a mix, starting from `type`)",
            default=None,
            check=lambda v: None if v > 0 else "a size budget must be positive",
        ),
    ),
)
