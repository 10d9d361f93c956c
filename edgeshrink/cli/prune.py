"""`edgeshrink prune`: remove the transformer blocks a model needs least."""

from __future__ import annotations

from pathlib import Path

import click

from edgeshrink.cli.common import (
    JSON_OPTION,
    Context,
    FiniteFloat,
    emit_json,
    pass_context,
    progress_printer,
)
from edgeshrink.errors import RecipeError
from edgeshrink.passes import step
from edgeshrink.profiles import get_profile
from edgeshrink.prune import (
    PruneOutcome,
    budget_for,
    makes_embeddings,
    prunable,
    prune_model,
    score_only,
)
from edgeshrink.report.plot import write_layer_scores_svg
from edgeshrink.report.table import render_pairs, render_table
from edgeshrink.util import human_bytes


def parse_layer_list(text: str) -> tuple[int, ...]:
    try:
        layers = tuple(int(part) for part in text.replace(" ", "").split(",") if part)
    except ValueError:
        raise RecipeError(
            f"--remove {text!r}: not a list of layer numbers", hint="e.g. --remove 7,8,9 (0-based)"
        ) from None
    if not layers:
        raise RecipeError("--remove names no layer", hint="e.g. --remove 7,8,9 (0-based)")
    return step("prune", layers=layers).get("layers")


def read_text(path: Path | None) -> str | None:
    return path.read_text(encoding="utf-8") if path else None


@click.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--layers", "n_layers", type=click.IntRange(1, None), default=None,
              help="Remove this many blocks: the removal the scores rank best, measured.")  # fmt: skip
@click.option(
    "--remove", "remove", default=None, help="Remove exactly these blocks (0-based, e.g. 7,8,9)."
)
@click.option("--max-kld", type=FiniteFloat(0, None), default=None,
              help="Remove blocks one at a time while the mean KL divergence stays within this.")  # fmt: skip
@click.option("--max-ppl-increase", type=FiniteFloat(0, None), default=None,
              help="... while perplexity rises by at most this fraction (0.05 = 5%).")  # fmt: skip
@click.option("--min-same-top", type=FiniteFloat(0, 1), default=None,
              help="... while the same top token is chosen at least this often (a fraction).")  # fmt: skip
@click.option("--min-cosine", type=FiniteFloat(-1, 1), default=None,
              help="Embedding models: ... while the mean cosine with the original's embeddings stays at least this.")  # fmt: skip
