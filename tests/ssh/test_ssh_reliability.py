"""Issue #14 on the real SSH device: concurrent pushes, orphaned agents, SSH edge cases, messages."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict
from pathlib import Path

import pytest
from support import host_dies_leaves_nothing, process_alive, wait_for_file

from edgeshrink.errors import TransportError
from edgeshrink.transport.ssh import PYTHON_HINT, PushProgress, SSHTransport
from edgeshrink.util import sha256_file

REPO = Path(__file__).resolve().parents[2]


def random_file(path: Path, size: int) -> tuple[Path, str]:
    with open(path, "wb") as handle:
        for _ in range(size >> 20):
            handle.write(os.urandom(1 << 20))
        handle.write(os.urandom(size & ((1 << 20) - 1)))
    return path, sha256_file(path)


# --------------------------------------------------------------------------- 1: concurrent pushes


def test_three_concurrent_pushers_twenty_rounds_leave_only_verified_bytes(
    target, device_dir, tmp_path
):
    local, sha = random_file(tmp_path / "model.gguf", 50 << 20)
    final = device_dir / "models" / sha / "model.gguf"
    transports = [SSHTransport(target, durable=False) for _ in range(3)]
    for t in transports:
        t.connect()
    try:
        for round_no in range(20):
            # Invalidate the device copy so that every round really pushes.
            for leftover in final.parent.glob("*model.gguf*"):
                if not leftover.name.endswith(".lock"):
                    leftover.unlink()
            start = threading.Barrier(3)
            results: list[object] = [None] * 3

            def push(i: int, start: threading.Barrier, results: list[object]) -> None:
                start.wait()
                try:
                    results[i] = transports[i].push_artifact(local, sha)
                except Exception as exc:  # reported below with the round
                    results[i] = exc

            threads = [threading.Thread(target=push, args=(i, start, results)) for i in range(3)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=120)
            failed = [r for r in results if isinstance(r, Exception) or r is None]
            assert not failed, f"round {round_no}: {failed}"
            sent = sorted(r.bytes_sent for r in results)
            assert sent == [0, 0, 50 << 20], f"round {round_no}: one writer, two found it present"
            assert final.stat().st_size == 50 << 20 and sha256_file(final) == sha, round_no
            assert not (final.parent / ".model.gguf.partial").exists()
    finally:
        for t in transports:
            t.close()


def test_same_size_corruption_on_the_device_is_noticed_and_pushed_again(
    target, device_dir, tmp_path
):
    local, sha = random_file(tmp_path / "model.gguf", 3 << 20)
    final = device_dir / "models" / sha / "model.gguf"
    with SSHTransport(target) as t:
        assert not t.push_artifact(local, sha).skipped
        assert t.push_artifact(local, sha).skipped  # unchanged: the cached hash says so
        with open(final, "r+b") as handle:  # same size, other bytes
            handle.seek(1 << 20)
            handle.write(b"\0" * 4096)
        again = t.push_artifact(local, sha)
        assert not again.skipped and again.bytes_sent == 3 << 20
        assert sha256_file(final) == sha
        # push_file (a non-content-addressed name) checks the same way.
        rel = "agent/thing.bin"
        assert not t.push_file(local, rel, sha).skipped
        (device_dir / rel).write_bytes(os.urandom(3 << 20))
        assert not t.push_file(local, rel, sha).skipped
        assert sha256_file(device_dir / rel) == sha


# --------------------------------------------------------------------------- 4: orphaned agents


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL, signal.SIGHUP])
def test_a_killed_host_leaves_no_agent_on_the_device(target, tmp_path, sig):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    host_dies_leaves_nothing(asdict(target), "python3", tmp_path / "pids", sig, env)


def test_a_second_run_waits_for_the_first_or_names_its_pid(target, tmp_path):
    pidfile = tmp_path / "first.pid"
    first_done: list[object] = []

    def first() -> None:
        with SSHTransport(target) as t:
            first_done.append(
                t.run(
                    [
                        "python3",
                        "-c",
                        f"open({str(pidfile)!r}, 'w').write('x');import time; time.sleep(3)",
                    ],
                    timeout_s=60,
                )  # fmt: skip
            )

    thread = threading.Thread(target=first)
    thread.start()
    try:
        wait_for_file(pidfile)
        with SSHTransport(target) as second:
            with pytest.raises(TransportError, match=r"busy: edgeshrink process \d+") as info:
                second.run(["true"], timeout_s=30, device_wait_s=0.5)
            assert re.search(r"kill -TERM -\d+", info.value.hint)
            waited = second.run(["true"], timeout_s=30, device_wait_s=30)
        assert waited.returncode == 0 and first_done and first_done[0].returncode == 0
    finally:
        thread.join()


def test_a_timeout_is_reported_only_once_the_process_group_is_gone(target, tmp_path):
    # The command's child ignores SIGTERM: only SIGKILL ends it.
    pidfile = tmp_path / "stubborn.pid"
    stubborn = (
        "import os, signal, subprocess, sys, time; "
        "kid = subprocess.Popen([sys.executable, '-c', "
        "'import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(300)']); "
        f"open({str(pidfile)!r}, 'w').write(str(kid.pid)); time.sleep(300)"
    )
    with SSHTransport(target) as t:
        result = t.run(["python3", "-c", stubborn], timeout_s=2)
    assert result.timed_out
    assert not process_alive(int(pidfile.read_text()))


def test_oom_kill_is_false_for_an_operators_sigkill(target):
    with SSHTransport(target) as t:
        done = t.run(["python3", "-c", "import os; os.kill(os.getpid(), 9)"], timeout_s=30)
        assert done.signal == 9 and done.returncode == -9
        if not Path("/proc/vmstat").read_text().count("oom_kill"):
            pytest.skip("this kernel has no oom_kill counter")
        assert done.oom_kill is False
        assert t.run(["true"], timeout_s=30).oom_kill is False


def test_oom_kill_is_true_when_the_kernel_killed_it(rig_module, tmp_path):
    problem = rig_module.memory_cgroup_problem()
    if problem:
        pytest.skip(f"no cgroup v1 memory limit here: {problem}")
    with (
        rig_module.sshd_rig(tmp_path / "small-device", memory_limit_mb=100) as small,
        SSHTransport(small.target()) as t,
    ):
        done = t.run(["python3", "-c", "x = bytearray(400 << 20)"], timeout_s=60)
    assert done.signal == 9 and done.oom_kill is True


# --------------------------------------------------------------------------- 5: SSH edge cases


FAKE_SERVER_CLIENT = """
import json, socket, sys, threading, time
from edgeshrink.errors import TransportError
from edgeshrink.targets import Target
from edgeshrink.transport.ssh import SSHTransport
srv = socket.socket()
srv.bind(("127.0.0.1", 0))
srv.listen(8)
held = []
def serve():
    while True:
        conn, _ = srv.accept()
        if sys.argv[1] == "close":
            conn.close()
        else:
            held.append(conn)  # accepted, never answered
