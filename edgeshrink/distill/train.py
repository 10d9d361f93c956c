"""The training loop: the student learns the teacher's next-token distributions (KL at a
temperature, on the teacher's top-k plus the rest's mass), optionally mixed with the
next-token loss, within a budget of steps or minutes.

A checkpoint (weights, optimizer, step, the batch sampler's state) is written beside
the output every CHECKPOINT_EVERY_S and when the run is interrupted, so Ctrl-C keeps
the last good state and a rerun with ``resume`` goes on from it. With a step budget and
a seed the same student comes out every time (the same batches, the same arithmetic
on the same number of threads).
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from edgeshrink.distill.targets import TeacherTargets
from edgeshrink.errors import Interrupted, RecipeError
from edgeshrink.util import peak_rss_mb

CHECKPOINT_EVERY_S = 60.0
WARMUP_STEPS = 10
BAR_WIDTH = 24


@dataclass(frozen=True)
class TrainSettings:
    steps: int | None = None
    minutes: float | None = None
    lr: float = 3e-4
    batch: int = 4
    temperature: float = 2.0
    alpha: float = 0.0  # weight of the next-token loss beside the KL term
    seed: int = 0
    threads: int | None = None
    trainable: tuple[int, ...] | None = None  # student blocks to train (None: all)


@dataclass(frozen=True)
class StepStatus:
    step: int
    total: int | None  # None: a minutes budget
    loss: float
    tokens_per_s: float
    eta_s: float | None


@dataclass(frozen=True)
class TrainFacts:
    steps: int
    seconds: float
    tokens: int
    tokens_per_s: float
    first_loss: float | None
    last_loss: float | None
    trained_params: int
    peak_rss_mb: float
    resumed_from: int
    teacher_rest_mass: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def status_line(status: StepStatus) -> str:
    """``training: [ 40%] ██████████··· 160/400  loss 0.4121  2,310 tok/s  ETA 3:10``."""
    eta = (
        f"{int(status.eta_s // 60)}:{int(status.eta_s % 60):02d}"
        if status.eta_s is not None
        else "-"
    )
    if status.total:
        done = status.step / status.total
        filled = round(BAR_WIDTH * done)
        bar = f"[{int(100 * done):3d}%] {'█' * filled}{'·' * (BAR_WIDTH - filled)} {status.step}/{status.total}"
    else:
        bar = f"step {status.step}"
    return (f"training: {bar}  loss {status.loss:.4f}  {status.tokens_per_s:,.0f} tok/s  "
            f"ETA {eta}")  # fmt: skip


def trained_parameters(model: Any, trainable: tuple[int, ...] | None) -> list[Any]:
    """The parameters a run trains: every one, or those of the given blocks, the final
    norm and the output head (with tied embeddings, the embedding table is the head)."""
    if trainable is None:
        return list(model.parameters())
    keep = [model.model.layers[i] for i in trainable] + [model.model.norm, model.lm_head]
    seen: dict[int, Any] = {}
    for module in keep:
        for p in module.parameters():
            seen.setdefault(id(p), p)
    return list(seen.values())


def graph_layers(model: Any, trainable: tuple[int, ...] | None) -> int:
    """How many blocks keep their activations for the backward pass: from the first
    block that trains, or all of them when the embedding table trains (tied to the head)."""
    n_layer = len(model.model.layers)
    if trainable is None or model.lm_head.weight is model.model.embed_tokens.weight:
        return n_layer
    return n_layer - min(trainable)


def choose_trainable(model: Any, trainable: tuple[int, ...] | None) -> int:
    """Freeze all but the given blocks and the output head; return the trained count."""
    params = trained_parameters(model, trainable)
    if trainable is not None:
        for p in model.parameters():
            p.requires_grad_(False)
        for p in params:
            p.requires_grad_(True)
    return sum(p.numel() for p in params)


def distill_loss(torch: Any, logits: Any, targets: dict[str, Any], temperature: float,
                 alpha: float) -> Any:  # fmt: skip
    """KL(teacher || student) over the teacher's top-k and the rest, times T², plus
    ``alpha`` times the next-token cross-entropy."""
    s_logp = torch.log_softmax(logits.float() / temperature, dim=-1)
    s_top = s_logp.gather(-1, targets["ids"])
    s_rest = torch.log1p(-torch.exp(torch.logsumexp(s_top, dim=-1)).clamp(max=1 - 1e-6))
    t_top, t_rest = targets["logp"], targets["rest"]
    kl = (torch.exp(t_top) * (t_top - s_top)).sum(-1) + torch.exp(t_rest) * (t_rest - s_rest)
    loss = kl.mean() * temperature**2
    if alpha:
        next_tokens = targets["tokens"][:, 1:]
        ce = torch.nn.functional.cross_entropy(
            logits[:, :-1].float().reshape(-1, logits.shape[-1]), next_tokens.reshape(-1)
        )
        loss = loss + alpha * ce
    return loss


def descend(
    torch: Any, loss: Any, optimizer: Any, params: list[Any], step: int, hint: str
) -> float:
    """One optimizer step on ``loss`` (gradients clipped at 1); a loss that is not finite
    stops the run with one line instead of writing a broken model."""
    value = loss.item()
    if not math.isfinite(value):
        raise RecipeError(f"the distillation loss became {value} at step {step + 1}", hint=hint)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    optimizer.step()
    return value


def train_student(
    model: Any,
    targets: TeacherTargets,
    settings: TrainSettings,
    *,
    checkpoint: Path,
    resume: bool = False,
    fingerprint: str = "",
    on_step: Callable[[StepStatus], None] | None = None,
) -> TrainFacts:
    """Train ``model`` in place on ``targets``; see the module doc for the checkpoint."""
    import numpy as np
    import torch

    if settings.steps is None and settings.minutes is None:
        raise RecipeError("a distillation needs a budget", hint="give --steps N or --minutes M")
    torch.manual_seed(settings.seed)
    if settings.threads:
        torch.set_num_threads(settings.threads)
    trained = choose_trainable(model, settings.trainable)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=settings.lr, weight_decay=0.0)
    rng = np.random.default_rng(settings.seed)
    step, losses, resumed_from = 0, [], 0
    if resume and checkpoint.exists():
        state = torch.load(checkpoint, weights_only=False)
        if state.get("fingerprint") != fingerprint:
            raise RecipeError(
                f"{checkpoint.name} was made by another distillation (teacher, text or settings "
                "differ)",
                hint=f"run without --resume to start over (the old checkpoint is replaced), or "
                f"delete {checkpoint}",
            )
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        rng.bit_generator.state = state["rng"]
        step, losses, resumed_from = state["step"], state["losses"], state["step"]
    model.train()
    batch = min(settings.batch, targets.n_chunks)
    tokens_per_step = batch * targets.tokens.shape[1]
    start = last_save = time.perf_counter()
    deadline = start + settings.minutes * 60 if settings.minutes is not None else None

    def save() -> None:
        tmp = checkpoint.with_name(checkpoint.name + ".partial")
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "rng": rng.bit_generator.state, "step": step, "losses": losses,
                    "fingerprint": fingerprint}, tmp)  # fmt: skip
        os.replace(tmp, checkpoint)

    def done() -> bool:
        if settings.steps is not None and step >= settings.steps:
            return True
        return deadline is not None and time.perf_counter() >= deadline

    try:
        while not done():
            picks = rng.choice(targets.n_chunks, size=batch, replace=False)
            batch_targets = {
                "tokens": torch.from_numpy(targets.tokens[picks]),
                "ids": torch.from_numpy(targets.top_ids[picks]),
                "logp": torch.from_numpy(targets.top_logp[picks]),
                "rest": torch.from_numpy(targets.rest_logp[picks]),
            }
            warm = min(1.0, (step + 1) / WARMUP_STEPS)
            for group in optimizer.param_groups:
                group["lr"] = settings.lr * warm
            logits = model(batch_targets["tokens"]).logits
            loss = distill_loss(torch, logits, batch_targets, settings.temperature, settings.alpha)
            losses.append(
                descend(
                    torch, loss, optimizer, params, step, "lower --lr, or use --train near-cuts"
                )
            )
            step += 1
            elapsed = time.perf_counter() - start
            rate = (step - resumed_from) * tokens_per_step / max(elapsed, 1e-9)
            if settings.steps is not None:
                eta = (settings.steps - step) * elapsed / max(step - resumed_from, 1)
            else:
                eta = max(0.0, deadline - time.perf_counter()) if deadline else None
            if on_step:
                on_step(StepStatus(step, settings.steps, loss.item(), rate, eta))
            if time.perf_counter() - last_save > CHECKPOINT_EVERY_S:
                save()
                last_save = time.perf_counter()
    except KeyboardInterrupt:
        save()  # the last completed step: --resume goes on from here
        raise Interrupted(
            f"training stopped after step {step}; the student of that step is kept in {checkpoint}",
            hint="run the same command with --resume to go on from it",
        ) from None
    seconds = time.perf_counter() - start
    with contextlib.suppress(FileNotFoundError):
        checkpoint.unlink()
    model.eval()
    run_tokens = (step - resumed_from) * tokens_per_step
    return TrainFacts(
        steps=step, seconds=round(seconds, 2), tokens=run_tokens,
        tokens_per_s=round(run_tokens / max(seconds, 1e-9), 1),
        first_loss=losses[0] if losses else None, last_loss=losses[-1] if losses else None,
        trained_params=trained, peak_rss_mb=round(peak_rss_mb(), 1), resumed_from=resumed_from,
        teacher_rest_mass=round(targets.rest_mass, 6),
    )  # fmt: skip
