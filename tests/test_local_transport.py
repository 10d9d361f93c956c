"""The local transport (this machine as a device): verified pushes and the device launcher."""

from __future__ import annotations

import os
import re
import signal
import sys
import threading
from pathlib import Path

import pytest
from support import SLEEPER, host_dies_leaves_nothing, process_alive, wait_for_file

from edgeshrink.errors import TransportError
from edgeshrink.targets import Target
from edgeshrink.transport.local import LocalTransport
from edgeshrink.util import sha256_file

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def device(tmp_path: Path) -> LocalTransport:
    return LocalTransport(Target(name="local", kind="local", work_dir=str(tmp_path / "device")))


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL, signal.SIGHUP])
def test_a_killed_host_leaves_nothing_running(tmp_path, sig):
    fields = {"name": "local", "kind": "local", "work_dir": str(tmp_path / "device")}
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    host_dies_leaves_nothing(fields, sys.executable, tmp_path / "pids", sig, env)


def test_a_second_run_waits_or_names_the_pid(device, tmp_path):
    marker = tmp_path / "first-started"
    results: list[object] = []
    code = f"open({str(marker)!r}, 'w').write('x'); import time; time.sleep(3)"
    thread = threading.Thread(
        target=lambda: results.append(device.run([sys.executable, "-c", code], timeout_s=60))
    )
    thread.start()
    try:
        wait_for_file(marker)
        with pytest.raises(TransportError, match=r"busy: edgeshrink process \d+") as info:
            device.run(["true"], timeout_s=10, device_wait_s=0.5)
        assert re.search(r"kill -TERM -\d+", info.value.hint)
        assert device.run(["true"], timeout_s=10, device_wait_s=30).returncode == 0
    finally:
        thread.join()
    assert results and results[0].returncode == 0


def test_a_timeout_is_reported_once_the_group_is_gone(device, tmp_path):
    pidfile = tmp_path / "stubborn.pid"
    stubborn = (
        "import subprocess, sys, time; "
        "kid = subprocess.Popen([sys.executable, '-c', "
        "'import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(300)']); "
        f"open({str(pidfile)!r}, 'w').write(str(kid.pid)); time.sleep(300)"
    )
    result = device.run([sys.executable, "-c", stubborn], timeout_s=2)
    assert result.timed_out
    assert not process_alive(int(pidfile.read_text()))


def test_output_status_and_oom_kill_of_a_run(device):
    done = device.run(
        [sys.executable, "-c", "import sys; print('out'); sys.stderr.write('err\\n'); sys.exit(3)"],
        timeout_s=30,
    )
    assert (done.returncode, done.stdout, done.stderr) == (3, "out\n", "err\n")
    killed = device.run([sys.executable, "-c", "import os; os.kill(os.getpid(), 9)"], timeout_s=30)
    assert killed.signal == 9 and killed.returncode == -9
    if "oom_kill" in Path("/proc/vmstat").read_text():
        assert killed.oom_kill is False  # an operator's SIGKILL is not the OOM killer


def test_same_size_corruption_is_pushed_again(device, tmp_path):
    local = tmp_path / "model.gguf"
    local.write_bytes(os.urandom(1 << 20))
    sha = sha256_file(local)
    first = device.push_artifact(local, sha)
    assert not first.skipped and device.push_artifact(local, sha).skipped
    Path(first.remote).write_bytes(os.urandom(1 << 20))
    again = device.push_artifact(local, sha)
    assert not again.skipped and sha256_file(Path(again.remote)) == sha


def test_an_agent_whose_launcher_was_killed_still_keeps_the_device(device, tmp_path):
    pidfile = tmp_path / "pids"
    results: list[object] = []
    thread = threading.Thread(
        target=lambda: results.append(
            device.run([sys.executable, "-c", SLEEPER, str(pidfile)], timeout_s=60)
        )
    )
    thread.start()
    agent = int(wait_for_file(pidfile).split()[0])
    try:
        launcher = int(Path(f"/proc/{agent}/stat").read_text().rsplit(")", 1)[1].split()[1])
        os.kill(launcher, signal.SIGKILL)  # the launcher alone: the agent lives on
        thread.join(timeout=30)
        assert results and results[0].signal == signal.SIGKILL and process_alive(agent)
        with pytest.raises(TransportError, match=f"busy: edgeshrink process {agent} "):
            device.run(["true"], timeout_s=10, device_wait_s=0.5)
    finally:
        os.killpg(agent, signal.SIGKILL)
        thread.join(timeout=30)
    assert device.run(["true"], timeout_s=10, device_wait_s=10).returncode == 0


def test_an_operators_sigkill_of_the_agent_is_not_stored_as_oom(device):
    """A SIGKILL the kernel's OOM killer did not send is an error, not `oom`."""
    from edgeshrink.bench import interpret_agent_output

    if "oom_kill" not in Path("/proc/vmstat").read_text():
        pytest.skip("this kernel has no oom_kill counter in /proc/vmstat")
    killed = device.run([sys.executable, "-c", "import os; os.kill(os.getpid(), 9)"], timeout_s=30)
    result = interpret_agent_output(killed, {})
    assert result.status == "error"
    assert "not by the kernel's out-of-memory killer" in (result.error_message or "")
