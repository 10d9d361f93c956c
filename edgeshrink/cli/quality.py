"""`eval`: how much quality a shrunk model lost against its original."""

from __future__ import annotations

COMMANDS: tuple = ()
