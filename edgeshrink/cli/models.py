"""`inspect`, `plan` and `shrink`: look at a model, choose a quantization, make it."""

from __future__ import annotations

import re
from pathlib import Path

import click

from edgeshrink.cli.common import (
    JSON_OPTION,
    Context,
    emit_json,
    imatrix_options,
    imatrix_settings,
    pass_context,
    progress_printer,
    stack_options,
)
from edgeshrink.convert import CONVERTERS, converter_to
from edgeshrink.formats import backend, detect_and_inspect, gguf
from edgeshrink.passes import recipe_text
from edgeshrink.plan import ShrinkOptions
from edgeshrink.profiles import get_profile
from edgeshrink.report.table import render_pairs, render_table
from edgeshrink.shrink import default_output_path, plan_model, shrink_model
from edgeshrink.util import human_bytes, human_count, native_stdout_to_stderr, terminal_safe

MODEL = click.argument("model", type=click.Path(path_type=Path))
PROFILE = click.option(
    "--profile",
    "-p",
    "profile_id",
    required=True,
    help="Hardware profile ID (see `edgeshrink profiles list`).",
)
QUANT = click.option(
    "--quant",
    "-q",
    default=None,
    help="Quantization: a llama.cpp type for GGUF (Q4_0, Q4_K_M, Q8_0, ...), "
    "fp16/int8-dynamic/int8-static/int8-static-qoperator for ONNX; default: chosen by plan.",
)


def format_options(func):
    """Options that only some formats read (ONNX/TFLite static quantization)."""
    options = [
        click.option("--calibration", type=click.Path(exists=True, path_type=Path), default=None,
                     help="Calibration inputs for static int8 (ONNX/TFLite): an .npz file or a directory of .npy/.npz."),
        click.option("--calibration-method", type=click.Choice(["minmax", "entropy", "percentile"]),
                     default="minmax", show_default=True, help="How static int8 ranges are chosen."),
        click.option("--per-channel/--per-tensor", default=None,
                     help="Weight scales per output channel or per tensor [default: the backend's choice]."),
        click.option("--allow-random-calibration", is_flag=True,
                     help="Calibrate static int8 on random inputs (recorded as a warning in the manifest)."),
        click.option("--to", "to_format", type=click.Choice(sorted(CONVERTERS)), default=None,
                     help="Convert a Keras (.keras/.h5) or SavedModel directory to this format first "
                          "(TFLite: TensorFlow's TFLiteConverter; needs tensorflow-cpu)."),
        click.option("--convert-type", type=click.Choice(["auto", "f16", "bf16", "f32"]), default="auto",
                     show_default=True,
                     help="Hugging Face checkpoints: the GGUF type to convert to before quantizing "
                          "(auto keeps BF16/F16, turns F32 into F16)."),
    ]  # fmt: skip
    return stack_options(func, options)


def shrink_options(**kw):

    return ShrinkOptions(**kw)


CTX = click.option(
    "--ctx",
    "context",
    type=click.IntRange(16, 1 << 20),
    default=None,
    help="Context length to budget memory for [default: min(model, 2048)].",
)
PREFER = click.option(
    "--prefer",
    type=click.Choice(["quality", "speed"]),
    default="quality",
    show_default=True,
    help="quality: best type that fits; speed: the profile's fast-kernel type.",
)
OUTPUT = click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Artifact path [default: ./MODEL-QUANT.EXT in the current directory, e.g. ./model-q4_0.gguf].",
)
JSON = JSON_OPTION


def inspect_any(model: Path):

    return detect_and_inspect(model)


@click.command()
@MODEL
@CTX
@JSON
def inspect(model: Path, context: int | None, as_json: bool) -> None:
    """Describe a model file and the memory it needs at a context length."""

    info = inspect_any(model)
    estimate = None
    if info.llm is not None:
        ctx = context or min(info.llm.context_length or 2048, 2048)
        weights = sum(t.n_bytes for t in info.tensor_types)
        estimate = gguf.estimate_memory(info, weights, ctx)
    if as_json:
        doc = info.to_dict()
        doc["memory_estimate"] = estimate.to_dict() if estimate else None
        emit_json(doc)
        return
    pairs: list[tuple[str, object]] = [
        ("file", info.path),
        ("format", info.format),
        ("size", f"{human_bytes(info.size_bytes)} ({info.size_bytes:,} bytes)"),
        ("architecture", info.architecture),
        ("name", info.name),
        ("parameters", f"{human_count(info.n_params)} ({info.n_params:,})"),
        ("file type", f"{info.file_type}{' (quantized)' if info.is_quantized else ''}"),
    ]
    if info.llm:
        s = info.llm
        pairs += [
            ("context length", s.context_length),
            ("vocabulary", f"{s.n_vocab} ({s.tokenizer or 'unknown'} tokenizer)"),
            ("layers", s.n_layer),
            ("embedding", s.n_embd),
            ("heads", f"{s.n_head} query, {s.n_head_kv} key/value"),
            ("feed-forward", s.n_ff),
        ]
    pairs += backend(info.format).inspect_details(info)
    click.echo(render_pairs(pairs))
    click.echo("\ntensor types:")
    click.echo(render_table(
        ["TYPE", "TENSORS", "PARAMS", "BYTES"],
        [(t.type, t.count, human_count(t.n_params), human_bytes(t.n_bytes)) for t in info.tensor_types],
        right=(1, 2, 3),
    ))  # fmt: skip
    if estimate:
        click.echo(f"\nmemory at context {estimate.context} (llama.cpp on CPU, estimated):")
        click.echo(render_pairs([
            ("weights", human_bytes(estimate.weights_bytes)),
            ("KV cache (f16)", human_bytes(estimate.kv_cache_bytes)),
            ("compute buffer", human_bytes(estimate.compute_bytes)),
            ("runtime overhead", human_bytes(estimate.overhead_bytes)),
            ("total", human_bytes(estimate.total_bytes)),
        ]))  # fmt: skip


