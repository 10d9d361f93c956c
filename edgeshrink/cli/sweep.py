"""`sweep`: try a ladder of quantizations for a device and pick one that is good enough."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from edgeshrink.cli.common import (
    EVAL_TEXT,
    JSON_OPTION,
    Context,
    FiniteFloat,
    emit_json,
    imatrix_options,
    imatrix_settings,
    pass_context,
    progress_printer,
    quality_budget_options,
)
from edgeshrink.cli.run import bench_options, connect_target, params_from
from edgeshrink.cost import parse_load
from edgeshrink.errors import EdgeshrinkError, UnsupportedFormatError
from edgeshrink.formats import backend, detect_format
from edgeshrink.profiles import get_profile
from edgeshrink.report.sweep_page import saving, write_page
from edgeshrink.report.table import render_table
from edgeshrink.store import ResultStore
from edgeshrink.sweep import OutputQualityBudget, QualityBudget, sweep_gguf, sweep_outputs
from edgeshrink.sweep.record import sweep_document
from edgeshrink.util import human_bytes

# Options that mean something for one way of measuring quality only, by parameter name
# (as click names them): over a text (LLMs) or on a model's outputs (ONNX, TFLite).
TEXT_ONLY = (
    "max_kld", "max_ppl_increase", "text_file", "eval_ctx", "eval_chunks", "context", "prune",
    "prune_text", "heal", "heal_steps", "heal_minutes", "imatrix_path", "no_imatrix", "max_size",
    "fit", "imatrix_text",
    "prompt_tokens", "gen_tokens", "reps", "flash_attn", "n_ctx", "no_mmap",
)  # fmt: skip
OUTPUTS_ONLY = (
    "calibration", "calibration_method", "allow_random_calibration", "eval_inputs", "labels",
    "eval_samples", "max_accuracy_drop", "min_cosine", "runs", "min_seconds", "inputs",
)  # fmt: skip


def _refuse_foreign_options(model: Path, fmt: Any) -> None:
    """A usage error naming every option given that does not apply to this model's format."""

    ctx = click.get_current_context()
    by_text = fmt.evaluation == "llm-text"
    foreign = OUTPUTS_ONLY if by_text else TEXT_ONLY
    given = [
        p for p in ctx.command.params
        if p.name in foreign and ctx.get_parameter_source(p.name) not in (ParameterSource.DEFAULT, None)
    ]  # fmt: skip
    if given:
        names = ", ".join(p.opts[0] for p in given)
        other = "ONNX" if by_text else "GGUF"
        raise click.UsageError(
            f"{names} apply to {other} models only; {model.name} is {fmt.format.upper()} "
            + ("(TFLite models take them too; " if by_text else "(")
            + "see `edgeshrink sweep --help`)"
        )


