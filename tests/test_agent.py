"""The on-device agent, run as its own process on a real GGUF model with real llama.cpp."""

from __future__ import annotations

import ast
import glob
import json
import os
import platform
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from edgeshrink.agent import AGENT_PATH, AGENT_VERSION, SCHEMA

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO.parent / "shared" / "models" / "stories260K.gguf"
SMALL = ["--prompt-tokens", "64", "--gen-tokens", "16", "--reps", "2", "--threads", "1"]
TOP_KEYS = {
    "embedding",
    "quality",
    "output_check",
    "schema",
    "agent_version",
    "status",
    "error",
    "started_at",
    "duration_s",
    "params",
    "model",
    "device",
    "runtime",
    "load_s",
    "memory",
    "llm",
    "latency_ms",
    "throughput_per_s",
    "unmeasured",
    "warnings",
}
DEVICE_KEYS = {
    "hostname",
    "cpu",
    "board",
    "arch",
    "cores",
    "cpu_features",
    "ram_mb",
    "ram_available_mb",
    "os",
    "kernel",
    "python",
    "temps_c",
    "cpu_mhz",
    "throttled",
}


def one_document(stdout: str) -> dict:
    """The agent's stdout must be exactly one JSON document and nothing else."""
    document, end = json.JSONDecoder().raw_decode(stdout.lstrip())
    assert stdout.lstrip()[end:].strip() == "", f"extra output after the JSON: {stdout[end:]!r}"
    return document


