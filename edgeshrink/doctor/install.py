"""Runtime installs on a device: a venv in its work dir, and a runtime pip-installed there.

The venv adds to the device's Python, never replaces it: it sees the packages of
the Python the target used so far.  Afterwards the agent's ``info`` must find the
runtime in the venv, and the target is pointed at the venv's Python when
edgeshrink owns the target file (else the report says what to change).
"""

from __future__ import annotations

import shlex
import subprocess
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from edgeshrink.bench import install_agent
from edgeshrink.doctor.checks import RUNTIME_MODULES, RUNTIME_PACKAGES, Say, run_json, stderr_tail
from edgeshrink.errors import TargetError, TransportError
from edgeshrink.targets import Target, target_file_path, update_target
from edgeshrink.transport import open_transport
from edgeshrink.transport.base import CommandResult


@dataclass(frozen=True)
class InstallPlan:
    target: Target
    runtime: str
    packages: tuple[str, ...]
    venv: str
    venv_python: str
    base_python: str
    steps: tuple[tuple[str, ...], ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target.name,
            "runtime": self.runtime,
            "packages": list(self.packages),
            "venv": self.venv,
            "venv_python": self.venv_python,
            "base_python": self.base_python,
            "steps": [list(s) for s in self.steps],
        }


@dataclass(frozen=True)
class InstallResult:
    plan: InstallPlan
    version: str | None
    target_file: Path | None  # rewritten with python = venv_python, if edgeshrink owns it
    instruction: str | None  # what to do by hand when it could not rewrite the target
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.plan.to_dict(),
            "version": self.version,
            "target_file": str(self.target_file) if self.target_file else None,
            "instruction": self.instruction,
            "seconds": round(self.seconds, 1),
        }


# Run by the new venv's Python with the old one as argv[1]: lists the old one's
# site-packages in a .pth file of the new venv, after the venv's own packages.
KEEP_BASE_PACKAGES = (
    "import os, site, subprocess, sys; "
    "old = subprocess.run([sys.argv[1], '-c', 'import site; print(chr(10).join(site.getsitepackages()))'],"
    " capture_output=True, text=True, check=True).stdout.split(); "
    "mine = site.getsitepackages()[0]; "
    "open(os.path.join(mine, '_edgeshrink_base.pth'), 'w').write("
    "''.join(d + chr(10) for d in old if d != mine))"
)


def plan_install(
    target: Target, runtime: str, *, work_dir: str, pip_args: tuple[str, ...] = ()
) -> InstallPlan:
    if runtime not in RUNTIME_PACKAGES:
        raise TargetError(
            f"unknown runtime {runtime!r}", hint=f"one of {', '.join(RUNTIME_PACKAGES)}"
        )
    venv = f"{work_dir.rstrip('/')}/venv"
    venv_python = f"{venv}/bin/python"
    base = target.python
    packages = RUNTIME_PACKAGES[runtime]
    steps = []
    if base != venv_python:
        # Add to the device's runtime environment, never replace it: the venv sees the
        # packages of the Python the target used so far (llama-cpp-python, tflite...).
        steps.append((base, "-m", "venv", "--system-site-packages", venv))
        # --system-site-packages reaches the base interpreter's packages only: when the
        # target's Python is itself a venv, its packages come along through a .pth file.
        steps.append((venv_python, "-c", KEEP_BASE_PACKAGES, base))
    steps.append(
        (venv_python, "-m", "pip", "install", "--progress-bar", "off", *pip_args, *packages)
    )
    return InstallPlan(target, runtime, packages, venv, venv_python, base, tuple(steps))


