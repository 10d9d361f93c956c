"""The SSH test device: a real OpenSSH sshd (scripts/sshd_rig.py) on 127.0.0.1.

Every test here is marked ``ssh`` and skipped, with the reason, where the
machine has no sshd (`apt-get install openssh-server openssh-client`).  One rig
serves the session; tests that need a different device (memory limit, network
namespace) start their own.  Each test gets its own work dir on the device and
its own HOME on the host (so ~/.ssh is empty unless the test fills it).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import load_script

REPO = Path(__file__).resolve().parents[2]
SHARED_STORIES = REPO.parent / "shared" / "models" / "stories260K.gguf"


sshd_rig = load_script("sshd_rig")
SKIP_REASON = sshd_rig.sshd_available()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.ssh)
            if SKIP_REASON:
                item.add_marker(
                    pytest.mark.skip(reason=f"no sshd for the test device: {SKIP_REASON}")
                )


@pytest.fixture(scope="session")
def rig_module():
    """scripts/sshd_rig.py, for tests that start a device of their own."""
    return sshd_rig


@pytest.fixture(scope="session")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    """The session's device: sshd with its own host key, HOME and work dir."""
    with sshd_rig.sshd_rig(tmp_path_factory.mktemp("rig")) as running:
        yield running


@pytest.fixture(autouse=True)
def host_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A HOME of the test's own: no ~/.ssh/config, known_hosts, keys or agent of the real user."""
    home = tmp_path / "host-home"
    (home / ".ssh").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    monkeypatch.delenv("EDGESHRINK_SSH_CONFIG", raising=False)
    return home


@pytest.fixture
def device_dir(rig, request: pytest.FixtureRequest) -> Path:
    """A fresh work dir on the device for this test."""
    path = rig.work_dir / request.node.name.replace("[", "-").replace("]", "").replace("/", "-")
    shutil.rmtree(path, ignore_errors=True)
    return path


@pytest.fixture
def target(rig, device_dir: Path):
    return rig.target(work_dir=str(device_dir))


@pytest.fixture(scope="session")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real GGUF: the shared stories260K, else one made by the project's maker."""
    if SHARED_STORIES.exists():
        return SHARED_STORIES
    from edgeshrink.testmodels import make_llama_gguf

    return make_llama_gguf(
        tmp_path_factory.mktemp("model") / "nano-f32.gguf", size="nano", ftype="f32"
    )


@pytest.fixture(scope="session")
def llama_cpp_here() -> None:
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        pytest.skip("llama-cpp-python is not installed in this Python (the rig's device Python)")


@pytest.fixture
def make_key():
    """Generate an ed25519 key pair at a path (OpenSSH's ssh-keygen); returns the private key."""

    def keygen(path: Path) -> Path:
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
        return path

    return keygen


@pytest.fixture
def cli_env():
    """Environment for a child `edgeshrink` process with every user dir under one home."""

    def env_for(home: Path, **extra: str) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("EDGESHRINK_", "XDG_", "SSH_AUTH"))
        }
        env.update(
            HOME=str(home),
            XDG_CONFIG_HOME=str(home / "config"),
            XDG_CACHE_HOME=str(home / "cache"),
            XDG_DATA_HOME=str(home / "data"),
            EDGESHRINK_DB=str(home / "results.db"),
            EDGESHRINK_LOCAL_WORKDIR=str(home / "local-device"),
        )
        env.update(extra)
        return env

    return env_for
