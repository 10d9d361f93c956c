"""Big pushes through the host's OpenSSH client, to the same verifying receiver: the
same guarantees as paramiko's pushes (verified, resumable, atomic, pinned host key),
and paramiko whenever OpenSSH cannot do it."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import pytest

from edgeshrink.errors import TransportError
from edgeshrink.transport.ssh import SSHTransport
from edgeshrink.util import sha256_file


def random_file(path: Path, size: int, seed: int = 0) -> tuple[Path, str]:
    data = hashlib.sha256(str(seed).encode()).digest() * (size // 32 + 1)
    path.write_bytes(data[:size])
    return path, sha256_file(path)


@pytest.fixture
def via_openssh(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every size through OpenSSH (the default is 32 MiB and up: tests stay small)."""
    monkeypatch.setenv("EDGESHRINK_PUSH_VIA", "openssh")


def test_a_push_through_openssh_is_verified_and_skipped_when_present(
    target, device_dir, tmp_path, via_openssh
):
    local, sha = random_file(tmp_path / "model.gguf", (5 << 20) + 123)
    seen = []
    with SSHTransport(target, progress=seen.append) as transport:
        first = transport.push_artifact(local, sha)
        again = transport.push_artifact(local, sha)
    final = device_dir / "models" / sha / "model.gguf"
    assert first.via == "openssh" and not first.skipped and first.bytes_sent == (5 << 20) + 123
    assert sha256_file(final) == sha
    assert not list(final.parent.glob(".*partial"))
    assert again.skipped and again.bytes_sent == 0 and again.via == "openssh"
    assert seen[-1].done_bytes == (5 << 20) + 123


def test_a_push_through_openssh_resumes_a_partial_file(target, device_dir, tmp_path, via_openssh):
    local, sha = random_file(tmp_path / "model.gguf", 4 << 20, seed=3)
    folder = device_dir / "models" / sha
    folder.mkdir(parents=True)
    (folder / ".model.gguf.partial").write_bytes(local.read_bytes()[: 3 << 20])
    with SSHTransport(target) as transport:
        result = transport.push_artifact(local, sha)
    assert result.via == "openssh" and result.bytes_sent == 1 << 20
    assert sha256_file(folder / "model.gguf") == sha


def test_wrong_bytes_through_openssh_never_reach_the_final_name(
    target, device_dir, tmp_path, via_openssh
):
    local, _sha = random_file(tmp_path / "model.gguf", 2 << 20, seed=4)
    claimed = "0" * 64
    with SSHTransport(target) as transport, pytest.raises(TransportError, match="sha256"):
        transport.push_artifact(local, claimed)
    folder = device_dir / "models" / claimed
    assert not (folder / "model.gguf").exists()
    assert not list(folder.glob(".*partial"))


def _fake_ssh(directory: Path, script: str) -> None:
    directory.mkdir()
    ssh = directory / "ssh"
    ssh.write_text("#!/bin/sh\n" + script)
    ssh.chmod(ssh.stat().st_mode | stat.S_IEXEC)


def test_paramiko_takes_over_when_openssh_cannot_connect(
    target, device_dir, tmp_path, via_openssh, monkeypatch
):
    """An ssh that fails before the receiver answered (here: it exits 255, like a refused
    key or an unknown cipher) costs nothing: the same push goes through paramiko."""
    _fake_ssh(tmp_path / "bin", "echo 'ssh: connect to host: refused' >&2; exit 255\n")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    local, sha = random_file(tmp_path / "model.gguf", 1 << 20, seed=5)
    with SSHTransport(target) as transport:
        result = transport.push_artifact(local, sha)
        note = transport.push_via_note
    assert result.via == "paramiko" and not result.skipped
    assert sha256_file(device_dir / "models" / sha / "model.gguf") == sha
    assert note and "refused" in note


def test_without_an_ssh_client_paramiko_pushes(
    target, device_dir, tmp_path, via_openssh, monkeypatch
):
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    local, sha = random_file(tmp_path / "model.gguf", 1 << 20, seed=6)
    with SSHTransport(target) as transport:
        assert transport.push_artifact(local, sha).via == "paramiko"


def test_small_files_go_through_paramiko_by_default(target, tmp_path, monkeypatch):
    monkeypatch.delenv("EDGESHRINK_PUSH_VIA", raising=False)
    local, sha = random_file(tmp_path / "agent.py", 10_000, seed=7)
    with SSHTransport(target) as transport:
        assert transport.push_file(local, "agent/agent.py", sha).via == "paramiko"


def test_openssh_is_pinned_to_the_key_paramiko_verified(target, tmp_path, via_openssh):
    """ssh gets exactly the verified host key, and nothing of the user's ssh config."""
    from edgeshrink.transport import openssh

    with SSHTransport(target) as transport:
        transport.connect()
        known = tmp_path / "known_hosts"
        argv = openssh.ssh_command(transport, known, "true")
        server_key = transport.server_key
    assert argv is not None
    assert (
        known.read_text()
        == f"{openssh.HOST_ALIAS} {server_key.get_name()} {server_key.get_base64()}\n"
    )
    joined = " ".join(argv)
    assert "-F /dev/null" in joined and "StrictHostKeyChecking=yes" in joined
    assert f"UserKnownHostsFile={known}" in joined and "BatchMode=yes" in joined


def test_a_push_whose_ssh_dies_resumes_and_never_shows_a_partial_final(
    target, device_dir, tmp_path, via_openssh
):
    import psutil

    local, sha = random_file(tmp_path / "model.gguf", 24 << 20, seed=8)
    final = device_dir / "models" / sha / "model.gguf"
    killed: list[int] = []

    def kill_ssh_after_8_mib(progress) -> None:
        if progress.sent_bytes >= 8 << 20 and not killed:
            for child in psutil.Process().children():
                if child.name() == "ssh":
                    child.kill()
                    killed.append(child.pid)

    with (
        SSHTransport(target, progress=kill_ssh_after_8_mib) as first,
        pytest.raises(TransportError, match="connection lost") as info,
    ):
        first.push_artifact(local, sha)
    assert killed and "resumes" in info.value.hint
    assert not final.exists()
    with SSHTransport(target) as second:
        resumed = second.push_artifact(local, sha)
    assert resumed.via == "openssh" and 0 < resumed.bytes_sent < 24 << 20
    assert sha256_file(final) == sha and not final.with_name(".model.gguf.partial").exists()
