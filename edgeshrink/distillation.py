"""Distil one model: a pruned student (made here, or given) trained to imitate the
original, judged before and after on a held-out part of the text, and written through
the pipeline like any artifact (its recipe: prune ▸ distill ▸ quantize).

The text: with ``text`` its last ~10% (whole lines) is held out for the before/after
figures and the rest trains; without it the student trains on the calibration text
edgeshrink ships and is judged on its evaluation text. The held-out figures compare
the student with and without healing, both at the artifact's type, against the teacher.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from edgeshrink.artifacts import load_artifact
from edgeshrink.errors import EvalDataError, RecipeError
from edgeshrink.formats import backend
from edgeshrink.formats.base import ModelInfo
from edgeshrink.formats.gguf.embeddings import evaluate_embeddings
from edgeshrink.formats.gguf.quality import evaluate_llm
from edgeshrink.formats.gguf.reader import inspect_gguf
from edgeshrink.passes import step
from edgeshrink.passes.prune_choice import RemovalMeter, choose_removal, split_texts
from edgeshrink.pipeline import Progress, ShrinkResult, resolve_output, run_recipe, shrink_model
from edgeshrink.plan import ShrinkOptions
from edgeshrink.profiles import HardwareProfile
from edgeshrink.prune import FLOAT_TYPES, makes_embeddings, prunable, scoring_model
from edgeshrink.util import make_work_dir

HELD_OUT = 0.1
MIN_HELD_OUT_WORDS = 200


@dataclass(frozen=True)
class DistillOutcome:
    layers: tuple[int, ...]  # the teacher's blocks the student lacks
    result: ShrinkResult  # the healed artifact
    unhealed: Path  # the same student without training, at the same type
    before: dict[str, Any]  # held-out quality of the unhealed student against the teacher
    after: dict[str, Any]  # ... of the healed one
    facts: dict[str, Any]  # what the training did (steps, seconds, loss, peak memory)

    def to_dict(self) -> dict[str, Any]:
        art = self.result.artifact
        return {
            "layers": list(self.layers), "before": self.before, "after": self.after,
            "training": self.facts, "reused": self.result.reused,
            "artifact": art.to_manifest() | {"path": str(art.path)},
            "unhealed": str(self.unhealed),
        }  # fmt: skip


def split_text(text: str | None) -> tuple[str, str]:
    """(training, held-out) text; see the module doc."""
    if text is None:
        return split_texts(None, None)
    lines = text.splitlines(keepends=True)
    words = len(text.split())
    held: list[str] = []
    while lines and (sum(len(x.split()) for x in held) < max(MIN_HELD_OUT_WORDS, words * HELD_OUT)):
        held.insert(0, lines.pop())
    train = "".join(lines)
    if len(train.split()) < 2 * MIN_HELD_OUT_WORDS:
        raise EvalDataError(
            f"the text has {words} words; distillation needs at least "
            f"{3 * MIN_HELD_OUT_WORDS} ({MIN_HELD_OUT_WORDS} or 10% held out to judge the "
            "student, twice that to train on), in several lines",
            hint="give a longer --text (the more in-domain text, the better the student)",
        )
    return train, "".join(held)


def student_cuts(student: Path) -> tuple[int, ...]:
    """The teacher's blocks a student lacks, from the recipe in its manifest (if any)."""
    try:
        recipe = load_artifact(student, verify=False).recipe
    except Exception:  # noqa: BLE001 - a student without a manifest: cuts unknown
        return ()
    return tuple(i for s in recipe if s.get("pass") == "prune" for i in s.get("layers", []))


