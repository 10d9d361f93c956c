"""The device helper (push receiver and launcher) is device code: Python 3.9, standard library only."""

from __future__ import annotations

import ast
import sys

from edgeshrink.transport.base import DEVICE_HELPER_PATH


def test_device_helper_is_python39_and_stdlib_only() -> None:
    tree = ast.parse(DEVICE_HELPER_PATH.read_text(encoding="utf-8"), feature_version=(3, 9))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add((node.module or "").split(".")[0])
    assert imported and not [n for n in imported if n not in sys.stdlib_module_names]


def test_the_ssh_command_carries_the_file_without_quotes_or_backslashes() -> None:
    from edgeshrink.transport.ssh import helper_command

    command = helper_command("python3", ["receive", "/w/models/x/m.gguf"])
    code = command.split(" ", 2)[2].rsplit(" ", 2)[0]
    assert "\\" not in code and code.count("'") == 2  # one single-quoted word
