"""Front ends that produce the formats edgeshrink shrinks: Hugging Face checkpoints -> GGUF.

Importing this package is cheap; numpy and gguf load when a function runs.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edgeshrink.convert.hf_to_gguf import ConvertResult, ProgressFn
    from edgeshrink.formats.base import ModelInfo

__all__ = [
    "ConvertResult",
    "convert_hf_to_gguf",
    "inspect_hf",
    "is_hf_checkpoint",
    "supported_architectures",
]


def is_hf_checkpoint(path: str | os.PathLike[str]) -> bool:
    """True for a directory holding a ``config.json`` (a Hugging Face model directory)."""
    from edgeshrink.convert.hf_to_gguf import is_hf_checkpoint as check

    return check(path)


def inspect_hf(path: str | os.PathLike[str]) -> ModelInfo:
    """Describe a Hugging Face checkpoint (format "hf") without reading its weights."""
    from edgeshrink.convert.hf_to_gguf import inspect_hf as inspect

    return inspect(path)


def convert_hf_to_gguf(
    src_dir: str | os.PathLike[str],
    dst_path: str | os.PathLike[str],
    *,
    outtype: str = "f16",
    progress: ProgressFn | None = None,
) -> ConvertResult:
    """Convert a Hugging Face checkpoint directory to one GGUF file (see hf_to_gguf)."""
    from edgeshrink.convert.hf_to_gguf import convert_hf_to_gguf as convert

    return convert(src_dir, dst_path, outtype=outtype, progress=progress)


def supported_architectures() -> list[dict[str, Any]]:
    """The convertible architectures as data: family, Hugging Face classes, llama.cpp arch."""
    from edgeshrink.convert.architectures import ARCHITECTURES

    return [
        {
            "family": spec.family,
            "hf_classes": list(spec.hf_classes),
            "gguf_arch": spec.gguf_arch.lower(),
            "examples": spec.example,
        }
        for spec in ARCHITECTURES
    ]


def __getattr__(name: str) -> Any:
    if name == "ConvertResult":
        from edgeshrink.convert.hf_to_gguf import ConvertResult

        return ConvertResult
    raise AttributeError(name)
