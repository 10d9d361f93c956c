"""`edgeshrink imatrix`: a GGUF model's importance matrix, in llama.cpp's own format."""

from __future__ import annotations

import shutil
from pathlib import Path

import click

from edgeshrink.cli.common import JSON_OPTION, emit_json, progress_printer
from edgeshrink.errors import ModelFileError
from edgeshrink.formats import detect_and_inspect
from edgeshrink.formats.gguf.imatrix import CalibrationText, imatrix_for, plan_imatrix
from edgeshrink.report.table import render_pairs
from edgeshrink.util import atomic_path, sha256_file


@click.command("imatrix")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--text", "text_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="Calibration text [default: the one edgeshrink ships].")  # fmt: skip
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="The importance matrix [default: ./MODEL.imatrix.gguf].")  # fmt: skip
@click.option("--chunk-size", type=click.IntRange(16, 1 << 16), default=None,
              help="Tokens per chunk (llama-imatrix -c) [default: 512, or the model's trained "
              "context when shorter].")  # fmt: skip
@click.option("--chunks", type=click.IntRange(1, None), default=None,
              help="Use at most this many chunks of the text.")  # fmt: skip
@click.option(
    "--threads", type=click.IntRange(1, 1024), default=None, help="Threads [default: all cores]."
)
@click.option("--force", is_flag=True, help="Compute it again even when the cache holds it.")
@click.option(
    "--dry-run", is_flag=True, help="Count the text's tokens and chunks; compute nothing."
)
@JSON_OPTION
def imatrix(model: Path, text_file: Path | None, output: Path | None, chunk_size: int | None,
            chunks: int | None, threads: int | None, force: bool, dry_run: bool,
            as_json: bool) -> None:  # fmt: skip
    """Compute MODEL's importance matrix over a calibration text with llama.cpp's own
    forward pass, as llama-imatrix does (the files are interchangeable).

    \b
    edgeshrink imatrix model-f16.gguf --text calib.txt -o model.imatrix.gguf
    edgeshrink shrink model-f16.gguf -p raspberry-pi-zero-2w -q IQ3_XXS --imatrix model.imatrix.gguf

    For every weight of the model's blocks, the mean of the squared activations that
    multiply each of its input columns; `shrink` uses one by default for types below
    5 bits. Kept in the cache under the model's and the text's sha256 and the settings.
    """
    info = detect_and_inspect(model)
    if info.llm is None:
        raise ModelFileError(
            f"{model.name} is {info.format} ({info.architecture}): importance matrices are "
            "computed for GGUF language models",
            hint="convert the model to GGUF first (edgeshrink shrink MODEL -q F16)",
        )
    text = CalibrationText.read(text_file)
    out = output or Path.cwd() / f"{model.stem}.imatrix.gguf"
    if out.resolve() == model.resolve():
        raise ModelFileError(
            f"{out}: the output would overwrite the model", hint="choose another -o"
        )
    planned = plan_imatrix(model, text, chunk_size=chunk_size, max_chunks=chunks)
    if dry_run:
        if as_json:
            emit_json({"dry_run": True, "output": str(out), **planned.to_dict()})
            return
        click.echo(f"would compute over {planned.chunks} chunks of {planned.chunk_size} tokens "
                   f"({planned.n_tokens} in {text.name}) and write {out}")  # fmt: skip
        return
    found = imatrix_for(
        model, text, chunk_size=chunk_size, max_chunks=chunks, threads=threads, force=force,
        progress=progress_printer(as_json),
    )  # fmt: skip
    with atomic_path(out) as tmp:
        shutil.copyfile(found.path, tmp)
        if sha256_file(tmp) != found.sha256:
            raise ModelFileError(f"{out}: the copy differs from {found.path}", hint="try again")
    doc = {
        "output": str(out), "sha256": found.sha256, "entries": len(found.imatrix.sums),
        "chunks": found.imatrix.chunk_count, "chunk_size": found.imatrix.chunk_size,
        "datasets": list(found.imatrix.datasets), "text_sha256": found.text_sha256,
        "cached": found.cached, "seconds": found.seconds,
    }  # fmt: skip
    if as_json:
        emit_json(doc)
        return
    click.echo(f"wrote {out}")
    click.echo(render_pairs([
        ("entries", f"{doc['entries']} weights"),
        ("text", f"{text.name}: {doc['chunks']} chunks of {doc['chunk_size']} tokens"),
        ("sha256", found.sha256),
        ("made", "from the cache" if found.cached else f"in {found.seconds:.1f} s"),
    ]))  # fmt: skip


COMMANDS = [imatrix]

__all__ = ["COMMANDS", "imatrix"]