@click.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--profile", "-p", "profile_id", required=True, help="Hardware profile ID.")
@click.option(
    "--target",
    "-t",
    "target_name",
    default=None,
    help="Measure speed and memory on this target [default: GGUF: estimate; ONNX: not measured].",
)
@click.option(
    "--ladder",
    default=None,
    help="Comma-separated types to try [default GGUF: Q8_0,Q6_K,Q5_K_M,Q4_K_M,Q4_0,IQ4_XS,"
    "Q3_K_M,Q2_K; ONNX: fp32,fp16,int8-dynamic,int8-static-per-tensor,int8-static-per-channel; "
    "ONNX also knows int8-static-qoperator].",
)
@click.option(
    "--prune",
    default=None,
    help="GGUF: also remove this many whole blocks before each type, e.g. 0,2,4 (0 = the "
    "plain ladder); each removal is chosen once by `edgeshrink prune`'s scoring.",
)
@click.option(
    "--prune-text",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="GGUF: text the blocks are scored on [default: the calibration text edgeshrink ships].",
)
@imatrix_options
@click.option(
    "--imatrix-text",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="GGUF: calibration text of the importance matrix [default: the one edgeshrink ships].",
)
@click.option(
    "--heal",
    is_flag=True,
    help="GGUF, with --prune: add a healed twin of every pruned candidate (the student "
    "distilled from the original on the --prune-text; needs the distill extra).",
)
@click.option(
    "--heal-steps",
    type=click.IntRange(1, None),
    default=None,
    help="Training steps of each healing [default: 200, or --heal-minutes].",
)
@click.option(
    "--heal-minutes",
    type=FiniteFloat(0.01, None),
    default=None,
    help="Training time of each healing instead of --heal-steps.",
)
@click.option(
    "--report",
    "report_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write the page that sums the sweep up: HTML (plots inline), or Markdown for a path "
    "ending in .md; it also measures the original, to say what shrinking saved.",
)
@click.option(
    "--load",
    "load_text",
    default=None,
    help="Tokens to serve, e.g. 20M-tokens/day: the report says how many devices or instances "
    "that needs and what they cost (the profile's [price]).",
)
@click.option(
    "--utilization",
    type=FiniteFloat(0.01, 1),
    default=0.5,
    show_default=True,
    help="The share of each hour the hardware spends generating, for the costs.",
)
@quality_budget_options
@click.option(
    "--optimize",
    type=click.Choice(["speed", "size"]),
    default="speed",
    show_default=True,
    help="Among good-enough candidates pick the fastest or the smallest (ONNX without "
    "--target: the smallest, as there is no speed to compare).",
)
@EVAL_TEXT
@click.option(
    "--eval-ctx",
    type=click.IntRange(32, 1 << 16),
    default=512,
    show_default=True,
    help="GGUF: evaluation chunk size in tokens (llama-perplexity -c).",
)
@click.option(
    "--eval-chunks",
    type=click.IntRange(1, None),
    default=None,
    help="GGUF: evaluate at most this many chunks.",
)
@click.option(
    "--ctx",
    "context",
    type=click.IntRange(16, 1 << 20),
    default=None,
    help="GGUF: context to budget device memory for.",
)
@click.option(
    "--calibration",
    type=click.Path(exists=True, path_type=Path),
    default=None,
    help="ONNX: calibration data for static int8 (.npz keyed by input name, or a directory "
    "of .npy/.npz) [default: static int8 steps are skipped].",
)
@click.option(
    "--calibration-method",
    type=click.Choice(["minmax", "entropy", "percentile"]),
    default="minmax",
    show_default=True,
    help="ONNX: how static int8 turns calibration data into ranges.",
)
@click.option(
    "--allow-random-calibration",
    is_flag=True,
    help="ONNX: without --calibration, calibrate static int8 on random inputs (recorded as a "
    "warning in each manifest).",
)
@click.option(
    "--eval",
    "eval_inputs",
    type=click.Path(exists=True, path_type=Path),
    default=None,
    help="ONNX: evaluation inputs (.npz keyed by input name, or a directory of .npy/.npz) "
    "[default: random inputs, agreement only].",
)
@click.option("--labels", default=None, help="ONNX: key of the integer label array in --eval.")
@click.option(
    "--eval-samples",
    type=click.IntRange(1, 1 << 20),
    default=64,
    show_default=True,
    help="ONNX: how many random inputs when --eval is not given.",
)
@click.option(
    "--output-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where candidates go [default: ./MODEL-sweep/].",
)
@click.option(
    "--plot",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write the Pareto plot here (.svg) [default: OUTPUT-DIR/sweep.svg].",
)
@click.option(
    "--remeasure",
    is_flag=True,
    help="Measure again even when the store has a result for the same bytes.",
)
@bench_options
@JSON_OPTION
@pass_context
def sweep(
    obj: Context,
    model: Path,
    profile_id: str,
    target_name: str | None,
    ladder: str | None,
    prune: str | None,
    prune_text: Path | None,
    imatrix_path: Path | None,
    no_imatrix: bool,
    max_size: int | None,
    fit: bool,
    imatrix_text: Path | None,
    heal: bool,
    heal_steps: int | None,
    heal_minutes: float | None,
    report_path: Path | None,
    load_text: str | None,
    utilization: float,
    max_kld: float | None,
    max_ppl_increase: float | None,
    min_agreement: float | None,
    max_accuracy_drop: float | None,
    min_cosine: float | None,
    optimize: str,
    text_file: Path | None,
    eval_ctx: int,
    eval_chunks: int | None,
    context: int | None,
    calibration: Path | None,
    calibration_method: str,
    allow_random_calibration: bool,
    eval_inputs: Path | None,
    labels: str | None,
    eval_samples: int,
    output_dir: Path | None,
    plot: Path | None,
    remeasure: bool,
    as_json: bool,
    **kw: Any,
) -> None:
    """Shrink MODEL to a ladder of types, measure each, and pick the best that is good enough.

    GGUF quality is llama-perplexity's KL divergence over a text; ONNX quality is
    output agreement on --eval inputs and, with --labels, accuracy.

    \b
    edgeshrink sweep model-f16.gguf --profile raspberry-pi-5-8gb --max-kld 0.05
    edgeshrink sweep model-f16.gguf --profile raspberry-pi-5-8gb --target mypi --max-kld 0.05
    edgeshrink sweep model-f16.gguf -p raspberry-pi-5-8gb --prune 0,2,4 --max-kld 0.1
    edgeshrink sweep model-f16.gguf -p raspberry-pi-5-8gb --prune 2,4 --heal --max-kld 0.1
    edgeshrink sweep model-f16.gguf -p raspberry-pi-4-2gb --max-size 1.2GB --max-kld 0.1

    GGUF types below 5 bits are also made with an importance matrix (TYPE-imatrix;
    --no-imatrix: not), and --max-size/--fit add the mix of types within that size.
    edgeshrink sweep model.onnx --profile imx8mp --target board --calibration cal.npz \\
        --eval eval.npz --labels labels --max-accuracy-drop 1
    """

    fmt = backend(detect_format(model))
    if not fmt.sweep_ladder:
        raise UnsupportedFormatError(
            f"{model.name} is {fmt.format}; sweep works on GGUF, ONNX and TFLite models",
            hint="convert it to an F16 GGUF first (edgeshrink shrink), then sweep that",
        )
    _refuse_foreign_options(model, fmt)
    load = parse_load(load_text) if load_text else None
    profile = get_profile(profile_id, obj.profiles_dirs)
    target = connect_target(target_name, profile.id, kw) if target_name else None
    out_dir = output_dir or Path.cwd() / f"{model.stem}-sweep"
    common = dict(
        target=target, params=params_from(kw), optimize=optimize, output_dir=out_dir,
        db=kw["db"], remeasure=remeasure, plot=plot or out_dir / "sweep.svg",
        progress=progress_printer(as_json),
    )  # fmt: skip
    if fmt.evaluation == "llm-text":
        settings = imatrix_settings(imatrix_path, no_imatrix, max_size, fit)
        types = (
            tuple(fmt.normalize_quant(q) for q in ladder.split(",")) if ladder else fmt.sweep_ladder
        )
        result = sweep_gguf(
            model, profile,
            budget=QualityBudget(max_kld=max_kld, max_ppl_increase=max_ppl_increase, min_same_top=min_agreement),
            ladder=types, text=text_file.read_text(encoding="utf-8") if text_file else None,
            prune=parse_counts(prune) if prune else (0,),
            heal=healing(heal, heal_steps, heal_minutes, prune),
            include_original=bool(report_path or load_text),
            calibration_text=prune_text.read_text(encoding="utf-8") if prune_text else None,
            imatrix=not no_imatrix, imatrix_text=imatrix_text, imatrix_file=settings["imatrix"],
            max_size=settings["max_size"], fit=settings["fit"], eval_ctx=eval_ctx, eval_chunks=eval_chunks, context=context, **common,
        )  # fmt: skip
    else:
        budget = OutputQualityBudget(
            max_accuracy_drop=max_accuracy_drop, min_agreement=min_agreement, min_cosine=min_cosine
        )
        result = sweep_outputs(
            model, profile, budget=budget,
            ladder=tuple(s for s in ladder.split(",") if s.strip()) if ladder else None,
            calibration=calibration, calibration_method=calibration_method,
            allow_random_calibration=allow_random_calibration, eval_inputs=eval_inputs,
            labels=labels, samples=eval_samples, **common,
        )  # fmt: skip
    doc = sweep_document(result, profile, load=load, utilization=utilization)
    with ResultStore(kw["db"]) as store:
        sweep_id = store.add_sweep(doc)
    if report_path:
        write_page(doc, report_path)
    if as_json:
        emit_json(doc | {"sweep_id": sweep_id, "report": str(report_path) if report_path else None})
    else:
        click.echo(
            f"sweep of {model.name} for {result.profile_id}; quality on "
            f"{result.quality_source}; speed {result.speed_source}"
        )
        if result.candidates:
            by_text = fmt.evaluation == "llm-text"
            click.echo(_gguf_table(result) if by_text else _onnx_table(result))
        for step, why in result.skipped:
            click.echo(f"skipped: {step}: {why}")
        for c in result.candidates:
            for warning in c.warnings:
                click.echo(f"note: {c.quant}: {warning}")
        click.echo(f"pick: {result.reason}")
        if result.plot:
            click.echo(f"plot: {result.plot}")
        saved = saving(doc)
        if saved:
            click.echo(f"cost: {saved}")
        click.echo(f"stored: sweep #{sweep_id} (`edgeshrink results sweep {sweep_id}`)")
        if report_path:
            click.echo(f"report: {report_path}")
    if result.pick is None and not result.candidates:
        calibration = any("calibration" in why for _, why in result.skipped)
        raise EdgeshrinkError(
            "no candidate of the ladder could be made for this device",
            hint="pass --calibration cal.npz, or add types that need none to --ladder"
            if calibration
            else "plan for a device with more memory, or a smaller model",
        )
    if result.pick is None:
        raise EdgeshrinkError(
            "no candidate is good enough for this device",
            hint="loosen the quality budget, or plan for a device with more memory",
        )


