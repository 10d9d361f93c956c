"""Hostile and careless input as a user meets it through the real CLI: numbers that are
not numbers, names that are paths, device text with escape sequences, broken files in a
directory of good ones, and files the OS refuses.

Every case runs the real entry point (``edgeshrink.cli.main.main``) on real files.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import sys
from pathlib import Path

import pytest
from support import REPO, needs_llama_cpp

from edgeshrink.cli.main import main
from edgeshrink.profiles import BUILTIN_PROFILES_DIR


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """The `edgeshrink` entry point in this process: (exit code, stdout, stderr)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main(list(argv))
    out, err = capsys.readouterr()
    code = info.value.code
    return (code if isinstance(code, int) else 0), out, err


def one_error(err: str) -> tuple[str, str]:
    """The CLI's error block: exactly one `error:` line and one `hint:` line, no traceback."""
    lines = [line for line in err.splitlines() if not line.startswith("· ")]
    assert "Traceback" not in err, err
    assert len(lines) == 2 and lines[0].startswith("error: ") and lines[1].startswith("hint: "), err
    assert "internal error" not in lines[0], err
    return lines[0], lines[1]


def profile_copy(directory: Path, old: str, new: str, *, name: str = "x86-64-host") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    text = (BUILTIN_PROFILES_DIR / f"{name}.toml").read_text(encoding="utf-8")
    assert old in text
    path = directory / f"{name}.toml"
    path.write_text(text.replace(old, new, 1), encoding="utf-8")
    return path


# --------------------------------------------------------------------------- #14.6 NaN / infinity


@pytest.mark.parametrize("value", ["nan", "inf", "-nan", "+inf"])
def test_a_profile_bandwidth_that_is_not_a_number_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], value: str
) -> None:
    mine = tmp_path / "profiles"
    profile_copy(mine, "memory_bandwidth_gbs = 51.2", f"memory_bandwidth_gbs = {value}")
    code, out, err = run(capsys, "--profiles-dir", str(mine), "profiles", "show", "x86-64-host")
    assert code == 1 and out == ""
    line, _hint = one_error(err)
    assert "memory_bandwidth_gbs must be a finite number" in line and value.lstrip("+-") in line


@needs_llama_cpp
def test_plan_json_never_prints_nan(
    tiny_f16: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mine = tmp_path / "profiles"
    profile_copy(mine, "memory_bandwidth_gbs = 51.2", "memory_bandwidth_gbs = nan")
    code, out, err = run(capsys, "--profiles-dir", str(mine), "plan", str(tiny_f16),
                         "-p", "x86-64-host", "--json")  # fmt: skip
    assert code == 1 and "NaN" not in out
    one_error(err)


def test_emit_json_refuses_non_finite_numbers_with_a_clear_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from edgeshrink.cli.common import emit_json
    from edgeshrink.errors import EdgeshrinkError

    with pytest.raises(EdgeshrinkError, match=r"rows\[1\]\.tok_s is nan"):
        emit_json({"rows": [{"tok_s": 1.0}, {"tok_s": float("nan")}]})
    assert capsys.readouterr().out == ""


SUITE_NUMBERS = [
    ("[cooldown]\nmax_wait_s = nan\n", "cooldown.max_wait_s must be a finite number, got nan"),
    ("[cooldown]\nmax_wait_s = inf\n", "cooldown.max_wait_s must be a finite number, got inf"),
    ("[regression]\nalpha = nan\n", "regression.alpha must be a finite number, got nan"),
    ("[run]\ntimeout_s = inf\n", "run.timeout_s must be a finite number, got inf"),
    ("[cooldown]\npoll_s = nan\n", "cooldown.poll_s must be a finite number, got nan"),
]


@pytest.mark.parametrize(("table", "message"), SUITE_NUMBERS, ids=[m for _, m in SUITE_NUMBERS])
def test_suite_numbers_that_are_not_numbers_are_refused(
    tiny_f16: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], table: str, message: str
) -> None:
    shutil.copyfile(tiny_f16, tmp_path / "m.gguf")
    (tmp_path / "lab.toml").write_text('[[device]]\nname = "a"\nkind = "local"\n')
    suite = tmp_path / "suite.toml"
    suite.write_text(f'name = "s"\n{table}[[job]]\nname = "j"\nmodel = "m.gguf"\nquant = "Q8_0"\n')
    code, _out, err = run(capsys, "lab", "run", "-i", str(tmp_path / "lab.toml"), "-s", str(suite),
                          "--dry-run")  # fmt: skip
    assert code == 1
    line, _hint = one_error(err)
    assert message in line