def run_agent(*args: str | Path, timeout: float = 60) -> tuple[int, dict, str]:
    done = subprocess.run(
        [sys.executable, str(AGENT_PATH), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return done.returncode, one_document(done.stdout), done.stderr


@pytest.fixture(scope="module")
def real_model() -> Path:
    pytest.importorskip("llama_cpp")
    if not MODEL.exists():
        pytest.skip(f"{MODEL} not present")
    return MODEL


@pytest.fixture(scope="module")
def mmap_run(real_model: Path) -> tuple[int, dict, str]:
    return run_agent("bench", "--model", real_model, *SMALL)


@pytest.fixture(scope="module")
def no_mmap_run(real_model: Path) -> tuple[int, dict, str]:
    return run_agent("bench", "--model", real_model, *SMALL, "--no-mmap")


def test_bench_prints_one_ok_document(mmap_run: tuple[int, dict, str], real_model: Path) -> None:
    code, doc, stderr = mmap_run
    assert code == 0, stderr
    assert set(doc) == TOP_KEYS
    assert doc["schema"] == SCHEMA
    assert doc["agent_version"] == AGENT_VERSION
    assert doc["status"] == "ok"
    assert doc["error"] is None
    assert doc["started_at"].endswith("Z")
    assert doc["duration_s"] > 0
    assert doc["load_s"] > 0

    params = doc["params"]
    assert params["prompt_tokens"] == 64 and params["gen_tokens"] == 16 and params["reps"] == 2
    assert params["resolved"]["threads"] == 1
    assert params["resolved"]["flash_attn"] is True
    assert params["resolved"]["format"] == "gguf"
    assert params["resolved"]["n_ctx"] >= 64 + 16  # prompt + generation, padded by llama.cpp

    model = doc["model"]
    assert model["format"] == "gguf"
    assert model["size_bytes"] == real_model.stat().st_size
    assert model["n_params"] > 0 and model["n_vocab"] > 0
    assert "llama" in model["desc"]

    runtime = doc["runtime"]
    assert runtime["name"] == "llama.cpp" and runtime["binding"] == "llama-cpp-python"
    assert runtime["version"] and "CPU" in runtime["system_info"]

    llm = doc["llm"]
    assert (llm["n_prompt"], llm["n_gen"], llm["reps"]) == (64, 16, 2)
    for metric in ("pp_tok_s", "tg_tok_s", "ttft_ms"):
        stats = llm[metric]
        assert len(stats["samples"]) == 2
        assert all(sample > 0 for sample in stats["samples"])
        assert stats["mean"] > 0 and stats["stddev"] >= 0
    assert "rep 2/2" in stderr


def test_bench_memory_split_adds_up(mmap_run: tuple[int, dict, str]) -> None:
    memory = mmap_run[1]["memory"]
    assert memory["source"] == "proc"
    for key in ("peak_rss_mb", "rss_anon_mb", "rss_file_mb", "rss_after_load_mb"):
        assert memory[key] > 0, key
    assert memory["rss_anon_mb"] + memory["rss_file_mb"] <= memory["peak_rss_mb"] * 1.05
    assert memory["rss_after_load_mb"] <= memory["peak_rss_mb"]


def test_bench_reports_device_facts(mmap_run: tuple[int, dict, str]) -> None:
    doc = mmap_run[1]
    device = doc["device"]
    assert set(device) >= DEVICE_KEYS
    assert device["arch"] == platform.machine()
    assert device["cores"] == os.cpu_count()
    assert device["python"] == platform.python_version()
    assert device["hostname"] and device["cpu"] and device["os"] and device["kernel"]
    assert device["ram_mb"] > 0 and 0 < device["ram_available_mb"] <= device["ram_mb"]
    assert device["cpu_features"] == sorted(device["cpu_features"])
    assert set(device["temps_c"]) == {"before", "after"}
    assert set(device["cpu_mhz"]) == {"before", "after"}
    unmeasured = {item["what"] for item in doc["unmeasured"]}
    assert all(item["why"] for item in doc["unmeasured"])
    # A fact is either measured or says why not.
    if device["temps_c"]["before"] is None:
        assert "device.temps_c" in unmeasured
    if device["cpu_mhz"]["before"] is None:
        assert "device.cpu_mhz" in unmeasured


def test_no_mmap_moves_the_weights_from_file_to_anon_memory(
    mmap_run: tuple[int, dict, str], no_mmap_run: tuple[int, dict, str], real_model: Path
) -> None:
    code, doc, stderr = no_mmap_run
    assert code == 0, stderr
    assert doc["params"]["no_mmap"] is True
    model_mb = real_model.stat().st_size / 2**20
    mapped, read = mmap_run[1]["memory"], doc["memory"]
    assert mapped["rss_file_mb"] - read["rss_file_mb"] >= 0.5 * model_mb
    assert read["rss_anon_mb"] - mapped["rss_anon_mb"] >= 0.5 * model_mb
    share = lambda m: m["rss_file_mb"] / m["peak_rss_mb"]  # noqa: E731
    assert share(read) < share(mapped)


def test_missing_model_is_an_error_document(tmp_path: Path) -> None:
    code, doc, _ = run_agent("bench", "--model", tmp_path / "absent.gguf")
    assert code == 1
    assert set(doc) == TOP_KEYS
    assert doc["status"] == "error"
    assert doc["error"]["type"] == "model_missing"
    assert "absent.gguf" in doc["error"]["message"] and doc["error"]["hint"]
    assert doc["llm"] is None


def test_text_file_named_gguf_is_rejected(tmp_path: Path) -> None:
    fake = tmp_path / "x.gguf"
    fake.write_text("not a model at all\n")
    code, doc, _ = run_agent("bench", "--model", fake)
    assert code == 1
    assert doc["status"] == "error"
    assert doc["error"]["type"] == "model_invalid"
    assert "GGUF" in doc["error"]["message"]


def test_truncated_gguf_is_reported_as_truncated(real_model: Path, tmp_path: Path) -> None:
    cut = tmp_path / "cut.gguf"
    data = real_model.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    code, doc, _ = run_agent("bench", "--model", cut)
    assert code == 1
    assert doc["status"] == "error"
    assert doc["error"]["type"] == "model_truncated"
    assert doc["runtime"]["version"]


def test_unsupported_format_says_what_is_supported(tmp_path: Path) -> None:
    model = tmp_path / "net.mlmodel"
    model.write_bytes(b"\x08\x07")
    code, doc, _ = run_agent("bench", "--model", model, "--format", "coreml")
    assert code == 1
    assert doc["error"]["type"] == "unsupported_format"
    assert doc["error"]["hint"] == "supported formats: gguf, onnx, tflite"


def test_prompt_and_generation_must_fit_the_context() -> None:
    code, doc, _ = run_agent(
        "bench", "--model", MODEL, "--prompt-tokens", "500", "--gen-tokens", "20", "--n-ctx", "512"
    )
    assert code == 1
    assert doc["error"]["type"] == "bad_params"
    assert "520" in doc["error"]["hint"]


@pytest.mark.parametrize(
    "args",
    [
        ["bench", "--model", "m.gguf", "--no-such-option"],
        ["bench"],
        ["bench", "--model", "m.gguf", "--reps", "0"],
        ["bench", "--model", "m.gguf", "--flash-attn", "maybe"],
        [],
        ["--help"],
    ],
    ids=["unknown-option", "no-model", "zero-reps", "bad-choice", "no-command", "help"],
)
def test_bad_arguments_are_an_error_document_with_exit_2(args: list[str]) -> None:
    code, doc, _ = run_agent(*args)
    assert code == 2
    assert doc["schema"] == SCHEMA
    assert doc["status"] == "error"
    assert doc["error"]["type"] == "bad_arguments"
    assert doc["error"]["hint"].startswith("usage:")


def test_info_lists_device_and_runtimes() -> None:
    code, doc, stderr = run_agent("info")
    assert code == 0, stderr
    assert doc["schema"] == SCHEMA and doc["status"] == "ok"
    assert set(doc["device"]) >= DEVICE_KEYS
    llama = doc["runtimes"]["llama_cpp"]
    try:
        import llama_cpp
    except ImportError:
        assert llama["available"] is False and llama["why"]
    else:
        assert llama["available"] is True
        assert llama["version"] == llama_cpp.__version__
        assert "CPU" in llama["system_info"]
    assert doc["formats"]["gguf"]["runner"] is True
    assert doc["formats"]["gguf"]["runtime_available"] is llama["available"]


def test_sigterm_mid_run_reports_timeout_with_what_was_measured(real_model: Path) -> None:
    process = subprocess.Popen(
        [sys.executable, str(AGENT_PATH), "bench", "--model", str(real_model), *SMALL[:4]]
        + ["--reps", "1000000", "--threads", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    stderr_lines: list[str] = []

    def pump() -> None:
        for line in process.stderr:
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    deadline = time.monotonic() + 30
    try:
        while True:
            line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            stderr_lines.append(line)
            if re.search(r"rep 3/", line):
                break
        process.send_signal(signal.SIGTERM)
        stdout = process.stdout.read()
        code = process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    doc = one_document(stdout)
    assert code == 124
    assert doc["status"] == "timeout"
    assert doc["error"]["type"] == "timeout"
    # Stopped inside the prompt test: its repetitions are kept (the generation test,
    # which comes after it as in llama-bench, had not started).
    assert 3 <= len(doc["llm"]["pp_tok_s"]["samples"]) < 1000000
    assert len(doc["llm"]["ttft_ms"]["samples"]) == len(doc["llm"]["pp_tok_s"]["samples"])
    assert doc["memory"]["peak_rss_mb"] > 0


def test_deadline_stops_repetitions_but_stays_ok(real_model: Path) -> None:
    code, doc, stderr = run_agent(
        "bench", "--model", real_model, *SMALL[:4], "--reps", "1000000", "--deadline-s", "1.5"
    )
    assert code == 0, stderr
    assert doc["status"] == "ok"
    assert 1 <= doc["llm"]["reps"] < 1000000  # both tests ran: the deadline is shared
    assert len(doc["llm"]["tg_tok_s"]["samples"]) == doc["llm"]["reps"]
    # Far below a million repetitions; loose, because a shared 2-core machine is slow.
    assert doc["duration_s"] < 15
    assert any("deadline" in warning for warning in doc["warnings"])


def _module_level_imports(tree: ast.Module) -> list[str]:
    names: list[str] = []
    pending: list[ast.AST] = list(tree.body)
    while pending:
        node = pending.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            continue
        if isinstance(node, ast.Import):
            names += [alias.name.split(".")[0] for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names.append((node.module or "").split(".")[0])
        else:
            pending.extend(ast.iter_child_nodes(node))
    return names


def test_agent_is_python39_and_stdlib_only_at_import() -> None:
    source = AGENT_PATH.read_text(encoding="utf-8")
    tree = ast.parse(source, feature_version=(3, 9))
    imports = _module_level_imports(tree)
    assert "json" in imports
    outside = [name for name in imports if name not in sys.stdlib_module_names]
    assert outside == [], f"non-stdlib imports at module level: {outside}"


def test_agent_version_is_read_from_the_file_without_importing_it() -> None:
    source = AGENT_PATH.read_text(encoding="utf-8")
    assert f'AGENT_VERSION = "{AGENT_VERSION}"' in source
    assert f'SCHEMA = "{SCHEMA}"' in source
    assert re.fullmatch(r"\d+\.\d+\.\d+", AGENT_VERSION)
    assert "edgeshrink_agent" not in sys.modules


def _python39() -> str | None:
    """A real Python 3.9 interpreter, the oldest the agent supports, if this machine has one."""
    candidates = [
        shutil.which("python3.9"),
        *glob.glob(os.path.expanduser("~/.pyenv/versions/3.9*/bin/python3.9")),
    ]
    for candidate in filter(None, candidates):
        try:
            probe = subprocess.run(
                [candidate, "-c", "import sys; print(sys.version_info[:2])"],
                capture_output=True,
                text=True,
                timeout=20,
            )
        except (OSError, subprocess.SubprocessError):
            continue
        if probe.returncode == 0 and probe.stdout.strip() == "(3, 9)":
            return candidate
    return None


def test_agent_runs_on_python39(tmp_path: Path) -> None:
    python39 = _python39()
    if python39 is None:
        pytest.skip("no Python 3.9 interpreter on this machine")
    info = subprocess.run(
        [python39, str(AGENT_PATH), "info"], capture_output=True, text=True, timeout=60
    )
    assert info.returncode == 0, info.stderr
    doc = one_document(info.stdout)
    assert doc["status"] == "ok" and doc["device"]["python"].startswith("3.9.")
    missing = subprocess.run(
        [python39, str(AGENT_PATH), "bench", "--model", str(tmp_path / "absent.gguf")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert missing.returncode == 1
    assert one_document(missing.stdout)["error"]["type"] == "model_missing"


PI5_CPUINFO = (
    "".join(
        f"processor\t: {n}\nBogoMIPS\t: 108.00\n"
        "Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid"
        " asimdrdm lrcpc dcpop asimddp\n"
        "CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x4\n"
        "CPU part\t: 0xd0b\nCPU revision\t: 1\n\n"
        for n in range(4)
    )
    + "Revision\t: d04170\nSerial\t\t: 0123456789abcdef\nModel\t\t: Raspberry Pi 5 Model B Rev 1.0\n"
)


def _agent_module():
    """The agent loaded as a plain module (its main() only runs as a script)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("_edgeshrink_agent_under_test", AGENT_PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_arm_cpuinfo_names_the_cores() -> None:
    agent = _agent_module()
    blocks = agent.parse_cpuinfo(PI5_CPUINFO)
    assert agent.cpu_name_from_cpuinfo(blocks) == "4x Cortex-A76"
    features = agent.cpu_features_from_cpuinfo(blocks)
    assert "asimddp" in features and features == sorted(features)

    def core(part: str) -> str:
        return f"processor\t: 0\nCPU implementer\t: 0x41\nCPU part\t: {part}\n\n"

    phone = core("0xd05") * 4 + core("0xd41") * 3 + core("0xd44")
    assert (
        agent.cpu_name_from_cpuinfo(agent.parse_cpuinfo(phone))
        == "4x Cortex-A55 + 3x Cortex-A78 + 1x Cortex-X1"
    )
    old_kernel = "processor\t: 0\nmodel name\t: ARMv7 Processor rev 4 (v7l)\n" + core("0xd03")
    assert agent.cpu_name_from_cpuinfo(agent.parse_cpuinfo(old_kernel)) == "1x Cortex-A53"
    unknown = "processor\t: 0\nCPU implementer\t: 0x51\nCPU part\t: 0x805\n\n"
    assert agent.cpu_name_from_cpuinfo(agent.parse_cpuinfo(unknown)) == "1x Qualcomm part 0x805"


# --------------------------------------------------------------------------- ONNX runner

ONNX_FAST = ["--threads", "1", "--runs", "20", "--min-seconds", "0.2", "--warmup", "2"]


@pytest.fixture(scope="module")
def onnx_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("sklearn")
    from edgeshrink.testmodels.onnx_models import (
        make_convnet_onnx,
        make_digits_onnx,
        make_mlp_onnx,
        write_digits_npz,
    )

    out = tmp_path_factory.mktemp("agent-onnx")
    digits, _ = make_digits_onnx(out / "digits.onnx")
    return {
        "mlp": make_mlp_onnx(out / "mlp.onnx"),
        "conv": make_convnet_onnx(out / "conv.onnx"),
        "digits": digits,
        "digits_test": write_digits_npz(out / "digits-test.npz", split="test"),
    }


@pytest.fixture(scope="module")
def onnx_run(onnx_models: dict[str, Path]) -> tuple[int, dict, str]:
    return run_agent("bench", "--model", onnx_models["mlp"], *ONNX_FAST)


def test_onnx_bench_prints_latency_document(onnx_run: tuple[int, dict, str]) -> None:
    import onnxruntime

    code, doc, stderr = onnx_run
    assert code == 0, stderr
    assert set(doc) == TOP_KEYS
    assert doc["status"] == "ok" and doc["llm"] is None and doc["load_s"] > 0
    latency = doc["latency_ms"]
    assert set(latency) == {"mean", "stddev", "min", "p50", "p90", "p99", "max", "count"}
    assert latency["count"] >= 20
    assert (
        0 < latency["min"] <= latency["p50"] <= latency["p90"] <= latency["p99"] <= latency["max"]
    )
    assert latency["min"] <= latency["mean"] <= latency["max"] and latency["stddev"] >= 0
    # throughput is runs per second of measured time: 1000 / mean latency
    assert doc["throughput_per_s"] == pytest.approx(1000.0 / latency["mean"], rel=1e-3)
    assert doc["duration_s"] >= 0.2
    runtime = doc["runtime"]
    assert runtime["name"] == "onnxruntime" and runtime["version"] == onnxruntime.__version__
    assert runtime["providers"] == ["CPUExecutionProvider"]
    options = runtime["session_options"]
    assert options["intra_op_num_threads"] == 1 and options["inter_op_num_threads"] == 1
    assert options["graph_optimization_level"] == "ORT_ENABLE_ALL"
    params = doc["params"]
    assert (params["runs"], params["min_seconds"], params["inputs"]) == (20, 0.2, None)
    assert "prompt_tokens" not in params and "n_ctx" not in params["resolved"]
    resolved = params["resolved"]
    assert resolved["format"] == "onnx" and resolved["execution_provider"] == "cpu"
    assert resolved["input_source"] == "random"
    assert resolved["inputs"] == [
        {"name": "input", "declared": ["batch", 64], "shape": [1, 64], "dtype": "float32"}
    ]
    assert any("symbolic dimension(s) batch set to 1" in w for w in doc["warnings"])
    model = doc["model"]
    assert model["format"] == "onnx" and model["inputs"][0]["shape"] == ["batch", 64]
    assert model["outputs"][0]["name"] == "logits"
    memory = doc["memory"]
    assert memory["source"] == "proc" and memory["peak_rss_mb"] > memory["rss_after_load_mb"] > 0
    assert memory["rss_anon_mb"] + memory["rss_file_mb"] <= memory["peak_rss_mb"] * 1.05


def test_onnx_bench_reads_inputs_from_an_npz(onnx_models: dict[str, Path]) -> None:
    code, doc, stderr = run_agent(
        "bench", "--model", onnx_models["digits"], "--inputs", onnx_models["digits_test"],
        *ONNX_FAST,
    )  # fmt: skip
    assert code == 0, stderr
    resolved = doc["params"]["resolved"]
    assert resolved["input_source"] == "file"
    assert resolved["inputs"][0]["shape"] == [1, 64]  # one sample of the 360
    assert not any("symbolic" in w for w in doc["warnings"])


def test_onnx_runs_and_min_seconds_whichever_is_later(onnx_models: dict[str, Path]) -> None:
    code, doc, _ = run_agent(
        "bench", "--model", onnx_models["conv"], "--threads", "1", "--runs", "7",
        "--min-seconds", "0", "--warmup", "0",
    )  # fmt: skip
    assert code == 0 and doc["latency_ms"]["count"] == 7
    assert not any("symbolic" in w for w in doc["warnings"])  # [1, 3, 32, 32] is fixed
    code, doc, _ = run_agent(
        "bench", "--model", onnx_models["conv"], "--threads", "1", "--runs", "1",
        "--min-seconds", "0.3",
    )  # fmt: skip
    latency = doc["latency_ms"]
    assert code == 0 and latency["count"] > 1
    assert latency["count"] * latency["mean"] >= 300 * 0.95


def test_onnx_deadline_stops_early_but_stays_ok(onnx_models: dict[str, Path]) -> None:
    code, doc, _ = run_agent(
        "bench", "--model", onnx_models["mlp"], "--threads", "1", "--runs", "100000000",
        "--deadline-s", "1.5",
    )  # fmt: skip
    assert code == 0 and doc["status"] == "ok"
    assert 0 < doc["latency_ms"]["count"] < 100000000
    assert any("deadline" in w for w in doc["warnings"])


def test_onnx_sigterm_keeps_the_runs_measured(onnx_models: dict[str, Path]) -> None:
    process = subprocess.Popen(
        [sys.executable, str(AGENT_PATH), "bench", "--model", str(onnx_models["mlp"]),
         "--threads", "1", "--runs", "100000000", "--min-seconds", "1000"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        for line in process.stderr:
            if "warm-up 1/1" in line:
                break
        time.sleep(0.5)
        process.send_signal(signal.SIGTERM)
        stdout, _ = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    doc = one_document(stdout)
    assert process.returncode == 124
    assert doc["status"] == "timeout" and doc["error"]["type"] == "timeout"
    assert doc["latency_ms"]["count"] > 0 and doc["throughput_per_s"] > 0


@pytest.mark.parametrize(
    ("case", "kind", "words"),
    [
        ("garbage", "model_invalid", "not an ONNX file"),
        ("truncated", "model_truncated", "truncated or corrupt"),
        ("opset30", "unsupported_opset", "opset"),
        ("no-data", "external_data_missing", "external data"),
        ("bad-inputs", "bad_inputs", "no array for input 'input' (expected [batch, 64] float32)"),
        ("xnnpack", "provider_missing", "XnnpackExecutionProvider"),
    ],
)
def test_onnx_errors_are_one_document(
    case: str, kind: str, words: str, onnx_models: dict[str, Path], tmp_path: Path
) -> None:
    import numpy as np
    import onnx

    from edgeshrink.testmodels.onnx_models import make_mlp_onnx

    model, extra = tmp_path / f"{case}.onnx", []
    if case == "garbage":
        model.write_bytes(b"\x00\xffnot protobuf at all" * 10)
    elif case == "truncated":
        model.write_bytes(onnx_models["mlp"].read_bytes()[:4000])
    elif case == "opset30":
        proto = onnx.load(str(onnx_models["mlp"]))
        proto.opset_import[0].version = 30
        onnx.save(proto, str(model))
    elif case == "no-data":
        make_mlp_onnx(model, external_data=True)
        (tmp_path / f"{case}.onnx.data").unlink()
    elif case == "bad-inputs":
        model = onnx_models["mlp"]
        np.savez(tmp_path / "in.npz", x=np.zeros((2, 64), np.float32))
        extra = ["--inputs", str(tmp_path / "in.npz")]
    elif case == "xnnpack":
        model = onnx_models["mlp"]
        extra = ["--execution-provider", "xnnpack"]
    code, doc, _ = run_agent("bench", "--model", model, *extra, *ONNX_FAST)
    assert code == 1
    assert set(doc) == TOP_KEYS and doc["status"] == "error"
    assert doc["error"]["type"] == kind, doc["error"]
    assert words in doc["error"]["message"] and doc["error"]["hint"]
    assert doc["latency_ms"] is None


def test_onnx_without_onnxruntime_is_runtime_missing(onnx_models: dict[str, Path]) -> None:
    # -S: no site-packages, so only the standard library (and no onnxruntime) is there.
    done = subprocess.run(
        [sys.executable, "-S", str(AGENT_PATH), "bench", "--model", str(onnx_models["mlp"])],
        capture_output=True,
        text=True,
        timeout=60,
    )
    doc = one_document(done.stdout)
    assert done.returncode == 1
    assert doc["error"]["type"] == "runtime_missing"
    assert "pip install onnxruntime" in doc["error"]["hint"]


def test_info_lists_onnxruntime() -> None:
    onnxruntime = pytest.importorskip("onnxruntime")
    code, doc, stderr = run_agent("info")
    assert code == 0, stderr
    assert doc["runtimes"]["onnxruntime"]["available"] is True
    assert doc["runtimes"]["onnxruntime"]["version"] == onnxruntime.__version__
    assert doc["formats"]["onnx"] == {"runner": True, "runtime_available": True}


def test_latency_percentiles_match_numpy() -> None:
    import numpy as np

    agent = _agent_module()
    seconds = [0.001 * v for v in (5, 1, 4, 2, 3, 10, 7, 6, 9, 8, 30)]
    stats = agent._latency_stats(seconds)
    ms = np.array(seconds) * 1000
    for key, q in (("p50", 50), ("p90", 90), ("p99", 99)):
        assert stats[key] == pytest.approx(np.percentile(ms, q), abs=1e-6)
    assert (stats["min"], stats["max"], stats["count"]) == (1.0, 30.0, 11)
    assert stats["stddev"] == pytest.approx(np.std(ms, ddof=1), abs=1e-6)
    assert agent._latency_stats([])["count"] == 0


# --------------------------------------------------------------------------- TFLite

TFLITE_FAST = ["--threads", "1", "--runs", "20", "--min-seconds", "0.1", "--warmup", "1"]


@pytest.fixture(scope="module")
def tflite_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    pytest.importorskip("ai_edge_litert")
    pytest.importorskip("ai_edge_quantizer")
    pytest.importorskip("sklearn")
    from edgeshrink.plan import ShrinkOptions
    from edgeshrink.profiles import get_profile
    from edgeshrink.shrink import shrink_model
    from edgeshrink.testmodels.onnx_models import write_digits_npz
    from edgeshrink.testmodels.tflite_models import make_convnet_tflite, make_digits_tflite

    out = tmp_path_factory.mktemp("agent-tflite")
    digits, _ = make_digits_tflite(out / "digits.tflite")
    options = ShrinkOptions(quant="int8-int8-io", allow_random_calibration=True)
    int8_io = shrink_model(digits, get_profile("imx8mp"), options, output=out / "d-int8io.tflite")
    return {
        "digits": digits,
        "conv": make_convnet_tflite(out / "conv.tflite"),
        "int8_io": int8_io.artifact.path,
        "digits_test": write_digits_npz(out / "digits-test.npz", split="test"),
    }


def test_tflite_bench_prints_latency_document(tflite_models: dict[str, Path]) -> None:
    code, doc, stderr = run_agent("bench", "--model", tflite_models["digits"], *TFLITE_FAST)
    assert code == 0, stderr
    assert set(doc) == TOP_KEYS and doc["status"] == "ok" and doc["llm"] is None
    latency = doc["latency_ms"]
    assert latency["count"] >= 20 and 0 < latency["min"] <= latency["p50"] <= latency["max"]
    assert doc["throughput_per_s"] == pytest.approx(1000.0 / latency["mean"], rel=1e-3)
    runtime = doc["runtime"]
    assert runtime["name"] == "ai-edge-litert" and runtime["version"]
    assert runtime["num_threads"] == 1 and runtime["external_delegate"] is None
    assert runtime["xnnpack"] == {"requested": True, "default_delegate": True, "applied": True}
    assert runtime["delegation"]["delegate_kernels"] >= 1
    params = doc["params"]
    assert (params["tflite_runtime"], params["xnnpack"], params["external_delegate"]) == (
        "auto", "on", None,
    )  # fmt: skip
    assert "execution_provider" not in params and "prompt_tokens" not in params
    resolved = params["resolved"]
    assert resolved["format"] == "tflite" and resolved["tflite_runtime"] == "litert"
    assert resolved["inputs"] == [
        {"name": "pixels", "declared": [None, 64], "shape": [1, 64], "dtype": "float32"}
    ]
    assert any("symbolic dimension(s) axis 0 set to 1" in w for w in doc["warnings"])
    model = doc["model"]
    assert model["format"] == "tflite" and model["inputs"][0]["shape_signature"] == [-1, 64]
    assert [o["name"] for o in model["outputs"]] == ["logits", "probabilities"]
    memory = doc["memory"]
    assert memory["source"] == "proc" and memory["peak_rss_mb"] >= memory["rss_after_load_mb"] > 0


def test_tflite_int8_inputs_are_quantized_from_float_data(tflite_models: dict[str, Path]) -> None:
    code, doc, stderr = run_agent(
        "bench", "--model", tflite_models["int8_io"], "--inputs", tflite_models["digits_test"],
        *TFLITE_FAST,
    )  # fmt: skip
    assert code == 0, stderr
    resolved = doc["params"]["resolved"]
    assert resolved["input_source"] == "file"
    assert resolved["inputs"][0] == {
        "name": "pixels", "declared": [None, 64], "shape": [1, 64], "dtype": "int8",
    }  # fmt: skip
    assert doc["model"]["inputs"][0]["quantization"]["scale"] > 0


def test_tflite_xnnpack_off_and_fixed_shapes(tflite_models: dict[str, Path]) -> None:
    code, doc, stderr = run_agent(
        "bench", "--model", tflite_models["conv"], "--xnnpack", "off", *TFLITE_FAST
    )
    assert code == 0, stderr
    assert doc["runtime"]["xnnpack"]["requested"] is False
    assert doc["runtime"]["delegation"]["delegate_kernels"] == 0
    assert not any("symbolic" in w for w in doc["warnings"])  # [1, 32, 32, 3] is fixed


@pytest.mark.parametrize(
    ("case", "kind", "words"),
    [
        ("garbage", "model_invalid", "not a TFLite file"),
        ("cut-header", "model_truncated", "truncated TFLite file"),
        ("cut-body", "model_truncated", "cannot parse it"),
        ("no-delegate", "delegate_missing", "/nonexistent/libvx_delegate.so"),
        ("not-a-delegate", "delegate_failed", "tflite_plugin_create_delegate"),
        ("bad-option", "bad_params", "not KEY=VALUE"),
        ("no-tflite-runtime", "runtime_missing", "tflite-runtime is not importable"),
        ("bad-inputs", "bad_inputs", "no array for input 'pixels'"),
    ],
)
def test_tflite_errors_are_one_document(
    case: str, kind: str, words: str, tflite_models: dict[str, Path], tmp_path: Path
) -> None:
    import numpy as np

    model, extra = tflite_models["digits"], []
    data = model.read_bytes()
    if case == "garbage":
        model = tmp_path / "garbage.tflite"
        model.write_bytes(b"\x00\xffnot a flatbuffer" * 10)
    elif case == "cut-header":
        model = tmp_path / "cut.tflite"
        model.write_bytes(b"\xff\xff\x00\x00TFL3" + data[8:100])  # root table past the end
    elif case == "cut-body":
        model = tmp_path / "cut.tflite"
        model.write_bytes(data[: len(data) - 1000])
    elif case == "no-delegate":
        extra = ["--external-delegate", "/nonexistent/libvx_delegate.so"]
    elif case == "not-a-delegate":
        libc = next(iter(glob.glob("/lib/*/libc.so.6") + glob.glob("/lib*/libc.so.6")), None)
        if libc is None:
            pytest.skip("no libc.so.6 to offer as a delegate")
        extra = ["--external-delegate", libc]
    elif case == "bad-option":
        extra = ["--external-delegate", sys.executable, "--external-delegate-option", "cache"]
    elif case == "no-tflite-runtime":
        if importlib_util_find("tflite_runtime"):
            pytest.skip("tflite-runtime is installed here")
        extra = ["--tflite-runtime", "tflite-runtime"]
    elif case == "bad-inputs":
        np.savez(tmp_path / "in.npz", x=np.zeros((2, 64), np.float32))
        extra = ["--inputs", str(tmp_path / "in.npz")]
    code, doc, _ = run_agent("bench", "--model", model, *extra, *TFLITE_FAST)
    assert code == 1, doc
    assert set(doc) == TOP_KEYS and doc["status"] == "error"
    assert doc["error"]["type"] == kind, doc["error"]
    assert words in doc["error"]["message"] and doc["error"]["hint"]
    assert doc["latency_ms"] is None


def importlib_util_find(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def test_tflite_without_any_runtime_is_runtime_missing(tflite_models: dict[str, Path]) -> None:
    done = subprocess.run(
        [sys.executable, "-S", str(AGENT_PATH), "bench", "--model", str(tflite_models["digits"])],
        capture_output=True,
        text=True,
        timeout=60,
    )
    doc = one_document(done.stdout)
    assert done.returncode == 1
    assert doc["error"]["type"] == "runtime_missing"
    assert (
        "ai_edge_litert" in doc["error"]["message"] and "tflite_runtime" in doc["error"]["message"]
    )
    assert "pip install ai-edge-litert" in doc["error"]["hint"]


def test_info_lists_the_tflite_runner() -> None:
    litert = importlib_util_find("ai_edge_litert")
    code, doc, stderr = run_agent("info")
    assert code == 0, stderr
    assert doc["formats"]["tflite"] == {"runner": True, "runtime_available": litert}


def test_the_agent_and_the_host_make_the_same_random_integer_inputs() -> None:
    """One rule on both sides of the host/device line (the agent cannot import the host):
    the same seed, name, shape and bounds give the same array."""
    np = pytest.importorskip("numpy")
    from edgeshrink.formats.onnx import random_integers as host_rule

    agent = _agent_module()
    bounds = {"input_ids": 120, "token_type_ids": 2, "tiny": 3}
    for name in ("input_ids", "token_type_ids", "attention_mask", "segment_ids", "tiny", "x"):
        device = agent.random_integers(np, np.random.default_rng(7), name, (2, 5), "int64", bounds)
        host = host_rule(np.random.default_rng(7), name, (2, 5), np.dtype("int64"), bounds)
        assert device.dtype == host.dtype and np.array_equal(device, host), name


def test_bench_follows_llama_benchs_sequence(mmap_run: tuple[int, dict, str]) -> None:
    """Like llama-bench: the prompt test's warm-up and all its repetitions, then the
    generation test's; n_ctx is prompt + generation (llama.cpp pads it). Before, each
    repetition alternated pp and tg in one context of at least 512 tokens."""
    code, doc, stderr = mmap_run
    assert code == 0, stderr
    steps = [
        line.split("agent: ", 1)[1]
        for line in stderr.splitlines()
        if "agent: warm-up" in line or "agent: rep " in line
    ]
    phases = ["pp" if ("pp" in s and "tg" not in s) else "tg" for s in steps]
    first_tg = phases.index("tg")
    assert set(phases[:first_tg]) == {"pp"} and set(phases[first_tg:]) == {"tg"}, steps
    assert steps[0].startswith("warm-up") and steps[first_tg].startswith("warm-up"), steps
    params = doc["params"]
    assert params["prompt_tokens"] + params["gen_tokens"] <= params["resolved"]["n_ctx"] < 512
