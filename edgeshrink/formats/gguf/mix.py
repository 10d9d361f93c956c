"""A GGUF file that fits a size budget with the least estimated loss: a type per tensor.

Start from the stock llama.cpp type nearest the budget (its own per-tensor mix, as
llama.cpp would make it), then move tensors between types by their measured loss
(sensitivity.py): while the file is too big, move down the tensor that loses least per
byte saved; then move up the tensor that gains most per byte while it fits, and trade
(one up, the cheapest ones down) while a trade lowers the summed loss. Each tensor
only takes the types on its own front (no type that is larger and no better than
another), so every move is worth its bytes.

The file size a mix predicts is exact up to the metadata llama.cpp adds; the pipeline
checks the real file against the budget.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeshrink.errors import DoesNotFitError
from edgeshrink.formats.gguf.estimate import estimate_weight_bytes, fitting_type, type_bytes
from edgeshrink.formats.gguf.quant_types import quant_type
from edgeshrink.formats.gguf.reader import read_gguf
from edgeshrink.formats.gguf.sensitivity import TensorLoss, mix_types, mixable

ALIGNMENT = 32  # GGUF's default data alignment: every tensor's data starts on it
ADDED_METADATA = 512  # what llama.cpp's quantizer adds to the header (imatrix keys), at most
# Stock types a mix may start from, largest first (those needing an imatrix only with one).
START_TYPES = ("Q8_0", "Q6_K", "Q5_K_M", "Q5_K_S", "Q4_K_M", "Q4_K_S", "IQ4_XS", "Q3_K_L",
               "Q3_K_M", "IQ3_M", "IQ3_S", "Q3_K_S", "IQ3_XXS", "Q2_K", "IQ2_M", "IQ2_XS",
               "IQ2_XXS")  # fmt: skip
MAX_MOVES = 20_000


def padded(n: int) -> int:
    return -(-n // ALIGNMENT) * ALIGNMENT


@dataclass(frozen=True)
class Mix:
    """The type of every mixable tensor, and what the choice expects of it."""

    budget_bytes: int
    start: str  # the stock type it started from
    types: dict[str, str] = field(compare=False)
    estimated_bytes: int = 0
    loss: float = 0.0  # summed estimated loss of the mix
    start_loss: float = 0.0  # ... of the stock type it started from
    start_bytes: int = 0
    moved_up: int = 0
    moved_down: int = 0

    @property
    def sha256(self) -> str:
        return hashlib.sha256(json.dumps(self.types, sort_keys=True).encode()).hexdigest()

    def type_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for t in self.types.values():
            counts[t] = counts.get(t, 0) + 1
        return dict(sorted(counts.items(), key=lambda kv: -kv[1]))

    def describe(self) -> str:
        counts = ", ".join(f"{n} {t}" for t, n in self.type_counts().items())
        return (
            f"from {self.start}: {self.moved_up} tensors up, {self.moved_down} down ({counts}); "
            f"estimated loss {self.loss:.4g} vs {self.start_loss:.4g} for {self.start}"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "budget_bytes": self.budget_bytes, "start": self.start, "sha256": self.sha256,
            "estimated_bytes": self.estimated_bytes, "loss": self.loss,
            "start_loss": self.start_loss, "start_bytes": self.start_bytes,
            "moved_up": self.moved_up, "moved_down": self.moved_down, "types": self.types,
        }  # fmt: skip


def fixed_bytes(src: str | Path) -> int:
    """The bytes of a quantized file that no mix changes: its header (with what the
    quantizer adds) and the tensors it does not quantize (norms)."""
    reader = read_gguf(src)
    shapes = [(t.name, tuple(int(d) for d in t.shape), t.tensor_type.name) for t in reader.tensors]
    mixed = {name for name, _s, _t in mixable(shapes)}
    kept = sum(padded(int(t.n_bytes)) for t in reader.tensors if t.name not in mixed)
    return int(reader.data_offset) + ADDED_METADATA + kept


def smallest_bytes(shapes: list[tuple[str, tuple[int, ...], str]], with_imatrix: bool) -> int:
    """Tensor bytes of the smallest mix: every tensor at the smallest type it can take."""
    total = 0
    for _name, shape, _type in mixable(shapes):
        n = 1
        for d in shape:
            n *= d
        total += min(
            padded(type_bytes(fitting_type(t, shape[0]), n)) for t in mix_types(with_imatrix)
        )
    return total


def megabytes(n: int) -> str:
    return f"{n / 1e6:,.1f} MB" if n < 1e9 else f"{n / 1e9:,.2f} GB"


def nearest_stock_type(shapes: list[tuple[str, tuple[int, ...], str]], tensor_budget: int,
                       with_imatrix: bool) -> str:  # fmt: skip
    """The stock type whose estimated tensor bytes are nearest the budget."""
    usable = [q for q in START_TYPES if with_imatrix or not quant_type(q).needs_imatrix]
    return min(usable, key=lambda q: abs(estimate_weight_bytes(shapes, q) - tensor_budget))


class _Tensor:
    """One tensor's front of (type, bytes, loss), smallest first, and where it stands."""

    def __init__(self, loss: TensorLoss) -> None:
        ranked = sorted(loss.options.items(), key=lambda kv: (kv[1][0], kv[1][1]))
        front: list[tuple[str, int, float]] = []
        for t, (n, value) in ranked:
            if not front or value < front[-1][2]:
                front.append((t, padded(n), value))
        self.name, self.front, self.at = loss.name, front, 0

    def place(self, wanted: str | None, all_options: dict[str, tuple[int, float]]) -> None:
        """Stand at ``wanted``, or at the front's type nearest its size."""
        names = [t for t, _n, _l in self.front]
        if wanted in names:
            self.at = names.index(wanted)
            return
        size = padded(all_options[wanted][0]) if wanted in all_options else self.front[0][1]
        self.at = min(range(len(self.front)), key=lambda i: abs(self.front[i][1] - size))

    @property
    def bytes(self) -> int:
        return self.front[self.at][1]

    @property
    def loss(self) -> float:
        return self.front[self.at][2]

    def moves(self, up: bool) -> list[tuple[float, int, float, int]]:
        """(loss change per byte, to, loss change, byte change) of each move one way."""
        out = []
        targets = range(self.at + 1, len(self.front)) if up else range(self.at)
        for j in targets:
            d_bytes = self.front[j][1] - self.bytes
            d_loss = self.front[j][2] - self.loss
            out.append((d_loss / d_bytes, j, d_loss, d_bytes))
        return out


