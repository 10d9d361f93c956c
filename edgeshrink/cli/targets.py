"""`targets`: the devices edgeshrink can reach."""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, replace
from typing import Any

import click

from edgeshrink.cli.common import (
    ACCEPT_NEW_HOST_KEY,
    JSON_OPTION,
    Context,
    emit_json,
    pass_context,
    progress_printer,
    warn_problems,
)
from edgeshrink.errors import TargetError, TransportError
from edgeshrink.profiles import get_profile
from edgeshrink.report.table import render_pairs, render_table
from edgeshrink.targets import (
    add_target,
    build_ssh_target,
    get_target,
    remove_target,
    render_target_toml,
    resolve_ssh,
    scan_targets,
    target_file_path,
)
from edgeshrink.util import human_bytes


def transfer_progress_printer(quiet: bool = False, *, min_interval_s: float = 0.25):
    """A push progress callback that redraws one stderr line: percent, MiB, MB/s.

    For ``open_transport(target, progress=...)``; silent when ``quiet`` or
    when stderr is not a terminal (then only the final line is printed).
    """

    state = {"last": 0.0}
    interactive = sys.stderr.isatty()

    def show(p) -> None:
        if quiet:
            return
        now = time.monotonic()
        done = p.done_bytes >= p.total_bytes
        if not done and (not interactive or now - state["last"] < min_interval_s):
            return
        state["last"] = now
        line = (
            f"· push {p.local.name}: {p.fraction * 100:5.1f}% "
            f"{human_bytes(p.done_bytes)} / {human_bytes(p.total_bytes)}  {p.mb_per_s:6.1f} MB/s"
        )
        end = "\n" if done else ""
        if interactive:
            click.echo("\r" + click.style(line, dim=True) + "\033[K" + end, err=True, nl=False)
        elif done:
            click.echo(click.style(line, dim=True), err=True)

    return show


@click.group()
def targets() -> None:
    """Targets: the devices edgeshrink can reach (built-in: local).

    \b
    Anywhere a target name is accepted, user@host[:port] or a Host alias of
    ~/.ssh/config works too.
    """


@targets.command("list")
@JSON_OPTION
def targets_list(as_json: bool) -> None:
    """List the known targets."""

    scan = scan_targets()
    warn_problems(problem for _path, problem in scan.problems)
    found = scan.targets
    if as_json:
        emit_json([t.to_dict() for t in found])
        return
    rows = [(t.name, t.kind, t.describe(), t.profile or "-", t.work_dir, t.source) for t in found]
    click.echo(render_table(["NAME", "KIND", "WHERE", "PROFILE", "WORK DIR", "FROM"], rows))


def _endpoint_dict(target) -> dict[str, Any] | None:
    if target.kind != "ssh":
        return None

    return asdict(resolve_ssh(target))


@targets.command("show")
@click.argument("name")
@JSON_OPTION
def targets_show(name: str, as_json: bool) -> None:
    """Show one target, and for SSH where it really connects (after ~/.ssh/config)."""

    target = get_target(name)
    endpoint = _endpoint_dict(target)
    if as_json:
        emit_json({**target.to_dict(), "resolved": endpoint})
        return
    pairs = [(k, v) for k, v in target.to_dict().items() if k != "accept_new_host_key"]
    if endpoint:
        pairs += [
            ("connects to", f"{endpoint['user']}@{endpoint['hostname']}:{endpoint['port']}"),
            ("keys", ", ".join(endpoint["key_files"]) or "ssh-agent, ~/.ssh/id_*"),
            ("jump", endpoint["jump"] or endpoint["proxy_command"]),
            ("known_hosts", f"~/.ssh/known_hosts, {endpoint['known_hosts']}"),
        ]
    click.echo(render_pairs(pairs))


