"""SSHTransport against a real sshd: pushes, resumes, runs, process groups, jump hosts."""

from __future__ import annotations

import hashlib
import os
import subprocess
import time
from dataclasses import replace
from pathlib import Path

import pytest

from edgeshrink.errors import TransportError
from edgeshrink.targets import get_target, resolve_ssh
from edgeshrink.transport import open_transport
from edgeshrink.transport.ssh import PushProgress, SSHTransport, fingerprint_sha256
from edgeshrink.util import sha256_file


def random_file(path: Path, size: int, seed: int = 0) -> tuple[Path, str]:
    data = hashlib.sha256(str(seed).encode()).digest() * (size // 32 + 1)
    path.write_bytes(data[:size])
    return path, sha256_file(path)


def test_push_artifact_is_content_addressed_verified_and_skipped_when_present(
    target, device_dir, tmp_path
):
    local, sha = random_file(tmp_path / "model.gguf", 3 << 20)
    seen: list[PushProgress] = []
    with open_transport(target, progress=seen.append) as transport:
        first = transport.push_artifact(local, sha)
        again = transport.push_artifact(local, sha)
    final = device_dir / "models" / sha / "model.gguf"
    assert first.remote == str(final) and not first.skipped and first.bytes_sent == 3 << 20
    assert sha256_file(final) == sha
    assert not list(final.parent.glob(".*partial"))
    assert again.skipped and again.bytes_sent == 0
    assert seen[0].done_bytes == 0 and seen[-1].done_bytes == 3 << 20 and seen[-1].mb_per_s > 0


def test_push_file_compares_the_hash_not_only_the_size(target, device_dir, tmp_path):
    local, sha = random_file(tmp_path / "agent.py", 10_000, seed=1)
    with SSHTransport(target) as transport:
        assert not transport.push_file(local, "agent/agent.py", sha).skipped
        assert transport.push_file(local, "agent/agent.py", sha).skipped
        changed, sha2 = random_file(tmp_path / "agent.py", 10_000, seed=2)  # same size, other bytes
        result = transport.push_file(changed, "agent/agent.py", sha2)
    assert not result.skipped
    assert sha256_file(device_dir / "agent" / "agent.py") == sha2


def test_push_refuses_paths_outside_the_work_dir(target, tmp_path):
    local, sha = random_file(tmp_path / "x", 10)
    with (
        SSHTransport(target) as transport,
        pytest.raises(TransportError, match="outside the device work dir"),
    ):
        transport.push_file(local, "../../etc/evil", sha)


def test_run_returns_output_status_and_streams_stderr(target, device_dir):
    lines: list[str] = []
    with SSHTransport(target, on_stderr=lines.append) as transport:
        result = transport.run(
            [
                "python3",
                "-c",
                "import os,sys; print(os.getcwd()); sys.stderr.write('step 1\\nstep 2\\n'); sys.exit(3)",
            ],
            timeout_s=30,
        )
    assert result.returncode == 3 and result.signal is None and not result.timed_out
    assert result.stdout.strip() == str(device_dir)
    assert lines == ["step 1", "step 2"]
    assert "@@edgeshrink" not in result.stderr


def test_run_bounds_stdout(target):
    with SSHTransport(target) as transport:
        result = transport.run(
            ["python3", "-c", "print('x' * 200000)"], timeout_s=30, max_output_bytes=1000
        )
    assert result.stdout_truncated and len(result.stdout) == 1000 and result.returncode == 0


def test_a_signal_death_maps_like_the_local_transport(target):
    with SSHTransport(target) as transport:
        result = transport.run(["sh", "-c", "kill -9 $$"], timeout_s=30)
    assert result.signal == 9 and result.returncode == -9


def _spawn_grandchild(pidfile: Path) -> list[str]:
    # A child that starts a grandchild of its own: the whole group must die.
    code = (
        "import subprocess,sys,time; p=subprocess.Popen(['sleep','300']);"
        f"open({str(pidfile)!r},'w').write(str(p.pid)); sys.stderr.write('started\\n'); sys.stderr.flush(); time.sleep(300)"
    )
    return ["python3", "-c", code]


def _gone(pid: int, within_s: float = 5.0) -> bool:
    until = time.monotonic() + within_s
    while time.monotonic() < until:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        with open(f"/proc/{pid}/stat") as handle:
            if handle.read().split()[2] == "Z":
                return True
        time.sleep(0.05)
    return False


def test_timeout_kills_the_remote_process_group(target, tmp_path):
    pidfile = tmp_path / "grandchild.pid"
    start = time.monotonic()
    with SSHTransport(target) as transport:
        result = transport.run(_spawn_grandchild(pidfile), timeout_s=2)
    assert result.timed_out and result.signal == 15 and time.monotonic() - start < 10
    assert _gone(int(pidfile.read_text()))


def test_ctrl_c_kills_the_remote_process_group(target, tmp_path):
    pidfile = tmp_path / "grandchild.pid"

    def interrupt(line: str) -> None:
        if line == "started":
            raise KeyboardInterrupt

    with SSHTransport(target, on_stderr=interrupt) as transport, pytest.raises(KeyboardInterrupt):
        transport.run(_spawn_grandchild(pidfile), timeout_s=60)
    assert _gone(int(pidfile.read_text()))


def test_tilde_work_dir_is_the_devices_home(rig):
    with SSHTransport(rig.target(work_dir="~/es-work")) as transport:
        assert transport.work_dir == str(rig.home / "es-work")
        assert transport.run(["pwd"], timeout_s=30).stdout.strip() == str(rig.home / "es-work")


def test_user_at_host_port_is_a_target(rig):
    target = get_target(f"{rig.user}@{rig.host}:{rig.port}", profile="raspberry-pi-5-8gb")
    assert (target.kind, target.host, target.port, target.user) == (
        "ssh",
        rig.host,
        rig.port,
        rig.user,
    )
    assert target.profile == "raspberry-pi-5-8gb"


def test_ssh_config_alias_supplies_hostname_port_user_and_key(rig, host_home, tmp_path):
    (host_home / ".ssh" / "config").write_text(
        f"Host mydevice\n  HostName {rig.host}\n  Port {rig.port}\n  User {rig.user}\n"
        f"  IdentityFile {rig.client_key}\n"
    )
    target = replace(
        get_target("mydevice"), known_hosts=str(rig.known_hosts), work_dir=str(tmp_path / "w")
    )
    endpoint = resolve_ssh(target)
    assert (endpoint.hostname, endpoint.port, endpoint.user) == (rig.host, rig.port, rig.user)
    with SSHTransport(target) as transport:
        assert transport.run(["true"], timeout_s=30).returncode == 0
        assert transport.trace.auth == str(rig.client_key)


def test_ssh_agent_keys_are_used(rig, tmp_path, monkeypatch):
    if not Path("/usr/bin/ssh-agent").exists():
        pytest.skip("ssh-agent is not installed")
    sock = tmp_path / "agent.sock"
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(sock)], stdout=subprocess.DEVNULL)
    try:
        for _ in range(100):
            if sock.exists():
                break
            time.sleep(0.02)
        env = {**os.environ, "SSH_AUTH_SOCK": str(sock)}
        subprocess.run(
            ["ssh-add", "-q", str(rig.client_key)], env=env, check=True, capture_output=True
        )
        monkeypatch.setenv("SSH_AUTH_SOCK", str(sock))
        with SSHTransport(rig.target(key=None, work_dir=str(tmp_path / "w"))) as transport:
            assert transport.run(["true"], timeout_s=30).returncode == 0
            assert transport.trace.auth.startswith("ssh-agent key SHA256:")
    finally:
        agent.terminate()
        agent.wait()


