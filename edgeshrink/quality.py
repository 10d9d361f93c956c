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

What an evaluation ran on (``EvalSettings``) names a measurement in the results database
(``quality_key``), so a measurement made once, by eval, sweep, check or the lab, is found
again by the others (``host_quality``).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from edgeshrink.errors import UnsupportedFormatError
from edgeshrink.formats import backend, detect_format
from edgeshrink.formats.base import Backend
from edgeshrink.formats.gguf.quality import evaluate_llm
from edgeshrink.formats.outputs import Metric, OutputAgreement, QualityBudget, QualityReport
from edgeshrink.formats.tensors import inputs_fingerprint
from edgeshrink.store import ResultStore
from edgeshrink.util import sha256_file, shipped_text

LLM_METHOD = "llm-kld/1"  # the results database's name for llama-perplexity's figures
DEVICE_SUFFIX = "@device"  # ... and for the same figures measured on a device


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


@dataclass(frozen=True)
class EvalSettings:
    """What a quality measurement runs on: a text in chunks (language models) or inputs,
    labels and, without inputs, random samples (models judged by their outputs)."""

    text: str | None = None  # None: the text edgeshrink ships
    n_ctx: int = 512
    max_chunks: int | None = None
    inputs: Path | None = None
    labels: str | None = None
    samples: int = 64
    seed: int = 0

    @property
    def eval_text(self) -> str:
        return self.text if self.text is not None else shipped_text("eval-en.txt")

    def reference_settings(self) -> dict[str, Any]:
        """The keyword arguments of a backend's ``make_reference``."""
        doc = asdict(self)
        doc["text"] = self.eval_text
        return doc


def quality_method(fmt: Backend) -> str:
    return LLM_METHOD if fmt.evaluation == "llm-text" else f"{fmt.format}-agreement/1"


def quality_key(fmt: Backend, settings: EvalSettings) -> tuple[str, str]:
    """(method, settings) naming a measurement on the host in the results database."""
    if fmt.evaluation == "llm-text":
        asked: dict[str, Any] = {
            "text_sha256": hashlib.sha256(settings.eval_text.encode()).hexdigest(),
            "n_ctx": settings.n_ctx, "chunks": settings.max_chunks,
        }  # fmt: skip
    else:
        inputs = settings.inputs
        asked = {
            "inputs_sha256": inputs_fingerprint(inputs) if inputs is not None else None,
            "labels": settings.labels,
            "samples": None if inputs is not None else settings.samples,
            "seed": None if inputs is not None else settings.seed,
        }
    return quality_method(fmt), json.dumps(asked, sort_keys=True)


def quality_columns(quality: dict[str, Any]) -> dict[str, float | None]:
    """The figures of a stored report that the quality table has columns for."""
    if "kld_mean" in quality:
        return {"kld_mean": quality["kld_mean"]["value"], "ppl_ratio": quality["ppl_ratio"]["value"],
                "same_top": quality["same_top"]["value"]}  # fmt: skip
    metrics = quality["metrics"]
    agreement = [m["value"] for m in metrics if m["name"] == "top1_agreement"]
    accuracy = next((m["value"] for m in metrics if m["name"] == "accuracy"), None)
    return {"agreement": min(agreement) if agreement else None, "accuracy": accuracy}


def measure_on_host(
    fmt: Backend, base: Path, candidate: Path, settings: EvalSettings,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """The candidate's quality against the base, measured on this machine (a report dict)."""
    if fmt.evaluation == "llm-text":
        return evaluate_llm(
            base, candidate, text=settings.eval_text, n_ctx=settings.n_ctx,
            max_chunks=settings.max_chunks, progress=progress,
        ).to_dict()  # fmt: skip
    return fmt.evaluate(
        base, candidate, inputs=settings.inputs, labels=settings.labels, samples=settings.samples,
        seed=settings.seed, progress=progress,
    ).to_dict()  # fmt: skip


def host_quality(
    store: ResultStore, base: Path, candidate: Path, settings: EvalSettings, *,
    remeasure: bool = False, progress: Callable[[str], None] | None = None,
) -> tuple[dict[str, Any], bool]:  # fmt: skip
    """(report, found in the store): the host's measurement, made and stored when the store
    does not have it yet."""
    fmt = backend(detect_format(candidate))
    method, key = quality_key(fmt, settings)
    base_sha, cand_sha = sha256_file(base), sha256_file(candidate)
    found = None if remeasure else store.find_quality(method, base_sha, cand_sha, key)
    if found is not None:
        return found, True
    report = measure_on_host(fmt, base, candidate, settings, progress)
    store.add_quality(
        {"method": method, "base_sha256": base_sha, "candidate_sha256": cand_sha, "settings": key,
         "candidate_name": candidate.name, **quality_columns(report)},
        report,
    )  # fmt: skip
    return report, False


__all__ = [
    "DEVICE_SUFFIX", "LLM_METHOD", "EvalSettings", "Metric", "OutputAgreement", "QualityBudget",
    "QualityReport", "evaluate", "host_quality", "measure_on_host", "quality_columns",
    "quality_key", "quality_method",
]  # fmt: skip
