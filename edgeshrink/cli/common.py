"""What every command module shares: the context object, JSON output, progress lines."""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import click

from edgeshrink.errors import EdgeshrinkError
from edgeshrink.util import terminal_safe

# Options several commands share (here, not in one command's module: cli.main loads
# those in turn, and one importing another at module level can meet it half-initialised).
JSON_OPTION = click.option("--json", "as_json", is_flag=True, help="Print JSON.")
DB_OPTION = click.option(
    "--db",
    type=str,  # a path, or a URL that a click.Path would mangle (postgresql://...)
    default=None,
    metavar="PATH|URL",
    envvar="EDGESHRINK_DB",
    help="Results database: a SQLite file, sqlite:///PATH or postgresql://USER@HOST/DB "
    "[default: user data dir; env EDGESHRINK_DB].",
)
ACCEPT_NEW_HOST_KEY = click.option(
    "--accept-new-host-key",
    is_flag=True,
    help="Trust and store an SSH host key seen for the first time (like OpenSSH's accept-new).",
)
EVAL_TEXT = click.option(
    "--text",
    "text_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="GGUF: evaluation text [default: the short English text edgeshrink ships].",
)


class FiniteFloat(click.FloatRange):
    """A float option that refuses NaN and infinity (``float("nan")`` passes every range
    check, and a NaN timeout or budget never ends or never fails); optional bounds as in
    click.FloatRange: ``type=FiniteFloat(min=0)``."""

    name = "float"

    def _describe_range(self) -> str:
        if self.min is None and self.max is None:
            return "finite"
        return super()._describe_range()

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = click.types.FLOAT.convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return super().convert(number, param, ctx)


class ByteSize(click.ParamType):
    """A size in bytes: ``1.2GB`` and ``300MB`` (powers of 1000), ``850MiB`` and ``2GiB``
    (of 1024), or a plain number of bytes."""

    name = "size"
    UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
             "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}  # fmt: skip

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, int):
            return value
        text = str(value).strip().replace(" ", "").replace("_", "")
        number = text.rstrip("kKmMgGtTiIbB")
        unit = text[len(number) :].upper()
        try:
            size = float(number) * self.UNITS[unit]
        except (KeyError, ValueError):
            self.fail(f"{value!r} is not a size such as 1.2GB, 850MiB or 300000000", param, ctx)
        if not math.isfinite(size) or size < 1:
            self.fail(f"{value!r} is not a positive size", param, ctx)
        return int(size)


def stack_options(func: Any, options: list[Any]) -> Any:
    """``func`` with click ``options`` applied, the first listed shown first in --help."""
    for option in reversed(options):
        func = option(func)
    return func


def imatrix_options(func: Any) -> Any:
    """The GGUF importance-matrix and size-budget options of shrink, plan and sweep."""
    options = [
        click.option("--imatrix", "imatrix_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
                     default=None, help="GGUF: quantize with this importance matrix (llama-imatrix's "
                     "or `edgeshrink imatrix`'s) instead of computing one."),
        click.option("--no-imatrix", is_flag=True,
                     help="GGUF: no importance matrix [default: types below 5 bits and size-budget "
                     "mixes use one, computed over the calibration text]."),
        click.option("--max-size", type=ByteSize(), default=None,
                     help="GGUF: a file of at most this size (1.2GB, 850MiB): a type per tensor, "
                     "the most sensitive higher, with the least estimated loss."),
        click.option("--fit", is_flag=True,
                     help="GGUF: like --max-size, with the profile's memory budget less the KV "
                     "cache at --ctx and the runtime's overhead."),
    ]  # fmt: skip
    return stack_options(func, options)


