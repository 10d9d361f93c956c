"""The agent on .tflite models, each runtime in its own virtual environment.

The device's environment is not the host's: each runtime gets a venv of its own
(created once under EDGESHRINK_TEST_VENVS, default ~/.cache/edgeshrink-tests/
venvs, and reused while its requirements are unchanged), and the agent runs with
that venv's Python through a `local` target read from a TOML file, and through
the SSH test device.  A venv that cannot be created (no network, no wheel for
this Python) skips its tests with the pip error.

- litert: ai-edge-litert (with numpy 2);
- tflite-runtime: tflite-runtime 2.14 with numpy<2;
- tflite-runtime-numpy2: tflite-runtime 2.14 with numpy 2, the trap: it imports
  but cannot create an interpreter, and the agent says to install numpy<2.

The op-version trap: edgeshrink's dynamic-int8 declares FULLY_CONNECTED v12
(per-channel weights), which ai-edge-litert runs and tflite-runtime 2.14 refuses.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from support import load_script

pytest.importorskip("ai_edge_litert")
pytest.importorskip("ai_edge_quantizer")
pytest.importorskip("sklearn")

from edgeshrink.bench import BenchParams  # noqa: E402
from edgeshrink.deploy import bench_model, deploy_model  # noqa: E402
from edgeshrink.plan import ShrinkOptions  # noqa: E402
from edgeshrink.profiles import get_profile  # noqa: E402
from edgeshrink.shrink import shrink_model  # noqa: E402
from edgeshrink.targets import load_target_file  # noqa: E402
from edgeshrink.testmodels.onnx_models import write_digits_npz  # noqa: E402
from edgeshrink.testmodels.tflite_models import make_digits_tflite  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
VENV_ROOT = Path(
    os.environ.get("EDGESHRINK_TEST_VENVS") or Path.home() / ".cache" / "edgeshrink-tests" / "venvs"
)
RUNTIME_VENVS = {
    "litert": ("ai-edge-litert",),
    "tflite-runtime": ("tflite-runtime", "numpy<2"),
    "tflite-runtime-numpy2": ("tflite-runtime", "numpy>=2"),
}
FAST = BenchParams(threads=1, runs=20, min_seconds=0.1, warmup=1)
PI4 = "raspberry-pi-4-4gb"
_made: dict[str, Path | str] = {}


def runtime_python(name: str) -> Path:
    """The python of the runtime's venv, created on first use; skips when that fails."""
    if name not in _made:
        _made[name] = _create_venv(name)
    made = _made[name]
    if isinstance(made, str):
        pytest.skip(made)
    return made


def _create_venv(name: str) -> Path | str:
    requirements = RUNTIME_VENVS[name]
    venv = VENV_ROOT / name
    python = venv / "bin" / "python"
    stamp = venv / "edgeshrink-requirements.txt"
    wanted = "\n".join(requirements) + f"\npython {sys.version_info[:2]}\n"
    if python.exists() and stamp.exists() and stamp.read_text() == wanted:
        return python
    shutil.rmtree(venv, ignore_errors=True)
    try:
        subprocess.run(
            [sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True, timeout=120
        )
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check",
             *requirements],
            check=True, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
        shutil.rmtree(venv, ignore_errors=True)
        tail = (getattr(exc, "stderr", None) or str(exc)).strip().splitlines()[-1:] or ["?"]
        return f"cannot create the {name} venv ({' '.join(requirements)}): {tail[0]}"
    stamp.write_text(wanted)
    return python


def local_target_for(python: Path, tmp_path: Path, name: str):
    """A `local` target whose Python is the venv's, read from a TOML file as a user writes it."""
    toml = tmp_path / f"{name}.toml"
    toml.write_text(
        f'name = "{name}"\nkind = "local"\npython = "{python}"\n'
        f'work_dir = "{tmp_path / (name + "-device")}"\nprofile = "{PI4}"\n'
    )
    return load_target_file(toml)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("tflite-runtimes")
    digits, _ = make_digits_tflite(out / "digits.tflite")
    calibration = write_digits_npz(out / "train.npz", split="train", limit=256)
    profile = get_profile(PI4)
    made = {"dir": out, "digits": digits, "test": write_digits_npz(out / "test.npz", split="test")}
    for quant in ("int8", "dynamic-int8", "int8-int8-io"):
        made[quant] = shrink_model(
            digits, profile, ShrinkOptions(quant=quant, calibration=calibration),
            output=out / f"digits-{quant}.tflite",
        ).artifact.path  # fmt: skip
    made["dynamic-per-tensor"] = shrink_model(
        digits, profile, ShrinkOptions(quant="dynamic-int8", per_channel=False),
        output=out / "digits-dynamic-per-tensor.tflite",
    ).artifact.path  # fmt: skip
    return made


