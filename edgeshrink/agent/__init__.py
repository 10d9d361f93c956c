"""The on-device benchmark agent, seen from the host.

The agent itself is one standard-library-only file, ``edgeshrink_agent.py``,
that the host copies to a device and runs with the device's Python.  This
module only locates that file and reads its version without importing it (the
agent protects the process's stdout when it runs, which an import must not do).
"""

from __future__ import annotations

import re
from pathlib import Path

AGENT_PATH: Path = Path(__file__).with_name("edgeshrink_agent.py")
# Quality on the device: the reference's reader and the figures, pushed beside the agent.
QUALITY_MODULE_PATH: Path = Path(__file__).with_name("device_quality.py")
# Run by the device's Python for doctor and the lab (Python 2.7-compatible syntax).
DEVICE_FACTS_PATH: Path = Path(__file__).with_name("device_facts.py")
SCHEMA = "edgeshrink.bench/1"

_VERSION_LINE = re.compile(r'^AGENT_VERSION\s*=\s*["\']([^"\']+)["\']\s*$', re.MULTILINE)


def read_agent_version(path: Path = AGENT_PATH) -> str:
    """The ``AGENT_VERSION = "..."`` of an agent file, read as text."""
    match = _VERSION_LINE.search(path.read_text(encoding="utf-8"))
    if match is None:
        raise ValueError(f'{path} has no AGENT_VERSION = "..." line')
    return match.group(1)


AGENT_VERSION: str = read_agent_version()

__all__ = [
    "AGENT_PATH", "AGENT_VERSION", "DEVICE_FACTS_PATH", "QUALITY_MODULE_PATH", "SCHEMA",
    "read_agent_version",
]  # fmt: skip
