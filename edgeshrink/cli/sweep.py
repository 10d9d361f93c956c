"""`sweep`: try a ladder of quantizations for a device and pick one that is good enough."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from edgeshrink.cli.common import Context, emit_json, pass_context, progress_printer
from edgeshrink.cli.run import bench_options, connect_target, params_from
from edgeshrink.report.table import render_table


@click.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--profile", "-p", "profile_id", required=True, help="Hardware profile ID.")
@click.option(
    "--target",
    "-t",
    "target_name",
    default=None,
    help="Measure speed and memory on this target [default: estimate only].",
)
@click.option(
    "--ladder",
    default=None,
    help="Comma-separated types to try [default: Q8_0,Q6_K,Q5_K_M,Q4_K_M,Q4_0,IQ4_XS,Q3_K_M,Q2_K].",
)
@click.option(
    "--max-kld",
    type=click.FloatRange(0, None),
    default=None,
    help="Quality budget: mean KL divergence at most this.",
)
@click.option(
    "--max-ppl-increase",
    type=click.FloatRange(0, None),
    default=None,
    help="Quality budget: perplexity at most this fraction above the original (0.05 = 5%).",
)
@click.option(
    "--min-agreement",
    type=click.FloatRange(0, 1),
    default=None,
    help="Quality budget: same top token at least this fraction of the time.",
)
@click.option(
    "--optimize",
    type=click.Choice(["speed", "size"]),
    default="speed",
    show_default=True,
    help="Among good-enough candidates pick the fastest or the smallest.",
)
@click.option(
    "--text",
    "text_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Evaluation text [default: the short English text edgeshrink ships].",
)
@click.option(
    "--eval-ctx",
    type=click.IntRange(32, 1 << 16),
    default=512,
    show_default=True,
    help="Evaluation chunk size in tokens (llama-perplexity -c).",
)
@click.option(
    "--eval-chunks",
    type=click.IntRange(1, None),
    default=None,
    help="Evaluate at most this many chunks.",
)
@click.option(
    "--ctx",
    "context",
    type=click.IntRange(16, 1 << 20),
    default=None,
    help="Context to budget device memory for.",
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
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_context
def sweep(
    obj: Context,
    model: Path,
    profile_id: str,
    target_name: str | None,
    ladder: str | None,
    max_kld: float | None,
    max_ppl_increase: float | None,
    min_agreement: float | None,
    optimize: str,
    text_file: Path | None,
    eval_ctx: int,
    eval_chunks: int | None,
    context: int | None,
    output_dir: Path | None,
    plot: Path | None,
    remeasure: bool,
    as_json: bool,
    **kw: Any,
) -> None:
    """Shrink MODEL to a ladder of types, measure each, and pick the best that is good enough.

    \b
    edgeshrink sweep model-f16.gguf --profile raspberry-pi-5-8gb --max-kld 0.05
    edgeshrink sweep model-f16.gguf --profile raspberry-pi-5-8gb --target mypi --max-kld 0.05
    """
    from edgeshrink.formats import gguf
    from edgeshrink.profiles import get_profile
    from edgeshrink.sweep import DEFAULT_LADDER, QualityBudget, sweep_gguf

    profile = get_profile(profile_id, obj.profiles_dirs)
    target = connect_target(target_name, profile.id, kw) if target_name else None
    types = tuple(gguf.quant_type(q).name for q in ladder.split(",")) if ladder else DEFAULT_LADDER
    out_dir = output_dir or Path.cwd() / f"{model.stem}-sweep"
    result = sweep_gguf(
        model, profile,
        budget=QualityBudget(max_kld=max_kld, max_ppl_increase=max_ppl_increase, min_same_top=min_agreement),
        ladder=types, target=target, params=params_from(kw), optimize=optimize,
        text=text_file.read_text(encoding="utf-8") if text_file else None,
        eval_ctx=eval_ctx, eval_chunks=eval_chunks, context=context, output_dir=out_dir,
        db=kw["db"], remeasure=remeasure, plot=plot or out_dir / "sweep.svg",
        progress=progress_printer(as_json),
    )  # fmt: skip
    if as_json:
        emit_json(result.to_dict())
        return
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
            ("front " if c.quant in result.pareto_size or c.quant in result.pareto_speed else "")
            + ("ok" if c.meets_quality else "too lossy"),
        ))  # fmt: skip
    click.echo(
        f"sweep of {model.name} for {result.profile_id}; quality on "
        f"{result.candidates[0].quality['n_scored']} tokens; speed {result.speed_source}"
    )
    click.echo(render_table(
        ["", "TYPE", "MIB", "EST PEAK MB", "FITS", "KLD", "PPL", "SAME TOP", "TG TOK/S", "PEAK MB", "VERDICT"],
        rows, right=(2, 3, 5, 6, 7, 8, 9),
    ))  # fmt: skip
    click.echo(f"pick: {result.reason}")
    if result.plot:
        click.echo(f"plot: {result.plot}")
    if result.pick is None:
        from edgeshrink.errors import EdgeshrinkError

        raise EdgeshrinkError(
            "no candidate is good enough for this device",
            hint="loosen the quality budget, or plan for a device with more memory",
        )


COMMANDS = (sweep,)
