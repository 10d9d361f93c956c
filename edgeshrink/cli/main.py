"""`edgeshrink`: the entry point, error mapping and shared options.

Library code raises EdgeshrinkError; here it becomes one line and a hint on
stderr with exit code 1 (click's usage errors keep 2).  EDGESHRINK_DEBUG=1
shows the traceback instead.
"""

from __future__ import annotations

import errno
import importlib
import sys
import traceback
from pathlib import Path

import click

from edgeshrink import __version__
from edgeshrink.cli.common import Context, debug_enabled
from edgeshrink.errors import EdgeshrinkError
from edgeshrink.util import terminal_safe


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, "--version", prog_name="edgeshrink")
@click.option(
    "--profiles-dir",
    "profiles_dirs",
    multiple=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Extra directory of hardware profile TOML files (repeatable; overrides built-ins).",
)
@click.pass_context
def cli(ctx: click.Context, profiles_dirs: tuple[Path, ...]) -> None:
    """Shrink AI models for one named small device, put them there, and measure them.

    \b
    Start with:  edgeshrink demo
    Your model:  edgeshrink deploy model-f16.gguf --profile raspberry-pi-5-8gb --target local
    """
    ctx.obj = Context(profiles_dirs)


COMMAND_MODULES = ("catalog", "check", "distill", "doctor", "imatrix", "lab", "models", "prune", "push",
                   "quality", "results", "run", "store", "sweep", "targets")  # fmt: skip


def _register() -> None:
    for name in COMMAND_MODULES:
        for command in importlib.import_module(f"edgeshrink.cli.{name}").COMMANDS:
            cli.add_command(command)


_register()


# OS errors that are the machine's state, not a bug: what the user can do about each.
_USER_FIXABLE = {
    errno.ENOSPC: "the disk is full: free some space or write to another disk (-o PATH)",
    errno.EDQUOT: "the disk quota is used up: free some space or write elsewhere (-o PATH)",
    errno.EROFS: "that file system is read-only: write somewhere else (-o PATH)",
    errno.EACCES: "no permission there: write somewhere you own (-o PATH)",
}


def _internal_error(exc: BaseException) -> None:
    click.echo(f"error: internal error: {type(exc).__name__}: {terminal_safe(exc)}", err=True)
    click.echo("hint: re-run with EDGESHRINK_DEBUG=1 and report the traceback", err=True)
    sys.exit(1)


def main(argv: list[str] | None = None) -> None:
    try:
        code = cli.main(args=argv, prog_name="edgeshrink", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.message = terminal_safe(exc.message, keep_newlines=True)
        exc.show()
        sys.exit(exc.exit_code)
    except (click.Abort, KeyboardInterrupt) as exc:
        # click turns Ctrl-C into Abort; an edgeshrink Interrupted under it says what it kept.
        cause = exc.__cause__ if isinstance(exc, click.Abort) else exc
        message, hint = getattr(cause, "message", ""), getattr(cause, "hint", "")
        click.echo(f"interrupted: {message}" if message else "interrupted", err=True)
        if hint:
            click.echo(f"hint: {hint}", err=True)
        sys.exit(130)
    except EdgeshrinkError as exc:
        if debug_enabled():
            traceback.print_exc()
        click.echo(f"error: {terminal_safe(exc.message, keep_newlines=True)}", err=True)
        if exc.hint:
            click.echo(f"hint: {terminal_safe(exc.hint, keep_newlines=True)}", err=True)
        sys.exit(1)
    except OSError as exc:
        if debug_enabled():
            traceback.print_exc()
        if exc.errno not in _USER_FIXABLE:
            _internal_error(exc)
        where = f" ({exc.filename})" if exc.filename else ""
        click.echo(f"error: {terminal_safe(f'{exc.strerror}{where}')}", err=True)
        click.echo(f"hint: {_USER_FIXABLE[exc.errno]}", err=True)
        sys.exit(1)
    except Exception as exc:  # noqa: BLE001 - last line of defence: one line, no traceback
        if debug_enabled():
            traceback.print_exc()
        _internal_error(exc)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