@click.command()
@MODEL
@PROFILE
@QUANT
@CTX
@PREFER
@imatrix_options
@format_options
@JSON
@pass_context
def plan(
    obj: Context,
    model: Path,
    profile_id: str,
    quant: str | None,
    context: int | None,
    prefer: str,
    imatrix_path: Path | None,
    no_imatrix: bool,
    max_size: int | None,
    fit: bool,
    as_json: bool,
    **format_kw: object,
) -> None:
    """Choose the quantization for MODEL on a device, and say why."""

    profile = get_profile(profile_id, obj.profiles_dirs)
    info = inspect_any(model)
    format_kw.pop("to_format", None)
    chosen = plan_model(
        info, profile, ShrinkOptions(quant=quant, context=context, prefer=prefer, **format_kw,
                                     **imatrix_settings(imatrix_path, no_imatrix, max_size, fit)),
    )  # fmt: skip
    if as_json:
        emit_json(chosen.to_dict())
        return
    print_plan(chosen)


def fallback_summary(fallbacks) -> str:
    """llama.cpp's fallbacks grouped by (wanted -> used), a few tensor names each."""
    groups: dict[tuple[str, str], list[str]] = {}
    for tensor, wanted, used in fallbacks:
        groups.setdefault((wanted, used), []).append(tensor)
    lines = [
        f"llama.cpp kept {len(fallbacks)} tensor(s) at another type "
        "(their rows are not a multiple of the type's block size):"
    ]
    for (wanted, used), names in sorted(groups.items(), key=lambda kv: -len(kv[1])):
        shown = ", ".join(names[:3]) + (f", … ({len(names) - 3} more)" if len(names) > 3 else "")
        lines.append(f"  {wanted} -> {used}: {len(names)} ({shown})")
    return "\n".join(lines)


def print_plan(chosen) -> None:
    llm = any(c.est_tg_tok_s for c in chosen.candidates)
    context = f", context {chosen.context}" if chosen.context else ""
    click.echo(
        f"plan for {chosen.model.name} on {chosen.profile_id} "
        f"(budget {chosen.budget_mb} MB{context}, {chosen.threads} threads)"
    )
    rows = []
    for c in chosen.candidates:
        row = [
            "->" if c == chosen.chosen else "",
            c.quant,
            human_bytes(c.weights_bytes),
            f"{c.estimate.total_mb:.0f}",
            "yes" if c.fits else "NO",
        ]
        if llm:
            row.append(f"{c.est_tg_tok_s:.1f}" if c.est_tg_tok_s else "-")
        rows.append(row)
    headers = ["", "TYPE", "WEIGHTS", "PEAK MB", "FITS"] + (["TG TOK/S*"] if llm else [])
    click.echo(render_table(headers, rows, right=(2, 3, 5)))
    if llm:
        click.echo("* memory-bound estimate: bandwidth x 0.6 / weight bytes")
    click.echo(f"choice: {chosen.reason}")
    print_warnings(chosen)


def print_warnings(chosen) -> None:
    for warning in chosen.warnings:
        click.echo(f"warning: {warning}", err=True)


