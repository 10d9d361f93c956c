"""The one place artifacts are made: run a recipe on a model for one device.

    plan (the backend) ▸ output path ▸ preflight ▸ hash ▸ reuse? ▸ work dir
      ▸ the passes (the backend's build) ▸ verify ▸ atomic rename ▸ manifest

The same input bytes and the same recipe give the same artifact: it is found,
verified (size and sha256 against its manifest) and returned, never rebuilt.
Nothing half-made ever carries the final name: a failed or interrupted run
leaves the output path as it was and removes its work dir.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from edgeshrink.artifacts import Artifact, default_output_path, load_artifact, tool_versions
from edgeshrink.errors import EdgeshrinkError, ModelFileError, QuantizationError
from edgeshrink.formats import backend, detect_and_inspect
from edgeshrink.formats.base import Backend, Built, ModelInfo
from edgeshrink.passes import Recipe, check_recipe, from_manifest, step
from edgeshrink.plan import ShrinkOptions, ShrinkPlan
from edgeshrink.profiles import HardwareProfile
from edgeshrink.util import atomic_path, first_line, make_work_dir, write_json_atomic

Progress = Callable[[str], None]


@dataclass(frozen=True)
class ShrinkResult:
    plan: ShrinkPlan | None  # None: a recipe run for no device (prune without --profile)
    artifact: Artifact
    reused: bool
    seconds: float


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


def recipe_for(plan: ShrinkPlan, options: ShrinkOptions) -> Recipe:
    """The passes a shrink runs: the options' own passes, then the planned type (and the
    size budget a mix of types meets)."""
    return (*options.passes, step("quantize", type=plan.quant, max_size=plan.max_size))


def reusable_artifact(
    output: Path, source_sha: str, recipe: Recipe, details: tuple[str, ...] | None = None
) -> Artifact | None:
    """The artifact already at ``output``, made from the same bytes by the same recipe
    (and, when ``details`` says, with one of the settings its tool could have chosen)."""
    if not output.exists():
        return None
    try:
        existing = load_artifact(output, verify=True)
    except EdgeshrinkError:
        return None
    if existing.source_sha256 != source_sha:
        return None
    if from_manifest(existing.recipe) != tuple(s.to_dict() for s in recipe):
        return None
    if details is not None and existing.recipe_detail not in details:
        return None
    return existing


def shrink_model(
    src: str | os.PathLike[str],
    profile: HardwareProfile,
    options: ShrinkOptions | None = None,
    *,
    output: str | os.PathLike[str] | None = None,
    progress: Progress | None = None,
    info: ModelInfo | None = None,
) -> ShrinkResult:
    """Shrink ``src`` for ``profile``: the planned recipe, carried out by its format's backend."""
    options = options or ShrinkOptions()
    src = Path(src)
    info = info or detect_and_inspect(src)
    fmt = backend(info.format)
    plan = fmt.plan(info, profile, options)
    first = fmt.intermediate(src, info, plan, options, Path(output) if output else None)
    if first is None:
        return run_recipe(src, info, fmt, plan, recipe_for(plan, options), profile, options,
                          output=resolve_output(src, plan.label, output), progress=progress)  # fmt: skip
    base, base_recipe = first
    final = Path(output) if output else default_output_path(src, plan.label)
    made = run_recipe(src, info, fmt, plan, base_recipe, profile, options, output=base,
                      progress=progress, for_profile=base == final)  # fmt: skip
    if base == final:
        return made  # the front end's file is what was asked for (a float type)
    nested = fmt.front_end_for or info.format
    # The passes the front end carried out (a prune before conversion) are not done twice.
    rest = replace(options, passes=tuple(p for p in options.passes if p not in base_recipe))
    return shrink_model(base, profile, rest, output=final, progress=progress,
                        info=backend(nested).inspect(base))  # fmt: skip


def run_recipe(
    src: Path,
    info: ModelInfo,
    fmt: Backend,
    plan: ShrinkPlan | None,
    recipe: Recipe,
    profile: HardwareProfile | None,
    options: ShrinkOptions,
    *,
    output: Path,
    progress: Progress | None = None,
    for_profile: bool = True,
) -> ShrinkResult:
    """Make ``output`` from ``src`` with ``recipe``, or find it already made (a front
    end's intermediate file is made ``for_profile=False``: any device's shrink uses it)."""
    say = progress or (lambda _msg: None)
    quant = recipe[-1].get("type")
    check_recipe(recipe, info.format)
    fmt.check_recipe(info, recipe)
    if plan is not None:
        fmt.preflight(info, plan, options)
    say(f"hashing {src.name}")
    source_sha = fmt.source_sha256(src, info)
    # What the recipe's settings leave to the backend (an importance matrix) is found or
    # made now: its hash is part of the reuse key.
    extra, options = fmt.resolve_settings(src, info, recipe, options, source_sha, say)
    if extra:
        recipe = (*recipe[:-1], step(recipe[-1].name, **dict(recipe[-1].settings), **extra))
    if not options.force:
        details = fmt.reuse_details(info, profile, options, quant)
        existing = reusable_artifact(output, source_sha, recipe, details)
        if existing is not None:
            say(f"reusing {output.name} (made from the same bytes by the same recipe)")
            return ShrinkResult(plan=plan, artifact=existing, reused=True, seconds=0.0)
    fmt.check_source(src, info, options, say)
    start = time.perf_counter()
    work = make_work_dir(output).resolve()
    try:
        with quantizer_failures(src, quant, fmt.tool, fmt.failure_hint):
            built = fmt.build(src, work, output.name, recipe, info=info, profile=profile,
                              options=options, progress=say)  # fmt: skip
        built = fmt.verify(built, info, options, say)
        artifact = install_artifact(
            built, output, src=src, source_sha256=source_sha, format=built.format or info.format,
            quant=built.quant or quant, profile_id=profile.id if for_profile and profile else None,
            notes=(plan.reason, *built.notes) if for_profile and plan else built.notes,
        )  # fmt: skip
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return ShrinkResult(
        plan=plan, artifact=artifact, reused=False, seconds=time.perf_counter() - start
    )


def install_artifact(
    built: Built,
    output: Path,
    *,
    src: Path,
    source_sha256: str,
    format: str,
    quant: str,
    profile_id: str | None,
    notes: tuple[str, ...],
) -> Artifact:
    """Give a built and verified file its final name, with its manifest beside it."""
    with atomic_path(output) as tmp:
        for data in built.data_files:
            os.replace(data, output.parent / data.name)
        os.replace(built.path, tmp)
        artifact = Artifact.of_file(
            output, written=tmp, format=format, quant=quant, source=src,
            source_sha256=source_sha256, profile_id=profile_id,
            tool_versions={**tool_versions(), **dict(built.tool_versions)},
            tensor_types=built.tensor_types, fallbacks=built.fallbacks, notes=notes,
            recipe=built.recipe,
        )  # fmt: skip
        # The manifest goes in first: an artifact whose manifest is missing is
        # never reused, so a crash between the two renames only costs a redo.
        write_json_atomic(artifact.manifest_path, artifact.to_manifest())
    return artifact


__all__ = [
    "Progress", "ShrinkResult", "default_output_path", "install_artifact", "plan_model", "quantizer_failures",
    "recipe_for", "resolve_output", "reusable_artifact", "run_recipe", "shrink_model",
]  # fmt: skip
