"""Plain-text tables for the terminal."""

from __future__ import annotations

from collections.abc import Sequence

from edgeshrink.util import terminal_safe


def render_table(
    headers: Sequence[str], rows: Sequence[Sequence[object]], *, right: Sequence[int] = ()
) -> str:
    """Columns padded to their widest cell; column indexes in ``right`` align right."""
    headers = [terminal_safe(h) for h in headers]
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, value in enumerate(row):
            widths[i] = max(widths[i], len(value))

    def line(values: Sequence[str]) -> str:
        parts = [
            v.rjust(widths[i]) if i in right else v.ljust(widths[i]) for i, v in enumerate(values)
        ]
        return "  ".join(parts).rstrip()

    out = [line(list(headers)), line(["-" * w for w in widths])]
    out.extend(line(row) for row in cells)
    return "\n".join(out)


def render_pairs(pairs: Sequence[tuple[str, object]]) -> str:
    keys = [terminal_safe(k) for k, _ in pairs]
    width = max((len(k) for k in keys), default=0)
    return "\n".join(f"{k.ljust(width)}  {_cell(v)}" for k, (_, v) in zip(keys, pairs, strict=True))


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return (
            f"{value:,.1f}"
            if abs(value) >= 100
            else f"{value:.3g}"
            if abs(value) < 1
            else f"{value:.2f}"
        )
    # Cells carry what devices and files say: never let them drive the terminal.
    return terminal_safe(value)
