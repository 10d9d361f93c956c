"""`push`: put an artifact on a device, verified there, without benchmarking it."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import click

from edgeshrink.cli.common import ACCEPT_NEW_HOST_KEY, JSON_OPTION, emit_json, progress_printer
from edgeshrink.cli.targets import transfer_progress_printer
from edgeshrink.deploy import push_model
from edgeshrink.report.table import render_pairs
from edgeshrink.targets import get_target
from edgeshrink.util import human_bytes


@click.command()
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option(
    "--target", "-t", "target_name", default="local", show_default=True,
    help="Target name (see `edgeshrink targets list`), or user@host[:port].",
)  # fmt: skip
@ACCEPT_NEW_HOST_KEY
@JSON_OPTION
def push(artifact: Path, target_name: str, accept_new_host_key: bool, as_json: bool) -> None:
    """Push ARTIFACT (and the data files it needs) to a target.

    \b
    The device keeps it at WORK_DIR/models/<sha256>/<name>: it hashes what it
    receives and renames only verified bytes into place; an interrupted push
    resumes; an unchanged artifact already there is not sent again.
    """

    target = replace(get_target(target_name), accept_new_host_key=accept_new_host_key)
    pushed = push_model(
        artifact, target, progress=progress_printer(as_json),
        push_progress=transfer_progress_printer(as_json),
    )  # fmt: skip
    main = pushed[0]
    if as_json:
        emit_json(
            {
                "target": target.name,
                "artifact": str(artifact),
                "sha256": main.sha256,
                "remote": main.remote,
                "files": [_file_doc(p) for p in pushed],
            }
        )
        return
    pairs: list[tuple[str, object]] = []
    for p in pushed:
        if p.skipped:
            what = "already there (same sha256)"
        else:
            speed = p.bytes_sent / p.seconds / 1e6 if p.seconds > 0 else 0.0
            via = " (OpenSSH)" if p.via == "openssh" else ""
            what = f"{human_bytes(p.bytes_sent)} in {p.seconds:.2f} s, {speed:,.1f} MB/s{via}"
        pairs += [("file", p.local.name), ("pushed", what), ("remote", p.remote)]
    pairs.append(("sha256", main.sha256))
    pairs.append(("target", f"{target.name} ({target.describe()})"))
    click.echo(render_pairs(pairs))


def _file_doc(p: Any) -> dict[str, Any]:
    return {"local": str(p.local), "remote": p.remote, "sha256": p.sha256, "size_bytes": p.size_bytes,
            "bytes_sent": p.bytes_sent, "skipped": p.skipped, "seconds": p.seconds, "via": p.via}  # fmt: skip


COMMANDS = (push,)

__all__ = ["COMMANDS", "push"]
