"""The device helper (push receiver and launcher) is device code: Python 3.9, standard library only."""

from __future__ import annotations

import ast
import sys

from edgeshrink.transport.base import DEVICE_HELPER_PATH


def test_device_helper_is_python39_and_stdlib_only() -> None:
    tree = ast.parse(DEVICE_HELPER_PATH.read_text(encoding="utf-8"), feature_version=(3, 9))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add((node.module or "").split(".")[0])
    assert imported and not [n for n in imported if n not in sys.stdlib_module_names]


def test_the_ssh_command_carries_the_file_without_quotes_or_backslashes() -> None:
    from edgeshrink.transport.ssh import helper_command

    command = helper_command("python3", ["receive", "/w/models/x/m.gguf"])
    code = command.split(" ", 2)[2].rsplit(" ", 2)[0]
    assert "\\" not in code and code.count("'") == 2  # one single-quoted word


def _helper(*args: str) -> list[dict]:
    import json
    import subprocess

    from edgeshrink.transport.base import helper_argv

    run = subprocess.run(helper_argv(sys.executable, list(args)), capture_output=True, text=True)
    return [json.loads(line) for line in run.stdout.splitlines()]


def test_sha256_is_the_one_copy_the_check_uses(tmp_path) -> None:
    import hashlib

    path = tmp_path / "model.bin"
    path.write_bytes(b"x" * (3 << 20) + b"tail")
    assert _helper("sha256", str(path)) == [
        {"status": "ok", "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    ]
    [missing] = _helper("sha256", str(tmp_path / "gone"))
    assert missing["status"] == "unreadable" and missing["errno"] == 2


def test_temps_reads_sysfs_style_files_in_degrees(tmp_path) -> None:
    for zone, milli in (("thermal_zone0", "48312"), ("thermal_zone1", "51000"), ("bad", "n/a")):
        (tmp_path / zone).mkdir()
        (tmp_path / zone / "temp").write_text(milli + "\n")
    [temps] = _helper(
        "temps", str(tmp_path / "thermal_zone*" / "temp"), str(tmp_path / "bad" / "temp")
    )
    assert temps == {
        str(tmp_path / "thermal_zone0" / "temp"): 48.312,
        str(tmp_path / "thermal_zone1" / "temp"): 51.0,
    }


def test_device_facts_is_a_real_file_old_pythons_can_parse_and_run(tmp_path) -> None:
    import json
    import subprocess

    from edgeshrink.agent import DEVICE_FACTS_PATH

    source = DEVICE_FACTS_PATH.read_text(encoding="utf-8")
    tree = ast.parse(source, feature_version=(3, 7))
    assert not [
        n for n in ast.walk(tree) if isinstance(n, ast.JoinedStr | ast.AnnAssign)
    ]  # 2.7 syntax
    run = subprocess.run(
        [sys.executable, "-c", source, str(tmp_path / "w")], capture_output=True, text=True
    )
    facts = json.loads(run.stdout)
    assert facts["writable"] and facts["python"][0] == 3 and facts["free_bytes"] > 0
