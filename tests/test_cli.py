"""The `edgeshrink` command as a user runs it: real processes, real files, real llama.cpp."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import click
import pytest
from support import needs_llama_cpp, run_cli, small_disk

from edgeshrink.cli.main import cli


def all_commands(group: click.Group, prefix: str = "") -> list[tuple[str, click.Command]]:
    found = []
    for name, command in group.commands.items():
        found.append((f"{prefix}{name}", command))
        if isinstance(command, click.Group):
            found.extend(all_commands(command, f"{prefix}{name} "))
    return found


def test_every_command_and_option_has_help_text() -> None:
    commands = all_commands(cli)
    assert {"demo", "deploy", "shrink", "plan", "inspect", "bench", "results", "profiles list"} <= {
        n for n, _ in commands
    }
    for name, command in commands:
        assert (command.help or "").strip(), f"`edgeshrink {name}` has no help text"
        for param in command.params:
            if isinstance(param, click.Option):
                assert (param.help or "").strip(), (
                    f"`edgeshrink {name}` option {param.opts} has no help"
                )


def test_reporting_commands_have_json() -> None:
    for name, command in all_commands(cli):
        if name in {
            "demo",
            "deploy",
            "shrink",
            "plan",
            "inspect",
            "bench",
            "results",
            "profiles list",
            "profiles show",
            "targets list",
            "targets show",
            "quant-types",
        }:
            assert any("--json" in p.opts for p in command.params if isinstance(p, click.Option)), (
                name
            )


def test_help_is_fast_and_imports_no_runtime() -> None:
    code = (
        "import sys; from edgeshrink.cli.main import cli\n"
        "try:\n    cli.main(['--help'], standalone_mode=False)\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('llama_cpp', 'onnxruntime', 'numpy', 'gguf', 'paramiko', 'tflite_runtime', 'psycopg') if m in sys.modules]\n"
        "print('HEAVY', heavy)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert "HEAVY []" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["inspect", "/nonexistent/model.gguf"], "no such file"),
        (
            ["plan", "{model}", "--profile", "raspberry-pi-6"],
            "unknown hardware profile 'raspberry-pi-6'",
        ),
        (
            ["shrink", "{model}", "--profile", "raspberry-pi-5-8gb", "--quant", "Q4_X"],
            "unknown GGUF quantization type",
        ),
        (["shrink", "{text}", "--profile", "raspberry-pi-5-8gb"], "not a GGUF file"),
        (["shrink", "{truncated}", "--profile", "raspberry-pi-5-8gb"], "truncated"),
        (["bench", "{model}", "--target", "nosuchdevice"], "unknown target 'nosuchdevice'"),
        (["plan", "{notmodel}", "--profile", "raspberry-pi-5-8gb"], "not a model format"),
        (["deploy", "{model}", "--target", "local"], "has no hardware profile"),
        (
            ["plan", "{model}", "--profile", "raspberry-pi-zero-2w", "--ctx", "1000000"],
            "does not fit raspberry-pi-zero-2w",
        ),
        (
            ["deploy", "{model}", "--profile", "raspberry-pi-zero-2w", "--ctx", "1000000"],
            "does not fit raspberry-pi-zero-2w",
        ),
    ],
)
def test_bad_input_is_one_line_and_a_hint(
    tmp_path: Path, tiny_f16: Path, args: list[str], message: str
) -> None:
    text = tmp_path / "fake.gguf"
    text.write_text("definitely not a model\n")
    notmodel = tmp_path / "notes.txt"
    notmodel.write_text("hello")
    truncated = tmp_path / "cut.gguf"
    truncated.write_bytes(tiny_f16.read_bytes()[:200_000])
    subs = {
        "{model}": str(tiny_f16),
        "{text}": str(text),
        "{truncated}": str(truncated),
        "{notmodel}": str(notmodel),
    }
    result = run_cli(*[subs.get(a, a) for a in args], cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith("error: ") and message in lines[0], result.stderr
    assert len(lines) == 2 and lines[1].startswith("hint: "), result.stderr
    assert "Traceback" not in result.stderr
    # nothing half-written was left in the working directory
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cut.gguf", "fake.gguf", "notes.txt"]


@needs_llama_cpp
@pytest.mark.parametrize(
    ("model", "message"),
    [
        # llama.cpp's quantizer only says "iostream error" when its disk fills up.
        ("gguf", "the disk is full"),
        # The HF converter preallocates its output: it fails before any data moves.
        ("hf", "not enough disk space"),
    ],
)
def test_a_full_disk_is_one_line_and_a_hint(
    tmp_path: Path, tiny_f16: Path, model: str, message: str
) -> None:
    """The user reads that the disk is full, and nothing half-written stays behind.
    So does the results database."""
    if model == "hf":
        pytest.importorskip("tokenizers")
        from edgeshrink.testmodels.hf_checkpoints import make_hf_checkpoint

        source = make_hf_checkpoint(tmp_path / "TinyLlama", "llama", "bf16").path
    else:
        source = tiny_f16
    with small_disk(tmp_path / "small-disk") as disk:
        result = run_cli(
            "shrink", str(source), "-p", "raspberry-pi-5-8gb", "-q", "Q8_0",
            "-o", str(disk / "tiny-q8_0.gguf"),
        )  # fmt: skip
        assert result.returncode == 1
        lines = result.stderr.strip().splitlines()
        assert message in lines[-2] and lines[-2].startswith("error: "), result.stderr
        assert lines[-1].startswith("hint: ") and "Traceback" not in result.stderr
        assert list(disk.iterdir()) == []
        db = run_cli("results", "--db", str(disk / "sub" / "results.db"))
        assert db.returncode == 1 and "disk is full" in db.stderr and "Traceback" not in db.stderr


def test_usage_errors_exit_2() -> None:
    result = run_cli("shrink")
    assert result.returncode == 2
    assert "Missing argument" in result.stderr


def test_debug_env_shows_the_traceback(tmp_path: Path) -> None:
    result = run_cli("inspect", str(tmp_path / "absent.gguf"), env={"EDGESHRINK_DEBUG": "1"})
    assert result.returncode == 1
    assert "Traceback" in result.stderr and "ModelFileError" in result.stderr


def test_profiles_list_and_show_json() -> None:
    listed = json.loads(run_cli("profiles", "list", "--json").stdout)
    ids = {p["id"] for p in listed}
    assert {
        "raspberry-pi-zero-2w",
        "raspberry-pi-4-4gb",
        "raspberry-pi-5-8gb",
        "jetson-orin-nano-8gb",
        "imx8mp",
        "pixel-8",
    } <= ids
    assert len(ids) >= 12
    shown = json.loads(run_cli("profiles", "show", "raspberry-pi-5-8gb", "--json").stdout)
    assert shown["arch"] == "aarch64" and shown["budget_mb"] > 0 and shown["sources"]
    text = run_cli("profiles", "show", "raspberry-pi-zero-2w").stdout
    assert "sources:" in text and "budget" in text


def test_user_profiles_dir_adds_a_device(tmp_path: Path) -> None:
    import tomllib

    src = Path(__file__).resolve().parents[1] / "hardware-profiles" / "raspberry-pi-5-8gb.toml"
    text = src.read_text().replace('id = "raspberry-pi-5-8gb"', 'id = "my-board"')
    assert tomllib.loads(text)["id"] == "my-board"
    (tmp_path / "my-board.toml").write_text(text)
    listed = json.loads(
        run_cli("--profiles-dir", str(tmp_path), "profiles", "list", "--json").stdout
    )
    assert "my-board" in {p["id"] for p in listed}


def test_inspect_and_plan_json(tiny_f16: Path) -> None:
    info = json.loads(run_cli("inspect", str(tiny_f16), "--json", "--ctx", "1024").stdout)
    assert info["architecture"] == "llama" and info["memory_estimate"]["context"] == 1024
    planned = json.loads(
        run_cli("plan", str(tiny_f16), "--profile", "raspberry-pi-zero-2w", "--json").stdout
    )
    assert planned["quant"] in [c["quant"] for c in planned["candidates"]]
    assert planned["chosen"]["fits"] and planned["reason"]


def test_shrink_dry_run_writes_nothing(tiny_f16: Path, tmp_path: Path) -> None:
    result = run_cli(
        "shrink", str(tiny_f16), "--profile", "raspberry-pi-4-4gb", "--dry-run", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert "would write" in result.stdout
    assert list(tmp_path.iterdir()) == []


@needs_llama_cpp
def test_deploy_on_local_end_to_end(stories: Path, tmp_path: Path) -> None:
    """The foundation's promise: plan, llama.cpp quantize, push, agent in its own process, store."""
    args = ["deploy", str(stories), "--profile", "raspberry-pi-5-8gb", "--target", "local",
            "--quant", "Q8_0", "--prompt-tokens", "64", "--gen-tokens", "16", "--reps", "2"]  # fmt: skip
    result = run_cli(*args, "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    artifact = Path(doc["artifact"])
    assert artifact.parent == tmp_path and artifact.name == "stories260K-q8_0.gguf"
    bench = doc["result"]
    assert bench["schema"] == "edgeshrink.bench/1" and bench["status"] == "ok"
    assert bench["llm"]["pp_tok_s"]["mean"] > 0 and len(bench["llm"]["tg_tok_s"]["samples"]) == 2
    # the device got its own copy, content-addressed, in its own work dir
    remote = Path(doc["push"]["remote"])
    workdir = Path(os.environ["EDGESHRINK_LOCAL_WORKDIR"])
    assert workdir in remote.parents and remote.read_bytes() == artifact.read_bytes()
    assert doc["result_id"] >= 1

    listed = json.loads(run_cli("results", "--json").stdout)
    assert listed[0]["id"] == doc["result_id"] and listed[0]["quant"] == "Q8_0"
    assert listed[0]["tg_tok_s"] == pytest.approx(bench["llm"]["tg_tok_s"]["mean"])
    stored = json.loads(run_cli("results", "show", str(doc["result_id"])).stdout)
    assert stored["llm"] == bench["llm"]

    # a second deploy reuses the artifact and skips the push
    again = json.loads(run_cli(*args, "--json", cwd=tmp_path).stdout)
    assert again["reused_artifact"] and again["push"]["skipped"]

    text = run_cli(*args, cwd=tmp_path)
    assert text.returncode == 0
    for label in (
        "plan:",
        "artifact:",
        "peak RSS",
        "tok/s (pp64",
        "tok/s (tg16",
        "time to first token",
        "stored",
    ):
        assert label in text.stdout, text.stdout


def fake_python(tmp_path: Path, body: str) -> Path:
    """A 'device Python' that misbehaves in a real way (a real process, really killed)."""
    script = tmp_path / "python3"
    script.write_text("#!/bin/sh\n" + body + "\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return script


def target_file(tmp_path: Path, python: Path) -> Path:
    path = tmp_path / "dev.toml"
    path.write_text(
        f'name = "dev"\nkind = "local"\nprofile = "raspberry-pi-5-8gb"\npython = "{python}"\n'
        f'work_dir = "{tmp_path / "work"}"\n'
    )
    return path


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        # Not the OOM killer (its counter did not rise): an error, not `oom`.
        ("kill -9 $$", "error", "not by the kernel's out-of-memory killer"),
        ("echo 'Segmentation fault' >&2; exit 139", "error", "printed nothing on stdout"),
        ("echo 'SyntaxError: invalid syntax'; exit 1", "error", "not one JSON document"),
    ],
)
def test_a_dying_agent_is_a_clear_status_not_a_hang(
    tiny_f16: Path, tmp_path: Path, body: str, status: str, message: str
) -> None:
    target = target_file(tmp_path, fake_python(tmp_path, body))
    result = run_cli("bench", str(tiny_f16), "--target", str(target), "--json", "--reps", "1")
    assert result.returncode == 1
    doc = json.loads(result.stdout)
    assert doc["result"]["status"] == status
    assert message in doc["result"]["error"]["message"]
    assert (
        result.stderr.strip()
        .splitlines()[-2]
        .startswith("error: benchmark on dev ended with status")
    )
    stored = json.loads(run_cli("results", "--json").stdout)
    assert stored[0]["status"] == status


