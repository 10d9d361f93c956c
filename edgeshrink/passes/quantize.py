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
    ),
)