def _bench(model: Path, target, tmp_path: Path, inputs: Path | None = None):
    params = BenchParams(**{**FAST.__dict__, "inputs": inputs})
    return bench_model(model, target, params, db=tmp_path / "results.db", timeout_s=120).result


@pytest.mark.parametrize("quant", ["int8", "dynamic-int8", "int8-int8-io"])
def test_litert_venv_runs_every_mode(quant: str, files: dict[str, Path], tmp_path: Path) -> None:
    target = local_target_for(runtime_python("litert"), tmp_path, "litert-venv")
    result = _bench(files[quant], target, tmp_path, inputs=files["test"])
    assert result.ok, (result.error_message, result.error_hint)
    assert result.runtime == "ai-edge-litert" and result.latency_ms.samples >= 20
    runtime = result.document["runtime"]
    assert runtime["xnnpack"]["applied"] is True and runtime["numpy"].startswith("2.")
    assert runtime["num_threads"] == 1
    assert result.document["params"]["resolved"]["input_source"] == "file"
    assert result.peak_rss_mb and result.load_s is not None


def test_tflite_runtime_venv_runs_what_it_can(files: dict[str, Path], tmp_path: Path) -> None:
    target = local_target_for(runtime_python("tflite-runtime"), tmp_path, "tflrt-venv")
    for quant in ("int8", "int8-int8-io", "dynamic-per-tensor"):
        result = _bench(files[quant], target, tmp_path, inputs=files["test"])
        assert result.ok, (quant, result.error_message)
        assert result.runtime == "tflite-runtime" and result.runtime_version == "2.14.0"
        assert result.document["runtime"]["numpy"].startswith("1.")


def test_tflite_runtime_refuses_fully_connected_v12(files: dict[str, Path], tmp_path: Path) -> None:
    target = local_target_for(runtime_python("tflite-runtime"), tmp_path, "tflrt-venv")
    result = _bench(files["dynamic-int8"], target, tmp_path)
    assert result.status == "error"
    assert result.document["error"]["type"] == "op_version_unsupported"
    assert "FULLY_CONNECTED version 12 (dynamic-range int8 with per-channel weights)" in (
        result.error_message
    )
    assert "tflite-runtime 2.14.0" in result.error_message
    assert "ai-edge-litert runs it" in result.error_hint and "--per-tensor" in result.error_hint


def test_tflite_runtime_with_numpy2_says_numpy_lt_2(files: dict[str, Path], tmp_path: Path) -> None:
    python = runtime_python("tflite-runtime-numpy2")
    target = local_target_for(python, tmp_path, "tflrt-np2-venv")
    result = _bench(files["int8"], target, tmp_path)
    assert result.status == "error"
    assert result.document["error"]["type"] == "numpy_incompatible"
    assert "numpy 2." in result.error_message and "built against numpy 1.x" in result.error_message
    assert "numpy<2" in result.error_hint and str(python) in result.error_hint


def test_deploy_through_a_venv_target(files: dict[str, Path], tmp_path: Path) -> None:
    target = local_target_for(runtime_python("litert"), tmp_path, "litert-venv")
    outcome = deploy_model(
        files["digits"], get_profile("pixel-8"), target, FAST, ShrinkOptions(),
        output=tmp_path / "digits-pixel8.tflite", db=tmp_path / "results.db", timeout_s=120,
    )  # fmt: skip
    assert outcome.shrink.artifact.quant == "dynamic-int8"
    result = outcome.bench.result
    assert result.ok and result.runtime == "ai-edge-litert"
    estimate = outcome.shrink.plan.chosen.estimate.total_mb
    assert 0.7 < estimate / result.peak_rss_mb < 1.3, (estimate, result.peak_rss_mb)


@pytest.mark.ssh
def test_ssh_device_with_each_runtime(
    files: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rig_module = load_script("sshd_rig")
    if (why := rig_module.sshd_available()) is not None:
        pytest.skip(f"no sshd for the test device: {why}")
    home = tmp_path / "host-home"
    (home / ".ssh").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    cases = (("litert", "dynamic-int8", "ok"), ("tflite-runtime", "dynamic-int8", "error"))
    for venv, quant, status in cases:
        python = runtime_python(venv)
        with rig_module.sshd_rig(tmp_path / f"rig-{venv}", python=str(python)) as rig:
            target = rig.target(profile=PI4)
            result = _bench(files[quant], target, tmp_path, inputs=files["test"])
            assert result.status == status, (venv, result.error_message)
            if status == "ok":
                assert result.runtime == "ai-edge-litert"
                assert result.document["params"]["inputs"].startswith(str(rig.root))
            else:
                assert result.document["error"]["type"] == "op_version_unsupported"
