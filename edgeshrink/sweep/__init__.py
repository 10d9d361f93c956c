"""Know when to stop: try a ladder of quantizations, measure each, pick one.

For every candidate of the ladder: its size, its estimated peak memory and
whether that fits the profile's budget, its quality against the original, and,
with a target, its speed and memory measured on the device, one candidate at a
time.  Quality is what the format allows:

- GGUF: llama-perplexity's KL divergence, PPL ratio and same-top-token over a
  text; the loss on the plots is the mean KL divergence.
- ONNX: output agreement on evaluation inputs (cosine, top-1 agreement) and,
  with labels, accuracy; the loss is the accuracy drop in points when there are
  labels, else 1 − the mean cosine of the worst output.

The pick is the fastest (or, with ``optimize="size"``, the smallest) candidate
that fits and meets every quality budget given.  Measurements already in the
store for the same bytes and settings are reused.
"""

from __future__ import annotations

from edgeshrink.errors import SweepError
from edgeshrink.sweep.choose import pareto_front, speed_ties
from edgeshrink.sweep.llm import sweep_gguf
from edgeshrink.sweep.outputs import onnx_ladder_step, sweep_onnx, sweep_outputs
from edgeshrink.sweep.types import (
    ACCURACY_DROP_LABEL,
    COSINE_LOSS_LABEL,
    DEFAULT_LADDER,
    KLD_LABEL,
    ONNX_LADDER,
    ONNX_QUALITY_METHOD,
    ONNX_STEPS,
    QUALITY_METHOD,
    TIE_FLOOR,
    OutputQualityBudget,
    Progress,
    QualityBudget,
    SweepCandidate,
    SweepResult,
)

__all__ = [
    "ACCURACY_DROP_LABEL", "COSINE_LOSS_LABEL", "DEFAULT_LADDER", "KLD_LABEL", "ONNX_LADDER",
    "ONNX_QUALITY_METHOD", "ONNX_STEPS", "QUALITY_METHOD", "TIE_FLOOR", "OutputQualityBudget",
    "Progress", "QualityBudget", "SweepCandidate", "SweepError", "SweepResult", "onnx_ladder_step",
    "pareto_front", "speed_ties", "sweep_gguf", "sweep_onnx", "sweep_outputs",
]  # fmt: skip
