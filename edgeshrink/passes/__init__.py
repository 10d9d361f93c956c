"""Shrinking techniques as passes, recipes as data.

A pass (quantize, prune, ...) declares its settings with their defaults and checks,
the formats whose backends carry it out, and what it produces. A recipe is an
ordered tuple of steps, each a pass with its settings; it is stored in the
artifact's manifest (``edgeshrink.artifact/2``) and, with the input's bytes, is the
key under which an artifact is reused. Nothing here imports a runtime: listing the
passes is data.

    >>> recipe = (step("prune", layers=[7, 8]), step("quantize", type="Q4_K_M"))
    >>> recipe_text(recipe)
    'prune(layers=[7, 8]) ▸ quantize(type=Q4_K_M)'
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from edgeshrink.errors import RecipeError
from edgeshrink.passes.base import REQUIRED, Pass, Recipe, Setting, Step
from edgeshrink.passes.distill import DISTILL
from edgeshrink.passes.prune import PRUNE
from edgeshrink.passes.quantize import QUANTIZE

# Every pass by name, in the order a recipe applies them.
PASSES: dict[str, Pass] = {p.name: p for p in (PRUNE, DISTILL, QUANTIZE)}


def passes() -> dict[str, Pass]:
    """Every pass by name, in the order a recipe applies them."""
    return dict(PASSES)


def get_pass(name: str) -> Pass:
    known = passes()
    if name not in known:
        raise RecipeError(f"no pass named {name!r}", hint=f"the passes are: {', '.join(known)}")
    return known[name]


def step(name: str, **values: Any) -> Step:
    """A validated step: unknown settings and bad values raise RecipeError with a hint."""
    return get_pass(name).make(**values)


# What a step's tool recorded it did (not settings: a recipe is compared without them).
RECORDED = ("detail", "recorded")


def from_manifest(doc: Iterable[Mapping[str, Any]]) -> tuple[dict[str, Any], ...]:
    """A manifest's recipe without what the tools recorded, for comparing recipes."""
    return tuple({k: v for k, v in p.items() if k not in RECORDED} for p in doc)


def check_recipe(recipe: Recipe, fmt: str) -> None:
    """Refuse a recipe with a pass the format's backend cannot carry out, or out of order."""
    order = list(passes())
    positions = [order.index(s.name) for s in recipe]
    if positions != sorted(positions):
        raise RecipeError(
            f"recipe {recipe_text(recipe)}: passes out of order",
            hint=f"a recipe applies them in this order: {' ▸ '.join(order)}",
        )
    for s in recipe:
        spec = get_pass(s.name)
        if fmt not in spec.formats:
            raise RecipeError(
                f"{s.name} is not available for {fmt} models",
                hint=f"{s.name} works on: {', '.join(spec.formats)}",
            )


def recipe_text(recipe: Iterable[Step | Mapping[str, Any]]) -> str:
    """``prune(layers=[7, 8]) ▸ quantize(type=Q4_K_M)``; what a tool recorded in brackets."""
    parts = []
    for s in recipe:
        if isinstance(s, Step):
            parts.append(str(s))
            continue
        settings = ", ".join(f"{k}={v}" for k, v in s.items() if k not in ("pass", *RECORDED))
        detail = f" [{s['detail']}]" if s.get("detail") else ""
        parts.append(f"{s.get('pass', '?')}({settings}){detail}")
    return " ▸ ".join(parts)


__all__ = [
    "RECORDED", "REQUIRED", "Pass", "Recipe", "Setting", "Step", "check_recipe", "from_manifest",
    "get_pass", "passes", "recipe_text", "step",
]  # fmt: skip
