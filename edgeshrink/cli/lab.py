"""`lab`: nightly runs across a fleet of devices (written with the device-lab issue)."""

from __future__ import annotations

COMMANDS: tuple = ()
