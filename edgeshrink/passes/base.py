"""The types every pass and recipe share (edgeshrink.passes lists the passes)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
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

    def make(self, **values: Any) -> Step:
        """A validated step of this pass: unknown settings and bad values raise RecipeError."""
        for key in values:
            self.setting(key)
        settings = []
        for s in self.settings:
            if s.name in values and values[s.name] is not None:
                settings.append((s.name, s.coerce(self.name, values[s.name])))
            elif s.default is REQUIRED:
                raise RecipeError(f"{self.name}: the setting {s.name!r} is required", hint=s.help)
            elif s.default is not None:
                settings.append((s.name, s.default))
        return Step(self.name, tuple(settings))


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


def removed_layers(recipe: Iterable[Step]) -> tuple[int, ...]:
    """The blocks a recipe's prune steps remove (0-based, in the original's numbering)."""
    return tuple(i for s in recipe if s.name == "prune" for i in s.get("layers"))