@pytest.mark.parametrize(
    "argv",
    [
        ["eval", "a.onnx", "b.onnx", "--min-cosine", "nan"],
        ["eval", "a.onnx", "b.onnx", "--max-kld", "nan"],
        ["eval", "a.onnx", "b.onnx", "--max-accuracy-drop", "inf"],
        ["check", "a.gguf", "--max-kld", "nan"],
        ["check", "a.gguf", "--min-cosine", "nan"],
        ["check", "a.gguf", "--min-tg-tok-s", "inf"],
        ["bench", "a.gguf", "--timeout", "nan"],
        ["bench", "a.gguf", "--min-seconds", "inf"],
        ["sweep", "a.gguf", "-p", "raspberry-pi-5-8gb", "--max-kld", "inf"],
        ["sweep", "a.gguf", "-p", "raspberry-pi-5-8gb", "--min-agreement", "nan"],
        ["lab", "compare", "--alpha", "nan"],
        ["lab", "compare", "--threshold", "inf"],
        ["lab", "run", "-i", "i.toml", "-s", "s.toml", "--lock-wait", "nan"],
        ["doctor", "local", "--timeout", "nan"],
    ],
    ids=lambda a: " ".join(a[:1] + a[-2:]),
)
def test_float_options_refuse_nan_and_infinity_as_usage_errors(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    argv: list[str],
) -> None:
    for name in ("a.onnx", "b.onnx", "a.gguf"):
        (tmp_path / name).write_bytes(b"x")
    monkeypatch.chdir(tmp_path)
    code, _out, err = run(capsys, *argv)
    assert code == 2, err
    assert "is not a finite number" in err and argv[-1] in err


def test_finite_float_type_accepts_ordinary_numbers() -> None:
    import click

    from edgeshrink.cli.common import FiniteFloat

    assert FiniteFloat().convert("1.5", None, None) == 1.5
    assert FiniteFloat(min=0, max=1).convert("0.25", None, None) == 0.25
    with pytest.raises(click.BadParameter):
        FiniteFloat(min=0, max=1).convert("2", None, None)
    with pytest.raises(click.BadParameter, match="not a finite number"):
        FiniteFloat(min=1).convert("nan", None, None)


# --------------------------------------------------------------------------- #14.8 target names


@pytest.mark.parametrize("dry_run", [False, True])
def test_targets_remove_refuses_a_name_that_is_a_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], dry_run: bool
) -> None:
    from edgeshrink.targets import user_targets_dir

    victim = tmp_path / "victim.toml"
    victim.write_text('name = "victim"\nkind = "local"\n')
    user_targets_dir().mkdir(parents=True, exist_ok=True)
    relative = os.path.relpath(victim.with_suffix(""), user_targets_dir())
    assert relative.startswith("..")
    code, _out, err = run(
        capsys, "targets", "remove", relative, *(["--dry-run"] if dry_run else [])
    )
    assert code == 1
    line, _hint = one_error(err)
    assert "target name" in line and relative in line
    assert victim.exists()


def test_names_that_are_not_paths_still_have_a_target_file_path() -> None:
    # doctor compares an ad-hoc destination's would-be file with its source.
    from edgeshrink.targets import target_file_path, user_targets_dir

    assert target_file_path("pi@10.0.0.7:2222").parent == user_targets_dir()


def test_targets_remove_of_the_built_in_local_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    code, _out, err = run(capsys, "targets", "remove", "local")
    assert code == 1
    line, _hint = one_error(err)
    assert "'local'" in line and "built-in" in line


# --------------------------------------------------------------------------- #14.9 device text


