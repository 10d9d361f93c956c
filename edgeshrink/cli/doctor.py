"""`doctor`: what a device really is and has (written with the SSH targets issue)."""

from __future__ import annotations

COMMANDS: tuple = ()