@needs_llama_cpp
def test_an_agent_that_runs_out_of_time_is_stopped_and_says_timeout(
    stories: Path, tmp_path: Path
) -> None:
    result = run_cli("bench", str(stories), "--json", "--reps", "1000", "--prompt-tokens", "1024",
                     "--gen-tokens", "512", "--timeout", "3")  # fmt: skip
    assert result.returncode == 1
    doc = json.loads(result.stdout)
    assert doc["result"]["status"] == "timeout"
    assert "status timeout" in result.stderr


@needs_llama_cpp
def test_demo_needs_nothing_but_the_install(tmp_path: Path) -> None:
    result = run_cli("demo", "--size", "tiny", "--reps", "1", "--prompt-tokens", "32", "--gen-tokens", "8",
                     "--json", cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["result"]["status"] == "ok"
    assert doc["plan"]["profile"] == "raspberry-pi-5-8gb"
    assert list(tmp_path.iterdir()) == []  # the demo keeps its files in the cache


def test_a_second_demo_says_what_it_reuses(tmp_path: Path) -> None:
    args = ("demo", "--size", "nano", "--reps", "1", "--prompt-tokens", "16", "--gen-tokens", "4")
    first = run_cli(*args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "· making a nano llama-architecture model" in first.stderr
    assert "· quantizing" in first.stderr
    second = run_cli(*args, cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert "making a" not in second.stderr and "· quantizing" not in second.stderr
    assert "· reusing the nano demo model" in second.stderr
