"""Transports: how files get to a device and how commands run there."""

from __future__ import annotations

from edgeshrink.errors import TargetError
from edgeshrink.targets import Target
from edgeshrink.transport.base import CommandResult, PushResult, Transport


def open_transport(target: Target) -> Transport:
    if target.kind == "local":
        from edgeshrink.transport.local import LocalTransport

        return LocalTransport(target)
    raise TargetError(
        f"target '{target.name}' is of kind {target.kind!r}, which this version cannot reach yet",
        hint="use --target local",
    )


__all__ = ["CommandResult", "PushResult", "Transport", "open_transport"]
