"""Front ends that produce the formats edgeshrink shrinks: Hugging Face checkpoints -> GGUF.

Importing this package is cheap; numpy and gguf load when a function runs.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from edgeshrink.convert.architectures import ARCHITECTURES
from edgeshrink.convert.hf_to_gguf import (
    ConvertResult,
    convert_hf_to_gguf,
    inspect_hf,
    is_hf_checkpoint,
)

__all__ = [
    "CONVERTERS",
    "converter_to",
    "ConvertResult",
    "convert_hf_to_gguf",
    "inspect_hf",
    "is_hf_checkpoint",
    "supported_architectures",
]


# `shrink --to FORMAT`: the front ends that convert a framework's model into a format,
# each "module:function" taking (src, profile, options, output=, progress=).
CONVERTERS: dict[str, str] = {
    "tflite": "edgeshrink.convert.tflite_convert:shrink_to_tflite",
}


def converter_to(fmt: str) -> Callable[..., Any]:
    """The front end that converts a framework's model to ``fmt`` (imported when asked)."""
    module, _, function = CONVERTERS[fmt].partition(":")
    return getattr(importlib.import_module(module), function)


def supported_architectures() -> list[dict[str, Any]]:
    """The convertible architectures as data: family, Hugging Face classes, llama.cpp arch."""
    return [
        {
            "family": spec.family,
            "hf_classes": list(spec.hf_classes),
            "gguf_arch": spec.gguf_arch.lower(),
            "examples": spec.example,
        }
        for spec in ARCHITECTURES
    ]
