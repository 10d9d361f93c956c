"""Every `--option` a hint names exists on the command that printed it.

Two halves: failing invocations of each command through the real entry point, whose
`error:` and `hint:` lines are checked against that command's options (walked from the
click tree); and a static scan of the hint strings of modules whose errors reach known
commands.  An option inside `edgeshrink CMD ...` backticks is checked against CMD.
"""

from __future__ import annotations

import ast
import re
import shutil
from pathlib import Path

import click
import pytest
from support import REPO

from edgeshrink.cli.main import cli, main

OPTION = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")
BACKTICKS = re.compile(r"`(?:edgeshrink )?([^`]*)`")


def find_command(words: list[str]) -> tuple[str, click.Command]:
    """The deepest command ``words`` name (``lab run --dry-run`` -> ``lab run``)."""
    command: click.Command = cli
    path: list[str] = []
    for word in words:
        if not isinstance(command, click.Group) or word not in command.commands:
            break
        command = command.commands[word]
        path.append(word)
    return " ".join(path), command


def options_of(command: click.Command) -> set[str]:
    found = {"--help"}
    for param in [*command.params, *cli.params]:  # the root's options go before any command
        if isinstance(param, click.Option):
            found.update(o for o in (*param.opts, *param.secondary_opts) if o.startswith("--"))
    return found


def wrong_options(text: str, command_path: str) -> list[str]:
    """The `--options` in ``text`` that the command they are offered for does not have."""
    wrong = []
    rest = text
    for quoted in BACKTICKS.finditer(text):
        name, command = find_command(quoted.group(1).split())
        if not name:
            continue  # not a command line: its options are the printing command's
        rest = rest.replace(quoted.group(0), "")
        for option in OPTION.findall(quoted.group(1)):
            if option not in options_of(command):
                wrong.append(f"{option} (`edgeshrink {name}` has no such option)")
    _name, command = find_command(command_path.split())
    for option in OPTION.findall(rest):
        if option not in options_of(command):
            wrong.append(f"{option} (`edgeshrink {command_path}` has no such option)")
    return wrong


def test_the_checker_sees_a_wrong_option() -> None:
    assert wrong_options("hint: pass --key FILE", "bench") == [
        "--key (`edgeshrink bench` has no such option)"
    ]
    assert wrong_options("hint: run `edgeshrink targets add NAME --key FILE`", "bench") == []
    assert wrong_options("hint: try --quant Q4_0 or a shorter --ctx", "plan") == []
    assert wrong_options("hint: pass --profiles-dir DIR", "plan") == []
    assert wrong_options("give the target a work_dir (`targets add ... --work-dir`)", "bench") == []
    assert wrong_options("hint: pass `--key FILE`", "bench") == [
        "--key (`edgeshrink bench` has no such option)"
    ]


# --------------------------------------------------------------------------- invocations


def prepare(work: Path, model: Path) -> None:
    """The files the failing invocations read, in ``work``."""
    (work / "notes.txt").write_text("not a model\n")
    shutil.copyfile(model, work / "m.gguf")
    (work / "lab.toml").write_text('[[device]]\nname = "a"\nkind = "local"\n')
    (work / "small.toml").write_text(
        '[[device]]\nname = "a"\nkind = "local"\nprofile = "raspberry-pi-zero-2w"\n'
    )
    job = '[[job]]\nname = "j"\nmodel = "m.gguf"\n'
    (work / "bad.toml").write_text(f'name = "s"\n{job}quant = "Q8_0"\n[job.bench]\nreps = "5"\n')
    (work / "big.toml").write_text(f'name = "s"\n{job}context = 1048576\n')