@click.command()
@MODEL
@PROFILE
@QUANT
@OUTPUT
@CTX
@PREFER
@click.option(
    "--allow-requantize",
    is_flag=True,
    help="Quantize a file that is already quantized (loses more quality).",
)
@click.option(
    "--threads",
    type=click.IntRange(1, 1024),
    default=None,
    help="Quantizer threads [default: all cores].",
)
@click.option("--force", is_flag=True, help="Quantize again even if an identical artifact exists.")
@click.option("--text", "text_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="GGUF: calibration text of the importance matrix [default: the "
              "one edgeshrink ships].")  # fmt: skip
@imatrix_options
@format_options
@click.option("--dry-run", is_flag=True, help="Show the plan and the output path; write nothing.")
@JSON
@pass_context
def shrink(
    obj: Context,
    model: Path,
    profile_id: str,
    quant: str | None,
    output: Path | None,
    context: int | None,
    prefer: str,
    allow_requantize: bool,
    threads: int | None,
    force: bool,
    text_file: Path | None,
    imatrix_path: Path | None,
    no_imatrix: bool,
    max_size: int | None,
    fit: bool,
    dry_run: bool,
    as_json: bool,
    **format_kw: object,
) -> None:
    """Quantize MODEL for a device: GGUF with llama.cpp's own quantizer, Hugging Face
    checkpoints converted to GGUF first, ONNX with onnxruntime's quantization tools."""

    profile = get_profile(profile_id, obj.profiles_dirs)
    format_kw.update(
        imatrix_settings(imatrix_path, no_imatrix, max_size, fit), imatrix_text=text_file
    )
    if format_kw.get("to_format") and not dry_run:
        options = shrink_options(quant=quant, context=context, prefer=prefer, threads=threads, force=force,
                                 allow_requantize=allow_requantize, **format_kw)  # fmt: skip

        with native_stdout_to_stderr():
            result = converter_to(format_kw["to_format"])(
                model, profile, options, output=output, progress=progress_printer(as_json)
            )
        print_shrink(result, None, as_json)
        return
    info = inspect_any(model)
    options = shrink_options(quant=quant, context=context, prefer=prefer, allow_requantize=allow_requantize,
                             threads=threads, force=force, **format_kw)  # fmt: skip
    if dry_run:
        chosen = plan_model(info, profile, options)
        out = output or default_output_path(model, chosen.label)
        if as_json:
            emit_json({"dry_run": True, "output": str(out), "plan": chosen.to_dict()})
            return
        print_plan(chosen)
        click.echo(f"would write: {out} (+ {out.name}.manifest.json)")
        return
    result = shrink_model(
        model, profile, options, output=output, progress=progress_printer(as_json), info=info
    )
    print_shrink(result, info.size_bytes, as_json)


def print_shrink(result, source_bytes: int | None, as_json: bool) -> None:
    art = result.artifact
    if as_json:
        emit_json({
            "reused": result.reused, "seconds": result.seconds, "plan": result.plan.to_dict(),
            "artifact": art.to_manifest() | {"path": str(art.path)},
        })  # fmt: skip
        return
    click.echo(f"{'reused' if result.reused else 'wrote'} {art.path}")
    size = human_bytes(art.size_bytes)
    if source_bytes:
        size += f" (from {human_bytes(source_bytes)}, {source_bytes / max(art.size_bytes, 1):.2f}x smaller)"
    mixed = bool(art.recipe and art.recipe[-1].get("max_size"))
    click.echo(render_pairs([
        ("type", f"a type per tensor, from {art.quant}" if mixed else art.quant),
        ("size", size),
        ("sha256", art.sha256),
        ("manifest", art.manifest_path),
        ("why", result.plan.reason),
        ("recipe", short_hashes(recipe_text(art.recipe))),
        *recorded_pairs(art.recipe[-1].get("recorded", {}) if art.recipe else {}),
    ]))  # fmt: skip
    for note in art.notes[1:]:
        click.echo(f"note: {terminal_safe(note)}")
    print_warnings(result.plan)
    if art.fallbacks:
        click.echo(terminal_safe(fallback_summary(art.fallbacks), keep_newlines=True))


def short_hashes(text: str) -> str:
    """A recipe's sha256 values cut to 12 digits for reading (the manifest keeps them whole)."""
    return re.sub(r"\b([0-9a-f]{12})[0-9a-f]{52}\b", r"\1…", text)


def recorded_pairs(recorded: dict) -> list[tuple[str, object]]:
    """What the quantizer recorded: the importance matrix's texts, the mix, its measurement."""
    pairs: list[tuple[str, object]] = []
    if recorded.get("imatrix_datasets"):
        pairs.append(("imatrix", f"computed over {', '.join(recorded['imatrix_datasets'])}"))
    mix = recorded.get("mix")
    if mix:
        counts: dict[str, int] = {}
        for t in mix["types"].values():
            counts[t] = counts.get(t, 0) + 1
        shown = ", ".join(f"{n} {t}" for t, n in sorted(counts.items(), key=lambda kv: -kv[1]))
        pairs.append(("mix", f"from {mix['start']}: {mix['moved_up']} tensors up, "
                             f"{mix['moved_down']} down ({shown})"))  # fmt: skip
    if recorded.get("eval"):
        e = recorded["eval"]
        pairs.append(("measured", f"KLD {e['kld_mean']:.4f}, PPL ×{e['ppl_ratio']:.3f}, same top "
                                  f"{e['same_top']:.1%} ({e['n_scored']} tokens)"))  # fmt: skip
    return pairs


COMMANDS = (inspect, plan, shrink)
