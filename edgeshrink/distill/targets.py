"""What the student learns from: the teacher's next-token distributions over the text,
computed once with llama.cpp (the teacher exactly as it would run on the device, even
when it is a quantized file) and kept as the top-k log-probabilities per position plus
the log of the mass left over.

Merging the outcomes outside the top k into one can only lower a KL divergence, so the
loss trained on is a lower bound of the full one; k = 32 keeps all but a sliver of the
mass of a trained model at the temperatures used here (the run reports the mean mass
left over).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeshrink.formats.gguf.quality import LlamaScorer, chunk_tokens, log_softmax

TOP_K = 32


@dataclass(frozen=True)
class TeacherTargets:
    """Per chunk of ``n_ctx`` tokens: the tokens, and the teacher's top-k ids, their
    log-probabilities at ``temperature`` and the log of the rest's probability."""

    tokens: Any  # int64 [chunks, n_ctx]
    top_ids: Any  # int64 [chunks, n_ctx, k]
    top_logp: Any  # float32 [chunks, n_ctx, k]
    rest_logp: Any  # float32 [chunks, n_ctx]
    temperature: float

    @property
    def n_chunks(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def rest_mass(self) -> float:
        import numpy as np

        return float(np.exp(self.rest_logp).mean())


def split_chunks(tokens: list[int], n_ctx: int, scorer: LlamaScorer) -> list[list[int]]:
    return [chunk_tokens(tokens, i, n_ctx, scorer) for i in range(len(tokens) // n_ctx)]


def teacher_targets(
    teacher: str | os.PathLike[str],
    chunks: list[list[int]],
    *,
    temperature: float,
    threads: int | None = None,
    k: int = TOP_K,
    progress: Any = None,
) -> TeacherTargets:
    import numpy as np

    say = progress or (lambda _m: None)
    n_ctx = len(chunks[0])
    ids, logp, rest = [], [], []
    with LlamaScorer(Path(teacher), n_ctx, threads or os.cpu_count() or 1) as scorer:
        step = max(1, len(chunks) // 10)
        for i, chunk in enumerate(chunks):
            if i % step == 0:
                say(f"teacher: chunk {i + 1}/{len(chunks)}")
            scaled = log_softmax(scorer.chunk_logits(chunk, 0).astype(np.float64) / temperature)
            # A copy: the slice alone would keep argpartition's whole [positions x
            # vocabulary] result alive for every chunk (20 GB for SmolLM2's 197 chunks).
            top = np.argpartition(-scaled, k, axis=1)[:, :k].copy()
            values = np.take_along_axis(scaled, top, axis=1)
            mass = np.exp(values).sum(axis=1)
            ids.append(top)
            logp.append(values.astype(np.float32))
            rest.append(np.log(np.clip(1.0 - mass, 1e-12, None)).astype(np.float32))
    return TeacherTargets(
        tokens=np.array(chunks, dtype=np.int64), top_ids=np.array(ids, dtype=np.int64),
        top_logp=np.array(logp), rest_logp=np.array(rest), temperature=temperature,
    )  # fmt: skip
