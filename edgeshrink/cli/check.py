"""`check`: the production checklist for one artifact on one device."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from edgeshrink.artifacts import load_artifact
from edgeshrink.check import SpeedLimits, check_artifact
from edgeshrink.cli.common import (
    JSON_OPTION,
    Context,
    FiniteFloat,
    emit_json,
    pass_context,
    progress_printer,
    quality_budget_options,
)
from edgeshrink.cli.run import bench_options, connect_target, params_from
from edgeshrink.errors import EdgeshrinkError, ProfileError
from edgeshrink.profiles import get_profile
from edgeshrink.util import terminal_safe

MARKS = {"pass": "ok  ", "fail": "FAIL", "skip": "skip"}


@click.command()
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option(
    "--target", "-t", "target_name", default="local", show_default=True, help="Target to check on."
)
@click.option(
    "--profile",
    "-p",
    "profile_id",
    default=None,
    help="Hardware profile [default: the target's, else the manifest's].",
)
@click.option(
    "--base",
    type=click.Path(exists=True, path_type=Path),
    default=None,
    help="The original model, to check quality against.",
)
@click.option(
    "--text",
    "text_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="GGUF quality: evaluation text [default: edgeshrink's].",
)
@click.option(
    "--eval-ctx",
    type=click.IntRange(32, 1 << 16),
    default=512,
    show_default=True,
    help="GGUF quality: chunk size in tokens.",
)
@quality_budget_options
@click.option(
    "--eval",
    "eval_inputs",
    type=click.Path(exists=True, path_type=Path),
    default=None,
    help="ONNX/TFLite quality: evaluation inputs (.npz).",
)
@click.option("--labels", default=None, help="ONNX/TFLite quality: key of the labels in --eval.")
@click.option(
    "--min-tg-tok-s",
    type=FiniteFloat(0, None),
    default=None,
    help="Speed target: generation tokens/s at least this.",
)
@click.option(
    "--max-ttft-ms",
    type=FiniteFloat(0, None),
    default=None,
    help="Speed target: time to first token at most this.",
)
@click.option(
    "--max-latency-ms",
    type=FiniteFloat(0, None),
    default=None,
    help="Speed target: p90 latency at most this (models that are not LLMs).",
)
@click.option(
    "--headroom",
    type=FiniteFloat(0, 0.9),
    default=0.1,
    show_default=True,
    help="Peak memory must stay this fraction under the profile's budget.",
)
@click.option(
    "--junit",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also write the checklist as JUnit XML here.",
)
@bench_options
@JSON_OPTION
@pass_context
def check(
    obj: Context,
    artifact: Path,
    target_name: str,
    profile_id: str | None,
    base: Path | None,
    text_file: Path | None,
    eval_ctx: int,
    max_kld: float | None,
    max_ppl_increase: float | None,
    min_agreement: float | None,
    eval_inputs: Path | None,
    labels: str | None,
    min_cosine: float | None,
    max_accuracy_drop: float | None,
    min_tg_tok_s: float | None,
    max_ttft_ms: float | None,
    max_latency_ms: float | None,
    headroom: float,
    junit: Path | None,
    as_json: bool,
    **kw: Any,
) -> None:
    """Is ARTIFACT ready for production on a device? Pass/fail per item; exit 1 on any fail.

    \b
    Items: manifest matches the file; the same bytes on the device (sha256 computed there);
    loads; outputs finite and repeatable with a fixed seed; peak memory under the budget with
    headroom; speed within your targets; no thermal throttling; quality within budget (--base).
    \b
    edgeshrink check model-q4_0.gguf --target mypi --base model-f16.gguf --max-kld 0.05 --min-tg-tok-s 5
    """

    target = connect_target(target_name, profile_id, kw)
    chosen = target.profile
    if not chosen:
        try:
            chosen = load_artifact(artifact, verify=False).profile_id
        except EdgeshrinkError:
            chosen = None
    if not chosen:
        raise ProfileError("no hardware profile: the target has none and the artifact's manifest names none",
                           hint="pass --profile ID")  # fmt: skip
    profile = get_profile(chosen, obj.profiles_dirs)
    quality = {
        "text": text_file.read_text(encoding="utf-8") if text_file else None, "eval_ctx": eval_ctx,
        "max_kld": max_kld, "max_ppl_increase": max_ppl_increase, "min_agreement": min_agreement,
        "inputs": eval_inputs, "labels": labels, "min_cosine": min_cosine, "max_accuracy_drop": max_accuracy_drop,
    }  # fmt: skip
    report = check_artifact(
        artifact, target, profile, params=params_from(kw), base=base, quality=quality,
        limits=SpeedLimits(min_tg_tok_s, max_ttft_ms, max_latency_ms), headroom=headroom,
        db=kw["db"], timeout_s=kw["timeout_s"], progress=progress_printer(as_json),
    )  # fmt: skip
    if junit:
        report.write_junit(junit)
    if as_json:
        emit_json(report.to_dict())
    else:
        click.echo(terminal_safe(f"check of {artifact.name} on {target.name} for {profile.id}"))
        width = max(len(i.name) for i in report.items)
        for item in report.items:
            click.echo(
                f"  {MARKS[item.status]}  {item.name.ljust(width)}  {terminal_safe(item.detail)}"
            )
        click.echo("ready" if report.passed else "NOT ready")
    if not report.passed:
        failed = [i.name for i in report.items if i.status == "fail"]
        raise EdgeshrinkError(f"{artifact.name} is not ready for {target.name}: {', '.join(failed)} failed",
                              hint="see the items above (--json for details)")  # fmt: skip


COMMANDS = (check,)
