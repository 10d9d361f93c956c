"""Hugging Face checkpoint directories: planned from their headers, converted to GGUF,
then shrunk by the GGUF backend.

The converted GGUF (F16/BF16/F32, llama.cpp's input) is kept beside the final
artifact with its own manifest, so a second shrink of the same checkpoint
reuses it and `eval`/`sweep` have a base to compare against.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgeshrink.formats import backend
from edgeshrink.formats.base import Backend, ModelInfo
from edgeshrink.plan import ShrinkOptions, ShrinkPlan, plan_llm
from edgeshrink.profiles import HardwareProfile

Progress = Callable[[str], None]
FLOAT_TYPES = ("F32", "F16", "BF16")  # what the converter writes itself
CHECKPOINT_FILES = ("config.json", "tokenizer.json", "tokenizer.model", "tokenizer_config.json",
                    "special_tokens_map.json", "generation_config.json", "modules.json", "vocab.txt")  # fmt: skip


def inspect_hf(path: str | os.PathLike[str]) -> ModelInfo:
    from edgeshrink.convert import inspect_hf as inspect

    return inspect(path)


def plan_hf(
    info: ModelInfo, profile: HardwareProfile, options: ShrinkOptions | None = None
) -> ShrinkPlan:
    from edgeshrink.convert.hf_to_gguf import gguf_tensor_shapes

    options = options or ShrinkOptions()
    shapes = gguf_tensor_shapes(info.path, options.convert_type)
    return plan_llm(info, profile, options, shapes)


def checkpoint_sha256(directory: Path) -> str:
    """One sha256 over the checkpoint's weights and the files that shape its conversion."""
    digest = hashlib.sha256()
    files = sorted(directory.glob("*.safetensors")) + [
        directory / name for name in CHECKPOINT_FILES if (directory / name).exists()
    ]
    for path in files:
        digest.update(path.name.encode() + b"\0")
        with open(path, "rb") as handle:
            while chunk := handle.read(4 << 20):
                digest.update(chunk)
    return digest.hexdigest()


def shrink_hf(
    src: str | os.PathLike[str],
    profile: HardwareProfile,
    options: ShrinkOptions | None = None,
    *,
    output: str | os.PathLike[str] | None = None,
    progress: Progress | None = None,
    info: ModelInfo | None = None,
):
    from edgeshrink.artifacts import Artifact, tool_versions
    from edgeshrink.convert import convert_hf_to_gguf
    from edgeshrink.formats import gguf
    from edgeshrink.shrink import ShrinkResult, default_output_path, reusable_artifact, shrink_gguf
    from edgeshrink.util import write_json_atomic

    say = progress or (lambda _m: None)
    options = options or ShrinkOptions()
    src = Path(src)
    final = Path(output) if output else None
    info = info or inspect_hf(src)
    plan = plan_hf(info, profile, options)
    outtype = options.convert_type
    if outtype == "auto":
        outtype = "bf16" if info.file_type == "BF16" else "f16"
    # A float type asked for is what the converter writes: that file is the artifact.
    conversion_is_artifact = plan.quant.upper() in FLOAT_TYPES
    if conversion_is_artifact:
        outtype = plan.quant.lower()
    folder = (final or default_output_path(src, plan.quant)).parent
    say(f"hashing the checkpoint {src.name}")
    source_sha = checkpoint_sha256(src)
    base = folder / f"{src.name}-{outtype}.gguf"
    if conversion_is_artifact:
        base = final or default_output_path(src, plan.quant)
    start = time.perf_counter()
    converted = reusable_artifact(base, source_sha, outtype.upper())
    reused = converted is not None
    if converted is None:
        say(f"converting {src.name} to GGUF ({outtype})")
        result = convert_hf_to_gguf(src, base, outtype=outtype)
        converted = Artifact.of_file(
            base, format=gguf.FORMAT, quant=outtype.upper(), source=src, source_sha256=source_sha,
            profile_id=profile.id if conversion_is_artifact else None,
            tool_versions=tool_versions(), notes=result.notes,
        )  # fmt: skip
        try:
            write_json_atomic(converted.manifest_path, converted.to_manifest())
        except BaseException:
            base.unlink(missing_ok=True)  # a GGUF without its manifest is never reused
            raise
    else:
        say(f"reusing {base.name} (converted from the same checkpoint)")
    if conversion_is_artifact:
        return ShrinkResult(
            plan=plan, artifact=converted, reused=reused, seconds=time.perf_counter() - start
        )
    return shrink_gguf(base, profile, options, output=final or default_output_path(src, plan.quant),
                       progress=progress)  # fmt: skip


class HfBackend(Backend):
    """A front end: checkpoints are converted to GGUF and then are the GGUF backend's."""

    format = "hf"
    label = "llama.cpp"
    runtime = "llama.cpp, after conversion to GGUF"
    evaluation = "llm-text"

    @property
    def quant_types(self) -> tuple[str, ...]:  # type: ignore[override]
        return backend("gguf").quant_types

    def inspect(self, path: str | os.PathLike[str]) -> ModelInfo:
        return inspect_hf(path)

    def plan(self, info: ModelInfo, profile: Any, options: Any) -> Any:
        return plan_hf(info, profile, options)

    def shrink(self, src: Any, profile: Any, options: Any, **kw: Any) -> Any:
        return shrink_hf(src, profile, options, **kw)

    def normalize_quant(self, name: str) -> str:
        return backend("gguf").normalize_quant(name)


BACKEND = HfBackend()
