"""The emulated Raspberry Pi (scripts/arm64_device.py): arm64 Debian under qemu-user, own sshd.

Every test here is marked ``arm64`` and skipped, with the reason, unless this
machine can run the device (root, a rootfs built by
``scripts/arm64-device.sh build``) and ``up`` brings its sshd up.  One device
serves the session, on a free port with its own state dir; it is torn down
(SIGKILL of the namespace) at the end.  Emulation is 70-330x slower than
native: tiny models, few runs.

    EDGESHRINK_ARM64_ROOTFS=DIR   the rootfs (default ~/.cache/edgeshrink/arm64-rootfs)
    EDGESHRINK_ARM64_CPU=cortex-a72|cortex-a76 (default cortex-a76)
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import load_script

REPO = Path(__file__).resolve().parents[2]


arm64_device = load_script("arm64_device")
ROOTFS = arm64_device.DEFAULT_ROOTFS
CPU = os.environ.get("EDGESHRINK_ARM64_CPU", "cortex-a76")


def _skip_reason() -> str | None:
    problem = arm64_device.problem()
    if problem:
        return problem
    mark = arm64_device._mark(ROOTFS)
    if not mark.get("debootstrap") or not mark.get("venv"):
        return f"no arm64 rootfs at {ROOTFS} (scripts/arm64-device.sh build)"
    return None


SKIP_REASON = _skip_reason()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.arm64)
            if SKIP_REASON:
                item.add_marker(pytest.mark.skip(reason=f"emulated arm64 device: {SKIP_REASON}"))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def pi(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """The running device (its state dict: port, client_key, known_hosts, python, ...)."""
    state_dir = tmp_path_factory.mktemp("arm64-device")
    try:
        state = arm64_device.up(
            ROOTFS, state_dir, cpu=CPU, mem="4G", port=_free_port(), hostname="pi-emu-test"
        )
    except (arm64_device.DeviceError, OSError) as exc:
        pytest.skip(f"emulated arm64 device did not come up: {exc}")
    try:
        yield state
    finally:
        arm64_device.down(state_dir)


@pytest.fixture
def pi_target(pi: dict, request: pytest.FixtureRequest):
    from edgeshrink.targets import Target

    name = request.node.name.replace("[", "-").replace("]", "").replace("/", "-")
    return Target(
        name="pi-emu",
        kind="ssh",
        host=pi["host"],
        port=pi["port"],
        user=pi["user"],
        key=pi["client_key"],
        known_hosts=pi["known_hosts"],
        python=pi["python"],
        work_dir=f"/root/edgeshrink-tests/{name}",
    )


@pytest.fixture(autouse=True)
def host_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No ~/.ssh, agent or config of the real user."""
    home = tmp_path / "host-home"
    (home / ".ssh").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / "config"))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    monkeypatch.delenv("EDGESHRINK_SSH_CONFIG", raising=False)
    return home