HUGE = ["--ctx", str(1 << 20)]
# label -> (the command that prints the error, argv); M is the model, W the work dir.
CASES: dict[str, tuple[str, list[str]]] = {
    "inspect text": ("inspect", ["inspect", "W/notes.txt"]),
    "plan too big": ("plan", ["plan", "M", "-p", "raspberry-pi-zero-2w", *HUGE]),
    "plan asked too big": ("plan", ["plan", "M", "-p", "raspberry-pi-zero-2w", "-q", "F32", *HUGE]),
    "plan unknown profile": ("plan", ["plan", "M", "-p", "no-such-board"]),
    "shrink too big": ("shrink", ["shrink", "M", "-p", "raspberry-pi-zero-2w", "-q", "F32", *HUGE]),
    "shrink unknown quant": ("shrink", ["shrink", "M", "-p", "x86-64-host", "-q", "Q9_9"]),
    "shrink onto input": ("shrink", ["shrink", "M", "-p", "x86-64-host", "-q", "Q8_0", "-o", "M"]),
    "shrink unwritable": ("shrink", ["shrink", "M", "-p", "x86-64-host", "-q", "Q8_0",
                                     "-o", "/proc/x.gguf"]),
    "deploy too big": ("deploy", ["deploy", "M", "-p", "raspberry-pi-zero-2w", "-q", "F32", *HUGE]),
    "bench text": ("bench", ["bench", "W/notes.txt"]),
    "bench unknown target": ("bench", ["bench", "M", "--target", "no-such-target"]),
    "push text": ("push", ["push", "W/notes.txt"]),
    "imatrix short text": ("imatrix", ["imatrix", "M", "--text", "W/notes.txt", "--dry-run"]),
    "imatrix text model": ("imatrix", ["imatrix", "W/notes.txt"]),
    "shrink below the smallest mix": ("shrink", ["shrink", "M", "-p", "x86-64-host",
                                                 "--max-size", "1kB"]),
    "shrink imatrix of another model": ("shrink", ["shrink", "M", "-p", "x86-64-host",
                                                   "-q", "Q4_0", "--imatrix", "W/notes.txt"]),
    "prune too many": ("prune", ["prune", "M", "--remove", "0,1,2,3,4,5,6,7,8,9,10,11,12"]),
    "prune text": ("prune", ["prune", "W/notes.txt", "--layers", "1"]),
    "distill no such layer": ("distill", ["distill", "M", "--remove", "99", "--steps", "1"]),
    "push unknown target": ("push", ["push", "M", "--target", "no-such-target"]),
    "check no profile": ("check", ["check", "M"]),
    "check unknown target": ("check", ["check", "M", "--target", "no-such-target"]),
    "eval text": ("eval", ["eval", "M", "W/notes.txt"]),
    "eval one model": ("eval", ["eval", "M"]),
    "eval unknown target": ("eval", ["eval", "M", "--base", "M", "--target", "no-such-target"]),
    "eval chunks too long": ("eval", ["eval", "M", "--base", "M", "--target", "local", *HUGE[:1],
                                      "65536"]),
    "sweep unknown profile": ("sweep", ["sweep", "M", "-p", "no-such-board"]),
    "profiles show typo": ("profiles show", ["profiles", "show", "raspbery-pi-5-8gb"]),
    "targets show unknown": ("targets show", ["targets", "show", "no-such-target"]),
    "targets remove unknown": ("targets remove", ["targets", "remove", "no-such-target"]),
    "targets remove path": ("targets remove", ["targets", "remove", "../../x"]),
    "targets add profile": ("targets add", ["targets", "add", "pi", "--host", "h", "-p", "nope"]),
    "targets add local": ("targets add", ["targets", "add", "local", "--host", "h",
                                          "-p", "x86-64-host", "--no-check"]),
    "doctor unknown target": ("doctor", ["doctor", "no-such-target"]),
    "results unopenable db": ("results", ["results", "--db", "/proc/results.db"]),
    "results show missing": ("results show", ["results", "show", "12345"]),
    "results sweep missing": ("results sweep", ["results", "sweep", "12345"]),
    "results sweeps unopenable": ("results sweeps", ["results", "sweeps", "--db", "/proc/x.db"]),
    "lab run bad suite": ("lab run", ["lab", "run", "-i", "W/lab.toml", "-s", "W/bad.toml",
                                      "--dry-run"]),
    "lab run too big": ("lab run", ["lab", "run", "-i", "W/small.toml", "-s", "W/big.toml",
                                    "--dry-run"]),
    "lab compare empty": ("lab compare", ["lab", "compare", "--db", "W/empty.db"]),
    "lab run no such run": ("lab run", ["lab", "run", "--run-id", "999", "--db", "W/empty.db"]),
    "store copy onto itself": ("store copy", ["store", "copy", "W/a.db", "sqlite:///W/a.db"]),
    "store copy not a database": ("store copy", ["store", "copy", "W/notes.txt", "W/b.db"]),
    "store copy no server": ("store copy", ["store", "copy", "W/a.db",
                                            "postgresql://lab:pw@127.0.0.1:1/edgeshrink"]),
}  # fmt: skip

