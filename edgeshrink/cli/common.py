"""What every command module shares: the context object, JSON output, progress lines."""

from __future__ import annotations

import json
import math
import os
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


def progress_printer(quiet: bool = False):

    def say(message: str) -> None:
        if not quiet:
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
