"""One distillation of a GGUF student from its GGUF teacher, start to finish: checks
that the student is a pruned copy of the teacher, the memory it will need, the
teacher's targets over the text, the training, and the healed student written as a
float GGUF with the student's own metadata and vocabulary."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from edgeshrink.distill.bridge import load_gguf_model, write_gguf_model
from edgeshrink.distill.targets import TOP_K, split_chunks, teacher_targets
from edgeshrink.distill.train import (
    StepStatus,
    TrainFacts,
    TrainSettings,
    status_line,
    train_student,
)
from edgeshrink.errors import EvalDataError, RecipeError
from edgeshrink.formats.gguf.quality import LlamaScorer
from edgeshrink.formats.gguf.reader import inspect_gguf

ADAM_BYTES_PER_PARAM = 16  # weights, gradients and AdamW's two moments, float32


@dataclass(frozen=True)
class DistillRun:
    path: Path
    facts: TrainFacts
    trained_blocks: tuple[int, ...] | None  # student blocks (None: all)


def near_cuts(n_teacher: int, removed: tuple[int, ...]) -> tuple[int, ...]:
    """The student blocks on either side of each cut (Lu et al. 2024: healing those and
    the output head recovers much of what pruning lost)."""
    kept = [i for i in range(n_teacher) if i not in set(removed)]
    near = set()
    for cut in removed:
        before = [j for j, old in enumerate(kept) if old < cut]
        after = [j for j, old in enumerate(kept) if old > cut]
        if before:
            near.add(before[-1])
        if after:
            near.add(after[0])
    return tuple(sorted(near))


def check_student(teacher: Path, student: Path) -> tuple[Any, Any]:
    t, s = inspect_gguf(teacher), inspect_gguf(student)
    if t.llm is None or s.llm is None:
        raise RecipeError(
            f"{teacher.name} and {student.name} must both be language models",
            hint="distill a transformer language model",
        )
    mismatch = [
        f"{what} {a} vs {b}"
        for what, a, b in (
            ("architecture", t.architecture, s.architecture),
            ("vocabulary", t.llm.n_vocab, s.llm.n_vocab),
            ("width", t.llm.n_embd, s.llm.n_embd),
            ("heads", t.llm.n_head, s.llm.n_head),
        )
        if a != b
    ]
    if mismatch or s.llm.n_layer > t.llm.n_layer:
        if s.llm.n_layer > t.llm.n_layer:
            mismatch.append(f"layers {t.llm.n_layer} vs {s.llm.n_layer}")
        raise RecipeError(
            f"{student.name} is not a pruned copy of {teacher.name}: {'; '.join(mismatch)}",
            hint="make the student with `edgeshrink prune` from this teacher, or pass --layers",
        )
    return t, s


def check_memory(n_params: int, batch: int, n_ctx: int, n_vocab: int, chunks: int) -> None:
    import psutil

    logits = batch * n_ctx * n_vocab * 4 * 4  # logits, softmax, their gradients
    targets = chunks * n_ctx * TOP_K * 12
    need = n_params * ADAM_BYTES_PER_PARAM + logits + targets + (256 << 20)
    available = psutil.virtual_memory().available
    if need > available:
        raise RecipeError(
            f"training this student needs about {need / 2**20:,.0f} MB "
            f"({n_params / 1e6:.0f}M parameters with AdamW, {batch}x{n_ctx}-token batches); "
            f"{available / 2**20:,.0f} MB are available",
            hint="use --batch 1, a shorter --ctx, --train near-cuts, or a machine with more memory",
        )


def distill_gguf(
    teacher: str | os.PathLike[str],
    student: str | os.PathLike[str],
    text: str,
    out: str | os.PathLike[str],
    *,
    settings: TrainSettings,
    removed: tuple[int, ...] = (),
    train: str = "all",
    n_ctx: int = 256,
    checkpoint: Path,
    resume: bool = False,
    fingerprint: str = "",
    matrix_type: str = "F16",
    progress: Callable[[str], None] | None = None,
    on_step: Callable[[StepStatus], None] | None = None,
) -> DistillRun:
    say = progress or (lambda _m: None)
    teacher, student, out = Path(teacher), Path(student), Path(out)
    t_info, s_info = check_student(teacher, student)
    n_ctx = min(n_ctx, t_info.llm.context_length or n_ctx)
    with LlamaScorer(teacher, 16, 1) as scorer:
        tokens = scorer.tokenize(text)
        chunks = split_chunks(tokens, n_ctx, scorer)
    if len(chunks) < 2:
        raise EvalDataError(
            f"the training text is {len(tokens)} tokens; distillation needs at least "
            f"{2 * n_ctx} (two chunks of {n_ctx})",
            hint="give a longer --text (or a shorter --ctx)",
        )
    if train == "near-cuts" and not removed:
        raise RecipeError(
            "--train near-cuts needs to know where the cuts are",
            hint="pass --layers N, or a student whose manifest records its prune",
        )
    trainable = near_cuts(t_info.llm.n_layer, removed) if train == "near-cuts" else None
    settings = replace(settings, trainable=trainable)
    say(f"loading {student.name} into PyTorch")
    model, _shape = load_gguf_model(student)
    n_params = sum(p.numel() for p in model.parameters())
    check_memory(n_params, settings.batch, n_ctx, t_info.llm.n_vocab, len(chunks))
    say(f"teacher {teacher.name}: top-{TOP_K} targets over {len(chunks)} chunks of {n_ctx} tokens")
    targets = teacher_targets(teacher, chunks, temperature=settings.temperature,
                              threads=settings.threads, progress=say)  # fmt: skip
    what = (
        "all blocks"
        if trainable is None
        else f"blocks {', '.join(map(str, trainable))} and the head"
    )
    say(f"training {what} of {student.name} ({n_params / 1e6:.1f}M parameters)")
    facts = train_student(model, targets, settings, checkpoint=checkpoint, resume=resume,
                          fingerprint=fingerprint, on_step=on_step or (lambda s: say(status_line(s))))  # fmt: skip
    say(f"writing the healed student ({matrix_type})")
    write_gguf_model(model, student, out, matrix_type=matrix_type)
    return DistillRun(out, facts, trainable)