def choose_mix(
    losses: list[TensorLoss], start_types: dict[str, str], budget: int, fixed: int, start: str
) -> Mix:
    """The types of a file of at most ``budget`` bytes (``fixed`` of them not the
    tensors'), from the stock mix ``start_types`` (see the module docstring)."""
    tensors = [_Tensor(t) for t in losses]
    for tensor, loss in zip(tensors, losses, strict=True):
        tensor.place(start_types.get(tensor.name), loss.options)
    first = {t.name: t.at for t in tensors}
    start_loss = sum(t.loss for t in tensors)
    start_bytes = fixed + sum(t.bytes for t in tensors)
    size = start_bytes
    moves = 0
    while size > budget and moves < MAX_MOVES:
        # Down: the least loss per byte saved (ratios of moves down are loss / -bytes).
        options = [(ratio, t, j, db) for t in tensors for ratio, j, _dl, db in t.moves(False)]
        if not options:
            break
        _r, tensor, j, db = min(options, key=lambda o: -o[0])
        tensor.at, size, moves = j, size + db, moves + 1
    while moves < MAX_MOVES:
        room = budget - size
        ups = sorted(
            ((ratio, t, j, dl, db) for t in tensors for ratio, j, dl, db in t.moves(True)),
            key=lambda o: o[0],
        )  # most loss removed per byte first (ratios are negative)
        fit = next((u for u in ups if u[4] <= room), None)
        if fit is not None:
            _r, tensor, j, _dl, db = fit
            tensor.at, size, moves = j, size + db, moves + 1
            continue
        traded = _trade(tensors, ups[:32], size, budget)
        if traded is None:
            break
        size, moves = traded, moves + 1
    if size > budget:
        smallest = fixed + sum(t.front[0][1] for t in tensors)
        raise DoesNotFitError(
            f"the smallest mix is {megabytes(smallest)}; the budget is {megabytes(budget)}",
            hint=f"give a budget of at least {megabytes(smallest)}, or use a smaller model",
        )
    chosen = {t.name: t.front[t.at][0] for t in tensors}
    return Mix(
        budget_bytes=budget, start=start, types=chosen, estimated_bytes=size,
        loss=sum(t.loss for t in tensors), start_loss=start_loss, start_bytes=start_bytes,
        moved_up=sum(t.at > first[t.name] for t in tensors),
        moved_down=sum(t.at < first[t.name] for t in tensors),
    )  # fmt: skip


def _trade(tensors: list[_Tensor], ups: list[Any], size: int, budget: int) -> int | None:
    """One move up paid for by the cheapest moves down of other tensors, if together they
    lower the summed loss; the new size, or None when no trade helps."""
    for _r, up, j, gained, grown in ups:
        need = size + grown - budget
        downs = [
            (max(t.moves(False), key=lambda m: m[0]), t) for t in tensors if t is not up and t.at
        ]
        downs.sort(key=lambda d: -d[0][0])  # the least loss per byte freed first
        freed, cost, chosen = 0, 0.0, []
        for (_ratio, to, lost, shrunk), tensor in downs:
            if freed >= need:
                break
            freed, cost = freed - shrunk, cost + lost
            chosen.append((tensor, to))
        if freed >= need and gained + cost < -1e-12:
            up.at = j
            for tensor, to in chosen:
                tensor.at = to
            return size + grown - freed
    return None
