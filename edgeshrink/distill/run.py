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
    graph_layers,
    status_line,
    train_student,
    trained_parameters,
)
from edgeshrink.errors import EvalDataError, RecipeError
from edgeshrink.formats.gguf.quality import LlamaScorer
from edgeshrink.formats.gguf.reader import inspect_gguf

# A trained parameter's gradient, AdamW's two moments and its foreach step's temporaries.
OPTIMIZER_BYTES_PER_PARAM = 16
LOGIT_COPIES = 6  # the logits, their scaled log-softmax and the gradients of each
RESIDENT_SLACK_BYTES = 256 << 20  # what the teacher's pass may leave, allocator spread


@dataclass(frozen=True)
class DistillRun:
    path: Path
    facts: TrainFacts
    trained_blocks: tuple[int, ...] | None  # student blocks (None: all)
    memory_estimate_mb: float = 0.0  # training_memory's total, beside facts.peak_rss_mb


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


def training_memory(
    shape: Any, trained: int, layers: int, batch: int, n_ctx: int, chunks: int
) -> dict[str, int]:
    """Bytes a training run peaks at, by part, from what this process holds now (the
    student loaded, PyTorch imported).  ``shape``: the student's llm shape; ``trained``:
    parameters that train; ``layers``: blocks whose activations are kept.  Fitted to
    measured peaks (SmolLM2-135M without 4 blocks, batch 4 x 256: 4.52 GB training all,
    estimated 4.92; 3.54 GB near the cuts, estimated 3.73; a 42M-parameter test llama:
    1.63-1.72 GB over three runs, estimated 1.82); tests/test_distill.py holds it to a
    measured run."""
    import psutil

    tokens = batch * n_ctx
    return {
        "held now": psutil.Process().memory_info().rss,
        "margin": RESIDENT_SLACK_BYTES,
        "gradients and AdamW": trained * OPTIMIZER_BYTES_PER_PARAM,
        "activations": layers * tokens * 2 * (shape.n_embd + shape.n_ff) * 4,
        "logits": tokens * shape.n_vocab * 4 * LOGIT_COPIES,
        "teacher targets": chunks * n_ctx * (TOP_K * 12 + 12),
    }


def check_memory(need: dict[str, int], batch: int, n_ctx: int) -> None:
    """Refuse a run whose training would not fit in the memory that is available."""
    import psutil

    more = sum(size for name, size in need.items() if name != "held now")
    available = psutil.virtual_memory().available
    if more > available:
        parts = ", ".join(f"{name} {size / 2**20:,.0f}" for name, size in need.items())
        raise RecipeError(
            f"training this student needs about {sum(need.values()) / 2**20:,.0f} MB ({parts}; "
            f"{batch}x{n_ctx}-token batches); {available / 2**20:,.0f} MB more are available",
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
    trained = sum(p.numel() for p in trained_parameters(model, trainable))
    batch = min(settings.batch, len(chunks))
    need = training_memory(s_info.llm, trained, graph_layers(model, trainable), batch, n_ctx,
                           len(chunks))  # fmt: skip
    check_memory(need, batch, n_ctx)
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
    return DistillRun(out, facts, trainable, round(sum(need.values()) / 2**20, 1))
