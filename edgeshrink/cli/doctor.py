"""`doctor`: what a device really is and has, and runtime installs on it."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import click

from edgeshrink.cli.common import (
    ACCEPT_NEW_HOST_KEY,
    JSON_OPTION,
    Context,
    FiniteFloat,
    emit_json,
    pass_context,
    progress_printer,
)
from edgeshrink.doctor import InstallPlan, diagnose, install_runtime
from edgeshrink.errors import AgentError, RuntimeMissingError, TransportError
from edgeshrink.profiles import get_profile
from edgeshrink.targets import get_target

MARKS = {
    "ok": ("ok", "green"),
    "warn": ("warn", "yellow"),
    "error": ("FAIL", "red"),
    "skip": ("-", None),
}


def print_report(report) -> None:
    target = report.target
    click.echo(f"doctor: {target.name} ({target.describe()}), profile {report.profile_id or '-'}")
    width = max(len(c.name) for c in report.checks)
    for check in report.checks:
        mark, colour = MARKS[check.status]
        click.echo(
            f"  {click.style(mark.ljust(4), fg=colour)}  {check.name.ljust(width)}  {check.summary}"
        )
        if check.hint and check.status in ("warn", "error"):
            click.echo(f"        {' ' * width}  hint: {check.hint}")
    unmeasured = (report.info or {}).get("unmeasured") or []
    if unmeasured:
        click.echo(
            "not readable on this device: "
            + "; ".join(f"{u.get('what')} ({u.get('why')})" for u in unmeasured)
        )
    click.echo(
        f"{report.count('error')} error(s), {report.count('warn')} warning(s) in {report.seconds:.1f} s"
    )


@click.command()
@click.argument("target_name", required=False, default="local")
@click.option(
    "--profile",
    "-p",
    "profile_id",
    default=None,
    help="Hardware profile to compare with [default: the target's].",
)
@ACCEPT_NEW_HOST_KEY
@click.option(
    "--install-runtime",
    type=click.Choice(["gguf", "onnx", "tflite"]),
    default=None,
    help="Create a venv in the device's work dir and pip-install this runtime there.",
)
@click.option(
    "--pip-arg",
    "pip_args",
    multiple=True,
    help="Extra pip argument for --install-runtime (repeatable), e.g. --pip-arg=--index-url=URL.",
)
@click.option(
    "--timeout",
    "timeout_s",
    type=FiniteFloat(min=1),
    default=3600.0,
    show_default=True,
    help="Seconds --install-runtime may take (llama-cpp-python compiles on the device).",
)
@click.option(
    "--dry-run", is_flag=True, help="With --install-runtime: show the commands; run nothing."
)
@JSON_OPTION
@pass_context
def doctor(obj: Context, target_name: str, profile_id: str | None, accept_new_host_key: bool,
           install_runtime: str | None, pip_args: tuple[str, ...], timeout_s: float, dry_run: bool,
           as_json: bool) -> None:  # fmt: skip
    """Check a device: connection, host key, Python, runtimes, CPU, RAM, disk, temperature, profile.

    \b
    edgeshrink doctor                      this machine
    edgeshrink doctor mypi --json          an SSH target
    edgeshrink doctor pi@10.0.0.5 -p raspberry-pi-5-8gb --accept-new-host-key
    edgeshrink doctor mypi --install-runtime gguf
    """

    say = progress_printer(as_json)
    target = replace(
        get_target(target_name, profile=profile_id), accept_new_host_key=accept_new_host_key
    )
    if install_runtime:
        _install(target, install_runtime, pip_args, timeout_s, dry_run, as_json, say)
        return
    profile = get_profile(target.profile, obj.profiles_dirs) if target.profile else None
    report = diagnose(target, profile=profile, progress=say)
    if as_json:
        emit_json(report.to_dict())
    else:
        print_report(report)
    if not report.ok:
        _fail(report)


def _fail(report) -> None:
    """The report is out; the command fails with the first failed check as its error."""

    failed = [c for c in report.checks if c.status == "error"]
    first = failed[0]
    kind = {"runtimes": RuntimeMissingError, "python": AgentError, "agent": AgentError}.get(
        first.name, TransportError
    )
    raise kind(f"doctor: {len(failed)} check(s) failed on {report.target.name}; {first.name}: {first.summary}",
               hint=first.hint or "see the checks above")  # fmt: skip


def _install(target, runtime: str, pip_args: tuple[str, ...], timeout_s: float, dry_run: bool,
             as_json: bool, say: Any) -> None:  # fmt: skip
    outcome = install_runtime(target, runtime, pip_args=pip_args, timeout_s=timeout_s,
                              progress=progress_printer(as_json), dry_run=dry_run)  # fmt: skip
    if isinstance(outcome, InstallPlan):
        if as_json:
            emit_json({"dry_run": True, **outcome.to_dict()})
            return
        click.echo(f"would run on {target.name}:")
        for step in outcome.steps:
            click.echo("  " + " ".join(step))
        click.echo(f"then use {outcome.venv_python} as the target's python")
        return
    if as_json:
        emit_json(outcome.to_dict())
        return
    plan = outcome.plan
    click.echo(f"installed {', '.join(plan.packages)} {outcome.version or ''} in {plan.venv} on {target.name} "
               f"({outcome.seconds:.0f} s)")  # fmt: skip
    if outcome.target_file:
        click.echo(
            f"target '{target.name}' now uses python = {plan.venv_python} ({outcome.target_file})"
        )
    elif outcome.instruction:
        click.echo(f"to use it: {outcome.instruction}")


COMMANDS = (doctor,)
