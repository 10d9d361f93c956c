"""`edgeshrink push`: the push stage on its own, through the real CLI and the local target
(the SSH target is tested in tests/ssh/test_ssh_cli.py)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from support import run_cli

from edgeshrink.testmodels import make_llama_gguf
from edgeshrink.util import sha256_file


@pytest.fixture(scope="module")
def nano(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_llama_gguf(tmp_path_factory.mktemp("push") / "nano.gguf", size="nano", ftype="f32")


def test_push_puts_the_artifact_where_bench_runs_it_and_skips_it_next_time(nano: Path) -> None:
    first = run_cli("push", str(nano), "--json")
    assert first.returncode == 0, first.stderr
    doc = json.loads(first.stdout)
    sha = sha256_file(nano)
    device = Path(os.environ["EDGESHRINK_LOCAL_WORKDIR"])
    assert doc["sha256"] == sha and doc["target"] == "local"
    assert Path(doc["remote"]) == device / "models" / sha / "nano.gguf"
    assert sha256_file(doc["remote"]) == sha
    [entry] = doc["files"]
    assert not entry["skipped"] and entry["bytes_sent"] == nano.stat().st_size

    again = run_cli("push", str(nano))
    assert again.returncode == 0, again.stderr
    assert "already there (same sha256)" in again.stdout and sha in again.stdout
    bench = run_cli("bench", str(nano), "--reps", "1", "--prompt-tokens", "8", "--gen-tokens", "2",
                    "--no-store", "--json")  # fmt: skip
    assert json.loads(bench.stdout)["push"]["skipped"]  # bench finds what push put there


def test_push_of_a_missing_file_is_one_error_line(tmp_path: Path) -> None:
    run = run_cli("push", str(tmp_path / "nope.gguf"))
    assert run.returncode == 1
    assert "Traceback" not in run.stderr and run.stderr.startswith("error: ")
    assert "hint: " in run.stderr


def test_push_of_an_unknown_target_names_the_targets(nano: Path) -> None:
    run = run_cli("push", str(nano), "--target", "no-such-board")
    assert run.returncode == 1 and "Traceback" not in run.stderr
    assert "no-such-board" in run.stderr and "targets list" in run.stderr


def test_push_carries_an_onnx_models_external_data(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    from edgeshrink.testmodels.onnx_models import make_mlp_onnx

    model = make_mlp_onnx(tmp_path / "ext" / "mlp-ext.onnx", external_data=True)
    data_files = [p for p in model.parent.iterdir() if p != model]
    run = run_cli("push", str(model), "--json")
    assert run.returncode == 0, run.stderr
    doc = json.loads(run.stdout)
    assert len(doc["files"]) == 1 + len(data_files)
    remote = Path(doc["remote"])
    for data in data_files:
        assert (remote.parent / data.name).read_bytes() == data.read_bytes()
