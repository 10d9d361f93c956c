"""ONNX deploy to the SSH test device: a real sshd (scripts/sshd_rig.py) on 127.0.0.1.

The device's Python is this one, so onnxruntime is there; the model, its
calibration-made artifact and the inputs file travel over SFTP, and the agent
runs on the far side of a real SSH session.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from support import load_script

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("sklearn")

REPO = Path(__file__).resolve().parents[1]


sshd_rig = load_script("sshd_rig")
SKIP = sshd_rig.sshd_available()
pytestmark = [
    pytest.mark.ssh,
    pytest.mark.skipif(SKIP is not None, reason=f"no sshd for the test device: {SKIP}"),
]


def test_deploy_digits_over_ssh(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from edgeshrink.bench import BenchParams
    from edgeshrink.deploy import deploy_model
    from edgeshrink.plan import ShrinkOptions
    from edgeshrink.profiles import get_profile
    from edgeshrink.testmodels.onnx_models import make_digits_onnx, write_digits_npz

    home = tmp_path / "host-home"
    (home / ".ssh").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    model, _ = make_digits_onnx(tmp_path / "digits.onnx")
    calibration = write_digits_npz(tmp_path / "train.npz", split="train", limit=256)
    inputs = write_digits_npz(tmp_path / "test.npz", split="test")
    profile = get_profile("raspberry-pi-4-4gb")
    with sshd_rig.sshd_rig(tmp_path / "rig") as rig:
        target = rig.target(profile=profile.id)
        params = BenchParams(threads=1, runs=20, min_seconds=0.2, inputs=inputs)
        outcome = deploy_model(
            model,
            profile,
            target,
            params,
            ShrinkOptions(quant="int8-static", calibration=calibration),
            output=tmp_path / "digits-int8.onnx",
            db=tmp_path / "results.db",
            timeout_s=120,
        )
    assert outcome.shrink.artifact.quant == "int8-static"
    assert outcome.bench.push.remote.startswith(str(rig.root))  # on the device, not here
    result = outcome.bench.result
    assert result.ok, (result.error_message, result.error_hint)
    assert result.runtime == "onnxruntime" and result.latency_ms.samples >= 20
    doc = result.document
    assert doc["params"]["resolved"]["input_source"] == "file"
    assert doc["params"]["inputs"].startswith(str(rig.root))  # pushed to the device too
    assert doc["memory"]["peak_rss_mb"] > 0
