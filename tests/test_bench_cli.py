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
