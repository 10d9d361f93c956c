"""A sweep as a document: its result, how its budget reads, and what its costs are made
of (the profile's price, the utilization, the load), so that its page can be drawn now
and again later from the store."""

from __future__ import annotations

from typing import Any

from edgeshrink.cost import Load
from edgeshrink.profiles import HardwareProfile
from edgeshrink.sweep.types import SweepResult


def sweep_document(result: SweepResult, profile: HardwareProfile, *, load: Load | None = None,
                   utilization: float = 0.5) -> dict[str, Any]:  # fmt: skip
    doc = result.to_dict()
    doc["budget_text"] = result.budget.describe()
    if profile.price is not None:
        doc["cost"] = {
            "price": profile.price.describe(), "hourly_usd": profile.price.hourly_usd,
            "utilization": utilization, "load": load.text if load else None,
            "load_tokens_per_day": load.tokens_per_day if load else None,
        }  # fmt: skip
    return doc
