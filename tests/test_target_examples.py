"""The example target files in targets/ are valid, so users can copy them."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeshrink.targets import load_target_file

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "targets").glob("example-*.toml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_target_loads(path: Path) -> None:
    target = load_target_file(path)
    assert target.name and target.kind in ("local", "ssh") and target.profile
    if target.kind == "ssh":
        assert target.host and target.user


def test_there_are_examples() -> None:
    assert len(EXAMPLES) >= 2
