"""Format backends, registered by name and imported only when used.

A registration is data (name, file suffixes, magic bytes, the module that holds the
backend), so detecting a file's format imports nothing heavy.  Everything a format
knows is asked of its :class:`~edgeshrink.formats.base.Backend`: ``backend("onnx")``.
Adding a format means adding its module and one registration here.
"""

from __future__ import annotations

import errno
import importlib
import os
from dataclasses import dataclass
from pathlib import Path

from edgeshrink.errors import EdgeshrinkError, ModelFileError, UnsupportedFormatError
from edgeshrink.formats.base import Backend, ModelInfo


@dataclass(frozen=True)
class Registration:
    format: str
    suffixes: tuple[str, ...]
    magic: tuple[tuple[int, bytes], ...]  # (offset, bytes) that identify the format
    module: str  # holds BACKEND, the format's Backend


REGISTRY: dict[str, Registration] = {
    "gguf": Registration("gguf", (".gguf",), ((0, b"GGUF"),), "edgeshrink.formats.gguf.backend"),
    # A directory with config.json, see detect_format.
    "hf": Registration("hf", (), (), "edgeshrink.formats.hf"),
    # A bare protobuf: recognised by its suffix, validated by onnx on load.
    "onnx": Registration("onnx", (".onnx",), (), "edgeshrink.formats.onnx"),
    # The flatbuffer file identifier.
    "tflite": Registration("tflite", (".tflite",), ((4, b"TFL3"),), "edgeshrink.formats.tflite"),
}


def register(registration: Registration) -> None:
    REGISTRY[registration.format] = registration


def backend(name: str) -> Backend:
    if name not in REGISTRY:
        raise UnsupportedFormatError(
            f"format '{name}' has no backend in this version",
            hint=f"supported: {', '.join(sorted(REGISTRY))}",
        )
    return importlib.import_module(REGISTRY[name].module).BACKEND


def detect_format(path: str | os.PathLike[str]) -> str:
    path = Path(path)
    if not path.exists():
        try:
            os.stat(path)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise ModelFileError(
                    f"{path}: a loop of symbolic links (it never reaches a file)",
                    hint="point the link at the model file itself (ls -l shows where it goes)",
                ) from exc
            if exc.errno in (errno.EACCES, errno.EPERM):
                raise ModelFileError(
                    f"{path}: permission denied", hint="check the file's and its folders' rights"
                ) from exc
        raise ModelFileError(f"{path}: no such file or directory", hint="check the path")
    if path.is_dir():
        if (path / "config.json").is_file():
            return "hf"
        raise UnsupportedFormatError(
            f"{path}: a directory without config.json is not a Hugging Face checkpoint",
            hint="give a model file, or a Hugging Face model directory (config.json + *.safetensors)",
        )
    if path.is_file():
        with open(path, "rb") as handle:
            head = handle.read(16)
        for candidate in REGISTRY.values():
            if any(
                head[offset : offset + len(magic)] == magic for offset, magic in candidate.magic
            ):
                return candidate.format
        claimed = next((b for b in REGISTRY.values() if path.suffix.lower() in b.suffixes), None)
        if claimed is not None:
            if not claimed.magic:
                return claimed.format  # no magic to check (ONNX is a bare protobuf)
            what = "is empty" if not head else f"starts with {head[:8]!r}"
            raise ModelFileError(
                f"{path}: not a {claimed.format.upper()} file ({what})",
                hint="the file is damaged or of another kind; copy it again",
            )
    suffixes = sorted(s for b in REGISTRY.values() for s in b.suffixes)
    raise UnsupportedFormatError(
        f"{path}: not a model format edgeshrink reads",
        hint=f"supported: {', '.join(suffixes)} files",
    )


# What a reader's parsing of damaged bytes can raise before its own checks catch it.
READER_FAILURES = (
    ValueError, TypeError, AttributeError, IndexError, KeyError, OverflowError,
    UnicodeDecodeError, MemoryError, RecursionError,
)  # fmt: skip


def detect_and_inspect(path: str | os.PathLike[str]) -> ModelInfo:
    """Inspect any model file: a file the readers cannot make sense of is one
    ModelFileError naming what failed, never another exception."""
    kind = detect_format(path)
    try:
        return backend(kind).inspect(path)
    except EdgeshrinkError:
        raise
    except READER_FAILURES as exc:
        raise ModelFileError(
            f"{path}: a damaged or unusual {kind} file: reading it failed with "
            f"{type(exc).__name__}: {str(exc)[:200]}",
            hint="copy or export the model again; EDGESHRINK_DEBUG=1 shows where it failed",
        ) from exc
