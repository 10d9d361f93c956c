"""A lab of real sshd "devices" (scripts/sshd_rig.py) for the device-lab tests.

Every device is a real OpenSSH sshd on 127.0.0.1 with its own keys, HOME and
work dir; the agent runs through it on real GGUF models with llama.cpp.  What
makes the devices differ is real too:

- a memory limit: a cgroup v1 memory group around the device's sshd (the rig's
  ``memory_limit_mb``);
- a slow CPU: a cgroup v1 ``cpu`` group with a CFS quota around the sshd, so
  every session and agent it starts gets that share of one core;
- a device that goes away: its sshd and every process it started are killed.

All devices share this machine's two cores with each other and with whatever
else runs here, so each device's cpu group also gets a large ``cpu.shares``:
the devices then mostly compete with each other, as boards in one rack do not
compete at all.  Tests here are skipped, with the reason, without sshd or
llama-cpp-python.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from support import llama_cpp_available, load_script

sshd_rig = load_script("sshd_rig")
SKIP_REASON = sshd_rig.sshd_available() or (
    None if llama_cpp_available() else "llama-cpp-python is not installed (the devices' runtime)"
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents and "rig_module" in item.fixturenames:
            item.add_marker(pytest.mark.ssh)
            if SKIP_REASON:
                item.add_marker(pytest.mark.skip(reason=f"no lab devices here: {SKIP_REASON}"))


@pytest.fixture(scope="session")
def rig_module():
    return sshd_rig


@pytest.fixture(scope="session")
def nano_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2 MB llama GGUF made by the project's maker: fast enough for many nights."""
    from edgeshrink.testmodels import make_llama_gguf

    return make_llama_gguf(
        tmp_path_factory.mktemp("lab-model") / "nano-f32.gguf", size="nano", ftype="f32"
    )


@pytest.fixture(scope="module")
def lab_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A HOME and user dirs of the module's own (module-scoped fixtures run before the per-test ones)."""
    home = tmp_path_factory.mktemp("lab-home")
    with pytest.MonkeyPatch.context() as mp:
        for var, sub in (("HOME", "."), ("XDG_CONFIG_HOME", "config"), ("XDG_CACHE_HOME", "cache"),
                         ("XDG_DATA_HOME", "data")):  # fmt: skip
            (home / sub).mkdir(exist_ok=True)
            mp.setenv(var, str(home / sub))
        mp.setenv("EDGESHRINK_DB", str(home / "results.db"))
        mp.delenv("SSH_AUTH_SOCK", raising=False)
        mp.delenv("EDGESHRINK_SSH_CONFIG", raising=False)
        yield home
