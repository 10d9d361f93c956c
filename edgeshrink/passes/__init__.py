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

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from edgeshrink.errors import RecipeError

REQUIRED = object()  # a setting without a default


@dataclass(frozen=True)
class Setting:
    name: str
    kind: type  # str, int, float, bool or tuple (a list of ints)
    help: str
    default: Any = REQUIRED
    # Returns what is wrong with a value (None when it is fine).
    check: Callable[[Any], str | None] | None = None
    # The canonical form of a valid value (e.g. layers sorted), so equal recipes compare equal.
    normalize: Callable[[Any], Any] | None = None

    def coerce(self, pass_name: str, value: Any) -> Any:
        where = f"{pass_name}({self.name}=...)"
        if self.kind is tuple:
            if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
                raise RecipeError(f"{where}: expected a list, got {value!r}", hint=self.help)
            value = tuple(value)
            if not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
                raise RecipeError(
                    f"{where}: expected whole numbers, got {list(value)}", hint=self.help
                )
        elif self.kind is bool:
            if not isinstance(value, bool):
                raise RecipeError(f"{where}: expected true or false, got {value!r}", hint=self.help)
        elif self.kind in (int, float):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise RecipeError(f"{where}: expected a number, got {value!r}", hint=self.help)
            if self.kind is int and value != int(value):
                raise RecipeError(
                    f"{where}: expected a whole number, got {value!r}", hint=self.help
                )
            value = self.kind(value)
        elif not isinstance(value, self.kind):
            raise RecipeError(
                f"{where}: expected {self.kind.__name__}, got {value!r}", hint=self.help
            )
        problem = self.check(value) if self.check else None
        if problem:
            raise RecipeError(f"{where}: {problem}", hint=self.help)
        return self.normalize(value) if self.normalize else value


@dataclass(frozen=True)
class Pass:
    name: str
    summary: str
    formats: tuple[str, ...]  # the backends that carry it out
    produces: str  # what comes out, for `--help` and the docs
    settings: tuple[Setting, ...]

    def setting(self, name: str) -> Setting:
        for s in self.settings:
            if s.name == name:
                return s
        known = ", ".join(s.name for s in self.settings)
        raise RecipeError(f"{self.name}: no setting {name!r}", hint=f"{self.name} takes: {known}")


@dataclass(frozen=True)
class Step:
    """One pass of a recipe with its validated settings, in the pass's declared order."""

    name: str
    settings: tuple[tuple[str, Any], ...]

    def get(self, key: str, default: Any = None) -> Any:
        return dict(self.settings).get(key, default)

    def to_dict(self) -> dict[str, Any]:
        return {"pass": self.name} | {
            k: list(v) if isinstance(v, tuple) else v for k, v in self.settings
        }

    def __str__(self) -> str:
        return f"{self.name}({', '.join(f'{k}={_shown(v)}' for k, v in self.settings)})"


Recipe = tuple[Step, ...]


def _shown(value: Any) -> str:
    return str(list(value)) if isinstance(value, tuple) else str(value)


def _registry() -> dict[str, Pass]:
    from edgeshrink.passes.prune import PRUNE
    from edgeshrink.passes.quantize import QUANTIZE

    return {p.name: p for p in (PRUNE, QUANTIZE)}


def passes() -> dict[str, Pass]:
    """Every pass by name, in the order a recipe applies them."""
    return _registry()


def get_pass(name: str) -> Pass:
    known = passes()
    if name not in known:
        raise RecipeError(f"no pass named {name!r}", hint=f"the passes are: {', '.join(known)}")
    return known[name]


def step(name: str, **values: Any) -> Step:
    """A validated step: unknown settings and bad values raise RecipeError with a hint."""
    spec = get_pass(name)
    for key in values:
        spec.setting(key)
    settings = []
    for s in spec.settings:
        if s.name in values and values[s.name] is not None:
            settings.append((s.name, s.coerce(name, values[s.name])))
        elif s.default is REQUIRED:
            raise RecipeError(f"{name}: the setting {s.name!r} is required", hint=s.help)
        elif s.default is not None:
            settings.append((s.name, s.default))
    return Step(name, tuple(settings))


def from_manifest(doc: Iterable[Mapping[str, Any]]) -> tuple[dict[str, Any], ...]:
    """A manifest's recipe without what the tools recorded, for comparing recipes."""
    return tuple({k: v for k, v in p.items() if k != "detail"} for p in doc)


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
        settings = ", ".join(f"{k}={v}" for k, v in s.items() if k not in ("pass", "detail"))
        detail = f" [{s['detail']}]" if s.get("detail") else ""
        parts.append(f"{s.get('pass', '?')}({settings}){detail}")
    return " ▸ ".join(parts)


__all__ = [
    "REQUIRED", "Pass", "Recipe", "Setting", "Step", "check_recipe", "from_manifest",
    "get_pass", "passes", "recipe_text", "step",
]  # fmt: skip
