"""Small statistics shared by the chapters: distances between attention rows, binomial intervals.

* :func:`total_variation` -- the total-variation distance between two
  distributions (rows of attention matrices);
* :func:`wilson_interval` -- Wilson's score interval for a proportion ``k/n``,
  which, unlike a bootstrap of the proportion, does not collapse to a point at
  ``k = 0`` or ``k = n``;
* :func:`image_bootstrap` -- a percentile interval for an accuracy, or for the
  difference of two, over queries that come in clusters (the queries of one
  image): whole images are resampled, not single queries;
* :func:`value_range` -- how the chapters quote a range of values (over seeds)
  in prose: ``"low–high"``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch

from .._checks import check_float, check_int, check_memory, check_tensor

__all__ = [
    "BootstrapInterval",
    "image_bootstrap",
    "total_variation",
    "value_range",
    "wilson_interval",
]

MAX_RESAMPLES = 1_000_000
"""The most resamples :func:`image_bootstrap` accepts."""


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


@dataclass(frozen=True)
class BootstrapInterval:
    """What :func:`image_bootstrap` returns: the statistic as observed and its interval."""

    estimate: float  # the statistic on the queries as given
    low: float  # the interval's ends: percentiles of the statistic over the resamples
    high: float
    images: int  # the number of distinct images (clusters) that were resampled


def _check_mask(name: str, mask: object, length: int) -> torch.Tensor:
    mask = check_tensor(name, mask, dim=1, kind="bool", nonempty=False)
    if len(mask) != length:
        raise ValueError(f"{name} must have one entry per query ({length}), got {len(mask)}")
    if not mask.any():
        raise ValueError(f"{name} must select at least one query")
    return mask


def image_bootstrap(
    image: torch.Tensor,
    correct: torch.Tensor,
    within: torch.Tensor | None = None,
    minus: torch.Tensor | None = None,
    *,
    level: float = 0.95,
    resamples: int = 2000,
    generator: torch.Generator | None = None,
) -> BootstrapInterval:
    """Percentile interval of an accuracy (or a difference of two), resampling whole images.

    The queries are rows of a 1-d table: ``image`` (int) says which image each
    query comes from, ``correct`` (bool) whether it was labelled right.  The
    queries of one image are not independent (they share the image's beacon and
    shapes), so each resample draws ``len(images)`` of the distinct images with
    replacement and keeps all of their queries (a *cluster bootstrap*); every
    image in ``image`` is a cluster, including images none of whose queries is
    selected below.

    The statistic is the accuracy of the queries selected by ``within`` (a bool
    mask; all queries when ``None``), minus, when ``minus`` is given, the
    accuracy of the queries it selects.  A resample that draws no query of a
    group gives no value and is left out of the percentiles (``nanquantile``).
    The interval is two-sided at ``level``: the ``(1 - level) / 2`` and
    ``(1 + level) / 2`` quantiles (linear interpolation) of the statistic over
    ``resamples`` resamples drawn with ``generator``.  A percentile interval of a
    group that is 100% correct in the data collapses to 1 (every resample is
    too); :func:`wilson_interval` does not.
    """
    image = check_tensor("image", image, dim=1, kind="int")
    correct = check_tensor("correct", correct, dim=1, kind="bool")
    if len(correct) != len(image):
        raise ValueError(
            f"correct must have one entry per query ({len(image)}), got {len(correct)}"
        )
    within = (
        torch.ones_like(correct) if within is None else _check_mask("within", within, len(image))
    )
    groups = [within] if minus is None else [within, _check_mask("minus", minus, len(image))]
    level = check_float("level", level)
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    resamples = check_int("resamples", resamples, minimum=1, maximum=MAX_RESAMPLES)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator)}")
    images, index = torch.unique(image.cpu(), return_inverse=True)
    # the drawn image indices (int64) and the per-resample counts gathered from them (float64)
    check_memory(
        f"resamples {resamples} over {len(images)} images",
        8.0 * resamples * len(images) * (1 + 2 * len(groups)),
        hint="lower resamples",
    )
    counts = torch.zeros(2 * len(groups), len(images), dtype=torch.float64)
    for g, mask in enumerate(groups):  # per image: queries of the group, and those right
        mask = mask.cpu()
        counts[2 * g].index_add_(0, index, mask.double())
        counts[2 * g + 1].index_add_(0, index, (mask & correct.cpu()).double())
    picks = torch.randint(len(images), (resamples, len(images)), generator=generator)
    drawn = counts[:, picks].sum(2)  # (2 G, resamples)
    observed = counts.sum(1)  # (2 G,)

    def statistic(n: torch.Tensor) -> torch.Tensor:
        value = n[1] / n[0]  # nan where a resample drew no query of the group
        return value - n[3] / n[2] if len(groups) == 2 else value

    tails = torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64)
    low, high = torch.nanquantile(statistic(drawn), tails).tolist()
    return BootstrapInterval(float(statistic(observed)), low, high, len(images))