def healing(heal: bool, steps: int | None, minutes: float | None, prune: str | None) -> Any:
    """The distill settings of --heal (None without it)."""
    if not heal:
        if steps is not None or minutes is not None:
            raise click.UsageError("--heal-steps and --heal-minutes go with --heal")
        return None
    if not prune or not any(parse_counts(prune)):
        raise click.UsageError("--heal heals pruned candidates: give --prune, e.g. --prune 0,2,4")
    if steps is not None and minutes is not None:
        raise click.UsageError("--heal-steps and --heal-minutes exclude each other: choose one")
    return {"minutes": minutes} if minutes is not None else {"steps": steps or 200}


def parse_counts(text: str) -> tuple[int, ...]:
    try:
        counts = tuple(int(part) for part in text.replace(" ", "").split(",") if part)
    except ValueError:
        raise click.BadParameter(
            f"{text!r} is not a list of block counts (e.g. 0,2,4)", param_hint="--prune"
        ) from None
    if not counts or any(n < 0 for n in counts):
        raise click.BadParameter("give counts of 0 or more, e.g. 0,2,4", param_hint="--prune")
    return counts


def _verdict(result: Any, c: Any) -> str:
    if not c.ran_on_device:
        return f"failed on {result.target}"
    if c.beaten_by:
        return f"beaten by {c.beaten_by}" + ("" if c.meets_quality else ", too lossy")
    front = c.quant in result.pareto_size or c.quant in result.pareto_speed
    return ("front " if front else "") + ("ok" if c.meets_quality else "too lossy")


