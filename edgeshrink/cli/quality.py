"""`eval`: how much quality a shrunk model lost against its original."""

from __future__ import annotations

from pathlib import Path

import click

from edgeshrink.cli.common import (
    ACCEPT_NEW_HOST_KEY,
    DB_OPTION,
    EVAL_TEXT,
    JSON_OPTION,
    Context,
    FiniteFloat,
    emit_json,
    pass_context,
    progress_printer,
    quality_budget_options,
)
from edgeshrink.cli.device_quality import eval_on_target
from edgeshrink.device_eval import DEFAULT_TOLERANCE
from edgeshrink.errors import EdgeshrinkError
from edgeshrink.formats import backend, detect_format
from edgeshrink.formats.gguf.quality import LlmBudget, evaluate_llm
from edgeshrink.quality import EvalSettings, QualityBudget, evaluate
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
@click.argument("models", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--base",
    "base_option",
    type=click.Path(path_type=Path),
    default=None,
    help="The original model (then the one argument is the candidate).",
)
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
@EVAL_TEXT
@click.option(
    "--ctx",
    "n_ctx",
    type=click.IntRange(32, 1 << 16),
    default=512,
    show_default=True,
    help="GGUF: chunk size in tokens (llama-perplexity -c); a longer text is cut into chunks.",
)
@click.option(
    "--chunks", type=click.IntRange(1, None), default=None, help="GGUF: at most this many chunks."
)
@quality_budget_options
@click.option(
    "--target",
    "-t",
    "target_name",
    default=None,
    help="Measure the quality on this device too, beside the host's (a target name).",
)
@click.option(
    "--tolerance",
    type=FiniteFloat(0, None),
    default=DEFAULT_TOLERANCE,
    show_default=True,
    help="With --target: a device figure further than this from the host's is a drift "
    "(relative for PPL and KLD, absolute for fractions).",
)
@click.option("--threads", type=click.IntRange(1, 1024), default=None,
              help="With --target: threads on the device [default: the profile's].")  # fmt: skip
@click.option("--timeout", "timeout_s", type=FiniteFloat(min=1), default=900.0, show_default=True,
              help="With --target: seconds before the agent is stopped.")  # fmt: skip
@DB_OPTION
@ACCEPT_NEW_HOST_KEY
@JSON_OPTION
@pass_context
def eval_command(
    obj: Context,
    models: tuple[Path, ...],
    base_option: Path | None,
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
    target_name: str | None,
    tolerance: float,
    threads: int | None,
    timeout_s: float,
    db: str | None,
    accept_new_host_key: bool,
    as_json: bool,
) -> None:
    """Compare CANDIDATE (a shrunk model) with BASE on the same inputs: `eval BASE CANDIDATE`
    or `eval CANDIDATE --base BASE`.

    GGUF: perplexity, KL divergence, same top token and RMS Δp over a text, the way
    llama.cpp's llama-perplexity --kl-divergence computes them.

    ONNX / TFLite: both run in the runtime here; per output the max/mean absolute error,
    cosine similarity and top-1 agreement, and with --labels the accuracy of both.

    With --target the device measures the candidate itself, with its own runtime, against a
    compact reference made here from BASE (pushed like an artifact): the device's figures
    beside the host's (read from the results database when they were measured before), and
    a drift beyond --tolerance flagged. The budget options then judge the device's figures.

    \b
    edgeshrink eval model-f16.gguf model-q4_0.gguf --text eval.txt --max-kld 0.05
    edgeshrink eval model-q4_0.gguf --base model-f16.gguf --target mypi
    edgeshrink eval digits-int8.onnx --base digits.onnx --inputs test.npz --labels labels --target board
    """
    base, candidate = _base_and_candidate(models, base_option)
    if target_name is not None:
        settings = EvalSettings(
            text=text_file.read_text(encoding="utf-8") if text_file else None, n_ctx=n_ctx,
            max_chunks=chunks, inputs=inputs, labels=labels, samples=samples,
        )  # fmt: skip
        budget = {"max_kld": max_kld, "max_ppl_increase": max_ppl_increase,
                  "min_agreement": min_agreement, "min_cosine": min_cosine,
                  "max_accuracy_drop": max_accuracy_drop}  # fmt: skip
        eval_on_target(obj, base, candidate, target_name, settings, budget, tolerance,
                       threads, timeout_s, db, accept_new_host_key, as_json)  # fmt: skip
        return

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
    if min_cosine is not None or max_accuracy_drop is not None or min_agreement is not None:
        budget = QualityBudget(min_cosine=min_cosine, max_accuracy_drop=max_accuracy_drop,
                               min_top1_agreement=min_agreement)  # fmt: skip
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


def _base_and_candidate(models: tuple[Path, ...], base: Path | None) -> tuple[Path, Path]:
    if base is not None and len(models) == 1:
        pair = base, models[0]
    elif base is None and len(models) == 2:
        pair = models[0], models[1]
    else:
        pair = None
    if pair is not None:
        for path in pair:  # a missing or unknown file is named before any runtime opens one
            detect_format(path)
        return pair
    given = " ".join(str(m) for m in models)
    raise click.UsageError(
        f"give BASE CANDIDATE, or CANDIDATE --base BASE (got {given}"
        + (f" and --base {base})" if base is not None else ")")
    )


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
