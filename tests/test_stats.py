"""ccnet_edu.analysis.stats: total variation and Wilson's interval against independent forms."""

from __future__ import annotations

import math

import pytest
import torch

from ccnet_edu.analysis import total_variation, value_range, wilson_interval


def test_total_variation_is_one_minus_overlap():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(3, 5, 7, generator=g, dtype=torch.float64).softmax(-1)
    b = torch.rand(3, 5, 7, generator=g, dtype=torch.float64).softmax(-1)
    tv = total_variation(a, b)
    assert tv.shape == (3, 5)
    torch.testing.assert_close(tv, 1 - torch.minimum(a, b).sum(-1))
    c = torch.rand(3, 5, 7, generator=g, dtype=torch.float64).softmax(1)
    d = torch.rand(3, 5, 7, generator=g, dtype=torch.float64).softmax(1)
    torch.testing.assert_close(total_variation(c, d, dim=1), 1 - torch.minimum(c, d).sum(1))
    assert float(total_variation(a, a).abs().max()) == 0.0
    disjoint = total_variation(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0]))
    assert float(disjoint) == 1.0


def test_total_variation_bad_input():
    with pytest.raises(ValueError, match="same shape"):
        total_variation(torch.ones(3), torch.ones(4))
    with pytest.raises(TypeError, match="a"):
        total_variation([1.0], torch.ones(1))


def test_wilson_interval_matches_the_closed_form():
    # n = 100, k = 30, 95%: the textbook values 0.2189 and 0.3958
    low, high = wilson_interval(30, 100)
    assert low == pytest.approx(0.21888, abs=1e-4) and high == pytest.approx(0.39575, abs=1e-4)
    z = 1.959963984540054
    low, high = wilson_interval(55, 55)
    assert high == 1.0 and low == pytest.approx(55 / (55 + z * z), rel=1e-9)
    low, high = wilson_interval(0, 10, level=0.9)
    assert low == 0.0 and 0 < high < 1
    # the interval is the set of p whose score test accepts: its ends solve (k - np)^2 = z^2 np(1-p)
    for p in wilson_interval(7, 20):
        assert (7 - 20 * p) ** 2 == pytest.approx(z * z * 20 * p * (1 - p), rel=1e-9)
    assert math.isclose(sum(wilson_interval(10, 20)), 1.0)


def test_wilson_interval_bad_input():
    with pytest.raises(ValueError, match="successes"):
        wilson_interval(5, 4)
    with pytest.raises(ValueError, match="trials"):
        wilson_interval(0, 0)
    with pytest.raises(ValueError, match="level"):
        wilson_interval(1, 2, level=1.0)
    with pytest.raises(TypeError, match="successes"):
        wilson_interval(1.5, 2)


def test_value_range_prints_both_ends_or_one_number():
    assert value_range([0.912, 0.908, 0.916]) == "0.91–0.92"
    assert value_range([0.912, 0.908, 0.916], digits=3) == "0.908–0.916"
    assert value_range([0.999, 1.0, 0.9996]) == "1.00"  # both ends print alike
    assert value_range(v for v in (3, 1)) == "1.00–3.00"  # any iterable, ints too
