"""Quality measured on the device: the reference the host makes, the agent's figures against
it with the device's runtime, eval/check/sweep on the local target (this machine as a
device: the same llama.cpp, so the device's figures must be the host's), and bad input."""

from __future__ import annotations

import ast
import io
import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from support import needs_llama_cpp, quantized, run_cli

from edgeshrink.agent import AGENT_PATH, QUALITY_MODULE_PATH
from edgeshrink.agent import device_quality as dq
from edgeshrink.bench import BenchParams, document_problems
from edgeshrink.device_eval import compare, evaluate_on_device
from edgeshrink.quality import EvalSettings
from edgeshrink.store import ResultStore
from edgeshrink.targets import local_target
from edgeshrink.util import shipped_text

np = pytest.importorskip("numpy")

# Long enough for 30-odd chunks of 128 stories260K tokens: more than any one context.
TEXT = shipped_text("eval-en.txt") + "\n" + shipped_text("calib-en.txt")
CTX = 128


@pytest.fixture(scope="module")
def stories_q4(stories: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return quantized(stories, tmp_path_factory.mktemp("devq"))


def agent(*args: str | Path, timeout: float = 120) -> tuple[int, dict]:
    done = subprocess.run([sys.executable, str(AGENT_PATH), *map(str, args)],
                          capture_output=True, text=True, timeout=timeout)  # fmt: skip
    return done.returncode, json.loads(done.stdout)


# --------------------------------------------------------------------------- the file


def write(header: dict, arrays: dict) -> bytes:
    handle = io.BytesIO()
    dq.write_reference(handle, header, arrays)
    return handle.getvalue()


def test_a_reference_reads_back_what_was_written(tmp_path: Path) -> None:
    arrays = {"a": np.arange(12, dtype=np.float16).reshape(3, 4),
              "b": np.array([1, 70000], dtype=np.uint32), "c": np.zeros((0, 3), dtype=np.int64)}  # fmt: skip
    path = tmp_path / "r.esref"
    path.write_bytes(write({"kind": "outputs", "n": 1}, arrays))
    header, back = dq.read_reference(np, str(path))
    assert header["schema"] == dq.REFERENCE_SCHEMA and header["n"] == 1
    for name, array in arrays.items():
        assert back[name].dtype == array.dtype and np.array_equal(back[name], array)


def _header_bytes(header: dict) -> bytes:
    text = json.dumps(header).encode()
    return dq.MAGIC + struct.pack("<I", len(text)) + text


GOOD = {"schema": dq.REFERENCE_SCHEMA, "kind": "outputs"}


@pytest.mark.parametrize(
    ("data", "said"),
    [
        (b"GGUF" + b"\0" * 20, "not an edgeshrink reference"),
        (dq.MAGIC + struct.pack("<I", 1 << 31), "the header claims"),
        (dq.MAGIC + struct.pack("<I", 5) + b"{nope", "not JSON"),
        (_header_bytes({**GOOD, "schema": "edgeshrink.reference/9", "arrays": {}}), "schema"),
        (_header_bytes({**GOOD, "kind": "weights", "arrays": {}}), "kind"),
        (_header_bytes({**GOOD, "arrays": {"x": {"dtype": "<f2", "shape": [1 << 40, 1 << 20],
                                                 "offset": 0}}}), "runs past the file"),
        (_header_bytes({**GOOD, "arrays": {"x": {"dtype": "<f2", "shape": [2], "offset": -4}}}),
         "bad shape or offset"),
        (_header_bytes({**GOOD, "arrays": {"x": {"dtype": "|O", "shape": [2], "offset": 0}}}),
         "unknown dtype"),
        (_header_bytes({**GOOD, "arrays": {"x": {"dtype": "<f4", "shape": [True], "offset": 0}}}),
         "bad shape or offset"),
        (write({"kind": "outputs"}, {"x": np.zeros(100, np.float32)})[:-8], "runs past the file"),
    ],
    ids=["magic", "huge-header", "json", "schema", "kind", "huge-array", "offset", "dtype",
         "bool-dim", "truncated"],
)  # fmt: skip
def test_a_hostile_reference_is_refused_before_anything_is_allocated(
    tmp_path: Path, data: bytes, said: str
) -> None:
    path = tmp_path / "bad.esref"
    path.write_bytes(data)
    with pytest.raises(dq.ReferenceError) as err:
        dq.read_reference(np, str(path))
    assert err.value.kind == "reference_invalid" and said in err.value.message


def test_device_code_is_python39_and_stdlib_only_at_import() -> None:
    tree = ast.parse(QUALITY_MODULE_PATH.read_text(encoding="utf-8"), feature_version=(3, 9))
    top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    names = [a.name.split(".")[0] for n in top if isinstance(n, ast.Import) for a in n.names]
    names += [(n.module or "").split(".")[0] for n in top if isinstance(n, ast.ImportFrom)]
    assert [n for n in names if n not in sys.stdlib_module_names and n != "__future__"] == []


def test_the_top_k_entries_start_with_the_top_token_and_samples_come_from_the_rest() -> None:
    rng = np.random.default_rng(1)
    logits = rng.standard_normal((64, 300))
    logits[:, 7] = logits[:, 9] = 9.0  # a tie: argmax picks 7, and so must the reference
    lp = dq.log_softmax(np, logits).astype(np.float16)
    rows = dq.llm_reference_rows(np, lp, np.zeros(64, np.int64), np.random.default_rng(0), 8, 16)
    assert (rows["top_ids"][:, 0] == lp.astype(np.float64).argmax(axis=1)).all()
    assert not np.isin(rows["sample_ids"][0], rows["top_ids"][0]).any()
    tail = np.exp(lp.astype(np.float64)).sum(axis=1) - np.exp(
        rows["top_lp"].astype(np.float64)
    ).sum(axis=1)
    assert np.allclose(rows["tail_mass"], tail, rtol=1e-3)  # fmt: skip


# --------------------------------------------------------------------------- on the local device


@needs_llama_cpp
def test_the_devices_figures_are_the_hosts_and_are_stored(
    stories: Path, stories_q4: Path, tmp_path: Path
) -> None:
    db = tmp_path / "r.db"
    result = evaluate_on_device(
        stories, stories_q4, local_target(), settings=EvalSettings(text=TEXT, n_ctx=CTX), db=db
    )
    device, host = result.quality, result.host
    assert host is not None and not result.host_cached
    # The text is longer than one context: cut into chunks, on the device as on the host.
    assert device["n_chunks"] == host["n_chunks"] > 20 and device["n_ctx"] == CTX
    assert device["n_scored"] == host["n_scored"]
    for exact in ("ppl", "ppl_base", "same_top", "rms_dp"):
        assert device[exact]["value"] == pytest.approx(host[exact]["value"], rel=1e-6), exact
    # The KLD from the top 32 and samples of the rest: within a percent, and the top 32 +
    # rest alone is a lower bound of it.
    assert device["kld_mean"]["value"] == pytest.approx(host["kld_mean"]["value"], rel=0.01)
    assert device["kld_topk_rest"] <= host["kld_mean"]["value"]
    assert result.drift is not None and not result.drift.flagged
    with ResultStore(db) as store:
        rows = store.query("SELECT method, target, result_id FROM quality ORDER BY id")
        assert [(r["method"], r["target"]) for r in rows] == [("llm-kld/1", None),
                                                              ("llm-kld/1@device", "local")]  # fmt: skip
        stored = store.get_document(rows[1]["result_id"])
    assert stored["quality"]["kld_mean"] == device["kld_mean"]
    assert stored["llm"] is None  # a quality run measures no speed
    again = evaluate_on_device(
        stories, stories_q4, local_target(), settings=EvalSettings(text=TEXT, n_ctx=CTX), db=db
    )
    assert again.host_cached and again.reference == result.reference


@needs_llama_cpp
def test_the_agents_quality_section_is_the_schema_the_host_checks(
    stories: Path, stories_q4: Path
) -> None:
    reference = evaluate_reference(stories)
    code, doc = agent("eval", "--model", stories_q4, "--reference", reference)
    assert code == 0, doc["error"]
    assert set(doc["quality"]) == set(dq.LLM_QUALITY_FIELDS) | {"reference"}
    assert document_problems(doc) == []
    doc["quality"]["kld_mean"]["value"] = "small"
    doc["quality"]["n_chunks"] = 2.5
    assert document_problems(doc) == ["quality.n_chunks is 2.5, not a whole number",
                                      "quality.kld_mean.value is 'small', not a finite number"]  # fmt: skip
    code, bench = agent("bench", "--model", stories_q4, "--reference", reference,
                        "--prompt-tokens", "16", "--gen-tokens", "4", "--reps", "1")  # fmt: skip
    assert code == 0 and bench["llm"]["tg_tok_s"]["mean"] > 0
    assert bench["quality"]["ppl"] == doc["quality"]["ppl"]


def evaluate_reference(base: Path, n_ctx: int = CTX) -> Path:
    from edgeshrink.formats.gguf.reference import make_llm_reference

    return make_llm_reference(base, text=TEXT, n_ctx=n_ctx)


@needs_llama_cpp
def test_a_reference_for_another_vocabulary_is_refused_on_the_device(
    stories: Path, tiny_f16: Path, tmp_path: Path
) -> None:
    code, doc = agent("eval", "--model", tiny_f16, "--reference", evaluate_reference(stories))
    assert code == 1 and doc["status"] == "error"
    assert doc["error"]["type"] == "reference_mismatch"
    assert "made for stories260K.gguf (512 tokens" in doc["error"]["message"]
    assert "1024 tokens" in doc["error"]["message"]
    # Through the command: one line and a hint, no traceback.
    run = run_cli("eval", str(tiny_f16), "--base", str(stories), "--target", "local",
                  "--ctx", str(CTX), "--db", str(tmp_path / "r.db"))  # fmt: skip
    assert run.returncode == 1 and "Traceback" not in run.stderr
    errors = [line for line in run.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "differently" in errors[0], run.stderr


@needs_llama_cpp
def test_an_outputs_reference_is_refused_for_a_text_model(stories: Path, tmp_path: Path) -> None:
    path = tmp_path / "outputs.esref"
    path.write_bytes(write({"kind": "outputs", "inputs": [], "outputs": [], "n_feeds": 0}, {}))
    code, doc = agent("eval", "--model", stories, "--reference", path)
    assert code == 1 and doc["error"]["type"] == "reference_mismatch"


@needs_llama_cpp
def test_eval_target_prints_host_and_device_side_by_side(
    stories: Path, stories_q4: Path, tmp_path: Path
) -> None:
    db = ["--db", str(tmp_path / "r.db")]
    text = tmp_path / "text.txt"
    text.write_text(TEXT)
    common = ["--text", str(text), "--ctx", str(CTX), *db]
    first = run_cli("eval", str(stories_q4), "--base", str(stories), "--target", "local",
                    "--max-kld", "0.5", *common)  # fmt: skip
    assert first.returncode == 0, first.stderr
    assert "HOST" in first.stdout and "LOCAL (ON THE DEVICE)" in first.stdout
    assert "drift of the device from the host: none beyond 2.0%" in first.stdout
    assert "budget (the device's figures): KLD ≤ 0.5: met" in first.stdout
    # The host's figures are read from the results database the second time.
    second = run_cli("eval", str(stories), str(stories_q4), "--target", "local", "--json", *common)
    assert second.returncode == 0, second.stderr
    doc = json.loads(second.stdout)
    assert doc["host_cached"] and doc["drift"]["flagged"] is False
    assert doc["device"]["ppl"] == doc["host"]["ppl"]
    assert doc["reference"]["bytes"] < 1 << 20 and doc["result_id"] and doc["quality_id"]
    failing = run_cli("eval", str(stories_q4), "--base", str(stories), "--target", "local",
                      "--max-kld", "0.0001", *common)  # fmt: skip
    assert failing.returncode == 1 and "loses too much quality on local" in failing.stderr


@needs_llama_cpp
def test_chunks_longer_than_the_trained_context_are_one_line(stories: Path, tmp_path: Path) -> None:
    run = run_cli("eval", str(stories), "--base", str(stories), "--target", "local",
                  "--ctx", "4096", "--db", str(tmp_path / "r.db"))  # fmt: skip
    assert run.returncode == 1 and "Traceback" not in run.stderr
    assert "trained on 2048 tokens of context" in run.stderr
    assert "hint: evaluate in chunks of 2048 tokens or fewer" in run.stderr


def test_eval_wants_a_base_and_a_candidate(tmp_path: Path) -> None:
    run = run_cli("eval", str(tmp_path / "a.gguf"))
    assert run.returncode == 2 and "give BASE CANDIDATE, or CANDIDATE --base BASE" in run.stderr


def test_a_drift_beyond_the_tolerance_is_flagged() -> None:
    def llm(ppl: float, kld: float, same: float, error: float = 0.0) -> dict:
        est = lambda v: {"value": v, "uncertainty": 0.0}  # noqa: E731
        return {"ppl": est(ppl), "kld_mean": est(kld), "same_top": est(same),
                "rms_dp": est(0.1), "kld_sampling_error": error}  # fmt: skip

    host = llm(10.0, 0.05, 0.9)
    assert not compare(host, llm(10.1, 0.0505, 0.895), 0.02).flagged
    drift = compare(host, llm(10.5, 0.05, 0.85), 0.02)
    assert [r.metric for r in drift.flagged] == ["ppl", "same_top"]
    assert drift.describe() == "ppl +5.00% (relative); same_top -5.00% (absolute) > 2.0%"
    # A KLD further off than its sampling error allows is a drift; within it, it is not.
    assert [r.metric for r in compare(host, llm(10.0, 0.06, 0.9), 0.02).flagged] == ["kld_mean"]
    assert not compare(host, llm(10.0, 0.06, 0.9, error=0.004), 0.02).flagged


# --------------------------------------------------------------------------- outputs


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    pytest.importorskip("onnxruntime")
    from edgeshrink.testmodels.onnx_models import make_digits_onnx, write_digits_npz

    folder = tmp_path_factory.mktemp("digits")
    base, _ = make_digits_onnx(folder / "digits.onnx")
    write_digits_npz(folder / "test.npz", split="test")
    shrunk = run_cli("shrink", str(base), "-p", "raspberry-pi-4-4gb", "-q", "int8-dynamic",
                     cwd=folder)  # fmt: skip
    assert shrunk.returncode == 0, shrunk.stderr
    return {"base": base, "candidate": folder / "digits-int8-dynamic.onnx",
            "inputs": folder / "test.npz"}  # fmt: skip


def test_onnx_agreement_and_accuracy_on_the_device_are_the_hosts(
    digits: dict[str, Path], tmp_path: Path
) -> None:
    settings = EvalSettings(inputs=digits["inputs"], labels="labels")
    result = evaluate_on_device(digits["base"], digits["candidate"], local_target(),
                                settings=settings, db=tmp_path / "r.db")  # fmt: skip
    device, host = result.quality, result.host
    assert host is not None and device["n_samples"] == host["n_samples"] == 360
    assert [m["name"] for m in device["metrics"]] == [m["name"] for m in host["metrics"]]
    for d, h in zip(device["metrics"], host["metrics"], strict=True):
        assert d["value"] == pytest.approx(h["value"], rel=1e-5, abs=1e-7), d["name"]
    accuracy = next(m for m in device["metrics"] if m["name"] == "accuracy")
    assert accuracy["reference"] > 0.9 and accuracy["output"] == "logits"
    assert set(device) >= set(dq.OUTPUTS_QUALITY_FIELDS) | {"metrics", "outputs", "reference"}
    assert document_problems(result.outcome.result.document) == []


def test_tflite_agreement_on_the_device_is_the_hosts(tmp_path: Path) -> None:
    pytest.importorskip("ai_edge_litert")
    from edgeshrink.testmodels.onnx_models import write_digits_npz
    from edgeshrink.testmodels.tflite_models import make_digits_tflite

    base, _ = make_digits_tflite(tmp_path / "digits.tflite")
    write_digits_npz(tmp_path / "test.npz", split="test")
    shrunk = run_cli("shrink", str(base), "-p", "raspberry-pi-4-4gb", "-q", "int8",
                     "--calibration", str(tmp_path / "test.npz"), cwd=tmp_path)  # fmt: skip
    assert shrunk.returncode == 0, shrunk.stderr
    run = run_cli("eval", str(tmp_path / "digits-int8.tflite"), "--base", str(base), "--inputs",
                  str(tmp_path / "test.npz"), "--labels", "labels", "--target", "local", "--json",
                  "--db", str(tmp_path / "r.db"))  # fmt: skip
    assert run.returncode == 0, run.stderr
    doc = json.loads(run.stdout)
    host = {(m["name"], m["output"]): m["value"] for m in doc["host"]["metrics"]}
    for m in doc["device"]["metrics"]:
        assert m["value"] == pytest.approx(host[(m["name"], m["output"])], rel=1e-5, abs=1e-6)
    assert not doc["drift"]["flagged"]


# --------------------------------------------------------------------------- check and sweep


@needs_llama_cpp
def test_check_judges_the_quality_the_device_measured(
    stories: Path, stories_q4: Path, tmp_path: Path
) -> None:
    text = tmp_path / "text.txt"
    text.write_text(TEXT)
    run = run_cli("check", str(stories_q4), "--profile", "raspberry-pi-5-8gb", "--base",
                  str(stories), "--text", str(text), "--eval-ctx", str(CTX), "--max-kld", "0.5",
                  "--reps", "1", "--prompt-tokens", "16", "--gen-tokens", "4", "--json",
                  "--db", str(tmp_path / "r.db"))  # fmt: skip
    doc = json.loads(run.stdout)
    quality = next(i for i in doc["items"] if i["name"] == "quality")
    assert quality["status"] == "pass" and "measured on local, llama.cpp" in quality["detail"]
    with ResultStore(tmp_path / "r.db") as store:
        rows = store.query("SELECT target, result_id FROM quality")
    assert [(r["target"], r["result_id"]) for r in rows] == [("local", doc["result_id"])]


@needs_llama_cpp
def test_sweep_on_a_target_judges_candidates_by_the_devices_quality(
    stories: Path, tmp_path: Path
) -> None:
    from edgeshrink.profiles import get_profile
    from edgeshrink.sweep import QualityBudget, sweep_gguf

    kwargs = dict(budget=QualityBudget(max_kld=0.5), ladder=("Q8_0", "Q4_0"), eval_ctx=CTX,
                  text=TEXT, output_dir=tmp_path, target=local_target("raspberry-pi-5-8gb"),
                  params=BenchParams(prompt_tokens=16, gen_tokens=4, reps=1),
                  db=tmp_path / "r.db")  # fmt: skip
    first = sweep_gguf(stories, get_profile("raspberry-pi-5-8gb"), **kwargs)
    assert "measured on local" in first.quality_source
    for c in first.candidates:
        assert c.quality_on == "local" and c.host_quality is not None
        assert c.quality["kld_mean"]["value"] == pytest.approx(
            c.host_quality["kld_mean"]["value"], rel=0.01
        )
    again = sweep_gguf(stories, get_profile("raspberry-pi-5-8gb"), **kwargs)
    assert all(c.measured_reused and c.quality_on == "local" for c in again.candidates)
    assert [c.quality for c in again.candidates] == [c.quality for c in first.candidates]
