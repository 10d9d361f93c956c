"""The command lines an SSH session hands to the device's login shell (no paramiko here)."""

from __future__ import annotations

import shlex

from edgeshrink.transport.base import helper_argv

PYTHON_HINT = (
    "install Python 3.9+ on the device (Debian/Raspberry Pi OS: sudo apt install python3;"
    " Termux: pkg install python) or set the target's python (`edgeshrink targets add ... --python PATH`)"
)


def helper_command(python: str, args: list[str]) -> str:
    """``python -c`` running edgeshrink/agent/device_helper.py with ``args``.

    The file travels base64-encoded inside the command line: no quote or
    backslash in it can meet a login shell's rules.
    """
    return quote_argv(helper_argv(python, args))


def posix_sh(script: str) -> str:
    """A command line that runs ``script`` with POSIX sh whatever the login shell is."""
    return "sh -c " + shlex.quote(script)


def quote_argv(argv: list[str]) -> str:
    return " ".join(shlex.quote(str(a)) for a in argv)
