"""The agent and doctor on the emulated Raspberry Pi, through the normal SSH target path.

Emulation is 70-330x slower than native, so: tiny models, 1 thread, a few runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.arm64

CPU = os.environ.get("EDGESHRINK_ARM64_CPU", "cortex-a76")
EXPECTED_FEATURES = {"cortex-a76": {"asimd", "asimddp"}, "cortex-a72": {"asimd"}}[CPU]


def test_doctor_sees_an_aarch64_device(pi, pi_target):
    from edgeshrink.doctor import diagnose
    from edgeshrink.profiles import get_profile

    report = diagnose(pi_target, profile=get_profile(pi["profile"]))
    doc = report.to_dict()
    status = {c["name"]: c["status"] for c in doc["checks"]}
    assert status["connection"] == status["host key"] == status["python"] == "ok", doc["checks"]
    device = doc["device"]
    assert device["arch"] in ("aarch64", "arm64"), device
    features = set(device.get("cpu_features") or [])
    assert features >= EXPECTED_FEATURES, features
    if CPU == "cortex-a72":
        assert "asimddp" not in features
    runtimes = doc["runtimes"]
    assert runtimes["onnxruntime"]["available"], runtimes
    assert status["cpu"] == "ok"


def test_doctor_cli_json(pi, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EDGESHRINK_", "XDG_"))}
    env.update(HOME=str(tmp_path / "home"), XDG_CONFIG_HOME=str(tmp_path / "home" / "config"))
    target_file = Path(pi["client_key"]).parent / "target.toml"
    result = subprocess.run(
        [sys.executable, "-m", "edgeshrink", "doctor", str(target_file), "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["device"]["arch"] in ("aarch64", "arm64")
    assert set(report["device"]["cpu_features"]) >= EXPECTED_FEATURES


def test_up_registers_a_target_by_name(pi, tmp_path):
    """`arm64-device.sh up` registers the device, so `edgeshrink doctor pi-emu` just works;
    the profile is the Pi with the device's memory limit (4G here)."""
    from edgeshrink.targets import get_target

    arm64_device = sys.modules["arm64_device"]
    state_dir = Path(pi["client_key"]).parent
    assert arm64_device.register_target(pi, state_dir, "pi-emu") == "pi-emu"
    target = get_target("pi-emu")
    assert (target.host, target.port, target.known_hosts) == (
        pi["host"],
        pi["port"],
        pi["known_hosts"],
    )
    expected_profile = {"cortex-a76": "raspberry-pi-5-4gb", "cortex-a72": "raspberry-pi-4-4gb"}[CPU]
    assert target.profile == pi["profile"] == expected_profile
    result = subprocess.run(
        [sys.executable, "-m", "edgeshrink", "doctor", "pi-emu", "--json"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    report = json.loads(result.stdout)
    assert report["device"]["arch"] in ("aarch64", "arm64"), result.stderr
    assert report["target"]["name"] == "pi-emu"
    assert report["profile"] == expected_profile


def _bench(model: Path, target, tmp_path: Path):
    from edgeshrink.bench import BenchParams
    from edgeshrink.deploy import bench_model

    params = BenchParams(threads=1, runs=3, warmup=1, min_seconds=0.0)
    return bench_model(model, target, params, db=tmp_path / "results.db", timeout_s=900)


def test_onnx_agent_on_the_device(pi, pi_target, tmp_path):
    pytest.importorskip("onnx")
    from edgeshrink.testmodels.onnx_models import make_mlp_onnx

    model = make_mlp_onnx(tmp_path / "tiny.onnx", features=16, hidden=(32,), classes=4)
    outcome = _bench(model, pi_target, tmp_path)
    result = outcome.result
    assert result.ok, (result.error_message, result.error_hint)
    assert result.runtime == "onnxruntime"
    assert result.latency_ms.samples >= 3
    doc = result.document
    assert doc["device"]["arch"] in ("aarch64", "arm64")
    assert outcome.push.remote.startswith("/root/edgeshrink-tests/")


def test_tflite_agent_on_the_device(pi, pi_target, tmp_path):
    from edgeshrink.testmodels.tflite_models import make_mlp_tflite

    model = make_mlp_tflite(tmp_path / "tiny.tflite", features=16, hidden=(32,), classes=4)
    outcome = _bench(model, pi_target, tmp_path)
    result = outcome.result
    assert result.ok, (result.error_message, result.error_hint)
    assert "litert" in result.runtime or "tflite" in result.runtime, result.runtime
    assert result.latency_ms.samples >= 3
    assert result.document["device"]["arch"] in ("aarch64", "arm64")


def _device_runtimes(pi_target) -> dict:
    from edgeshrink.doctor import diagnose

    return diagnose(pi_target).to_dict()["runtimes"] or {}


def _needs_llama_cpp(pi_target) -> None:
    if not (_device_runtimes(pi_target).get("llama_cpp") or {}).get("available"):
        pytest.skip("no llama-cpp-python on the emulated device (build --with-llama, ~45 min once)")


def test_gguf_agent_on_the_device(pi, pi_target, tmp_path):
    """llama-cpp-python in the device venv only after `arm64-device.sh build --with-llama`."""
    from edgeshrink.bench import BenchParams
    from edgeshrink.deploy import bench_model

    _needs_llama_cpp(pi_target)
    shared = Path(__file__).resolve().parents[3] / "shared" / "models" / "stories260K.gguf"
    if shared.exists():
        model = shared
    else:
        from edgeshrink.testmodels import make_llama_gguf

        model = make_llama_gguf(tmp_path / "nano-f32.gguf", size="nano", ftype="f32")
    params = BenchParams(prompt_tokens=16, gen_tokens=8, reps=1, warmup=0, threads=1)
    outcome = bench_model(model, pi_target, params, db=tmp_path / "results.db", timeout_s=1800)
    result = outcome.result
    assert result.ok, (result.error_message, result.error_hint)
    assert result.runtime.startswith("llama")
    assert result.document["device"]["arch"] in ("aarch64", "arm64")


def test_deploy_gguf_to_pi_emu_by_name(pi, pi_target, tmp_path):
    """The issue's flow: `edgeshrink deploy model.gguf --target pi-emu` plans for the Pi's
    profile, quantizes with llama.cpp on the host, pushes over SSH (verified) and runs
    llama.cpp's aarch64 build on the device."""
    from edgeshrink.testmodels import make_llama_gguf

    _needs_llama_cpp(pi_target)
    arm64_device = sys.modules["arm64_device"]
    arm64_device.register_target(pi, Path(pi["client_key"]).parent, "pi-emu")
    model = make_llama_gguf(tmp_path / "nano-f32.gguf", size="nano", ftype="f32")
    result = subprocess.run(
        [sys.executable, "-m", "edgeshrink", "deploy", str(model), "--target", "pi-emu",
         "--quant", "Q8_0", "--prompt-tokens", "16", "--gen-tokens", "8", "--reps", "1",
         "--warmup", "0", "--threads", "1", "--timeout", "1800",
         "--db", str(tmp_path / "results.db"), "--json"],
        capture_output=True, text=True, cwd=tmp_path, timeout=2400,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert Path(doc["artifact"]).name.endswith("-q8_0.gguf")
    bench = doc["result"]
    assert bench["status"] == "ok", bench.get("error")
    assert bench["device"]["arch"] in ("aarch64", "arm64")
    assert bench["llm"]["tg_tok_s"]["mean"] > 0 and bench["llm"]["pp_tok_s"]["mean"] > 0
    assert set(bench["device"]["cpu_features"]) >= EXPECTED_FEATURES


def test_tflite_runtime_numpy1_venv(pi, pi_target, tmp_path):
    """tflite-runtime (numpy<2) in its own venv, after `build --with-tflite-runtime`."""
    from dataclasses import replace

    from edgeshrink.bench import BenchParams
    from edgeshrink.deploy import bench_model
    from edgeshrink.testmodels.tflite_models import make_mlp_tflite

    if not pi.get("tflite_runtime_python"):
        pytest.skip("no tflite-runtime venv on the emulated device (build --with-tflite-runtime)")
    target = replace(pi_target, python=pi["tflite_runtime_python"])
    model = make_mlp_tflite(tmp_path / "tiny.tflite", features=16, hidden=(32,), classes=4)
    params = BenchParams(
        threads=1, runs=3, warmup=1, min_seconds=0.0, tflite_runtime="tflite-runtime"
    )
    outcome = bench_model(model, target, params, db=tmp_path / "results.db", timeout_s=900)
    result = outcome.result
    assert result.ok, (result.error_message, result.error_hint)
    assert "tflite" in result.runtime and "litert" not in result.runtime, result.runtime


def test_bare_system_python_has_no_runtimes(pi, pi_target):
    """Like a fresh Pi OS: /usr/bin/python3 without the runtimes -> doctor says so, with a hint."""
    from dataclasses import replace

    from edgeshrink.doctor import diagnose

    report = diagnose(replace(pi_target, python="/usr/bin/python3"))
    assert report.check("python").status == "ok"
    runtimes = report.check("runtimes")
    assert runtimes.status == "error" and "no runtime" in runtimes.summary


def test_cortex_a72_device_lacks_dotprod(tmp_path_factory):
    """A Pi 4 (cortex-a72): asimd but no asimddp, seen by the agent through cpuinfo."""
    import socket

    from edgeshrink.doctor import diagnose
    from edgeshrink.targets import Target

    dev = sys.modules["arm64_device"]
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    state_dir = tmp_path_factory.mktemp("arm64-a72")
    try:
        state = dev.up(dev.DEFAULT_ROOTFS, state_dir, cpu="cortex-a72", mem="1G", port=port)
    except dev.DeviceError as exc:
        pytest.skip(f"cortex-a72 device did not come up: {exc}")
    try:
        target = Target(
            name="pi4-emu",
            kind="ssh",
            host=state["host"],
            port=state["port"],
            user="root",
            key=state["client_key"],
            known_hosts=state["known_hosts"],
            python=state["python"],
        )
        device = diagnose(target).to_dict()["device"]
        features = set(device["cpu_features"])
        assert "asimd" in features and "asimddp" not in features
        assert "A72" in (device.get("cpu") or ""), device
    finally:
        assert "no mounts left" in dev.down(state_dir)


# --------------------------------------------------------------------------- quality on the Pi


def _report_drift(result) -> None:
    """What the device measured against the host (aarch64 kernels round differently): shown
    in the test log (-rA) with the size of every difference."""
    for row in result.drift.rows:
        print(f"{row.metric}: host {row.host:.6g}, Pi {row.device:.6g}, "
              f"difference {row.difference:+.3g} ({'beyond' if row.beyond else 'within'} "
              f"{result.drift.tolerance:.0%})")  # fmt: skip


def test_onnx_quality_on_the_device_is_stored_beside_the_hosts(pi, pi_target, tmp_path):
    pytest.importorskip("onnxruntime")
    from edgeshrink.device_eval import evaluate_on_device
    from edgeshrink.plan import ShrinkOptions
    from edgeshrink.profiles import get_profile
    from edgeshrink.quality import EvalSettings
    from edgeshrink.shrink import shrink_model
    from edgeshrink.store import ResultStore
    from edgeshrink.testmodels.onnx_models import make_digits_onnx, write_digits_npz

    base, _ = make_digits_onnx(tmp_path / "digits.onnx")
    write_digits_npz(tmp_path / "test.npz", split="test")
    shrunk = shrink_model(base, get_profile(pi["profile"]), ShrinkOptions(quant="int8-dynamic"),
                          output=tmp_path / "digits-int8-dynamic.onnx")  # fmt: skip
    settings = EvalSettings(inputs=tmp_path / "test.npz", labels="labels")
    result = evaluate_on_device(base, shrunk.artifact.path, pi_target, settings=settings,
                                db=tmp_path / "results.db", timeout_s=1800)  # fmt: skip
    r = result.outcome.result
    assert r.ok and r.document["device"]["arch"] in ("aarch64", "arm64")
    _report_drift(result)
    accuracy = next(m for m in result.quality["metrics"] if m["name"] == "accuracy")
    assert accuracy["value"] > 0.9 and result.quality["n_samples"] == 360
    with ResultStore(tmp_path / "results.db") as store:
        row = store.query("SELECT target, result_id FROM quality WHERE target IS NOT NULL")[0]
    assert row["target"] == "pi-emu" and row["result_id"] == result.outcome.result_id


def test_gguf_quality_of_a_q4_0_model_on_the_device(pi, pi_target, tmp_path):
    """llama.cpp's aarch64 Q4_0 kernels (dot-product on cortex-a76) against the host's."""
    from edgeshrink.device_eval import evaluate_on_device
    from edgeshrink.formats.gguf.quantize import quantize_gguf
    from edgeshrink.quality import EvalSettings
    from edgeshrink.util import shipped_text

    _needs_llama_cpp(pi_target)
    shared = Path(__file__).resolve().parents[3] / "shared" / "models" / "stories260K.gguf"
    if not shared.exists():
        pytest.skip("the shared stories260K model is not here")
    q4 = tmp_path / "stories-q4_0.gguf"
    quantize_gguf(shared, q4, "Q4_0")
    settings = EvalSettings(text=shipped_text("eval-en.txt"), n_ctx=128, max_chunks=4)
    result = evaluate_on_device(shared, q4, pi_target, settings=settings,
                                db=tmp_path / "results.db", timeout_s=3600)  # fmt: skip
    assert result.outcome.result.ok and result.outcome.result_id is not None
    _report_drift(result)
    assert result.quality["ppl"]["value"] == pytest.approx(result.host["ppl"]["value"], rel=0.05)
