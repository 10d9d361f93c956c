"""Transports: how files get to a device and how commands run there."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from edgeshrink.errors import TargetError
from edgeshrink.targets import Target
from edgeshrink.transport.base import CommandResult, PushResult, Transport
from edgeshrink.transport.local import LocalTransport


def open_transport(
    target: Target,
    *,
    progress: Callable[[Any], None] | None = None,
    on_stderr: Callable[[str], None] | None = None,
) -> Transport:
    """A transport for ``target`` (nothing connects until it is first used).

    ``progress`` gets a :class:`~edgeshrink.transport.ssh.PushProgress` about
    once per MiB pushed (SSH only: the local transport copies) and ``on_stderr``
    each stderr line of a run, as it comes.
    """
    if target.kind == "local":
        return LocalTransport(target, on_stderr=on_stderr)
    if target.kind == "ssh":
        from edgeshrink.transport.ssh import SSHTransport

        return SSHTransport(target, progress=progress, on_stderr=on_stderr)
    raise TargetError(
        f"target '{target.name}' is of kind {target.kind!r}, which this version cannot reach",
        hint="use a local or ssh target",
    )


__all__ = ["CommandResult", "PushResult", "Transport", "open_transport"]
