"""Distilling an embedding model (BERT and kin, from its Hugging Face checkpoint): the
student is the checkpoint without some blocks, trained so that its pooled sentence
embeddings match the teacher's (mean squared error), as sentence-transformers' layer
reduction distillation does. The healed student is saved as a checkpoint again (the
pruned checkpoint's tokenizer and pooling files beside it), ready for the converter.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from edgeshrink.convert.gguf_metadata import sentence_pooling
from edgeshrink.distill.bridge import import_torch
from edgeshrink.distill.train import (
    StepStatus,
    TrainFacts,
    TrainSettings,
    descend,
)
from edgeshrink.errors import EvalDataError, Interrupted, RecipeError
from edgeshrink.formats.gguf.embeddings import sentences
from edgeshrink.util import peak_rss_mb

MAX_TOKENS = 128


def pooled(torch: Any, hidden: Any, mask: Any, mode: str) -> Any:
    """The sentence embedding llama.cpp will compute for this pooling mode."""
    if mode == "cls":
        return hidden[:, 0]
    if mode == "last":
        last = mask.sum(dim=1) - 1
        return hidden[torch.arange(hidden.shape[0]), last]
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1)


def distill_encoder(
    teacher_dir: Path,
    student_dir: Path,
    text: str,
    settings: TrainSettings,
    *,
    on_step: Any = None,
) -> TrainFacts:
    """Train ``student_dir``'s model (in place: the checkpoint is rewritten) to embed the
    sentences of ``text`` as ``teacher_dir``'s does."""
    torch, transformers = import_torch()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    if settings.steps is None and settings.minutes is None:
        raise RecipeError("a distillation needs a budget", hint="give --steps N or --minutes M")
    inputs = sentences(text)
    if len(inputs) < 2 * settings.batch:
        raise EvalDataError(
            f"the training text has {len(inputs)} sentences; this needs at least "
            f"{2 * settings.batch}",
            hint="give a longer --text, one sentence or more per line",
        )
    torch.manual_seed(settings.seed)
    if settings.threads:
        torch.set_num_threads(settings.threads)
    mode = sentence_pooling(teacher_dir) or "mean"
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(teacher_dir))
    teacher = transformers.AutoModel.from_pretrained(str(teacher_dir), dtype=torch.float32).eval()
    student = transformers.AutoModel.from_pretrained(str(student_dir), dtype=torch.float32)
    limit = min(MAX_TOKENS, int(getattr(teacher.config, "max_position_embeddings", MAX_TOKENS)))
    encoded = tokenizer(inputs, padding=True, truncation=True, max_length=limit,
                        return_tensors="pt")  # fmt: skip
    with torch.no_grad():
        targets = pooled(torch, teacher(**encoded).last_hidden_state,
                         encoded["attention_mask"], mode)  # fmt: skip
    del teacher
    params = [p for p in student.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=settings.lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(settings.seed)
    student.train()
    step, losses = 0, []
    start = time.perf_counter()
    deadline = start + settings.minutes * 60 if settings.minutes is not None else None
    n_tokens = 0
    try:
        while not (
            (settings.steps is not None and step >= settings.steps)
            or (deadline is not None and time.perf_counter() >= deadline)
        ):
            picks = torch.randperm(len(inputs), generator=generator)[: settings.batch]
            batch = {k: v[picks] for k, v in encoded.items()}
            out = pooled(torch, student(**batch).last_hidden_state, batch["attention_mask"], mode)
            loss = torch.nn.functional.mse_loss(out, targets[picks])
            losses.append(descend(torch, loss, optimizer, params, step, "lower --lr"))
            step += 1
            n_tokens += int(batch["attention_mask"].sum())
            if on_step:
                elapsed = time.perf_counter() - start
                eta = ((settings.steps - step) * elapsed / step) if settings.steps else (
                    max(0.0, deadline - time.perf_counter()) if deadline else None
                )  # fmt: skip
                on_step(StepStatus(step, settings.steps, loss.item(), n_tokens / elapsed, eta))
    except KeyboardInterrupt:
        raise Interrupted(
            f"training stopped after step {step}; an embedding model's run keeps no checkpoint",
            hint="run it again (with fewer --steps or --minutes)",
        ) from None
    seconds = time.perf_counter() - start
    student.eval()
    student.save_pretrained(str(student_dir), safe_serialization=True)
    return TrainFacts(
        steps=step, seconds=round(seconds, 2), tokens=n_tokens,
        tokens_per_s=round(n_tokens / max(seconds, 1e-9), 1),
        first_loss=losses[0] if losses else None, last_loss=losses[-1] if losses else None,
        trained_params=sum(p.numel() for p in params), peak_rss_mb=round(peak_rss_mb(), 1),
        resumed_from=0, teacher_rest_mass=0.0,
    )  # fmt: skip
