"""Helpers the tests share (a module of its own: tests/ssh has another conftest.py)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_STORIES = REPO.parent / "shared" / "models" / "stories260K.gguf"


def llama_cpp_available() -> bool:
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return False
    return True


needs_llama_cpp = pytest.mark.skipif(
    not llama_cpp_available(), reason="llama-cpp-python is not installed"
)


def run_cli(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None):
    """Run the real `edgeshrink` entry point in a child process (as a user would)."""
    import subprocess

    return subprocess.run(
        [sys.executable, "-m", "edgeshrink", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        timeout=600,
    )