def test_jump_host_via_direct_tcpip(rig, tmp_path):
    # The device is its own jump host: connect to it, then through it to it again.
    target = rig.target(jump=f"{rig.user}@{rig.host}:{rig.port}", work_dir=str(tmp_path / "w"))
    with SSHTransport(target) as transport:
        assert transport.run(["echo", "through"], timeout_s=30).stdout.strip() == "through"
        assert transport.trace.jump_hops == 1


def test_fingerprint_matches_openssh(rig):
    import paramiko

    key = paramiko.PKey.from_type_string(*_pub_parts(rig.host_key_pub))
    out = subprocess.run(
        ["ssh-keygen", "-lf", str(rig.host_key_pub)], capture_output=True, text=True, check=True
    )
    assert fingerprint_sha256(key) == out.stdout.split()[1]


def _pub_parts(path: Path) -> tuple[str, bytes]:
    import base64

    kind, b64 = path.read_text().split()[:2]
    return kind, base64.b64decode(b64)


def test_netns_device(tmp_path, rig_module):
    rigmod = rig_module
    if rigmod.netns_problem():
        pytest.skip(f"no network namespace here: {rigmod.netns_problem()}")
    with rigmod.sshd_rig(tmp_path / "nsrig", netns=True) as nsrig:
        assert nsrig.host != "127.0.0.1"
        with SSHTransport(nsrig.target()) as transport:
            assert transport.run(["true"], timeout_s=30).returncode == 0


def test_cli_progress_line_shows_mb_per_s(target, tmp_path, capsys):
    import edgeshrink.cli.main  # noqa: F401  (the CLI modules load through cli.main)
    from edgeshrink.cli.targets import transfer_progress_printer

    local, sha = random_file(tmp_path / "model.gguf", 2 << 20, seed=3)
    with SSHTransport(target, progress=transfer_progress_printer()) as transport:
        transport.push_artifact(local, sha)
    err = capsys.readouterr().err
    assert "push model.gguf: 100.0%" in err and "2.0 MiB / 2.0 MiB" in err and "MB/s" in err