def distill_model(
    teacher: str | os.PathLike[str],
    *,
    student: str | os.PathLike[str] | None = None,
    n_layers: int | None = None,
    remove: tuple[int, ...] | None = None,
    text: str | None = None,
    training: dict[str, Any],
    quant: str | None = None,
    profile: HardwareProfile | None = None,
    output: str | os.PathLike[str] | None = None,
    threads: int | None = None,
    resume: bool = False,
    force: bool = False,
    progress: Progress | None = None,
) -> DistillOutcome:
    """``training``: the distill pass's settings (steps or minutes, train, temperature, ...)."""
    say = progress or (lambda _m: None)
    teacher = Path(teacher)
    info = prunable(teacher)
    train_text, held_out = split_text(text)
    teacher_gguf = scoring_model(teacher, info, threads=threads, force=force, progress=say)
    encoder = makes_embeddings(info)
    if student is not None:
        source, source_info = Path(student), inspect_gguf(student)
        layers = student_cuts(source)
        prunes: tuple[Any, ...] = ()
    else:
        # A language model's checkpoint is distilled as its GGUF (the teacher llama.cpp
        # runs); an embedding model's on the checkpoint itself, before conversion.
        source, source_info = (
            (teacher, info) if encoder else (teacher_gguf, inspect_gguf(teacher_gguf))
        )
        if remove:
            layers = tuple(sorted(remove))
        elif n_layers:
            layers = choose_layers(teacher_gguf, n_layers, train_text, held_out, threads, say)
        else:
            raise RecipeError(
                "say which student to train", hint="give --student FILE, --layers N or --remove 7,8"
            )
        prunes = (step("prune", layers=layers),)
    distill = step(
        "distill", teacher=backend(info.format).source_sha256(teacher, info),
        text=hashlib.sha256(train_text.encode()).hexdigest(),
        cuts=layers if student is not None and layers else None, **training,
    )  # fmt: skip
    options = ShrinkOptions(quant=quant, threads=threads, force=force, passes=(*prunes, distill),
                            text=train_text, teacher=teacher_gguf if student else None,
                            resume=resume)  # fmt: skip
    out_type = (
        backend("gguf").normalize_quant(quant) if quant else _float_or_own(source_info.file_type)
    )
    n = len(layers) or "x"
    if profile is not None:
        result = shrink_model(
            source, profile, options, output=output, progress=say, info=source_info
        )
        out_type = result.artifact.quant
    else:
        result = made(source, source_info, (*prunes, distill), out_type, options,
                      resolve_output(source, f"healed{n}-{out_type}", output), say)  # fmt: skip
    if student is not None:
        unhealed = source
    else:
        unhealed = made(
            source, source_info, prunes, out_type,
            ShrinkOptions(threads=threads, allow_requantize=True, passes=prunes),
            result.artifact.path.with_name(f"{result.artifact.path.stem}-unhealed.gguf"), say,
        ).artifact.path  # fmt: skip
    say("judging both students on the held-out text")
    if encoder:
        before: Any = evaluate_embeddings(teacher_gguf, unhealed, text=held_out, threads=threads)
        after: Any = evaluate_embeddings(teacher_gguf, result.artifact.path, text=held_out,
                                         threads=threads)  # fmt: skip
    else:
        before = evaluate_llm(teacher_gguf, unhealed, text=held_out, threads=threads)
        after = evaluate_llm(teacher_gguf, result.artifact.path, text=held_out, threads=threads)
    facts = next(
        (s.get("detail") for s in result.artifact.recipe if s.get("pass") == "distill"), None
    )
    if facts is None:  # a checkpoint's training is recorded in its converted file's manifest
        facts = _training_of(result.artifact.source_path)
    return DistillOutcome(layers, result, unhealed, before.to_dict(), after.to_dict(),
                          _json(facts))  # fmt: skip


def made(source: Path, info: ModelInfo, passes: tuple[Any, ...], out_type: str,
         options: ShrinkOptions, output: Path, say: Progress) -> ShrinkResult:  # fmt: skip
    """``source`` through ``passes`` at ``out_type`` for no device: directly, or for a
    checkpoint through its float conversion and then the GGUF quantizer."""
    fmt = backend(info.format)
    if not fmt.front_end_for or out_type.upper() in FLOAT_TYPES:
        recipe = (*passes, step("quantize", type=out_type))
        return run_recipe(source, info, fmt, None, recipe, None, options, output=output,
                          progress=say)  # fmt: skip
    converted = run_recipe(source, info, fmt, None, (*passes, step("quantize", type="F16")), None,
                           options, output=output.with_name(f"{output.stem}-f16.gguf"),
                           progress=say, for_profile=False).artifact.path  # fmt: skip
    return run_recipe(converted, inspect_gguf(converted), backend("gguf"), None,
                      (step("quantize", type=out_type),), None, replace(options, passes=()),
                      output=output, progress=say)  # fmt: skip


def _training_of(path: str) -> Any:
    try:
        recipe = load_artifact(Path(path), verify=False).recipe
    except Exception:  # noqa: BLE001 - no manifest: nothing recorded
        return None
    return next((s.get("detail") for s in recipe if s.get("pass") == "distill"), None)


def choose_layers(teacher_gguf: Path, n: int, train_text: str, held_out: str,
                  threads: int | None, say: Progress) -> tuple[int, ...]:  # fmt: skip
    n_layer = inspect_gguf(teacher_gguf).llm.n_layer
    if n >= n_layer:
        raise RecipeError(
            f"{teacher_gguf.name} has {n_layer} layers: it cannot lose {n}",
            hint=f"remove at most {n_layer - 1}",
        )
    work = make_work_dir(teacher_gguf.parent / f"{teacher_gguf.stem}-choose")
    try:
        meter = RemovalMeter(teacher_gguf, work, held_out, n_ctx=512, threads=threads, progress=say)
        return choose_removal(meter, train_text, n).layers
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _float_or_own(file_type: str) -> str:
    """A float model stays float (F16 for BF16: llama.cpp's CPU kernels are fastest there);
    a quantized one goes back to its own type."""
    return "F16" if file_type in ("F16", "BF16") else file_type


def _json(detail: Any) -> dict[str, Any]:
    return json.loads(detail) if isinstance(detail, str) else {}