def test_control_characters_never_reach_the_terminal() -> None:
    from edgeshrink.report.table import render_pairs, render_table
    from edgeshrink.util import terminal_safe

    hostile = "ok\x1b[2J\x1b[31mred\x1b]0;title\x07\x08\x00\x9b1m end"
    assert terminal_safe(hostile) == "okred end"
    assert terminal_safe("a\tb") == "a b"
    assert terminal_safe("line one\nline two", keep_newlines=True) == "line one\nline two"
    table = render_table(["NAME"], [[hostile]])
    pairs = render_pairs([("error\x1b[2J", hostile)])
    for text in (table, pairs):
        assert not any(ord(c) < 32 and c != "\n" or 0x7F <= ord(c) < 0xA0 for c in text), text


def run_on_a_terminal(*argv: str, cwd: Path) -> tuple[int, str]:
    """The real `edgeshrink` with stdout and stderr on a pseudo-terminal, as a user sees it
    (click strips some escape sequences itself when the output is not a terminal)."""
    import pty
    import subprocess

    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "edgeshrink", *argv], cwd=cwd,
                            stdin=subprocess.DEVNULL, stdout=slave, stderr=slave)  # fmt: skip
    os.close(slave)
    chunks = []
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(master)
    return proc.wait(timeout=300), b"".join(chunks).decode("utf-8", "replace")


def test_what_a_device_says_reaches_the_terminal_without_control_characters(
    tmp_path: Path, tiny_f16: Path
) -> None:
    # A device whose Python answers with escape sequences: clear screen, set the title, red.
    python = tmp_path / "python3"
    python.write_text(
        "#!/bin/sh\nprintf 'boom\\033[2J\\033]0;pwned\\007\\033[31mred\\n' >&2\nexit 3\n"
    )
    python.chmod(0o755)
    target = tmp_path / "evil.toml"
    target.write_text(
        f'name = "evil"\nkind = "local"\npython = "{python}"\nprofile = "x86-64-host"\n'
    )
    code, seen = run_on_a_terminal("bench", str(tiny_f16), "--target", str(target), cwd=tmp_path)
    assert code == 1, seen
    assert "boomred" in seen
    # edgeshrink's own styling (dim progress lines) is the only escape sequence left.
    device_text = seen.replace("\x1b[2m", "").replace("\x1b[0m", "")
    assert "\x1b" not in device_text and "\x07" not in device_text, repr(seen)
    error_lines = [line for line in seen.splitlines() if line.startswith("error: ")]
    assert len(error_lines) == 1 and "boompwnedred" not in error_lines[0]
    # The production checklist quotes the device too, in its items.
    code, seen = run_on_a_terminal("check", str(tiny_f16), "--target", str(target), cwd=tmp_path)
    assert code == 1, seen
    loads = next(line for line in seen.splitlines() if "loads" in line)
    assert "boomred" in loads
    device_text = seen.replace("\x1b[2m", "").replace("\x1b[0m", "")
    assert "\x1b" not in device_text and "\x07" not in device_text, repr(seen)


# --------------------------------------------------------------------------- #13.9 bad files


