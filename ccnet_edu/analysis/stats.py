"""Small statistics shared by the chapters: distances between attention rows, binomial intervals.

* :func:`total_variation` -- the total-variation distance between two
  distributions (rows of attention matrices);
* :func:`wilson_interval` -- Wilson's score interval for a proportion ``k/n``,
  which, unlike a bootstrap of the proportion, does not collapse to a point at
  ``k = 0`` or ``k = n``;
* :func:`value_range` -- how the chapters quote a range of values (over seeds)
  in prose: ``"low–high"``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from .._checks import check_float, check_int, check_tensor

__all__ = ["total_variation", "value_range", "wilson_interval"]


def total_variation(a: torch.Tensor, b: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Total-variation distance ``0.5 * sum |a - b|`` along ``dim``, one value per distribution.

    For two probability distributions (rows that are non-negative and sum to 1)
    this equals ``1 - sum min(a, b)``: the mass that must move to turn one into
    the other, 0 for equal rows and 1 for rows with disjoint supports.  ``a``
    and ``b`` must have the same shape; the result drops ``dim``.
    """
    check_tensor("a", a)
    check_tensor("b", b)
    if a.shape != b.shape:
        raise ValueError(
            f"a and b must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    return 0.5 * (a - b).abs().sum(dim)


def wilson_interval(successes: int, trials: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson's score interval ``(low, high)`` for a binomial proportion ``successes / trials``.

    Two-sided, at confidence ``level``.  It assumes independent trials; at
    ``successes == trials`` the upper end is 1 and the lower end
    ``n / (n + z^2)`` (z the normal quantile), not 1 as a percentile bootstrap
    of the proportion would give.
    """
    trials = check_int("trials", trials, minimum=1)
    successes = check_int("successes", successes, minimum=0)
    if successes > trials:
        raise ValueError(f"successes must be at most trials ({trials}), got {successes}")
    level = check_float("level", level)
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    z = float(torch.special.ndtri(torch.tensor((1.0 + level) / 2.0, dtype=torch.float64)))
    p = successes / trials
    centre = (p + z * z / (2 * trials)) / (1 + z * z / trials)
    half = (
        z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / (1 + z * z / trials)
    )
    return max(0.0, centre - half), min(1.0, centre + half)


def value_range(values: Iterable[float], digits: int = 2) -> str:
    """``"low–high"`` of ``values`` at ``digits`` decimals; one number where both ends print alike.

    The chapters quote a quantity over a model's seeds this way in sentences that
    they compute from the measurement.
    """
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise TypeError(f"values must be an iterable of numbers, got {type(values).__name__}")
    digits = check_int("digits", digits, minimum=0, maximum=12)
    numbers = []
    for value in values:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"values must hold numbers, got {type(value).__name__}")
        numbers.append(float(value))
    if not numbers:
        raise ValueError("values must hold at least one number")
    low, high = f"{min(numbers):.{digits}f}", f"{max(numbers):.{digits}f}"
    return low if low == high else f"{low}–{high}"
