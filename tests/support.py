"""Helpers the tests share (a module of its own: tests/ssh has another conftest.py)."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_STORIES = REPO.parent / "shared" / "models" / "stories260K.gguf"


def load_script(name: str):
    """scripts/NAME.py as the module ``name``, loaded once: every test and conftest that
    uses the SSH rig (or the arm64 device) shares one copy of its state."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


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


@contextlib.contextmanager
def small_disk(directory: Path, size: str = "64k") -> Iterator[Path]:
    """A real, tiny file system (tmpfs) mounted on ``directory``: writes there hit ENOSPC.
    Skips the test where mounting needs a root this process does not have."""
    directory.mkdir(parents=True, exist_ok=True)
    mount = ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(directory)]
    if os.geteuid() != 0 or subprocess.run(mount, capture_output=True).returncode:
        pytest.skip("mounting a small tmpfs needs root")
    try:
        yield directory
    finally:
        subprocess.run(["umount", "-l", str(directory)], check=False)
