"""The statistics regression detection needs, in pure Python (no scipy on a lab host).

``mann_whitney_u`` follows scipy.stats.mannwhitneyu's ``method="auto"``: the
exact distribution of U when the smaller sample has at most 8 values and
there are no ties (and n1 × n2 stays under 20,000, where scipy would still be
exact), else the normal approximation with the tie correction and
a continuity correction.  tests/lab checks it against scipy where scipy is
installed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

ALTERNATIVES = ("two-sided", "less", "greater")
EXACT_UP_TO = 8  # scipy's rule: exact when min(n1, n2) <= 8 and there are no ties
# ...and, unlike scipy, only while the table of counts stays small (a few ms).
EXACT_MAX_CELLS = 20_000


@dataclass(frozen=True)
class MannWhitney:
    u: float  # U of the first sample
    p_value: float
    method: str  # exact | asymptotic


def median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    n = len(ordered)
    if n == 0:
        raise ValueError("median of no values")
    mid = n // 2
    return float(ordered[mid]) if n % 2 else (ordered[mid - 1] + ordered[mid]) / 2.0


def mad(values: Sequence[float]) -> float:
    """Median absolute deviation from the median (unscaled)."""
    centre = median(values)
    return median([abs(v - centre) for v in values])


def log_spread(values: Sequence[float]) -> float:
    """1.4826 × MAD of the logarithms: the typical factor between nights is exp(this).

    Speeds vary by factors (a busy night is 1.3× slower, not 300 tok/s
    slower), so their spread is measured on a log scale.  0 for fewer than 3
    values or any value <= 0.
    """
    if len(values) < 3 or any(v <= 0 for v in values):
        return 0.0
    return 1.4826 * mad([math.log(v) for v in values])


def _ranks(values: Sequence[float]) -> tuple[list[float], list[int]]:
    """Average ranks (1-based) and the sizes of the groups of ties."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    ties: list[int] = []
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        rank = (i + j) / 2.0 + 1.0
        for k in range(i, j + 1):
            ranks[order[k]] = rank
        if j > i:
            ties.append(j - i + 1)
        i = j + 1
    return ranks, ties


@lru_cache(maxsize=256)
def _u_counts(n1: int, n2: int) -> tuple[int, ...]:
    """How many orderings give each U = 0 .. n1*n2 (no ties)."""
    # The largest value is either from x (it beats all n values of y: U grows
    # by n) or from y: f(m, n)[u] = f(m - 1, n)[u - n] + f(m, n - 1)[u].
    previous = [[1] for _ in range(n2 + 1)]  # m = 0
    for m in range(1, n1 + 1):
        current = [[1]]  # n = 0
        for n in range(1, n2 + 1):
            counts = [0] * (m * n + 1)
            for u, c in enumerate(previous[n]):
                counts[u + n] += c
            for u, c in enumerate(current[n - 1]):
                counts[u] += c
            current.append(counts)
        previous = current
    return tuple(previous[n2])


def _exact_cdf(u: float, n1: int, n2: int) -> float:
    """P(U <= u) under the null hypothesis, no ties."""
    counts = _u_counts(n1, n2)
    total = math.comb(n1 + n2, n1)
    upto = math.floor(u + 1e-9)
    return sum(counts[: upto + 1]) / total


def _normal_sf(z: float) -> float:
    return 0.5 * math.erfc(z / math.sqrt(2.0))


def mann_whitney_u(
    x: Sequence[float], y: Sequence[float], alternative: str = "two-sided"
) -> MannWhitney:
    """Mann–Whitney U test of ``x`` against ``y``.

    ``alternative="less"`` asks whether x tends to be smaller than y,
    ``"greater"`` whether it tends to be larger.
    """
    if alternative not in ALTERNATIVES:
        raise ValueError(f"alternative must be one of {ALTERNATIVES}, not {alternative!r}")
    n1, n2 = len(x), len(y)
    if n1 == 0 or n2 == 0:
        raise ValueError("both samples need at least one value")
    ranks, ties = _ranks([*map(float, x), *map(float, y)])
    r1 = sum(ranks[:n1])
    u1 = r1 - n1 * (n1 + 1) / 2.0
    u2 = n1 * n2 - u1
    if min(n1, n2) <= EXACT_UP_TO and n1 * n2 <= EXACT_MAX_CELLS and not ties:
        # P(U >= u) = P(U <= n1*n2 - u) by symmetry.
        p_greater = _exact_cdf(n1 * n2 - u1, n1, n2)
        p_less = _exact_cdf(u1, n1, n2)
        if alternative == "greater":
            p = p_greater
        elif alternative == "less":
            p = p_less
        else:
            p = 2.0 * min(p_greater, p_less)
        return MannWhitney(u1, min(1.0, p), "exact")
    n = n1 + n2
    mu = n1 * n2 / 2.0
    tie_term = sum(t**3 - t for t in ties) / (n * (n - 1)) if n > 1 else 0.0
    sigma = math.sqrt(n1 * n2 / 12.0 * ((n + 1) - tie_term))
    if sigma == 0:
        return MannWhitney(u1, 1.0, "asymptotic")
    if alternative == "greater":
        p = _normal_sf((u1 - mu - 0.5) / sigma)
    elif alternative == "less":
        p = _normal_sf((u2 - mu - 0.5) / sigma)
    else:
        p = 2.0 * _normal_sf((max(u1, u2) - mu - 0.5) / sigma)
    return MannWhitney(u1, min(1.0, max(0.0, p)), "asymptotic")
