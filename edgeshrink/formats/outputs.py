"""Quality judged on outputs, for models that are not LLMs (ONNX, TFLite).

A ``QualityReport`` is a list of ``Metric`` values, each naming what it measures, the
base model's value where there is one (``reference``), which way is better, and, once
a ``QualityBudget`` is applied, the verdict. The original and the shrunk model run on
the same inputs; per output: max and mean absolute error, cosine similarity per sample
(mean and minimum), and top-1 agreement for classifier-like outputs ([N, C], C > 1);
with labels, the accuracy of both. Each backend runs its own models
(formats/onnx/quality.py, formats/tflite/quality.py) and hands the runs to
``compare_outputs``.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from edgeshrink.agent import device_quality as dq
from edgeshrink.errors import CalibrationError, EvalDataError, QualityBudgetError
from edgeshrink.formats.tensors import (
    inputs_fingerprint,
    make_batches,
    random_batches,
    read_arrays,
)
from edgeshrink.util import atomic_path, cache_dir, sha256_file

Progress = Callable[[str], None]


@dataclass(frozen=True)
class Metric:
    """One measured quality figure of the candidate (and of the base, as ``reference``)."""

    name: str  # cosine_mean, cosine_min, max_abs_error, mean_abs_error, top1_agreement, accuracy
    value: float
    higher_is_better: bool
    output: str | None = None  # the model output it is about, when it is about one
    reference: float | None = None  # the base model's own value (accuracy)
    threshold: float | None = None  # set by a QualityBudget
    passed: bool | None = None

    @property
    def change(self) -> float | None:
        return None if self.reference is None else self.value - self.reference

    def to_dict(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["change"] = self.change
        return doc


@dataclass(frozen=True)
class OutputAgreement:
    """How closely one output of the candidate follows the base, over all samples."""

    name: str
    shape: tuple[int, ...]  # of all samples together
    max_abs_error: float
    mean_abs_error: float
    max_abs_reference: float  # the largest |value| of the base output, to read errors against
    cosine_mean: float
    cosine_min: float
    top1_agreement: float | None  # None when the output is not [N, C] with C > 1


@dataclass(frozen=True)
class QualityReport:
    kind: str  # "output-agreement"; LLM evaluators add theirs
    format: str
    base: str
    candidate: str
    inputs: str | None
    n_samples: int
    metrics: tuple[Metric, ...]
    outputs: tuple[OutputAgreement, ...] = ()
    labels: str | None = None
    seconds: float = 0.0
    notes: tuple[str, ...] = field(default=())

    def metric(self, name: str, output: str | None = None) -> Metric | None:
        for m in self.metrics:
            if m.name == name and (output is None or m.output == output):
                return m
        return None

    @property
    def verdict(self) -> str | None:
        """ "pass" / "fail" once a budget was applied to at least one metric, else None."""
        judged = [m.passed for m in self.metrics if m.passed is not None]
        if not judged:
            return None
        return "pass" if all(judged) else "fail"

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "format": self.format,
            "base": self.base,
            "candidate": self.candidate,
            "inputs": self.inputs,
            "labels": self.labels,
            "n_samples": self.n_samples,
            "verdict": self.verdict,
            "metrics": [m.to_dict() for m in self.metrics],
            "outputs": [asdict(o) for o in self.outputs],
            "seconds": round(self.seconds, 3),
            "notes": list(self.notes),
        }


@dataclass(frozen=True)
class QualityBudget:
    """How much loss is acceptable: each bound applies to the metrics of that name.

    ``max_accuracy_drop`` is in points (fractions 0..1 times 100).
    """

    min_cosine: float | None = None  # bound on each output's mean cosine
    min_top1_agreement: float | None = None
    max_accuracy_drop: float | None = None

    @staticmethod
    def check(report: QualityReport) -> None:
        """Raise QualityBudgetError naming every metric outside its bound."""
        failed = [m for m in report.metrics if m.passed is False]
        if failed:
            listing = "; ".join(
                f"{m.name}{f' of {m.output!r}' if m.output else ''} {m.value:.6g} "
                f"(bound {m.threshold:.6g})"
                for m in failed
            )
            raise QualityBudgetError(
                f"{Path(report.candidate).name} fails the quality budget: {listing}"
            )

    def apply(self, report: QualityReport) -> QualityReport:
        judged = []
        for m in report.metrics:
            if m.name == "cosine_mean" and self.min_cosine is not None:
                m = replace(m, threshold=self.min_cosine, passed=m.value >= self.min_cosine)
            elif m.name == "top1_agreement" and self.min_top1_agreement is not None:
                bound = self.min_top1_agreement
                m = replace(m, threshold=bound, passed=m.value >= bound)
            elif (
                m.name == "accuracy"
                and self.max_accuracy_drop is not None
                and m.reference is not None
            ):
                floor = m.reference - self.max_accuracy_drop / 100.0
                m = replace(m, threshold=floor, passed=m.value >= floor)
            judged.append(m)
        return replace(report, metrics=tuple(judged))


# --------------------------------------------------------------------------- comparing outputs


def output_agreement(name: str, base: Any, candidate: Any) -> OutputAgreement:
    """Agreement of one output, both given as arrays with samples on the first axis."""
    import numpy as np

    if base.shape != candidate.shape:
        raise EvalDataError(
            f"output '{name}' has shape {list(base.shape)} in the base model but "
            f"{list(candidate.shape)} in the candidate",
            hint="compare a model with its own shrunk version",
        )
    figures = dq.output_figures(np, name, base, candidate)
    return OutputAgreement(**{**figures, "shape": tuple(figures["shape"])})


def run_all(session: Any, feeds: tuple[dict[str, Any], ...], names: list[str]) -> dict[str, Any]:
    return concatenated(
        lambda feed: dict(zip(names, session.run(names, feed), strict=True)), feeds, names
    )


def concatenated(
    run_one: Callable[[dict[str, Any]], Mapping[str, Any]],
    feeds: tuple[dict[str, Any], ...],
    names: list[str],
) -> dict[str, Any]:
    """Every named output of ``run_one`` over all feeds, concatenated on the first axis."""
    import numpy as np

    parts: dict[str, list[Any]] = {n: [] for n in names}
    for feed in feeds:
        outputs = run_one(feed)
        for name in names:
            array = np.asarray(outputs[name])
            parts[name].append(array if array.ndim else array.reshape(1))
    return {n: np.concatenate(v, axis=0) for n, v in parts.items()}


def same_io(
    base: Path, candidate: Path, base_io: Any, cand_io: Any, *, outputs_in_order: bool = True
) -> Any:
    """``base_io`` (inputs, outputs) when the candidate has the same inputs and outputs."""
    (base_in, base_out), (cand_in, cand_out) = base_io, cand_io

    def names(specs: Any, ordered: bool = True) -> list[str]:
        return [s.name for s in specs] if ordered else sorted(s.name for s in specs)

    if names(base_in) != names(cand_in) or names(base_out, outputs_in_order) != names(
        cand_out, outputs_in_order
    ):
        raise EvalDataError(
            f"{candidate.name} has inputs {names(cand_in)} and outputs {names(cand_out)}; "
            f"{base.name} has {names(base_in)} and {names(base_out)}",
            hint="compare a model with its own shrunk version",
        )
    return base_io


RunAll = Callable[[tuple[dict[str, Any], ...], list[str]], dict[str, Any]]


def compare_outputs(
    fmt: str,
    base: Path,
    candidate: Path,
    input_specs: Any,
    output_names: list[str],
    run_base: RunAll,
    run_candidate: RunAll,
    *,
    inputs: str | os.PathLike[str] | None,
    labels: str | None,
    samples: int,
    seed: int,
    budget: QualityBudget | None,
    progress: Progress,
    start: float,
) -> QualityReport:
    """Run base and candidate on the same inputs (the file's, or random ones of the
    declared shapes) and report their agreement, and accuracy when there are labels.

    ``run_*(feeds, names)`` returns every named output over all feeds, concatenated
    on the first axis.  Any format whose inputs are described as the ONNX backend's
    TensorSpec shares this."""
    say = progress
    batches, label_array, notes = evaluation_inputs(
        input_specs, inputs=inputs, labels=labels, samples=samples, seed=seed
    )
    names = list(output_names)
    say(f"running {base.name} on {batches.n_rows} samples")
    base_outputs = run_base(batches.feeds, names)
    say(f"running {candidate.name} on {batches.n_rows} samples")
    cand_outputs = run_candidate(batches.feeds, names)
    agreements = tuple(
        output_agreement(name, base_outputs[name], cand_outputs[name]) for name in names
    )
    accuracy = None
    if label_array is not None:
        accuracy = _accuracy(label_array, batches.n_rows, base_outputs, cand_outputs, labels)
    figures = [asdict(a) for a in agreements]
    metrics = [Metric(**m) for m in dq.agreement_metrics(figures, accuracy)]
    report = QualityReport(
        kind="output-agreement",
        format=fmt,
        base=str(base),
        candidate=str(candidate),
        inputs=None if inputs is None else str(inputs),
        n_samples=batches.n_rows,
        metrics=tuple(metrics),
        outputs=agreements,
        labels=labels,
        seconds=time.perf_counter() - start,
        notes=tuple(notes),
    )
    return budget.apply(report) if budget else report


def evaluation_inputs(
    input_specs: Any, *, inputs: str | os.PathLike[str] | None, labels: str | None,
    samples: int, seed: int,
) -> tuple[Any, Any, list[str]]:  # fmt: skip
    """(batches, labels or None, notes): the evaluation data cut to the model's inputs, or
    ``samples`` random inputs of the declared shapes (agreement only)."""
    import numpy as np

    notes: list[str] = []
    label_array = None
    if inputs is not None:
        arrays = read_arrays(inputs, what="evaluation")
        if labels is not None:
            if labels not in arrays:
                raise EvalDataError(
                    f"{inputs}: no array '{labels}' for the labels; it has: "
                    f"{', '.join(k for k in arrays if k != '*')}",
                    hint="pass --labels with the key of the label array",
                )
            label_array = np.asarray(arrays.pop(labels))
        try:
            batches = make_batches(
                arrays, input_specs, source=f"evaluation data {inputs}", what="evaluation"
            )
        except CalibrationError as exc:
            raise EvalDataError(exc.message, hint=exc.hint) from exc
    else:
        if labels is not None:
            raise EvalDataError(
                "--labels needs --inputs: random inputs have no labels",
                hint="pass --inputs data.npz holding the inputs and the labels",
            )
        batches = random_batches(input_specs, samples=samples, seed=seed)
        notes.append(
            f"{samples} random inputs from the declared shapes (seed {seed}): agreement only"
        )
    return batches, label_array, notes


def checked_labels(label_array: Any, n_rows: int, labels_key: str | None) -> Any:
    """The labels as one integer class index per sample (EvalDataError if they are not)."""
    label_array = label_array.reshape(-1)
    if label_array.dtype.kind not in "iu":
        raise EvalDataError(
            f"labels '{labels_key}' are {label_array.dtype}, expected integer class indices",
            hint="store the labels as an integer array, one per sample",
        )
    if label_array.shape[0] < n_rows:
        raise EvalDataError(
            f"labels '{labels_key}' has {label_array.shape[0]} entries for {n_rows} samples",
            hint="give one label per sample",
        )
    return label_array[:n_rows]


def accuracy_output(label_array: Any, n_rows: int, base_outputs: Mapping[str, Any]) -> str:
    """The output accuracy is read from (EvalDataError when there is none)."""
    top = int(label_array.max()) if label_array.size else 0
    name = dq.accuracy_output(base_outputs, n_rows, top)
    if name is None:
        raise EvalDataError(
            f"no output of shape [{n_rows}, C] with C > {top} to read classes from",
            hint="accuracy needs a classifier output with one score per class",
        )
    return name


def _accuracy(
    label_array: Any,
    n_rows: int,
    base_outputs: Mapping[str, Any],
    cand_outputs: Mapping[str, Any],
    labels_key: str | None,
) -> dict[str, Any]:
    import numpy as np

    label_array = checked_labels(label_array, n_rows, labels_key)
    name = accuracy_output(label_array, n_rows, base_outputs)
    return dq.accuracy_metric(np, label_array, base_outputs[name], cand_outputs[name], name)


# --------------------------------------------------------------------------- on the device


def outputs_reference(
    fmt: str,
    base: Path,
    input_specs: Any,
    output_names: list[str],
    runtime: str,
    make_run_base: Callable[[], RunAll],
    *,
    inputs: str | os.PathLike[str] | None,
    labels: str | None,
    samples: int,
    seed: int,
    progress: Progress | None,
) -> Path:
    """The reference a device scores a candidate against (cached: the same base, runtime
    and inputs give the same file): the feeds exactly as the host's evaluation cuts them,
    the base's outputs on them (``make_run_base()`` runs it) and the labels (see
    edgeshrink/agent/device_quality.py)."""
    parts = [dq.REFERENCE_SCHEMA, fmt, sha256_file(base), runtime, str(labels)]
    parts += [inputs_fingerprint(inputs)] if inputs is not None else [str(samples), str(seed)]
    path = (
        cache_dir("references")
        / f"{hashlib.sha256('|'.join(parts).encode()).hexdigest()[:32]}.esref"
    )
    if path.exists():
        return path
    say = progress or (lambda _m: None)
    import numpy as np

    batches, label_array, _notes = evaluation_inputs(
        input_specs, inputs=inputs, labels=labels, samples=samples, seed=seed
    )
    names = list(output_names)
    say(f"running {base.name} on {batches.n_rows} samples for the reference")
    outputs = make_run_base()(batches.feeds, names)
    arrays: dict[str, Any] = {}
    for i, feed in enumerate(batches.feeds):
        for name, array in feed.items():
            arrays[f"feed/{i}/{name}"] = np.ascontiguousarray(array)
    for name in names:
        arrays[f"output/{name}"] = np.ascontiguousarray(outputs[name])
    chosen = None
    if label_array is not None:
        label_array = checked_labels(label_array, batches.n_rows, labels)
        chosen = accuracy_output(label_array, batches.n_rows, outputs)
        arrays["labels"] = label_array.astype(np.int64)
    header = {
        "kind": "outputs",
        "base": {"name": base.name, "sha256": sha256_file(base), "size": base.stat().st_size},
        "inputs": [s.name for s in input_specs],
        "outputs": names,
        "n_feeds": len(batches.feeds),
        "n_samples": batches.n_rows,
        "inputs_name": None if inputs is None else str(inputs),
        "labels": labels,
        "accuracy_output": chosen,
    }
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        dq.write_reference(handle, header, arrays)
    return path