def quality_budget_options(func: Any) -> Any:
    """The quality budget of eval, check and sweep: one wording and one range each."""
    options = [
        click.option("--max-kld", type=FiniteFloat(0, None), default=None,
                     help="GGUF: mean KL divergence at most this."),
        click.option("--max-ppl-increase", type=FiniteFloat(0, None), default=None,
                     help="GGUF: perplexity at most this fraction above the original's "
                     "(0.05 = 5%)."),
        click.option("--min-agreement", type=FiniteFloat(0, 1), default=None,
                     help="At least this fraction of agreement with the original (GGUF: same "
                     "top token; ONNX/TFLite: top-1 class of every classifier output)."),
        click.option("--min-cosine", type=FiniteFloat(-1, 1), default=None,
                     help="ONNX/TFLite: mean cosine similarity of every output at least this."),
        click.option("--max-accuracy-drop", type=FiniteFloat(0, 100), default=None,
                     help="ONNX/TFLite: accuracy at most this many points below the original's "
                     "(2 = two percentage points); needs labels."),
    ]  # fmt: skip
    return stack_options(func, options)


def imatrix_settings(imatrix_path: Path | None, no_imatrix: bool, max_size: int | None,
                     fit: bool) -> dict[str, Any]:  # fmt: skip
    """ShrinkOptions fields from the options of :func:`imatrix_options`."""
    if imatrix_path and no_imatrix:
        raise click.UsageError("--imatrix and --no-imatrix exclude each other: choose one")
    if max_size and fit:
        raise click.UsageError("--max-size and --fit exclude each other: choose one")
    return {"imatrix": imatrix_path, "use_imatrix": False if no_imatrix else None,
            "max_size": max_size, "fit": fit}  # fmt: skip


def debug_enabled() -> bool:
    return os.environ.get("EDGESHRINK_DEBUG", "") not in ("", "0", "false", "no")


def _first_non_finite(value: Any, where: str = "") -> tuple[str, float] | None:
    if isinstance(value, float) and not math.isfinite(value):
        return where or "(the document)", value
    if isinstance(value, dict):
        items = ((f"{where}.{k}" if where else str(k), v) for k, v in value.items())
    elif isinstance(value, (list, tuple)):
        items = ((f"{where}[{i}]", v) for i, v in enumerate(value))
    else:
        return None
    for path, item in items:
        found = _first_non_finite(item, path)
        if found is not None:
            return found
    return None


def emit_json(document: Any) -> None:
    """Print ``document`` as strict JSON: NaN and infinity are not JSON, so a document
    holding one is refused (naming the field) rather than printed for parsers to choke on."""
    try:
        text = json.dumps(document, indent=2, default=str, allow_nan=False)
    except ValueError as exc:
        found = _first_non_finite(document)
        field = f"{found[0]} is {found[1]}" if found else str(exc)
        raise EdgeshrinkError(
            f"cannot print JSON: {field}, which JSON cannot carry",
            hint="re-run with EDGESHRINK_DEBUG=1 and report it; the input that led to it "
            "should have been refused",
        ) from exc
    click.echo(text)


def warn_problems(problems: Iterable[Any]) -> None:
    """One `warning:` line on stderr per file a listing skipped (an EdgeshrinkError each)."""

    for problem in problems:
        click.echo(f"warning: {terminal_safe(problem)} (skipped)", err=True)


def progress_printer(as_json: bool = False):
    """Progress lines on stderr.  With --json they still go to a terminal (a long sweep
    piped into jq is not silent), never into a file or pipe that a caller captures."""
    shown = not as_json or sys.stderr.isatty()

    def say(message: str) -> None:
        if shown:
            click.echo(click.style(f"· {terminal_safe(message)}", dim=True), err=True)

    return say


AGENT_LOG_PREFIX = "edgeshrink-agent: "


def agent_progress_printer(quiet: bool = False):
    """The agent's own progress lines (warm-up, each repetition) as they come from the
    device, so a long benchmark is not silent. Its warnings are printed once, at the end,
    and llama.cpp's chatter is left out."""

    def on_line(line: str) -> None:
        if quiet or not line.startswith(AGENT_LOG_PREFIX):
            return
        message = line[len(AGENT_LOG_PREFIX) :]
        if message.startswith("warning: "):
            return
        click.echo(click.style(f"  · {terminal_safe(message)}", dim=True), err=True)

    return on_line


class Context:
    def __init__(self, profiles_dirs: tuple[Path, ...]) -> None:
        self.profiles_dirs = profiles_dirs


pass_context = click.make_pass_decorator(Context)
