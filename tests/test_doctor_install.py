"""`doctor --install-runtime` adds a runtime to the device's environment, never replaces it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from edgeshrink.doctor import plan_install
from edgeshrink.targets import Target


def test_the_new_venv_still_sees_the_runtimes_the_device_had(tmp_path: Path) -> None:
    """Run the plan's own venv step with this Python as the device's: the psutil (or any
    package) it had is still importable from the venv the runtime goes into."""
    pytest.importorskip("psutil")
    target = Target(name="dev", kind="local", python=sys.executable, work_dir=str(tmp_path))
    plan = plan_install(target, "onnx", work_dir=str(tmp_path))
    make_venv, *keep, install = plan.steps
    assert make_venv[1:3] == ("-m", "venv")
    subprocess.run([*make_venv[:3], "--without-pip", *make_venv[3:]], check=True, timeout=120)
    for step in keep:
        subprocess.run(list(step), check=True, timeout=120)
    seen = subprocess.run(
        [plan.venv_python, "-c", "import psutil, paramiko; print('ok')"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert seen.returncode == 0 and seen.stdout.strip() == "ok", seen.stderr
    assert install[0] == plan.venv_python and "onnxruntime" in install
