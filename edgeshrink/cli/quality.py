"""`eval`: how much quality a shrunk model lost against its original."""

from __future__ import annotations

from pathlib import Path

import click

from edgeshrink.cli.common import emit_json, progress_printer
from edgeshrink.report.table import render_pairs, render_table


def print_quality(report) -> None:
    click.echo(
        f"{Path(report.candidate).name} against {Path(report.base).name}: "
        f"{report.n_samples} samples from {report.inputs or 'random inputs'}"
    )
    rows = [
        (
            o.name,
            "x".join(str(d) for d in o.shape),
            f"{o.max_abs_error:.4g}",
            f"{o.mean_abs_error:.4g}",
            f"{o.max_abs_reference:.4g}",
            f"{o.cosine_mean:.5f}",
            f"{o.cosine_min:.5f}",
            "-" if o.top1_agreement is None else f"{o.top1_agreement:.2%}",
        )
        for o in report.outputs
    ]
    click.echo(
        render_table(
            ["OUTPUT", "SHAPE", "MAX ABS ERR", "MEAN ABS ERR", "MAX |BASE|", "COSINE", "COS MIN", "TOP-1 AGREE"],
            rows,
            right=(2, 3, 4, 5, 6, 7),
        )
    )  # fmt: skip
    accuracy = report.metric("accuracy")
    if accuracy is not None:
        drop = (accuracy.reference - accuracy.value) * 100
        click.echo(
            render_pairs(
                [
                    ("accuracy", f"{accuracy.reference:.2%} -> {accuracy.value:.2%} "
                                 f"({-drop:+.2f} points, labels '{report.labels}', "
                                 f"output '{accuracy.output}')"),
                ]
            )
        )  # fmt: skip
    for note in report.notes:
        click.echo(f"note: {note}")
    if report.verdict is not None:
        click.echo(f"verdict: {report.verdict}")


@click.command(name="eval")
@click.argument("base", type=click.Path(path_type=Path))
@click.argument("candidate", type=click.Path(path_type=Path))
@click.option(
    "--inputs",
    type=click.Path(exists=True, path_type=Path),
    default=None,
    help="Inputs: an .npz (keys: input names, samples on the first axis) or a directory "
    "of .npy/.npz [default: random inputs of the declared shapes, agreement only].",
)
@click.option("--labels", default=None, help="Key of the integer label array in --inputs.")
@click.option(
    "--samples",
    type=click.IntRange(1, 1 << 20),
    default=64,
    show_default=True,
    help="How many random inputs when --inputs is not given.",
)
@click.option(
    "--min-cosine", type=float, default=None, help="Fail (exit 1) below this mean cosine."
)
@click.option(
    "--max-accuracy-drop",
    type=float,
    default=None,
    help="Fail (exit 1) when accuracy drops by more points than this.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def eval_command(
    base: Path,
    candidate: Path,
    inputs: Path | None,
    labels: str | None,
    samples: int,
    min_cosine: float | None,
    max_accuracy_drop: float | None,
    as_json: bool,
) -> None:
    """Compare CANDIDATE (a shrunk model) with BASE on the same inputs.

    ONNX: both run in onnxruntime here; per output the max/mean absolute error,
    cosine similarity and top-1 agreement, and with --labels the accuracy of both.

    \b
    edgeshrink eval model.onnx model-int8-static.onnx --inputs test.npz --labels labels
    """
    from edgeshrink.quality import QualityBudget, evaluate

    budget = None
    if min_cosine is not None or max_accuracy_drop is not None:
        budget = QualityBudget(min_cosine=min_cosine, max_accuracy_drop=max_accuracy_drop)
    report = evaluate(
        base,
        candidate,
        inputs=inputs,
        labels=labels,
        samples=samples,
        budget=budget,
        progress=progress_printer(as_json),
    )
    if as_json:
        emit_json(report.to_dict())
    else:
        print_quality(report)
    QualityBudget.check(report)  # a failed budget is an error: exit 1, after the report


COMMANDS = (eval_command,)