def _gguf_table(result: Any) -> str:
    rows = []
    for c in result.candidates:
        q = c.quality
        measured = c.measured or {}
        rows.append((
            "->" if c.quant == result.pick else "", c.quant, f"{c.size_bytes / 2**20:.1f}",
            f"{c.estimate_mb:.0f}", "yes" if c.fits else "NO",
            f"{q['kld_mean']['value']:.4f}", f"{(q['ppl_ratio']['value'] - 1) * 100:+.2f}%",
            f"{q['same_top']['value'] * 100:.1f}%",
            f"{c.tg_tok_s:.1f}" if c.tg_tok_s else "-",
            f"{measured['peak_rss_mb']:.0f}" if measured.get("peak_rss_mb") else "-",
            _verdict(result, c),
        ))  # fmt: skip
    return render_table(
        ["", "TYPE", "MIB", "EST PEAK MB", "FITS", "KLD", "PPL", "SAME TOP", "TG TOK/S", "PEAK MB", "VERDICT"],
        rows, right=(2, 3, 5, 6, 7, 8, 9),
    )  # fmt: skip


def _onnx_table(result: Any) -> str:

    labelled = any(m["name"] == "accuracy" for c in result.candidates for m in c.quality["metrics"])
    measured_any = result.target is not None
    headers = ["", "TYPE", "SIZE", "EST PEAK MB", "FITS", "COSINE", "TOP-1 AGREE"]
    if labelled:
        headers += ["ACCURACY", "DROP"]
    if measured_any:
        headers += ["P50 MS", "P90 MS", "INF/S", "PEAK MB"]
    headers.append("VERDICT")
    rows = []
    for c in result.candidates:
        metrics = c.quality["metrics"]
        cosine = min(m["value"] for m in metrics if m["name"] == "cosine_mean")
        agreement = [m["value"] for m in metrics if m["name"] == "top1_agreement"]
        row = [
            "->" if c.quant == result.pick else "", c.quant, human_bytes(c.size_bytes),
            f"{c.estimate_mb:.0f}", "yes" if c.fits else "NO", f"{cosine:.6f}",
            f"{min(agreement):.2%}" if agreement else "-",
        ]  # fmt: skip
        if labelled:
            accuracy = next(m for m in metrics if m["name"] == "accuracy")
            change = (accuracy["value"] - accuracy["reference"]) * 100
            row += [f"{accuracy['value']:.2%}", f"{change:+.2f}"]
        if measured_any:
            m = c.measured or {}

            def fmt(key: str, spec: str, m: dict[str, Any] = m) -> str:
                return format(m[key], spec) if m.get(key) else "-"

            row += [
                fmt("latency_p50_ms", ".3f"), fmt("latency_p90_ms", ".3f"),
                f"{c.speed:,.1f}" if c.speed else "-", fmt("peak_rss_mb", ".0f"),
            ]  # fmt: skip
        row.append(_verdict(result, c))
        rows.append(tuple(row))
    right = tuple(i for i, h in enumerate(headers) if h not in ("", "TYPE", "FITS", "VERDICT"))
    return render_table(headers, rows, right=right)


COMMANDS = (sweep,)
