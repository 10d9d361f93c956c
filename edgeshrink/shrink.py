"""Shrink one model for one device: plan, quantize, write the artifact and its manifest."""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from edgeshrink.artifacts import Artifact, load_artifact, tool_versions
from edgeshrink.errors import EdgeshrinkError, ModelFileError, QuantizationError
from edgeshrink.formats import backend, detect_and_inspect, gguf
from edgeshrink.formats.base import ModelInfo
from edgeshrink.plan import ShrinkOptions, ShrinkPlan, plan_gguf
from edgeshrink.profiles import HardwareProfile
from edgeshrink.util import atomic_path, first_line, sha256_file, write_json_atomic

Progress = Callable[[str], None]

_PRECISION_SUFFIX = re.compile(r"[-_.](f32|f16|bf16|fp16|fp32)$", re.IGNORECASE)


@dataclass(frozen=True)
class ShrinkResult:
    plan: ShrinkPlan
    artifact: Artifact
    reused: bool
    seconds: float


def default_output_path(src: Path, quant: str, suffix: str | None = None) -> Path:
    """``model-f16.gguf`` -> ``./model-q4_0.gguf``: in the current directory, like
    most tools that make a new file, so a read-only model folder is never written."""
    stem = _PRECISION_SUFFIX.sub("", src.name if src.is_dir() else src.stem)
    suffix = suffix or (".gguf" if src.is_dir() else src.suffix)
    return Path.cwd() / f"{stem}-{quant.lower()}{suffix}"


def resolve_output(src: Path, quant: str, output: str | os.PathLike[str] | None) -> Path:
    """The artifact path: ``output`` or the default, never the input itself."""
    out = Path(output) if output else default_output_path(src, quant)
    if out.resolve() == src.resolve():
        raise ModelFileError(
            f"{out}: the output would overwrite the input", hint="choose another -o path"
        )
    return out


@contextlib.contextmanager
def quantizer_failures(src: Path, quant: str, tool: str, hint: str) -> Iterator[None]:
    """Third-party quantizers raise anything: turn it into one QuantizationError line."""
    try:
        yield
    except EdgeshrinkError:
        raise
    except Exception as exc:  # noqa: BLE001 - the point is to catch what they raise
        raise QuantizationError(
            f"{src.name}: {quant} failed in {tool}: {first_line(exc)}", hint=hint
        ) from exc


def plan_model(info: ModelInfo, profile: HardwareProfile, options: ShrinkOptions) -> ShrinkPlan:
    return backend(info.format).plan(info, profile, options)


def shrink_model(
    src: str | os.PathLike[str],
    profile: HardwareProfile,
    options: ShrinkOptions,
    *,
    output: str | os.PathLike[str] | None = None,
    progress: Progress | None = None,
    info: ModelInfo | None = None,
) -> ShrinkResult:
    """Shrink ``src`` with the backend of its format (see edgeshrink.formats)."""
    info = info or detect_and_inspect(src)
    return backend(info.format).shrink(
        src, profile, options, output=output, progress=progress, info=info
    )


def reusable_artifact(output: Path, source_sha: str, quant: str) -> Artifact | None:
    """An artifact already at ``output`` made from the same bytes with the same type."""
    if not output.exists():
        return None
    try:
        existing = load_artifact(output, verify=True)
    except EdgeshrinkError:
        return None
    if existing.source_sha256 == source_sha and existing.quant == quant:
        return existing
    return None


def shrink_gguf(
    src: str | os.PathLike[str],
    profile: HardwareProfile,
    options: ShrinkOptions | None = None,
    *,
    output: str | os.PathLike[str] | None = None,
    progress: Progress | None = None,
    info: ModelInfo | None = None,
) -> ShrinkResult:
    import time

    options = options or ShrinkOptions()
    if options.calibration or options.allow_random_calibration:
        raise EdgeshrinkError(
            "calibration data applies to ONNX and TFLite static int8, not to GGUF",
            hint="drop --calibration; llama.cpp's quantizer needs none",
        )
    say = progress or (lambda _msg: None)
    src = Path(src)
    info = info or gguf.inspect_gguf(src)
    plan = plan_gguf(info, profile, options)
    out = resolve_output(src, plan.quant, output)
    say(f"hashing {src.name}")
    source_sha = sha256_file(src)
    if not options.force and (existing := reusable_artifact(out, source_sha, plan.quant)):
        return ShrinkResult(plan=plan, artifact=existing, reused=True, seconds=0.0)
    say(f"quantizing {src.name} to {plan.quant} with llama.cpp")
    start = time.perf_counter()
    with atomic_path(out) as tmp:
        outcome = gguf.quantize_gguf(
            src, tmp, plan.quant, threads=options.threads, allow_requantize=options.allow_requantize
        )
        say(f"verifying {out.name}")
        artifact = Artifact.of_file(
            out, written=tmp, format=gguf.FORMAT, quant=plan.quant, source=src,
            source_sha256=source_sha, profile_id=profile.id,
            tool_versions={**tool_versions(), "llama-cpp-python": outcome.llama_cpp_version},
            tensor_types=outcome.tensor_types, fallbacks=outcome.fallbacks, notes=(plan.reason,),
        )  # fmt: skip
        # The manifest goes in first: an artifact whose manifest is missing is
        # never reused, so a crash between the two renames only costs a redo.
        write_json_atomic(artifact.manifest_path, artifact.to_manifest())
    return ShrinkResult(
        plan=plan, artifact=artifact, reused=False, seconds=time.perf_counter() - start
    )
