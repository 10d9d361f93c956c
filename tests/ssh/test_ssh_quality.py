"""Quality measured on the device through the normal SSH path: the reference pushed like an
artifact (content-addressed, verified), the agent's figures stored, and a device that runs
out of memory during the evaluation coming back as status oom, not a hang."""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest
from support import quantized

from edgeshrink.device_eval import evaluate_on_device
from edgeshrink.errors import AgentError
from edgeshrink.quality import EvalSettings
from edgeshrink.store import ResultStore
from edgeshrink.util import sha256_file, shipped_text

TEXT = shipped_text("eval-en.txt") + "\n" + shipped_text("calib-en.txt")


@pytest.fixture(scope="module")
def q4(model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return quantized(model, tmp_path_factory.mktemp("q4"))


def test_eval_on_an_ssh_device_pushes_the_reference_and_stores_the_result(
    rig, target, device_dir, model, q4, tmp_path, llama_cpp_here
):
    db = tmp_path / "r.db"
    settings = EvalSettings(text=TEXT, n_ctx=128)
    result = evaluate_on_device(model, q4, target, settings=settings, db=db)
    assert result.outcome.result.ok and result.drift is not None and not result.drift.flagged
    assert result.quality["ppl"]["value"] == pytest.approx(result.host["ppl"]["value"], rel=1e-6)
    sha = sha256_file(result.reference)
    pushed = device_dir / "models" / sha / result.reference.name
    assert pushed.is_file() and sha256_file(pushed) == sha  # content-addressed, verified
    assert (device_dir / "agent" / "device_quality.py").is_file()
    with ResultStore(db) as store:
        row = store.query("SELECT target, result_id FROM quality WHERE target IS NOT NULL")[0]
        document = store.get_document(row["result_id"])
    assert row["target"] == target.name and document["quality"]["reference"]["sha256"] == sha
    again = evaluate_on_device(model, q4, target, settings=settings, db=db)
    assert again.host_cached and again.outcome.push.skipped


def test_a_device_out_of_memory_during_the_eval_is_status_oom(
    rig_module, tmp_path, monkeypatch, llama_cpp_here
):
    problem = rig_module.memory_cgroup_problem()
    if problem:
        pytest.skip(f"no cgroup v1 memory limit here: {problem}")
    from edgeshrink.testmodels import llama_gguf

    # A tiny model with a large vocabulary: it loads in ~80 MB, but scoring chunks of 1024
    # tokens holds ~390 MB of logits, more than the 200 MB device has.
    monkeypatch.setitem(llama_gguf.SIZES, "wide", llama_gguf.LlamaPreset(
        "wide", n_embd=64, n_layer=1, n_head=4, n_head_kv=2, n_ff=128, n_vocab=65536))  # fmt: skip
    wide = llama_gguf.make_llama_gguf(tmp_path / "wide-f16.gguf", size="wide", ftype="f16")
    rng = random.Random(0)
    text = " ".join("".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9)))
                    for _ in range(3000))  # fmt: skip
    settings = EvalSettings(text=text, n_ctx=1024, max_chunks=2)
    with rig_module.sshd_rig(tmp_path / "small-device", memory_limit_mb=200) as small:
        target = small.target(profile="raspberry-pi-5-8gb")
        start = time.monotonic()
        with pytest.raises(AgentError) as err:
            evaluate_on_device(wide, wide, target, settings=settings, with_host=False,
                               db=tmp_path / "r.db", timeout_s=300)  # fmt: skip
        assert time.monotonic() - start < 240  # came back, did not hang
    assert "ended with status oom" in str(err.value)
    with ResultStore(tmp_path / "r.db") as store:
        stored = store.list_results()
    assert [r.status for r in stored] == ["oom"]