@click.option("--text", "text_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="Calibration text the blocks are scored on [default: the one edgeshrink ships].")  # fmt: skip
@click.option("--eval-text", "eval_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="Text the candidate removals are judged on [default: edgeshrink's evaluation text].")  # fmt: skip
@click.option("--candidates", type=click.IntRange(1, 10), default=3, show_default=True,
              help="How many of the best-ranked removals are measured.")  # fmt: skip
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="The pruned model [default: ./MODEL-prunedN.gguf]; a path ending in .svg "
              "writes the scores' bar chart instead and no model.")  # fmt: skip
@click.option("--plot", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the scores as an SVG bar chart.")  # fmt: skip
@click.option("--profile", "-p", "profile_id", default=None,
              help="Shrink for this device too: the pruned model gets the type plan chooses.")  # fmt: skip
@click.option(
    "--quant",
    "-q",
    default=None,
    help="Quantize to this type in the same pass [default: keep the file's type].",
)
@click.option(
    "--threads", type=click.IntRange(1, 1024), default=None, help="Threads [default: all cores]."
)
@click.option(
    "--force", is_flag=True, help="Write the model again even if an identical one exists."
)
@click.option(
    "--dry-run", is_flag=True, help="Score the blocks and show the ranking; write nothing."
)
@JSON_OPTION
@pass_context
def prune(obj: Context, model: Path, n_layers: int | None, remove: str | None, max_kld: float | None,
          max_ppl_increase: float | None, min_same_top: float | None, min_cosine: float | None,
          text_file: Path | None,
          eval_file: Path | None, candidates: int, output: Path | None, plot: Path | None,
          profile_id: str | None, quant: str | None, threads: int | None, force: bool,
          dry_run: bool, as_json: bool) -> None:  # fmt: skip
    """Remove whole transformer blocks of a model, the ones it needs least.

    \b
    edgeshrink prune model.gguf --layers 3 -o model-pruned.gguf     the 3 it can spare best
    edgeshrink prune model.gguf --max-kld 0.15 --text calib.txt     as many as the budget allows
    edgeshrink prune model.gguf --remove 7,8,9 -o cut.gguf          exactly these (0-based)
    edgeshrink prune model.gguf --dry-run --plot scores.svg         the ranking only
    edgeshrink prune ./hf-checkpoint --layers 2 -p raspberry-pi-5-8gb
    edgeshrink prune ./minilm --layers 2 --min-cosine 0.98          an embedding model

    GGUF files and Hugging Face checkpoints (pruned before conversion). Embedding
    models (BERT) are judged by the cosine of their sentence embeddings with the
    original's instead of KL divergence.

    Blocks are scored with llama.cpp's own forward pass over the calibration text
    (Block Influence, 1 - cos between a block's input and output; angular distance
    across runs of blocks), the best-ranked removals are made with llama.cpp's
    quantizer and measured against the original on the evaluation text (KL
    divergence, perplexity, same top token), and the best measured one is kept.
    """
    chart_only = output is not None and output.suffix.lower() == ".svg"
    bounds = {"max_kld": max_kld, "max_ppl_increase": max_ppl_increase,
              "min_same_top": min_same_top, "min_cosine": min_cosine}  # fmt: skip
    budgeted = any(v is not None for v in bounds.values())
    modes = [
        m for m, on in (("--layers", n_layers), ("--remove", remove), ("a budget", budgeted)) if on
    ]
    if len(modes) > 1:
        raise click.UsageError(f"{' and '.join(modes)} exclude each other: choose one")
    if not modes and not (dry_run or chart_only):
        raise click.UsageError(
            "say what to remove: --layers N, --remove 7,8 or a budget such as --max-kld 0.1"
        )
    say = progress_printer(as_json)
    text, eval_text = read_text(text_file), read_text(eval_file)
    if dry_run or chart_only:
        outcome = score_only(model, text=text, max_run=max(n_layers or 1, 1), threads=threads,
                             force=force, progress=say)  # fmt: skip
        for path in (p for p in (plot, output if chart_only else None) if p):
            write_layer_scores_svg(outcome.choice.scores[0], (), path)
        show(outcome, as_json, plot)
        return
    info = prunable(model)
    budget = budget_for(makes_embeddings(info), **bounds) if budgeted else None
    profile = get_profile(profile_id, obj.profiles_dirs) if profile_id else None
    outcome = prune_model(
        model, n_layers=n_layers, remove=parse_layer_list(remove) if remove else None,
        budget=budget, text=text, eval_text=eval_text, candidates=candidates, output=output,
        profile=profile, quant=quant, threads=threads, force=force, progress=say,
    )  # fmt: skip
    if plot and outcome.choice.scores:
        write_layer_scores_svg(outcome.choice.scores[0], outcome.choice.layers, plot)
    show(outcome, as_json, plot)


def show(outcome: PruneOutcome, as_json: bool, plot: Path | None) -> None:
    choice, result, info = outcome.choice, outcome.result, outcome.info
    art = result.artifact if result else None
    if as_json:
        doc = choice.to_dict()
        doc["judged_by"] = "embedding cosine" if outcome.encoder else "KL divergence"
        if art is not None:
            doc["artifact"] = art.to_manifest() | {"path": str(art.path)}
            doc["reused"] = result.reused
        emit_json(doc)
        return
    if choice.scores:
        scores = choice.scores[0]
        runs = {n: d for n, d in scores.runs if n > 1}
        top = max(max(scores.influence), 1e-12)
        rows = [["x" if i in choice.layers else "", i, f"{v:.4f}", "█" * max(1, round(40 * v / top))]
                for i, v in enumerate(scores.influence)]  # fmt: skip
        click.echo(f"block influence of {Path(scores.model).name} over {scores.n_tokens} tokens "
                   f"({scores.seconds:.1f} s; 1 - cos between a block's input and output)")  # fmt: skip
        click.echo(render_table(["CUT", "BLOCK", "INFLUENCE", ""], rows, right=(1, 2)))
        for n, dist in runs.items():
            best = min(range(len(dist)), key=dist.__getitem__)
            click.echo(
                f"least-changing run of {n}: blocks {best}-{best + n - 1} (angular distance {dist[best]:.4f})"
            )
    if choice.tried:
        click.echo("measured against the original:")
        if outcome.encoder:
            headers = ["", "REMOVED", "COSINE", "COS P05", "COS MIN", "WHY"]
            rows = [["->" if t.layers == choice.layers else "", ",".join(map(str, t.layers)),
                     f"{t.quality['cosine_mean']:.5f}", f"{t.quality['cosine_p05']:.5f}",
                     f"{t.quality['cosine_min']:.5f}", t.why] for t in choice.tried]  # fmt: skip
        else:
            headers = ["", "REMOVED", "KLD", "PPL RATIO", "SAME TOP", "WHY"]
            rows = [["->" if t.layers == choice.layers else "", ",".join(map(str, t.layers)), f"{t.loss:.4f}",
                     f"{t.quality['ppl_ratio']['value']:.3f}", f"{100 * t.quality['same_top']['value']:.1f}%", t.why]
                    for t in choice.tried]  # fmt: skip
        click.echo(render_table(headers, rows, right=(2, 3, 4)))
    click.echo(f"choice: {choice.stopped}")
    if plot:
        click.echo(f"chart: {plot}")
    if art is None:
        return
    size = human_bytes(art.size_bytes)
    if info.size_bytes:
        size += f" (from {human_bytes(info.size_bytes)}, {100 * (1 - art.size_bytes / info.size_bytes):.1f}% smaller)"
    n_layer = info.llm.n_layer if info.llm else 0
    click.echo(f"{'reused' if result.reused else 'wrote'} {art.path}")
    click.echo(render_pairs([
        ("layers", f"{n_layer} -> {n_layer - len(choice.layers)} (removed {', '.join(map(str, choice.layers))})"),
        ("type", art.quant),
        ("size", size),
        ("manifest", art.manifest_path),
    ]))  # fmt: skip


COMMANDS = [prune]

__all__ = ["COMMANDS", "prune"]