@targets.command("add")
@click.argument("name")
@click.option(
    "--host", required=True, help="Host name, address, or ~/.ssh/config alias of the device."
)
@click.option(
    "--port",
    type=click.IntRange(1, 65535),
    default=None,
    help="SSH port [default: 22 or ~/.ssh/config].",
)
@click.option("--user", default=None, help="SSH user [default: ~/.ssh/config, else yours].")
@click.option(
    "--key", default=None, help="Private key file [default: ~/.ssh/config, ssh-agent, ~/.ssh/id_*]."
)
@click.option(
    "--profile", "-p", "profile_id", required=True, help="Hardware profile ID of the device."
)
@click.option("--python", default=None, help="The device's Python (3.9+) [default: python3].")
@click.option("--work-dir", default=None, help="Work dir on the device [default: ~/edgeshrink].")
@click.option("--jump", default=None, help="Jump host(s): [user@]host[:port][,...] (like ssh -J).")
@click.option(
    "--known-hosts",
    default=None,
    help="This target's own known_hosts file [default: edgeshrink's].",
)
@click.option("--tag", "tags", multiple=True, help="A tag for lab selection (repeatable).")
@click.option("--force", is_flag=True, help="Replace an existing target of that name.")
@click.option("--no-check", is_flag=True, help="Save without connecting to the device.")
@ACCEPT_NEW_HOST_KEY
@click.option("--dry-run", is_flag=True, help="Show the file that would be written; write nothing.")
@JSON_OPTION
@pass_context
def targets_add(obj: Context, name: str, profile_id: str, no_check: bool, force: bool, dry_run: bool,
                as_json: bool, accept_new_host_key: bool, **kw: Any) -> None:  # fmt: skip
    """Save an SSH device as target NAME (after checking that it can be reached).

    \b
    edgeshrink targets add mypi --host 192.168.1.20 --user pi --profile raspberry-pi-5-8gb
    edgeshrink targets add phone --host 10.0.0.7 --port 8022 --profile pixel-8 --accept-new-host-key
    """

    profile = get_profile(profile_id, obj.profiles_dirs)
    target = build_ssh_target(name, profile=profile.id, tags=tuple(kw.pop("tags")), **kw)
    path = target_file_path(name)
    if dry_run:
        if as_json:
            emit_json({"dry_run": True, "path": str(path), "target": target.to_dict()})
        else:
            click.echo(f"would write {path}:\n")
            click.echo(render_target_toml(target), nl=False)
        return
    checked: dict[str, Any] | None = None
    if not no_check:
        from edgeshrink.transport.ssh import SSHTransport

        say = progress_printer(as_json)
        probe = replace(target, accept_new_host_key=accept_new_host_key)
        say(f"connecting to {probe.describe()}")
        try:
            with SSHTransport(probe) as transport:
                key = transport.host_key
                checked = {"host_key": key.describe(), "cipher": transport.trace.cipher,
                           "auth": transport.trace.auth, "work_dir": transport.work_dir}  # fmt: skip
        except TransportError as exc:
            raise TransportError(
                f"{exc.message} (target '{name}' not saved)",
                hint=f"{exc.hint}; or pass --no-check to save it without connecting",
            ) from exc
    written = add_target(target, force=force)
    if as_json:
        emit_json({"path": str(written), "target": target.to_dict(), "check": checked})
        return
    click.echo(f"saved target '{name}' to {written}")
    if checked:
        click.echo(render_pairs([("host key", checked["host_key"]), ("auth", checked["auth"]),
                                 ("cipher", checked["cipher"]), ("work dir", checked["work_dir"])]))  # fmt: skip
    click.echo(f"next: edgeshrink doctor {name}")


@targets.command("remove")
@click.argument("name")
@click.option("--dry-run", is_flag=True, help="Show which file would be deleted; delete nothing.")
def targets_remove(name: str, dry_run: bool) -> None:
    """Delete a target that `targets add` saved (its file in the user config dir)."""

    path = target_file_path(name)
    if dry_run:
        if not path.is_file():
            raise TargetError(f"target '{name}' has no file {path}")
        click.echo(f"would delete {path}")
        return
    removed = remove_target(name)
    click.echo(f"removed target '{name}' ({removed})")


COMMANDS = (targets,)

__all__ = ["ACCEPT_NEW_HOST_KEY", "COMMANDS", "targets", "transfer_progress_printer"]
