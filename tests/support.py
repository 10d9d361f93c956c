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


def quantized(model: Path, folder: Path, quant: str = "Q4_0") -> Path:
    """``model`` quantized with llama.cpp's own quantizer, into ``folder`` (skips without it)."""
    pytest.importorskip("llama_cpp")
    from edgeshrink.formats.gguf.quantize import quantize_gguf

    out = folder / f"{model.stem}-{quant.lower()}.gguf"
    quantize_gguf(model, out, quant)
    return out


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


# A host process that runs one command on a device (any target kind) and is then killed.
HOST_SCRIPT = """
import json, sys
from edgeshrink.targets import Target
from edgeshrink.transport import open_transport
target = Target(**json.loads(sys.argv[1]))
with open_transport(target) as t:
    t.run(json.loads(sys.argv[2]), timeout_s=600)
"""

# Writes its pid (and a grandchild's) where the test can see them, then sleeps.
SLEEPER = (
    "import os, subprocess, sys, time; "
    "kid = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)']); "
    "open(sys.argv[1] + '.tmp', 'w').write('%d %d' % (os.getpid(), kid.pid)); "
    "os.rename(sys.argv[1] + '.tmp', sys.argv[1]); time.sleep(300)"
)


def process_alive(pid: int) -> bool:
    """Running and not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def wait_for_file(path: Path, limit_s: float = 30) -> str:
    import time

    until = time.monotonic() + limit_s
    while not path.exists():
        assert time.monotonic() < until, f"{path} never appeared"
        time.sleep(0.05)
    return path.read_text()


def host_dies_leaves_nothing(
    target_fields: dict, device_python: str, pidfile: Path, sig: int, env: dict
) -> None:
    """Start a host that runs SLEEPER on the device, kill the host with ``sig``: every
    process it started on the device must be gone soon after."""
    import json
    import time

    host = subprocess.Popen(
        [sys.executable, "-c", HOST_SCRIPT, json.dumps(target_fields),
         json.dumps([device_python, "-c", SLEEPER, str(pidfile)])],
        env=env, start_new_session=True,
    )  # fmt: skip
    try:
        pids = [int(p) for p in wait_for_file(pidfile).split()]
        assert all(process_alive(p) for p in pids)
        os.kill(host.pid, sig)
        host.wait(timeout=30)
        until = time.monotonic() + 15
        while any(process_alive(p) for p in pids) and time.monotonic() < until:
            time.sleep(0.1)
        assert not [p for p in pids if process_alive(p)], f"still running after the host got {sig}"
    finally:
        if host.poll() is None:
            host.kill()
            host.wait()