# Hints printed by files other engineers own, reported to them; the case flips (strict
# xfail) when the hint is fixed.
KNOWN_WRONG: dict[str, str] = {}


@pytest.mark.parametrize(
    "label",
    [
        pytest.param(label, marks=pytest.mark.xfail(strict=True, reason=KNOWN_WRONG[label]))
        if label in KNOWN_WRONG
        else label
        for label in CASES
    ],
)
def test_every_hint_names_options_of_the_command_that_printed_it(
    label: str, tiny_f16: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.chdir(tmp_path)
    prepare(tmp_path, tiny_f16)
    command_path, template = CASES[label]
    argv = [str(tiny_f16) if a == "M" else a.replace("W/", f"{tmp_path}/") for a in template]
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main(argv)
    _out, err = capsys.readouterr()
    assert info.value.code in (1, 2), (argv, err)
    lines = [ln for ln in err.splitlines() if ln.startswith(("error: ", "hint: ", "Error: "))]
    assert lines, (argv, err)
    assert "internal error" not in err, err
    problems = [f"{line!r}: {w}" for line in lines for w in wrong_options(line, command_path)]
    assert not problems, "\n".join(problems)


def test_every_command_has_a_failing_invocation() -> None:
    covered = {command for command, _argv in CASES.values()}
    every = set()

    def walk(group: click.Group, prefix: str = "") -> None:
        for name, command in group.commands.items():
            if isinstance(command, click.Group):
                walk(command, f"{prefix}{name} ")
            else:
                every.add(f"{prefix}{name}")

    walk(cli)
    # Commands that only list or report what is there: no error a user meets with a hint.
    without = {"demo", "quant-types", "profiles list", "targets list", "lab report", "lab status"}
    missing = every - covered - without
    assert not missing, f"add a failing invocation for: {sorted(missing)}"


# --------------------------------------------------------------------------- static scan


def hint_strings(path: Path) -> list[tuple[int, str]]:
    """The text of every ``hint=...`` argument and ``default_hint = ...`` of a module."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []

    def strings(node: ast.AST) -> str:
        return " ".join(
            n.value
            for n in ast.walk(node)
            if isinstance(n, ast.Constant) and isinstance(n.value, str)
        )

    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == "hint":
            found.append((node.value.lineno, strings(node.value)))
        elif isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "default_hint" for t in node.targets
        ):
            found.append((node.lineno, strings(node.value)))
    return found


# The commands that can print each module's hints (a module's hint must fit all of them).
MODULE_COMMANDS = {
    "edgeshrink/cli/models.py": ["inspect", "plan", "shrink"],
    "edgeshrink/cli/catalog.py": ["profiles list", "profiles show", "quant-types"],
    "edgeshrink/cli/check.py": ["check"],
    "edgeshrink/cli/quality.py": ["eval"],
    "edgeshrink/cli/targets.py": ["targets add"],  # the others' errors carry no options
    "edgeshrink/check.py": ["check"],
    "edgeshrink/shrink.py": ["shrink"],
    "edgeshrink/plan.py": ["plan", "shrink", "deploy"],
    "edgeshrink/targets.py": ["targets add"],  # its hints with options are add_target's
    "edgeshrink/profiles/__init__.py": ["profiles show", "plan", "shrink"],
    "edgeshrink/profiles/reader.py": ["profiles show", "plan", "shrink"],
    "edgeshrink/profiles/types.py": ["profiles show", "plan", "shrink"],
    "edgeshrink/cli/sweep.py": ["sweep"],
    "edgeshrink/cost.py": ["sweep"],
    "edgeshrink/cli/prune.py": ["prune"],
    "edgeshrink/passes/prune.py": ["prune"],
    "edgeshrink/passes/prune_choice.py": ["prune"],
    "edgeshrink/prune.py": ["prune"],
    "edgeshrink/cli/distill.py": ["distill"],
    "edgeshrink/distillation.py": ["distill"],
    "edgeshrink/distill/run.py": ["distill"],
    "edgeshrink/distill/train.py": ["distill"],
    "edgeshrink/distill/bridge.py": ["distill"],
    "edgeshrink/cli/doctor.py": ["doctor"],
    "edgeshrink/cli/results.py": ["results"],
    "edgeshrink/transport/ssh.py": ["bench", "deploy", "check", "doctor"],
    "edgeshrink/transport/ssh_connect.py": ["bench", "deploy", "check", "doctor"],
    "edgeshrink/transport/ssh_hostkeys.py": ["bench", "deploy", "check", "doctor"],
    "edgeshrink/transport/ssh_push.py": ["bench", "deploy", "check", "doctor"],
    "edgeshrink/transport/ssh_run.py": ["bench", "deploy", "check", "doctor"],
    "edgeshrink/lab/runner.py": ["lab run"],
    "edgeshrink/lab/builds.py": ["lab run"],
    "edgeshrink/lab/session.py": ["lab run"],
    "edgeshrink/lab/config.py": ["lab run"],
    "edgeshrink/lab/inventory.py": ["lab run"],
    "edgeshrink/lab/spec.py": ["lab run"],
    "edgeshrink/lab/toml_fields.py": ["lab run"],
    "edgeshrink/formats/tflite/backend.py": ["shrink"],
    "edgeshrink/formats/tflite/flatbuffer.py": ["shrink"],
    "edgeshrink/formats/tflite/inspect.py": ["shrink"],
    "edgeshrink/formats/tflite/plan.py": ["shrink"],
    "edgeshrink/formats/tflite/quantize.py": ["shrink"],
    "edgeshrink/formats/tflite/runtime.py": ["shrink"],
    "edgeshrink/formats/tensors.py": ["shrink"],  # the calibration hint TFLite shares
    "edgeshrink/quality.py": ["eval", "check"],
    "edgeshrink/device_eval.py": ["eval"],
    "edgeshrink/cli/device_quality.py": ["eval"],
    "edgeshrink/formats/gguf/reference.py": ["eval", "check", "sweep"],
}
# Hints in modules known to be wrong, as strict xfails that flip when they are fixed.
KNOWN_ELSEWHERE: set[str] = set()


@pytest.mark.parametrize(
    "module",
    [
        pytest.param(m, marks=pytest.mark.xfail(strict=True, reason="reported to its owner"))
        if m in KNOWN_ELSEWHERE
        else m
        for m in MODULE_COMMANDS
    ],
)
def test_hint_strings_name_options_their_commands_have(module: str) -> None:
    problems = []
    for line, text in hint_strings(REPO / module):
        for command in MODULE_COMMANDS[module]:
            problems += [f"{module}:{line}: {w}" for w in wrong_options(text, command)]
    assert not problems, "\n".join(problems)


# The commands that can print each error's default hint (errors.py): it must fit them all.
ERROR_COMMANDS = {
    "DoesNotFitError": ["plan", "shrink", "deploy", "sweep"],
    "CalibrationError": ["shrink", "deploy", "sweep"],
    "EvalDataError": ["eval", "check", "sweep"],
    "StoreError": ["results", "bench", "deploy", "check", "lab compare"],
    "LabLockError": ["lab run"],
}


def test_default_hints_fit_every_command_that_can_print_them() -> None:
    import edgeshrink.errors as errors

    problems = []
    for name, commands in ERROR_COMMANDS.items():
        hint = getattr(errors, name).default_hint
        for command in commands:
            problems += [f"{name}: {w}" for w in wrong_options(hint, command)]
    for name in dir(errors):
        error = getattr(errors, name)
        is_error = isinstance(error, type) and issubclass(error, errors.EdgeshrinkError)
        # `edgeshrink eval --help` names its command; a bare --option needs the list above.
        if (
            is_error
            and name not in ERROR_COMMANDS
            and wrong_options(error.default_hint, "quant-types")
        ):
            problems.append(f"{name}: its default hint names an option; list its commands")
    assert not problems, "\n".join(problems)
