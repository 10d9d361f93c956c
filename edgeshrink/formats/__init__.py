"""Format backends, described as data and imported only when used.

Each backend names, as "module:function" strings, how to inspect, plan and
shrink its format, so listing what edgeshrink supports imports nothing heavy:

    inspect(path) -> ModelInfo
    plan(info, profile, options: ShrinkOptions) -> ShrinkPlan
    shrink(src, profile, options, *, output, progress, info) -> ShrinkResult
"""

from __future__ import annotations

import errno
import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeshrink.errors import EdgeshrinkError, ModelFileError, UnsupportedFormatError
from edgeshrink.formats.base import ModelInfo


@dataclass(frozen=True)
class Backend:
    format: str
    suffixes: tuple[str, ...]
    magic: tuple[tuple[int, bytes], ...]  # (offset, bytes) that identify the format
    inspect: str
    plan: str
    shrink: str
    runtime: str  # what runs it on the device, for messages

    def function(self, role: str) -> Callable[..., Any]:
        module, _, name = getattr(self, role).partition(":")
        return getattr(importlib.import_module(module), name)


BACKENDS: dict[str, Backend] = {
    "gguf": Backend(
        format="gguf",
        suffixes=(".gguf",),
        magic=((0, b"GGUF"),),
        inspect="edgeshrink.formats.gguf:inspect_gguf",
        plan="edgeshrink.plan:plan_gguf",
        shrink="edgeshrink.shrink:shrink_gguf",
        runtime="llama.cpp (llama-cpp-python)",
    ),
    "hf": Backend(
        format="hf",
        suffixes=(),
        magic=(),  # a directory with config.json, see detect_format
        inspect="edgeshrink.formats.hf:inspect_hf",
        plan="edgeshrink.formats.hf:plan_hf",
        shrink="edgeshrink.formats.hf:shrink_hf",
        runtime="llama.cpp, after conversion to GGUF",
    ),
    "onnx": Backend(
        format="onnx",
        suffixes=(".onnx",),
        magic=(),  # a bare protobuf: recognised by its suffix, validated by onnx on load
        inspect="edgeshrink.formats.onnx:inspect_onnx",
        plan="edgeshrink.formats.onnx:plan_onnx",
        shrink="edgeshrink.formats.onnx:shrink_onnx",
        runtime="onnxruntime",
    ),
    "tflite": Backend(
        format="tflite",
        suffixes=(".tflite",),
        magic=((4, b"TFL3"),),  # the flatbuffer file identifier
        inspect="edgeshrink.formats.tflite:inspect_tflite",
        plan="edgeshrink.formats.tflite:plan_tflite",
        shrink="edgeshrink.formats.tflite:shrink_tflite",
        runtime="ai-edge-litert (LiteRT) or tflite-runtime",
    ),
}


def register(backend: Backend) -> None:
    BACKENDS[backend.format] = backend


def backend(name: str) -> Backend:
    if name not in BACKENDS:
        raise UnsupportedFormatError(
            f"format '{name}' has no backend in this version",
            hint=f"supported: {', '.join(sorted(BACKENDS))}",
        )
    return BACKENDS[name]


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
        for candidate in BACKENDS.values():
            if any(
                head[offset : offset + len(magic)] == magic for offset, magic in candidate.magic
            ):
                return candidate.format
        claimed = next((b for b in BACKENDS.values() if path.suffix.lower() in b.suffixes), None)
        if claimed is not None:
            if not claimed.magic:
                return claimed.format  # no magic to check (ONNX is a bare protobuf)
            what = "is empty" if not head else f"starts with {head[:8]!r}"
            raise ModelFileError(
                f"{path}: not a {claimed.format.upper()} file ({what})",
                hint="the file is damaged or of another kind; copy it again",
            )
    suffixes = sorted(s for b in BACKENDS.values() for s in b.suffixes)
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
        return backend(kind).function("inspect")(path)
    except EdgeshrinkError:
        raise
    except READER_FAILURES as exc:
        raise ModelFileError(
            f"{path}: a damaged or unusual {kind} file: reading it failed with "
            f"{type(exc).__name__}: {str(exc)[:200]}",
            hint="copy or export the model again; EDGESHRINK_DEBUG=1 shows where it failed",
        ) from exc