threading.Thread(target=serve, daemon=True).start()
target = Target(**{**json.loads(sys.argv[2]), "port": srv.getsockname()[1]})
start = time.monotonic()
try:
    SSHTransport(target, connect_timeout_s=2).run(["true"], timeout_s=5)
except TransportError as exc:
    doc = {"message": exc.message, "hint": exc.hint, "seconds": time.monotonic() - start}
    time.sleep(0.5)  # paramiko's thread would log its traceback about now
    print(json.dumps(doc))
"""


@pytest.mark.parametrize("behaviour", ["silent", "close"])
def test_a_server_that_never_handshakes_is_a_clean_quick_error(rig, tmp_path, behaviour):
    # In a child process: pytest's log capture would hide a traceback paramiko prints.
    fields = asdict(rig.target(work_dir=str(tmp_path)))
    done = subprocess.run(
        [sys.executable, "-c", FAKE_SERVER_CLIENT, behaviour, json.dumps(fields)],
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert "Traceback" not in done.stderr, done.stderr
    error = json.loads(done.stdout)
    assert error["seconds"] < 5
    assert "handshake" in error["message"] and "No existing session" not in error["message"]
    assert error["hint"]


def _passphrase_key(rig, tmp_path: Path) -> Path:
    key = tmp_path / "locked_ed25519"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "secret phrase", "-f", str(key)], check=True
    )
    authorized = rig.root / "authorized_keys"
    authorized.write_text(authorized.read_text() + (tmp_path / "locked_ed25519.pub").read_text())
    return key


def test_a_passphrase_key_is_skipped_with_a_note_and_the_agent_key_used(rig, tmp_path, monkeypatch):
    if not Path("/usr/bin/ssh-agent").exists():
        pytest.skip("ssh-agent is not installed")
    key = _passphrase_key(rig, tmp_path)
    target = rig.target(key=str(key), work_dir=str(tmp_path / "w"))
    with pytest.raises(TransportError, match="passphrase-protected") as info:
        SSHTransport(target).run(["true"], timeout_s=30)
    assert "ssh-add" in info.value.hint and str(key) in info.value.message

    sock = tmp_path / "agent.sock"
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(sock)], stdout=subprocess.DEVNULL)
    try:
        until = time.monotonic() + 5
        while not sock.exists() and time.monotonic() < until:
            time.sleep(0.02)
        askpass = tmp_path / "askpass"
        askpass.write_text("#!/bin/sh\necho 'secret phrase'\n")
        askpass.chmod(0o755)
        env = {**os.environ, "SSH_AUTH_SOCK": str(sock), "SSH_ASKPASS": str(askpass),
               "SSH_ASKPASS_REQUIRE": "force", "DISPLAY": ":0"}  # fmt: skip
        subprocess.run(
            ["ssh-add", "-q", str(key)], env=env, check=True, capture_output=True,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
        monkeypatch.setenv("SSH_AUTH_SOCK", str(sock))
        with SSHTransport(target) as t:
            assert t.run(["true"], timeout_s=30).returncode == 0
            assert t.trace.auth.startswith("ssh-agent key SHA256:")
    finally:
        agent.terminate()
        agent.wait()


def test_the_auth_hint_names_only_options_that_exist(rig, tmp_path, make_key):
    from edgeshrink.cli.main import cli

    target = rig.target(key=str(make_key(tmp_path / "stranger")), work_dir=str(tmp_path))
    with pytest.raises(TransportError, match="authentication refused") as info:
        SSHTransport(target).run(["true"], timeout_s=10)
    hint = info.value.hint
    named = set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", hint))
    assert named, hint
    command = cli.commands["targets"].commands["add"]
    assert "targets add" in hint
    options = {o for p in command.params for o in getattr(p, "opts", [])}
    assert named <= options, f"{named - options} are not options of `edgeshrink targets add`"


# --------------------------------------------------------------------------- 11: messages


@contextlib.contextmanager
def mounted_tmpfs(path: Path, options: str):
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_a_read_only_work_dir_says_so_not_install_python(rig, tmp_path):
    local, sha = random_file(tmp_path / "model.gguf", 1 << 20)
    with (
        mounted_tmpfs(rig.root / f"ro-{os.getpid()}", "ro,size=4m") as ro,
        SSHTransport(rig.target(work_dir=str(ro))) as t,
    ):
        with pytest.raises(TransportError, match="Read-only file system") as pushed:
            t.push_artifact(local, sha)
        with pytest.raises(TransportError, match="Read-only file system") as ran:
            t.run(["true"], timeout_s=30)
    for info in (pushed, ran):
        assert "install Python" not in info.value.hint and "work_dir" in info.value.hint


def test_sshd_killed_during_the_push_probe_says_connection_not_install_python(rig, tmp_path, model):
    # A device "python" that kills the sshd session serving it, as a dying sshd would.
    python = tmp_path / "python-killing-sshd"
    python.write_text(
        "#!/usr/bin/python3\n"
        "import os, signal\n"
        "pid = os.getppid()\n"
        "while pid > 1:\n"
        "    comm = open('/proc/%d/comm' % pid).read().strip()\n"
        "    if comm.startswith('sshd'):\n"
        "        os.kill(pid, signal.SIGKILL)\n"
        "        break\n"
        "    pid = int(open('/proc/%d/stat' % pid).read().rsplit(')', 1)[1].split()[1])\n"
    )
    python.chmod(0o755)
    target = rig.target(python=str(python), work_dir=str(tmp_path / "w"))
    with SSHTransport(target) as t, pytest.raises(TransportError) as info:
        t.push_artifact(model, sha256_file(model))
    assert info.value.hint != PYTHON_HINT and "install Python" not in info.value.hint
    assert "connection" in info.value.message


@pytest.mark.parametrize("via", ["paramiko", "openssh"])
def test_a_disk_that_fills_mid_push_says_no_space_not_connection_lost(
    rig, tmp_path, via, monkeypatch
):
    monkeypatch.setenv("EDGESHRINK_PUSH_VIA", via)
    local, sha = random_file(tmp_path / "model.gguf", 8 << 20)
    with mounted_tmpfs(rig.root / f"fills-{os.getpid()}", "size=12m") as disk:
        filled: list[bool] = []

        def fill_the_disk(progress: PushProgress) -> None:
            if progress.sent_bytes >= 1 << 20 and not filled:
                filled.append(True)
                subprocess.run(
                    ["dd", "if=/dev/zero", f"of={disk / 'filler'}", "bs=1M", "count=12"],
                    capture_output=True,
                )

        transport = SSHTransport(rig.target(work_dir=str(disk / "w")), progress=fill_the_disk)
        with transport, pytest.raises(TransportError) as info:
            transport.push_artifact(local, sha)
        assert filled
        assert "No space left on device" in info.value.message, info.value.message
        assert "connection lost" not in info.value.message
        assert "free space" in info.value.hint
        assert not (disk / "w" / "models" / sha / "model.gguf").exists()
