"""What running a model costs, from its measured speed and the hardware's price.

    cost per 1M tokens = price per hour / (tokens per second x 3600 x utilization) x 1e6

The price is the profile's (a cloud instance by the hour; an edge device's purchase
spread over its lifetime plus the power it draws). Utilization is the share of the
hour the hardware spends generating: a server that is busy half the time pays for the
idle half too. A load (tokens per day) gives the number of instances or devices it
needs and what they cost a month (730 hours).
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
from typing import Any

from edgeshrink.errors import EdgeshrinkError

HOURS_PER_MONTH = 730.0
_LOAD = re.compile(
    r"^\s*([0-9]*\.?[0-9]+)\s*([kKmMbBgG]?)\s*-?\s*tokens?\s*/\s*(second|s|minute|min|hour|h|day|d|month)\s*$"
)
_SCALE = {"": 1.0, "k": 1e3, "m": 1e6, "b": 1e9, "g": 1e9}
_PER_DAY = {"second": 86400, "s": 86400, "minute": 1440, "min": 1440, "hour": 24, "h": 24,
            "day": 1, "d": 1, "month": 12 / 365}  # fmt: skip


@dataclass(frozen=True)
class Load:
    tokens_per_day: float
    text: str

    @property
    def tokens_per_s(self) -> float:
        return self.tokens_per_day / 86400


def parse_load(text: str) -> Load:
    """``20M-tokens/day``, ``500k tokens/hour``, ``1B-tokens/month``."""
    match = _LOAD.match(text)
    if not match:
        raise EdgeshrinkError(
            f"--load {text!r}: not a number of tokens per second, minute, hour, day or month",
            hint="e.g. --load 20M-tokens/day or --load 500k-tokens/hour",
        )
    number, scale, per = match.groups()
    tokens = float(number) * _SCALE[scale.lower()] * _PER_DAY[per]
    if tokens <= 0:
        raise EdgeshrinkError(
            f"--load {text!r} is no load", hint="give a positive number of tokens"
        )
    return Load(tokens, text)


@dataclass(frozen=True)
class Cost:
    """One candidate's cost, with every input shown so the figure can be checked."""

    candidate: str
    tokens_per_s: float
    utilization: float
    hourly_usd: float
    per_million_usd: float
    units: int | None = None  # instances or devices the load needs
    monthly_usd: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def cost_of(candidate: str, tokens_per_s: float, hourly_usd: float, utilization: float,
            load: Load | None = None) -> Cost:  # fmt: skip
    per_million = hourly_usd / (tokens_per_s * 3600 * utilization) * 1e6
    units = monthly = None
    if load is not None:
        units = max(1, math.ceil(load.tokens_per_s / (tokens_per_s * utilization)))
        monthly = units * hourly_usd * HOURS_PER_MONTH
    return Cost(candidate, tokens_per_s, utilization, hourly_usd, per_million, units, monthly)


def check_utilization(value: float) -> float:
    if not 0 < value <= 1:
        raise EdgeshrinkError(
            f"--utilization {value}: the share of each hour spent generating must be in (0, 1]",
            hint="e.g. --utilization 0.5 for hardware busy half the time",
        )
    return value
