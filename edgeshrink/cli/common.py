"""What every command module shares: the context object, JSON output, progress lines."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import click

# Options several commands share (here, not in one command's module: cli.main loads
# those in turn, and one importing another at module level can meet it half-initialised).
JSON_OPTION = click.option("--json", "as_json", is_flag=True, help="Print JSON.")
DB_OPTION = click.option(
    "--db",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    envvar="EDGESHRINK_DB",
    help="Results database [default: user data dir; env EDGESHRINK_DB].",
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


def debug_enabled() -> bool:
    return os.environ.get("EDGESHRINK_DEBUG", "") not in ("", "0", "false", "no")


def emit_json(document: Any) -> None:
    click.echo(json.dumps(document, indent=2, default=str))


def progress_printer(quiet: bool = False):
    def say(message: str) -> None:
        if not quiet:
            click.echo(click.style(f"· {message}", dim=True), err=True)

    return say


class Context:
    def __init__(self, profiles_dirs: tuple[Path, ...]) -> None:
        self.profiles_dirs = profiles_dirs


pass_context = click.make_pass_decorator(Context)
