"""What every command module shares: the context object, JSON output, progress lines."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import click


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