def _run_streaming(transport: Any, argv: list[str], *, timeout_s: float, on_line: Say) -> Any:
    """Run with every output line handed to ``on_line`` as it comes (pip prints to stdout)."""
    merged = ["sh", "-c", 'exec "$0" "$@" 1>&2', *argv]
    if transport.target.kind == "local":
        start = time.perf_counter()
        Path(transport.work_dir).mkdir(parents=True, exist_ok=True)
        proc = subprocess.Popen(
            argv,
            cwd=transport.work_dir,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        lines: list[str] = []
        assert proc.stdout is not None
        try:
            for line in proc.stdout:
                lines.append(line)
                on_line(line.rstrip())
            proc.wait(timeout=max(1.0, timeout_s - (time.perf_counter() - start)))
        except BaseException:
            proc.kill()
            raise
        return CommandResult(
            tuple(argv), proc.returncode, "", "".join(lines[-200:]), time.perf_counter() - start
        )
    return transport.run(merged, timeout_s=timeout_s, on_stderr=on_line)


def install_runtime(
    target: Target,
    runtime: str,
    *,
    pip_args: tuple[str, ...] = (),
    timeout_s: float = 3600.0,
    progress: Say | None = None,
    dry_run: bool = False,
) -> InstallPlan | InstallResult:
    """Create ``<work dir>/venv`` on the device and pip-install the runtime for ``runtime`` there."""
    say = progress or (lambda _m: None)
    start = time.perf_counter()
    with open_transport(target) as transport:
        plan = plan_install(target, runtime, work_dir=transport.work_dir, pip_args=pip_args)
        if dry_run:
            return plan
        for step in plan.steps:
            say("on the device: " + " ".join(shlex.quote(a) for a in step))
            result = _run_streaming(transport, list(step), timeout_s=timeout_s, on_line=say)
            if result.returncode != 0:
                tail = stderr_tail(result, 4)
                hint = "check the device's network access to PyPI, or pass --pip-arg for a mirror/wheelhouse"
                if "venv" in step and ("ensurepip" in tail or "venv" in tail):
                    hint = "install the venv module on the device (Debian/Raspberry Pi OS: sudo apt install python3-venv)"
                elif runtime == "gguf":
                    hint = (
                        "llama-cpp-python builds llama.cpp from source on the device: install a compiler and cmake "
                        "(Debian: sudo apt install build-essential cmake; Termux: pkg install clang cmake)"
                    )
                raise TransportError(
                    f"{' '.join(step[:4])} … failed on {target.name}: {tail}", hint=hint
                )
        agent = install_agent(transport)
        venv_target = replace(target, python=plan.venv_python)
        info, result = run_json(transport, [plan.venv_python, agent, "info"], timeout_s=300)
    if info is None:
        raise TransportError(f"the agent cannot run with {plan.venv_python}: {stderr_tail(result)}")
    modules = RUNTIME_MODULES[runtime]
    entries = [info.get("runtimes", {}).get(m) or {} for m in modules]
    found = next((e for e in entries if e.get("available")), None)
    if found is None:
        why = "; ".join(str(e.get("why")) for e in entries if e.get("why"))
        raise TransportError(
            f"{plan.packages[0]} installed but does not import in {plan.venv_python}: {why}"
        )
    target_file = instruction = None
    if (
        target.kind == "ssh"
        and target.source
        and Path(target.source) == target_file_path(target.name)
    ):
        target_file = update_target(target.name, python=venv_target.python)
    elif target.kind == "local":
        instruction = (
            "the built-in local target always uses edgeshrink's own Python; to benchmark with this venv, "
            f'write a target file with kind = "local" and python = "{plan.venv_python}" '
            "(see targets/example-local.toml)"
        )
    elif target.source and target.source not in ("command line", "built-in"):
        instruction = f'set python = "{plan.venv_python}" in {target.source}'
    else:
        instruction = (
            f"save the target with: edgeshrink targets add NAME --host {target.host} --python {plan.venv_python}"
            + (f" --port {target.port}" if target.port != 22 else "")
            + (f" --user {target.user}" if target.user else "")
        )
    return InstallResult(
        plan, found.get("version"), target_file, instruction, time.perf_counter() - start
    )
