"""`edgeshrink bench` through the real CLI, the local target and the real agent: it never
loses a measurement to a bad database, and it shows what it was warned about."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from support import needs_llama_cpp, run_cli

from edgeshrink.testmodels import make_llama_gguf

pytestmark = needs_llama_cpp

QUICK = ("--reps", "1", "--prompt-tokens", "16", "--gen-tokens", "4")


@pytest.fixture(scope="module")
def nano(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A nano llama GGUF trained (so its header says) at a 64-token context."""
    return make_llama_gguf(
        tmp_path_factory.mktemp("bench-cli") / "nano.gguf", size="nano", ftype="f32", n_ctx=64
    )


def test_a_bad_database_is_refused_before_anything_is_measured(
    nano: Path, tmp_path: Path, isolated_user_dirs: Path
) -> None:
    bad = tmp_path / "random.db"
    bad.write_bytes(os.urandom(8192))
    run = run_cli("bench", str(nano), "--db", str(bad), *QUICK)
    assert run.returncode == 1, run.stderr
    assert "Traceback" not in run.stderr
    assert "results database" in run.stderr and str(bad) in run.stderr
    assert "benchmarking on" not in run.stderr  # nothing was measured, so nothing was lost
    device = Path(os.environ["EDGESHRINK_LOCAL_WORKDIR"])
    assert not list(device.glob("models/*/*.gguf")), "the model was pushed before the check"
    assert bad.read_bytes() != b""  # and the user's file is left as it was


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_timeout_that_is_not_a_number_is_a_usage_error(nano: Path, value: str) -> None:
    run = run_cli("bench", str(nano), "--timeout", value, *QUICK)
    assert run.returncode == 2, run.stderr
    assert "--timeout" in run.stderr and "Traceback" not in run.stderr


def test_the_agents_warnings_and_the_hosts_are_printed_in_text_mode(nano: Path) -> None:
    threads = str((os.cpu_count() or 1) + 2)
    args = ("bench", str(nano), "--threads", threads, "--reps", "1",
            "--prompt-tokens", "60", "--gen-tokens", "16", "--no-store")  # fmt: skip
    run = run_cli(*args)
    assert run.returncode == 0, run.stderr
    warnings = [line for line in run.stderr.splitlines() if line.startswith("warning: ")]
    assert any(f"--threads {threads} is more than" in w for w in warnings), run.stderr
    assert any(
        "76 tokens is beyond the context nano.gguf was trained at (64" in w for w in warnings
    )
    as_json = run_cli(*args, "--json")
    doc = json.loads(as_json.stdout)
    assert any("trained at (64" in w for w in doc["warnings"])
    assert any("usable cores" in w for w in doc["warnings"])


def _device_printing(tmp_path: Path, document: str) -> Path:
    """A target whose 'Python' is a real program that prints ``document`` as the agent's."""
    printed = tmp_path / "document.json"
    printed.write_text(document)
    python = tmp_path / "python3"
    python.write_text(f"#!/bin/sh\ncat '{printed}'\n")
    python.chmod(0o755)
    target = tmp_path / "dev.toml"
    target.write_text(
        f'name = "dev"\nkind = "local"\npython = "{python}"\nwork_dir = "{tmp_path / "work"}"\n'
    )
    return target


HEAD = '{"schema": "edgeshrink.bench/1", "status": "ok", '


@pytest.mark.parametrize(
    ("document", "said"),
    [
        (HEAD + '"llm": {"pp_tok_s": {"mean": "fast"}}}', "llm.pp_tok_s.mean is 'fast'"),
        (HEAD + '"memory": "lots"}', "memory is str, not an object"),
        (HEAD + '"device": {"cores": "two"}}', "device.cores is 'two'"),
        (HEAD + '"load_s": NaN}', "NaN is not a JSON number"),
        (HEAD + '"latency_ms": {"mean": Infinity}}', "Infinity is not a JSON number"),
        ('{"a": ' * 100_000 + "1" + "}" * 100_000, "nested too deeply"),
        ('{"schema": "edgeshrink.bench/1", "status": "splendid"}', "status is 'splendid'"),
    ],
    ids=["string-mean", "string-section", "string-cores", "nan", "infinity", "deep", "status"],
)
def test_a_malformed_agent_document_is_stored_as_an_error_with_what_was_wrong(
    nano: Path, tmp_path: Path, document: str, said: str
) -> None:
    target = _device_printing(tmp_path, document)
    run = run_cli("bench", str(nano), "--target", str(target), "--json", *QUICK)
    assert run.returncode == 1, run.stderr
    assert "Traceback" not in run.stderr and "internal error" not in run.stderr
    result = json.loads(run.stdout)
    assert result["result"]["status"] == "error"
    assert said in result["result"]["error"]["message"]
    stored = json.loads(run_cli("results", "--json").stdout)
    assert [r["status"] for r in stored] == ["error"]


def test_a_benchmark_shows_the_agents_progress_as_it_runs(nano: Path) -> None:
    """Before: `bench` said nothing between "benchmarking on" and the result (~26 s at
    its defaults on a small board); now each repetition is shown as the device ends it."""
    run = run_cli("bench", str(nano), "--reps", "2", "--prompt-tokens", "16", "--gen-tokens", "4",
                  "--no-store")  # fmt: skip
    assert run.returncode == 0, run.stderr
    progress = [line.strip() for line in run.stderr.splitlines()]
    assert "· warm-up 1/1: pp16" in progress and "· warm-up 1/1: tg4" in progress
    reps = [line for line in progress if line.startswith("· rep ")]
    assert [line.split(" tok/s")[0].split(":")[0] for line in reps] == [
        "· rep 1/2",
        "· rep 2/2",
    ] * 2
    assert all("tok/s" in line for line in reps) and "tg" in reps[-1], run.stderr
    assert not any(line.startswith("llama_") for line in progress)  # llama.cpp's chatter is not
    quiet = run_cli("bench", str(nano), *QUICK, "--no-store", "--json")
    assert quiet.returncode == 0 and "· rep" not in quiet.stderr
