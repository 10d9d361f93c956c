"""The commands a user types, as child processes, against the real device."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest


def edgeshrink(
    *args: str, env: dict[str, str], cwd: Path | None = None
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "edgeshrink", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=300,
    )


@pytest.fixture
def user_home(tmp_path: Path, rig) -> Path:
    """A user whose ~/.ssh/id_ed25519 is authorized on the device (and nothing else)."""
    home = tmp_path / "user"
    (home / ".ssh").mkdir(parents=True)
    shutil.copyfile(rig.client_key, home / ".ssh" / "id_ed25519")
    (home / ".ssh" / "id_ed25519").chmod(0o600)
    return home


def test_targets_add_list_show_remove(rig, user_home, cli_env, tmp_path):
    env = cli_env(user_home)
    common = ["targets", "add", "dev1", "--host", rig.host, "--port", str(rig.port), "--user", rig.user,
              "--profile", "raspberry-pi-5-8gb", "--work-dir", str(tmp_path / "w")]  # fmt: skip
    refused = edgeshrink(*common, env=env)
    assert refused.returncode == 1
    assert "unknown host key" in refused.stderr and "SHA256:" in refused.stderr
    assert "--accept-new-host-key" in refused.stderr and "not saved" in refused.stderr

    dry = edgeshrink(*common, "--dry-run", env=env)
    assert dry.returncode == 0 and 'host = "127.0.0.1"' in dry.stdout

    added = edgeshrink(*common, "--accept-new-host-key", env=env)
    assert added.returncode == 0, added.stderr
    path = user_home / "config" / "edgeshrink" / "targets" / "dev1.toml"
    assert (
        f"saved target 'dev1' to {path}" in added.stdout and "accepted and stored" in added.stdout
    )
    known = (user_home / "config" / "edgeshrink" / "known_hosts").read_text()
    assert known.startswith(f"[{rig.host}]:{rig.port} ssh-ed25519 ")

    again = edgeshrink(*common, env=env)
    assert again.returncode == 1 and "already exists" in again.stderr

    listed = json.loads(edgeshrink("targets", "list", "--json", env=env).stdout)
    assert {t["name"] for t in listed} == {"local", "dev1"}
    shown = json.loads(edgeshrink("targets", "show", "dev1", "--json", env=env).stdout)
    assert shown["resolved"]["hostname"] == rig.host and shown["resolved"]["port"] == rig.port
    assert shown["resolved"]["known_hosts"].endswith("edgeshrink/known_hosts")

    removed = edgeshrink("targets", "remove", "dev1", env=env)
    assert removed.returncode == 0 and not path.exists()
    gone = edgeshrink("targets", "remove", "dev1", env=env)
    assert gone.returncode == 1 and "unknown target 'dev1'" in gone.stderr


def test_doctor_json_on_the_device(rig, user_home, cli_env, tmp_path, llama_cpp_here):
    env = cli_env(user_home)
    dest = f"{rig.user}@{rig.host}:{rig.port}"
    result = edgeshrink(
        "doctor",
        dest,
        "--profile",
        "raspberry-pi-5-8gb",
        "--accept-new-host-key",
        "--json",
        env=env,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    status = {c["name"]: c["status"] for c in report["checks"]}
    assert report["ok"] and status["connection"] == status["host key"] == status["python"] == "ok"
    assert status["runtimes"] == status["agent"] == status["disk"] == "ok"
    assert status["profile"] == "warn"  # this x86 machine is no Raspberry Pi 5
    assert report["runtimes"]["llama_cpp"]["available"]
    assert report["facts"]["work_dir"] == str(rig.home / "edgeshrink")
    text = edgeshrink("doctor", dest, "-p", "raspberry-pi-5-8gb", env=env)
    assert text.returncode == 0 and "the profile says aarch64" in text.stdout


def test_doctor_install_runtime_dry_run(rig, user_home, cli_env):
    env = cli_env(user_home)
    dest = f"{rig.user}@{rig.host}:{rig.port}"
    result = edgeshrink(
        "doctor", dest, "--install-runtime", "onnx", "--dry-run", "--accept-new-host-key", env=env
    )
    assert result.returncode == 0, result.stderr
    venv = rig.home / "edgeshrink" / "venv"
    assert f"python3 -m venv --system-site-packages {venv}" in result.stdout
    assert f"{venv}/bin/python -m pip install --progress-bar off onnxruntime" in result.stdout


@pytest.mark.skipif(
    os.environ.get("EDGESHRINK_TEST_NETWORK") != "1",
    reason="downloads onnxruntime from PyPI onto the device: set EDGESHRINK_TEST_NETWORK=1",
)
def test_doctor_install_runtime_for_real(rig, user_home, cli_env, tmp_path):
    env = cli_env(user_home)
    work = tmp_path / "device-work"
    added = edgeshrink("targets", "add", "dev2", "--host", rig.host, "--port", str(rig.port),
                       "--profile", "raspberry-pi-5-8gb", "--work-dir", str(work), "--accept-new-host-key", env=env)  # fmt: skip
    assert added.returncode == 0, added.stderr
    result = edgeshrink("doctor", "dev2", "--install-runtime", "onnx", env=env)
    assert result.returncode == 0, result.stderr
    assert "Successfully installed" in result.stderr  # pip's own lines, streamed as progress
    assert f"now uses python = {work}/venv/bin/python" in result.stdout
    shown = json.loads(edgeshrink("targets", "show", "dev2", "--json", env=env).stdout)
    assert shown["python"] == f"{work}/venv/bin/python"


def test_doctor_reports_an_unreachable_device(rig, user_home, cli_env):
    result = edgeshrink("doctor", f"{rig.user}@127.0.0.1:1", "--json", env=cli_env(user_home))
    assert result.returncode == 1
    checks = {c["name"]: c for c in json.loads(result.stdout)["checks"]}
    assert (
        checks["connection"]["status"] == "error"
        and "connection refused" in checks["connection"]["summary"]
    )
    assert checks["python"]["status"] == "skip"


def test_deploy_to_the_device_end_to_end(rig, user_home, cli_env, tmp_path, model, llama_cpp_here):
    env = cli_env(user_home)
    work = tmp_path / "cwd"
    work.mkdir()
    shutil.copyfile(model, work / "model-f32.gguf")
    dest = f"{rig.user}@{rig.host}:{rig.port}"
    args = ["deploy", "model-f32.gguf", "--profile", "raspberry-pi-5-8gb", "--target", dest,
            "--prompt-tokens", "32", "--gen-tokens", "8", "--reps", "2", "--threads", "1"]  # fmt: skip
    refused = edgeshrink(*args, env=env, cwd=work)
    assert refused.returncode == 1 and "unknown host key" in refused.stderr
    result = edgeshrink(*args, "--accept-new-host-key", "--json", env=env, cwd=work)
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["result"]["status"] == "ok" and doc["target"] == dest
    assert doc["push"]["remote"].startswith(str(rig.home / "edgeshrink" / "models"))
    assert doc["result"]["llm"]["tg_tok_s"]["mean"] > 0
    with sqlite3.connect(user_home / "results.db") as db:
        rows = db.execute("SELECT target, target_kind, status, profile_id FROM results").fetchall()
    assert rows == [(dest, "ssh", "ok", "raspberry-pi-5-8gb")]
    # A second deploy finds the artifact on the device and sends nothing.
    second = edgeshrink(*args, "--json", env=env, cwd=work)
    assert second.returncode == 0 and json.loads(second.stdout)["push"]["skipped"]


def test_new_commands_have_help(cli_env, tmp_path):
    env = cli_env(tmp_path)
    for command in (
        ["targets", "add"],
        ["targets", "remove"],
        ["targets", "show"],
        ["doctor"],
        ["push"],
    ):
        result = edgeshrink(*command, "--help", env=env)
        assert result.returncode == 0 and len(result.stdout.splitlines()) > 5, command


def test_push_to_the_device_through_openssh_then_skipped(rig, user_home, cli_env, tmp_path):
    """`edgeshrink push` to a user@host target: an unknown host key is refused, then the
    file goes (through OpenSSH: EDGESHRINK_PUSH_VIA forces it at this small size), is
    verified there, and is not sent a second time."""
    env = cli_env(user_home, EDGESHRINK_PUSH_VIA="openssh")
    artifact = tmp_path / "m.gguf"
    from edgeshrink.testmodels import make_llama_gguf

    make_llama_gguf(artifact, size="nano", ftype="f32")
    dest = f"{rig.user}@{rig.host}:{rig.port}"
    refused = edgeshrink("push", str(artifact), "--target", dest, env=env)
    assert refused.returncode == 1 and "unknown host key" in refused.stderr
    first = edgeshrink(
        "push", str(artifact), "--target", dest, "--accept-new-host-key", "--json", env=env
    )
    assert first.returncode == 0, first.stderr
    doc = json.loads(first.stdout)
    [entry] = doc["files"]
    assert entry["via"] == "openssh" and not entry["skipped"]
    remote = Path(doc["remote"])
    assert remote.read_bytes() == artifact.read_bytes()
    again = edgeshrink("push", str(artifact), "--target", dest, env=env)
    assert again.returncode == 0 and "already there (same sha256)" in again.stdout
