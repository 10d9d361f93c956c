"""Format backends, registered by name; heavy imports happen inside their functions."""

from __future__ import annotations

import os
from pathlib import Path

from edgeshrink.errors import ModelFileError, UnsupportedFormatError
from edgeshrink.formats.base import ModelInfo

# Suffix -> backend format name.  ONNX and TFLite join with their issues.
SUFFIXES = {".gguf": "gguf"}
MAGIC = {b"GGUF": "gguf"}


def detect_format(path: str | os.PathLike[str]) -> str:
    path = Path(path)
    if not path.exists():
        raise ModelFileError(f"{path}: no such file or directory", hint="check the path")
    if path.is_file():
        with open(path, "rb") as handle:
            head = handle.read(8)
        for magic, name in MAGIC.items():
            if head.startswith(magic):
                return name
        claimed = SUFFIXES.get(path.suffix.lower())
        if claimed:
            what = "is empty" if not head else f"starts with {head[:4]!r}"
            raise ModelFileError(
                f"{path}: not a {claimed.upper()} file ({what})",
                hint="the file is damaged or of another kind; copy it again",
            )
    raise UnsupportedFormatError(
        f"{path}: not a model format edgeshrink reads",
        hint=f"supported: {', '.join(sorted(SUFFIXES))} files",
    )


def detect_and_inspect(path: str | os.PathLike[str]) -> ModelInfo:
    name = detect_format(path)
    if name == "gguf":
        from edgeshrink.formats import gguf

        return gguf.inspect_gguf(path)
    raise UnsupportedFormatError(f"{path}: format {name} has no backend")
