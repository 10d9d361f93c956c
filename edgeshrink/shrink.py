"""Shrink one model for one device (the names the rest of edgeshrink and its users
import; the work is edgeshrink.pipeline's)."""

from __future__ import annotations

import os

from edgeshrink.artifacts import default_output_path
from edgeshrink.formats import backend
from edgeshrink.formats.base import ModelInfo
from edgeshrink.pipeline import (
    Progress,
    ShrinkResult,
    plan_model,
    quantizer_failures,
    resolve_output,
    reusable_artifact,
    shrink_model,
)
from edgeshrink.plan import ShrinkOptions
from edgeshrink.profiles import HardwareProfile


def shrink_gguf(
    src: str | os.PathLike[str],
    profile: HardwareProfile,
    options: ShrinkOptions | None = None,
    *,
    output: str | os.PathLike[str] | None = None,
    progress: Progress | None = None,
    info: ModelInfo | None = None,
) -> ShrinkResult:
    """``shrink_model`` for a file known to be GGUF (read as GGUF whatever its name)."""
    return shrink_model(src, profile, options, output=output, progress=progress,
                        info=info or backend("gguf").inspect(src))  # fmt: skip


__all__ = [
    "ShrinkResult", "default_output_path", "plan_model", "quantizer_failures",
    "resolve_output", "reusable_artifact", "shrink_gguf", "shrink_model",
]  # fmt: skip
