"""Each fault of the SSH issue, on the real device: a clear error or status, never a hang."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from edgeshrink.bench import BenchParams
from edgeshrink.deploy import bench_model
from edgeshrink.doctor import diagnose
from edgeshrink.errors import TransportError
from edgeshrink.transport.ssh import PushProgress, SSHTransport, fingerprint_sha256
from edgeshrink.util import sha256_file

QUICK = BenchParams(prompt_tokens=16, gen_tokens=4, reps=1, warmup=0, threads=1)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # closed again when the block ends


def test_unreachable_host_closed_port(rig, tmp_path):
    target = rig.target(port=closed_port(), work_dir=str(tmp_path))
    with (
        pytest.raises(TransportError, match="connection refused") as info,
        SSHTransport(target) as t,
    ):
        t.run(["true"], timeout_s=10)
    assert "port" in info.value.hint


def test_refused_auth_with_a_wrong_key(rig, tmp_path, make_key):
    target = rig.target(key=str(make_key(tmp_path / "stranger")), work_dir=str(tmp_path))
    with (
        pytest.raises(TransportError, match="authentication refused") as info,
        SSHTransport(target) as t,
    ):
        t.run(["true"], timeout_s=10)
    assert "stranger (refused)" in info.value.message
    assert "authorized_keys" in info.value.hint


def test_unknown_host_key_refused_then_accepted_and_stored(rig, tmp_path):
    known = tmp_path / "known_hosts"
    target = rig.target(known_hosts=str(known), work_dir=str(tmp_path / "w"))
    expected = subprocess.run(
        ["ssh-keygen", "-lf", str(rig.host_key_pub)], capture_output=True, text=True, check=True
    ).stdout.split()[1]
    with pytest.raises(TransportError, match="unknown host key") as info, SSHTransport(target) as t:
        t.connect()
    assert expected in info.value.message and expected.startswith("SHA256:")
    assert "--accept-new-host-key" in info.value.hint
    assert not known.exists()

    with SSHTransport(replace(target, accept_new_host_key=True)) as t:
        assert t.host_key.status == "accepted" and t.host_key.fingerprint == expected
    assert known.read_text().startswith(f"[{rig.host}]:{rig.port} ssh-ed25519 ")
    with SSHTransport(target) as t:  # no flag needed any more
        assert t.host_key.status == "known" and t.host_key.line == 1


def test_changed_host_key_is_always_refused(rig, tmp_path, make_key):
    import paramiko

    other = paramiko.PKey.from_path(str(make_key(tmp_path / "other_host_key")))
    known = tmp_path / "known_hosts"
    known.write_text(f"# pinned\n[{rig.host}]:{rig.port} {other.get_name()} {other.get_base64()}\n")
    target = rig.target(known_hosts=str(known), work_dir=str(tmp_path / "w"))
    for accept in (False, True):
        transport = SSHTransport(replace(target, accept_new_host_key=accept))
        with pytest.raises(TransportError, match="HOST KEY CHANGED") as info, transport:
            transport.connect()
        assert f"{known} line 2" in info.value.message
        assert fingerprint_sha256(other) in info.value.message
        assert f"remove line 2 of {known}" in info.value.hint
    assert known.read_text().count("\n") == 2  # nothing was added


def test_no_python_on_the_device(target, tmp_path, model):
    target = replace(target, python="/nonexistent/bin/python3")
    with (
        pytest.raises(TransportError, match="cannot start the device's Python") as info,
        SSHTransport(target) as t,
    ):
        t.push_artifact(model, sha256_file(model))
    assert "install Python 3.9+" in info.value.hint
    report = diagnose(target)
    python = report.check("python")
    assert python.status == "error" and "/nonexistent/bin/python3" in python.summary
    assert report.check("agent").status == "skip" and not report.ok


def test_too_old_python_on_the_device(rig, tmp_path):
    # A real Python made to report 3.7.3 (sitecustomize), as an old device's would.
    fake = tmp_path / "oldpy"
    fake.mkdir()
    (fake / "sitecustomize.py").write_text("import sys\nsys.version_info = (3, 7, 3, 'final', 0)\n")
    script = fake / "python3"
    script.write_text(f'#!/bin/sh\nPYTHONPATH={fake} exec /usr/bin/python3 "$@"\n')
    script.chmod(0o755)
    report = diagnose(rig.target(python=str(script), work_dir=str(tmp_path / "w")))
    python = report.check("python")
    assert (
        python.status == "error"
        and "Python 3.7.3" in python.summary
        and "3.9 or newer" in python.summary
    )
    assert report.check("agent").status == "skip"


def test_runtime_missing_says_how_to_install(rig, tmp_path, model):
    probe = subprocess.run(["/usr/bin/python3", "-c", "import llama_cpp"], capture_output=True)
    if probe.returncode == 0:
        pytest.skip("/usr/bin/python3 has llama_cpp: no device Python without the runtime here")
    target = rig.target(
        python="/usr/bin/python3", work_dir=str(tmp_path / "w"), profile="raspberry-pi-5-8gb"
    )
    outcome = bench_model(model, target, QUICK, store_result=False, timeout_s=60)
    assert outcome.result.status == "error"
    assert "llama_cpp is not importable" in outcome.result.error_message
    assert "pip install llama-cpp-python" in outcome.result.error_hint
    runtimes = diagnose(target).check("runtimes")
    assert runtimes.status == "error"
    assert (
        "--install-runtime gguf" in runtimes.hint
        and "pip install llama-cpp-python" in runtimes.hint
    )


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str):
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_disk_full_is_refused_before_sending(rig, tmp_path):
    big = tmp_path / "big.gguf"
    big.write_bytes(os.urandom(3 << 20))
    seen: list[PushProgress] = []
    with small_tmpfs(rig.root / f"tmpfs-{os.getpid()}", "2m") as small:
        target = rig.target(work_dir=str(small / "work"))
        transport = SSHTransport(target, progress=seen.append)
        with (
            pytest.raises(TransportError, match="not enough space on the device") as info,
            transport,
        ):
            transport.push_artifact(big, sha256_file(big))
        assert "needs 3.0 MiB" in info.value.message and "free space" in info.value.hint
        assert not seen  # nothing was sent
        # Only the receiver's empty lock file: no partial, no final name.
        left = [p for p in small.rglob("*") if p.is_file()]
        assert [p.name for p in left] == [".big.gguf.lock"] and left[0].stat().st_size == 0


def test_connection_dropped_mid_push_resumes_and_never_shows_a_partial_final(
    target, device_dir, tmp_path
):
    local = tmp_path / "model.gguf"
    local.write_bytes(os.urandom(24 << 20))
    sha = sha256_file(local)
    final = device_dir / "models" / sha / "model.gguf"
    partial = final.with_name(".model.gguf.partial")

    dropper: dict[str, SSHTransport] = {}

    def drop_after_8_mib(progress: PushProgress) -> None:
        if progress.sent_bytes >= 8 << 20 and not dropper.get("dropped"):
            # Pull the network away under the SSH connection (no clean disconnect).
            dropper["dropped"] = True
            dropper["t"].connect().sock.shutdown(socket.SHUT_RDWR)

    first = SSHTransport(target, progress=drop_after_8_mib)
    dropper["t"] = first
    with pytest.raises(TransportError, match="connection lost after sending") as info, first:
        first.push_artifact(local, sha)
    assert "resumes" in info.value.hint
    assert not final.exists()

    with SSHTransport(target) as second:
        resumed = second.push_artifact(local, sha)
    assert not resumed.skipped
    assert 0 < resumed.bytes_sent < 24 << 20  # only the rest was sent
    assert sha256_file(final) == sha and not partial.exists()


def test_a_corrupt_partial_is_detected_and_removed(target, device_dir, tmp_path):
    local = tmp_path / "model.gguf"
    local.write_bytes(os.urandom(2 << 20))
    sha = sha256_file(local)
    folder = device_dir / "models" / sha
    folder.mkdir(parents=True)
    (folder / ".model.gguf.partial").write_bytes(b"not the same bytes" * 1000)
    with SSHTransport(target) as t:
        with pytest.raises(TransportError, match="arrived with sha256"):
            t.push_artifact(local, sha)
        assert (
            not (folder / "model.gguf").exists() and not (folder / ".model.gguf.partial").exists()
        )
        assert t.push_artifact(local, sha).bytes_sent == 2 << 20  # starts over and succeeds
    assert sha256_file(folder / "model.gguf") == sha


def test_agent_killed_by_the_oom_killer_is_status_oom(rig_module, tmp_path, model, llama_cpp_here):
    problem = rig_module.memory_cgroup_problem()
    if problem:
        pytest.skip(f"no cgroup v1 memory limit here: {problem}")
    # A 200 MB device; a context of 1M tokens wants far more for its KV cache.
    with rig_module.sshd_rig(tmp_path / "small-device", memory_limit_mb=200) as small:
        target = small.target(profile="raspberry-pi-5-8gb")
        params = BenchParams(
            prompt_tokens=16, gen_tokens=4, reps=1, warmup=0, threads=1, n_ctx=1 << 20
        )
        outcome = bench_model(model, target, params, store_result=False, timeout_s=120)
    assert outcome.result.status == "oom"
    assert "SIGKILL" in outcome.result.error_message


def test_hostile_file_name_runs_nothing(rig, target, tmp_path, model, llama_cpp_here, monkeypatch):
    hostile = tmp_path / "$(touch pwned).gguf"
    shutil.copyfile(model, hostile)
    also = tmp_path / "a'b;`touch pwned2`\".gguf"
    shutil.copyfile(model, also)
    monkeypatch.chdir(tmp_path)
    for path in (hostile, also):
        outcome = bench_model(path, target, QUICK, store_result=False, timeout_s=120)
        assert outcome.result.status == "ok", outcome.result.error_message
        assert outcome.push.remote.endswith(path.name)
    # Where an injected command would run: the session's start dir (the login
    # user's home), the device's HOME and work dir, and this process's cwd.
    found = [p for place in (tmp_path, rig.root, Path.home()) for p in place.rglob("pwned*")]
    found += [
        p
        for p in (Path(os.path.expanduser("~" + rig.user)) / "pwned", Path("/pwned"))
        if p.exists()
    ]
    assert not found
