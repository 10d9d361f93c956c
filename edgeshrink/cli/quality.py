"""`eval`: how much quality a shrunk model lost against its original."""

from __future__ import annotations

from pathlib import Path

import click

from edgeshrink.cli.common import EVAL_TEXT, JSON_OPTION, FiniteFloat, emit_json, progress_printer
from edgeshrink.errors import EdgeshrinkError
from edgeshrink.formats import backend, detect_format
from edgeshrink.formats.gguf.quality import LlmBudget, evaluate_llm
from edgeshrink.quality import QualityBudget, evaluate
from edgeshrink.report.table import render_pairs, render_table
from edgeshrink.util import terminal_safe


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
        click.echo(f"note: {terminal_safe(note)}")
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
    "--min-cosine", type=FiniteFloat(), default=None, help="Fail (exit 1) below this mean cosine."
)
@click.option(
    "--max-accuracy-drop",
    type=FiniteFloat(),
    default=None,
    help="Fail (exit 1) when accuracy drops by more points than this.",
)
@EVAL_TEXT
@click.option(
    "--ctx",
    "n_ctx",
    type=click.IntRange(32, 1 << 16),
    default=512,
    show_default=True,
    help="GGUF: chunk size in tokens (llama-perplexity -c).",
)
@click.option(
    "--chunks", type=click.IntRange(1, None), default=None, help="GGUF: at most this many chunks."
)
@click.option(
    "--max-kld",
    type=FiniteFloat(0, None),
    default=None,
    help="GGUF: fail (exit 1) above this mean KL divergence.",
)
@click.option(
    "--max-ppl-increase",
    type=FiniteFloat(0, None),
    default=None,
    help="GGUF: fail when perplexity rises by more than this fraction (0.05 = 5%).",
)
@click.option(
    "--min-agreement",
    type=FiniteFloat(0, 1),
    default=None,
    help="GGUF: fail when the same top token is chosen less often than this fraction.",
)
@JSON_OPTION
def eval_command(
    base: Path,
    candidate: Path,
    inputs: Path | None,
    labels: str | None,
    samples: int,
    min_cosine: float | None,
    max_accuracy_drop: float | None,
    text_file: Path | None,
    n_ctx: int,
    chunks: int | None,
    max_kld: float | None,
    max_ppl_increase: float | None,
    min_agreement: float | None,
    as_json: bool,
) -> None:
    """Compare CANDIDATE (a shrunk model) with BASE on the same inputs.

    GGUF: perplexity, KL divergence, same top token and RMS Δp over a text, the way
    llama.cpp's llama-perplexity --kl-divergence computes them.

    ONNX: both run in onnxruntime here; per output the max/mean absolute error,
    cosine similarity and top-1 agreement, and with --labels the accuracy of both.

    \b
    edgeshrink eval model-f16.gguf model-q4_0.gguf --text eval.txt --max-kld 0.05
    edgeshrink eval model.onnx model-int8-static.onnx --inputs test.npz --labels labels
    """

    if backend(detect_format(base)).evaluation == "llm-text":
        eval_llm(
            base,
            candidate,
            text_file,
            n_ctx,
            chunks,
            max_kld,
            max_ppl_increase,
            min_agreement,
            as_json,
        )
        return

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


def eval_llm(
    base, candidate, text_file, n_ctx, chunks, max_kld, max_ppl_increase, min_agreement, as_json
) -> None:
    report = evaluate_llm(
        base, candidate, text=text_file.read_text(encoding="utf-8") if text_file else None,
        n_ctx=n_ctx, max_chunks=chunks, progress=progress_printer(as_json),
    )  # fmt: skip
    budget = LlmBudget(
        max_kld=max_kld, max_ppl_increase=max_ppl_increase, min_same_top=min_agreement
    )
    doc = report.to_dict()
    failures = budget.failures(doc)
    if as_json:
        emit_json({**doc, "budget": budget.describe(), "failures": failures})
    else:

        def est(e, scale=1.0, unit=""):
            return f"{e.value * scale:.4f} ± {e.uncertainty * scale:.4f}{unit}"

        click.echo(
            f"{Path(candidate).name} against {Path(base).name}: {report.n_scored} tokens scored in "
            f"{report.n_chunks} chunks of {report.n_ctx}{' (base log-probs from the cache)' if report.base_cached else ''}"
        )
        click.echo(render_pairs([
            ("PPL base", est(report.ppl_base)),
            ("PPL candidate", est(report.ppl)),
            ("PPL ratio", est(report.ppl_ratio)),
            ("KLD mean", est(report.kld_mean)),
            ("KLD median/p99/max", f"{report.kld_median:.5f} / {report.kld_p99:.5f} / {report.kld_max:.5f}"),
            ("same top token", est(report.same_top, 100, " %")),
            ("RMS Δp", est(report.rms_dp, 100, " %")),
        ]))  # fmt: skip
        click.echo(f"budget: {budget.describe()}: " + ("; ".join(failures) if failures else "met"))
    if failures:
        raise EdgeshrinkError(
            f"{Path(candidate).name} loses too much quality: {'; '.join(failures)}",
            hint="choose a larger quantization type (edgeshrink sweep finds one)",
        )


COMMANDS = (eval_command,)
