"""How much quality a shrunk model lost against its original.

A ``QualityReport`` is a list of ``Metric`` values, each naming what it
measures, the base model's value where there is one (``reference``), which way
is better, and, once a ``QualityBudget`` is applied, the verdict.  Evaluators
are the format backends' (``backend(fmt).evaluate``); this module picks one:

- "onnx": output agreement.  The original and the shrunk model run in
  onnxruntime on this machine on the same inputs; per output: max and mean
  absolute error, cosine similarity per sample (mean and minimum), and top-1
  agreement for classifier-like outputs ([N, C], C > 1); with labels, the
  accuracy of both.

- "tflite": the same output agreement and accuracy, both models run in the
  host's TFLite runtime (ai-edge-litert); integer inputs are quantized and
  integer outputs dequantized with the tensors' own scale and zero point, so a
  full-integer model compares with its float original on the same float data.

LLM metrics (perplexity, KL divergence, same top token: edgeshrink.formats.gguf.quality)
join as another evaluator and their own metric names.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from edgeshrink.errors import UnsupportedFormatError
from edgeshrink.formats import backend, detect_format
from edgeshrink.formats.outputs import Metric, OutputAgreement, QualityBudget, QualityReport


def evaluate(
    base: str | os.PathLike[str],
    candidate: str | os.PathLike[str],
    **kwargs: Any,
) -> QualityReport:
    """Evaluate ``candidate`` against ``base`` with the evaluator of their format."""
    fmt = detect_format(base)
    other = detect_format(candidate)
    if other != fmt:
        raise UnsupportedFormatError(
            f"{Path(base).name} is {fmt} but {Path(candidate).name} is {other}",
            hint="compare a model with its own shrunk version (same format)",
        )
    return backend(fmt).evaluate(base, candidate, **kwargs)


__all__ = ["Metric", "OutputAgreement", "QualityBudget", "QualityReport", "evaluate"]
