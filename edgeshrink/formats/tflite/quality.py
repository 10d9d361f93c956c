"""TFLite quality: both models in the host's TFLite runtime (ai-edge-litert); integer
inputs are quantized and integer outputs dequantized with the tensors' own scale and
zero point, so a full-integer model compares with its float original on the same float
data. Inputs and outputs are matched by signature name."""

from __future__ import annotations

import os
import time
from dataclasses import replace
from pathlib import Path

from edgeshrink.formats.outputs import (
    Progress,
    QualityBudget,
    QualityReport,
    compare_outputs,
    concatenated,
    outputs_reference,
    same_io,
)
from edgeshrink.formats.tensors import io_specs
from edgeshrink.formats.tflite.inspect import inspect_tflite
from edgeshrink.formats.tflite.runtime import TfliteRunner


def evaluate_tflite(
    base: str | os.PathLike[str],
    candidate: str | os.PathLike[str],
    *,
    inputs: str | os.PathLike[str] | None = None,
    labels: str | None = None,
    samples: int = 64,
    seed: int = 0,
    budget: QualityBudget | None = None,
    threads: int | None = None,
    progress: Progress | None = None,
) -> QualityReport:
    """Output agreement (and accuracy) of a .tflite ``candidate`` with ``base``, as
    ``evaluate_onnx`` measures it; inputs and outputs are matched by signature name."""

    say = progress or (lambda _m: None)
    start = time.perf_counter()
    base, candidate = Path(base), Path(candidate)
    base_info = inspect_tflite(base)
    cand_info = inspect_tflite(candidate)
    base_in, base_out = same_io(
        base,
        candidate,
        io_specs(base_info),
        io_specs(cand_info),
        outputs_in_order=False,  # matched by signature name
    )
    base_runner = TfliteRunner(base, base_info, threads=threads)
    cand_runner = TfliteRunner(candidate, cand_info, threads=threads)
    notes = []
    quantized_io = [s["name"] for s in dict(cand_info.metadata)["inputs"] if s["quantization"]]
    if quantized_io:
        notes.append(
            f"{candidate.name} takes integer inputs ({', '.join(quantized_io)}): the float "
            "data was quantized with each input's scale and zero point"
        )
    report = compare_outputs(
        "tflite",
        base,
        candidate,
        base_in,
        [s.name for s in base_out],
        lambda feeds, names: concatenated(base_runner.run, feeds, names),
        lambda feeds, names: concatenated(cand_runner.run, feeds, names),
        inputs=inputs,
        labels=labels,
        samples=samples,
        seed=seed,
        budget=budget,
        progress=say,
        start=start,
    )
    return replace(report, notes=(*report.notes, *notes))


def tflite_reference(
    base: str | os.PathLike[str],
    *,
    inputs: str | os.PathLike[str] | None = None,
    labels: str | None = None,
    samples: int = 64,
    seed: int = 0,
    threads: int | None = None,
    progress: Progress | None = None,
) -> Path:
    """The base's outputs on the evaluation inputs (float data, as the host feeds it), for a
    device to compare with (cached)."""
    base = Path(base)
    info = inspect_tflite(base)
    runner = TfliteRunner(base, info, threads=threads)
    base_in, base_out = io_specs(info)
    return outputs_reference(
        "tflite", base, base_in, [s.name for s in base_out], runner.runtime,
        lambda: lambda feeds, names: concatenated(runner.run, feeds, names),
        inputs=inputs, labels=labels, samples=samples, seed=seed, progress=progress,
    )  # fmt: skip
