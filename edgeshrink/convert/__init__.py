"""Front ends that produce the formats edgeshrink shrinks: Hugging Face checkpoints -> GGUF.

Importing this package is cheap; numpy and gguf load when a function runs.
"""

from __future__ import annotations

from typing import Any

from edgeshrink.convert.architectures import ARCHITECTURES
from edgeshrink.convert.hf_to_gguf import (
    ConvertResult,
    convert_hf_to_gguf,
    inspect_hf,
    is_hf_checkpoint,
)

__all__ = [
    "ConvertResult",
    "convert_hf_to_gguf",
    "inspect_hf",
    "is_hf_checkpoint",
    "supported_architectures",
]


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