def test_a_malformed_profile_does_not_hide_the_good_ones(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mine = tmp_path / "profiles"
    profile_copy(mine, "threads = 4", "threads = 0", name="x86-64-host")
    (mine / "junk.toml").write_text("this is = = not toml\n")
    shutil.copyfile(BUILTIN_PROFILES_DIR / "imx8mp.toml", mine / "imx8mp.toml")
    code, out, err = run(capsys, "--profiles-dir", str(mine), "profiles", "list")
    assert code == 0
    assert "raspberry-pi-5-8gb" in out and "imx8mp" in out
    # The broken override is not silently replaced by the built-in of the same id.
    assert "x86-64-host" not in out
    warnings = [line for line in err.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 2, err
    assert any("x86-64-host.toml" in w and "runtime.threads" in w for w in warnings)
    assert any("junk.toml" in w and "invalid TOML" in w for w in warnings)
    code, out, err = run(capsys, "--profiles-dir", str(mine), "profiles", "list", "--json")
    assert code == 0 and "warning: " in err
    ids = {p["id"] for p in json.loads(out)}
    assert "imx8mp" in ids and "x86-64-host" not in ids


def test_the_example_targets_dir_lists_its_targets_despite_the_lab_inventory(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("EDGESHRINK_TARGETS_PATH", str(REPO / "targets"))
    code, out, err = run(capsys, "targets", "list")
    assert code == 0, err
    assert "bench-box" in out and "local" in out
    assert "lab.toml" in err and "inventory" in err
    code, out, _err = run(capsys, "targets", "show", "bench-box", "--json")
    assert code == 0 and json.loads(out)["name"] == "bench-box"


def test_a_broken_target_file_is_reported_when_its_name_is_asked_for(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "targets"
    folder.mkdir()
    (folder / "mypi.toml").write_text('name = "mypi"\nkind = "ssh"\nhots = "x"\n')
    monkeypatch.setenv("EDGESHRINK_TARGETS_PATH", str(folder))
    code, _out, err = run(capsys, "targets", "show", "mypi")
    assert code == 1
    line, _hint = one_error(err)
    assert "mypi.toml: unknown key 'hots'" in line


# --------------------------------------------------------------------------- #14.12 internal errors


def test_a_symlink_loop_among_profiles_is_one_clean_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    code, _out, err = run(capsys, "--profiles-dir", str(loop), "profiles", "list")
    assert code == 1
    line, _hint = one_error(err)
    assert str(loop) in line
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "x.toml").symlink_to(mine / "x.toml")
    code, out, err = run(capsys, "--profiles-dir", str(mine), "profiles", "list")
    assert code == 0 and "raspberry-pi-5-8gb" in out
    assert "x.toml" in err and "Traceback" not in err and "internal error" not in err


def test_a_binary_target_file_is_one_clean_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    binary = tmp_path / "blob.toml"
    binary.write_bytes(bytes(range(128, 256)))
    code, _out, err = run(capsys, "targets", "show", str(binary))
    assert code == 1
    line, _hint = one_error(err)
    assert "blob.toml" in line and "UTF-8" in line


def test_a_suite_model_that_is_a_directory_is_one_clean_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "models").mkdir()
    (tmp_path / "lab.toml").write_text('[[device]]\nname = "a"\nkind = "local"\n')
    suite = tmp_path / "suite.toml"
    suite.write_text('name = "s"\n[[job]]\nname = "j"\nmodel = "models"\nquant = "Q8_0"\n')
    code, _out, err = run(capsys, "lab", "run", "-i", str(tmp_path / "lab.toml"), "-s", str(suite),
                          "--dry-run")  # fmt: skip
    assert code == 1
    line, _hint = one_error(err)
    assert "job[1] (j).model" in line and "config.json" in line


@needs_llama_cpp
def test_output_where_no_file_can_be_made_is_one_clean_line(
    tiny_f16: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _out, err = run(capsys, "shrink", str(tiny_f16), "-p", "x86-64-host", "-q", "Q8_0",
                          "-o", "/proc/x.gguf")  # fmt: skip
    assert code == 1
    line, hint = one_error(err)
    assert "/proc/x.gguf" in line and "-o" in hint


def test_a_work_dir_beside_an_unusable_output_is_an_output_path_error(tmp_path: Path) -> None:
    from edgeshrink.errors import OutputPathError
    from edgeshrink.util import make_work_dir

    with pytest.raises(OutputPathError, match=r"/proc/x\.onnx: cannot create a file in /proc"):
        make_work_dir(Path("/proc/x.onnx"))
    work = make_work_dir(tmp_path / "out" / "m.onnx")
    assert work.is_dir() and work.parent == tmp_path / "out" and work.name.startswith(".m.onnx.")


# --------------------------------------------------------------------------- #14.13 smaller gaps


@pytest.mark.parametrize(
    ("a", "b"), [("127.0.0.1", "localhost"), ("::1", "127.0.0.1"), ("LOCALHOST", "localhost."),
                 ("Pi.Lab", "pi.lab")],
)  # fmt: skip
def test_two_names_of_one_board_are_one_board(
    tiny_f16: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], a: str, b: str
) -> None:
    shutil.copyfile(tiny_f16, tmp_path / "m.gguf")
    inventory = tmp_path / "lab.toml"
    inventory.write_text(
        f'[[device]]\nname = "a"\nhost = "{a}"\nport = 2222\n'
        f'[[device]]\nname = "b"\nhost = "{b}"\nport = 2222\n'
    )
    suite = tmp_path / "suite.toml"
    suite.write_text('name = "s"\n[[job]]\nname = "j"\nmodel = "m.gguf"\nquant = "Q8_0"\n')
    code, _out, err = run(capsys, "lab", "run", "-i", str(inventory), "-s", str(suite), "--dry-run")
    assert code == 1
    line, _hint = one_error(err)
    assert "is the same board as device[1] (a)" in line


def test_a_quantization_type_that_does_not_exist_is_refused_by_a_dry_run(
    tiny_f16: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shutil.copyfile(tiny_f16, tmp_path / "m.gguf")
    inventory = tmp_path / "lab.toml"
    inventory.write_text('[[device]]\nname = "a"\nkind = "local"\nprofile = "x86-64-host"\n')
    suite = tmp_path / "suite.toml"
    suite.write_text('name = "s"\n[[job]]\nname = "j"\nmodel = "m.gguf"\nquant = "Q9_9"\n')
    code, out, err = run(capsys, "lab", "run", "-i", str(inventory), "-s", str(suite), "--dry-run")
    assert code == 1, out
    line, hint = one_error(err)
    assert "job[1] (j).quant" in line and "Q9_9" in line
    assert "quant-types" in hint


def test_a_user_target_named_local_does_not_replace_the_built_in(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "targets"
    folder.mkdir()
    (folder / "local.toml").write_text(
        'name = "local"\nkind = "local"\nwork_dir = "/tmp/not-the-local-work-dir"\n'
    )
    monkeypatch.setenv("EDGESHRINK_TARGETS_PATH", str(folder))
    code, out, err = run(capsys, "targets", "show", "local", "--json")
    assert code == 0
    shown = json.loads(out)
    assert shown["source"] == "built-in" and shown["work_dir"] != "/tmp/not-the-local-work-dir"
    code, out, err = run(capsys, "targets", "list")
    assert code == 0 and "local.toml" in err and "reserved" in err


@needs_llama_cpp
def test_artifacts_are_written_with_the_users_umask(
    tiny_f16: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "m-q8_0.gguf"
    old = os.umask(0o022)
    try:
        code, _out, err = run(capsys, "shrink", str(tiny_f16), "-p", "x86-64-host",
                              "-q", "Q8_0", "-o", str(out))  # fmt: skip
    finally:
        os.umask(old)
    assert code == 0, err
    for path in (out, out.with_name(out.name + ".manifest.json")):
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path


def test_atomic_path_follows_the_umask(tmp_path: Path) -> None:
    from edgeshrink.util import write_json_atomic

    old = os.umask(0o027)
    try:
        path = write_json_atomic(tmp_path / "report.json", {"ok": True})
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


# --------------------------------------------------------------------------- #13.4 --ctx


@needs_llama_cpp
def test_a_context_beyond_the_trained_one_is_warned_about(
    tiny_f16: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from edgeshrink.formats.gguf import inspect_gguf

    trained = inspect_gguf(tiny_f16).llm.context_length
    assert trained
    asked = str(trained * 4)
    code, out, err = run(
        capsys, "plan", str(tiny_f16), "-p", "x86-64-host", "--ctx", asked, "--json"
    )
    assert code == 0, err
    doc = json.loads(out)
    assert any(f"--ctx {asked}" in w and str(trained) in w for w in doc["warnings"]), doc
    code, out, err = run(capsys, "plan", str(tiny_f16), "-p", "x86-64-host", "--ctx", asked)
    assert code == 0
    assert f"warning: --ctx {asked} is beyond" in err and str(trained) in err
    code, out, err = run(capsys, "shrink", str(tiny_f16), "-p", "x86-64-host", "--ctx", asked,
                         "--dry-run", "--json")  # fmt: skip
    assert code == 0 and json.loads(out)["plan"]["warnings"]
    code, out, err = run(
        capsys, "plan", str(tiny_f16), "-p", "x86-64-host", "--ctx", "64", "--json"
    )
    assert code == 0 and json.loads(out)["warnings"] == []


if sys.platform != "linux":  # pragma: no cover
    pytestmark = pytest.mark.skip("the cases use Linux paths (/proc)")
