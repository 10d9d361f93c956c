"""ONNX quality: the original and the shrunk model in onnxruntime on this machine, on
the same inputs, compared output by output (edgeshrink.formats.outputs)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from edgeshrink.formats.onnx.inspect import inspect_onnx
from edgeshrink.formats.onnx.runtime import open_session
from edgeshrink.formats.outputs import (
    Progress,
    QualityBudget,
    QualityReport,
    RunAll,
    compare_outputs,
    outputs_reference,
    run_all,
    same_io,
)
from edgeshrink.formats.tensors import io_specs


def evaluate_onnx(
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
    """Output agreement of ``candidate`` with ``base`` on the same inputs, on this machine.

    ``inputs``: an .npz (keys: input names, samples stacked on the first axis) or
    a directory of .npy/.npz; without it, ``samples`` random inputs of the declared
    shapes (agreement only: random inputs say nothing about accuracy).  ``labels``:
    the key of an integer array in the same file, one label per sample, for accuracy.
    """

    say = progress or (lambda _m: None)
    start = time.perf_counter()
    base, candidate = Path(base), Path(candidate)
    base_info = inspect_onnx(base)
    cand_info = inspect_onnx(candidate)
    base_in, base_out = same_io(base, candidate, io_specs(base_info), io_specs(cand_info))
    base_session = open_session(base, threads=threads)
    cand_session = open_session(candidate, threads=threads)
    return compare_outputs(
        "onnx",
        base,
        candidate,
        base_in,
        [s.name for s in base_out],
        lambda feeds, names: run_all(base_session, feeds, names),
        lambda feeds, names: run_all(cand_session, feeds, names),
        inputs=inputs,
        labels=labels,
        samples=samples,
        seed=seed,
        budget=budget,
        progress=say,
        start=start,
    )


def onnx_reference(
    base: str | os.PathLike[str],
    *,
    inputs: str | os.PathLike[str] | None = None,
    labels: str | None = None,
    samples: int = 64,
    seed: int = 0,
    threads: int | None = None,
    progress: Progress | None = None,
) -> Path:
    """The base's outputs on the evaluation inputs, for a device to compare with (cached)."""
    import onnxruntime

    base = Path(base)
    base_in, base_out = io_specs(inspect_onnx(base))

    def run_base() -> RunAll:
        session = open_session(base, threads=threads)
        return lambda feeds, names: run_all(session, feeds, names)

    return outputs_reference(
        "onnx", base, base_in, [s.name for s in base_out], f"onnxruntime {onnxruntime.__version__}",
        run_base, inputs=inputs, labels=labels, samples=samples, seed=seed, progress=progress,
    )  # fmt: skip
