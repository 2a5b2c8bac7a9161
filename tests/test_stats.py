"""ccnet_edu.analysis.stats: total variation, Wilson's interval and the image bootstrap against
independent forms."""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np
import pytest
import torch

from ccnet_edu.analysis import image_bootstrap, total_variation, value_range, wilson_interval


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


def _queries(seed=0, images=23, per_image=(1, 9)):
    # an odd number of images, each with its own number of queries and its own accuracy
    g = torch.Generator().manual_seed(seed)
    counts = torch.randint(per_image[0], per_image[1], (images,), generator=g)
    ids = torch.repeat_interleave(torch.arange(100, 100 + 3 * images, 3), counts)
    rate = torch.rand(images, generator=g).repeat_interleave(counts)
    correct = torch.rand(len(ids), generator=g) < rate
    share = torch.rand(len(ids), generator=g)
    return ids[torch.randperm(len(ids), generator=g)], correct, share  # queries in any order


def _loop_bootstrap(ids, correct, groups, level, resamples, seed):
    # the same resampling restated with Python loops: per resample, visit the drawn images and
    # tally their queries group by group; the percentiles through numpy (linear, as torch)
    by_image = defaultdict(list)
    for q, i in enumerate(ids.tolist()):
        by_image[i].append(q)
    order = sorted(by_image)
    picks = torch.randint(
        len(order), (resamples, len(order)), generator=torch.Generator().manual_seed(seed)
    )
    values = []
    for row in picks.tolist():
        accuracies = []
        for mask in groups:
            chosen = [q for k in row for q in by_image[order[k]] if mask[q]]
            accuracies.append(
                sum(bool(correct[q]) for q in chosen) / len(chosen) if chosen else math.nan
            )
        values.append(accuracies[0] - accuracies[1] if len(groups) == 2 else accuracies[0])
    tails = [100 * (1 - level) / 2, 100 * (1 + level) / 2]
    return np.nanpercentile(np.array(values), tails)


def test_image_bootstrap_matches_a_loop_over_images():
    ids, correct, share = _queries()
    everything = torch.ones_like(correct)
    one = image_bootstrap(ids, correct, resamples=300, generator=torch.Generator().manual_seed(4))
    np.testing.assert_allclose(
        [one.low, one.high],
        _loop_bootstrap(ids, correct, [everything], 0.95, 300, 4),
        rtol=0,
        atol=1e-12,
    )
    assert one.estimate == pytest.approx(float(correct.double().mean()), abs=1e-15)
    assert one.images == len(torch.unique(ids)) and one.low <= one.estimate <= one.high
    # a difference of two groups, with resamples that miss a group (left out of the percentiles)
    high, low = share >= 0.8, share < 0.1
    two = image_bootstrap(
        ids,
        correct,
        high,
        low,
        level=0.9,
        resamples=300,
        generator=torch.Generator().manual_seed(5),
    )
    np.testing.assert_allclose(
        [two.low, two.high],
        _loop_bootstrap(ids, correct, [high, low], 0.9, 300, 5),
        rtol=0,
        atol=1e-12,
    )
    expected = float(correct[high].double().mean() - correct[low].double().mean())
    assert two.estimate == pytest.approx(expected, abs=1e-15)


def test_image_bootstrap_resamples_images_not_queries():
    ids, correct, _ = _queries(seed=1)
    draw = {"resamples": 500}
    once = image_bootstrap(ids, correct, generator=torch.Generator().manual_seed(0), **draw)
    # every query repeated within its image: the same images, the same accuracies, the same
    # interval (a bootstrap of single queries would narrow by about 1/sqrt(2))
    twice = image_bootstrap(
        ids.repeat(2), correct.repeat(2), generator=torch.Generator().manual_seed(0), **draw
    )
    assert (twice.low, twice.high, twice.images) == (once.low, once.high, once.images)
    # one query per image: the ordinary bootstrap of a proportion, so about Wald's width
    g = torch.Generator().manual_seed(2)
    single = torch.rand(400, generator=g) < 0.3
    result = image_bootstrap(torch.arange(400), single, generator=g, resamples=4000)
    p = float(single.double().mean())
    wald = 1.959964 * math.sqrt(p * (1 - p) / 400)
    assert result.high - result.low == pytest.approx(2 * wald, rel=0.1)
    # a group that is 100% correct in the data: every resample is, so the interval is a point
    all_right = image_bootstrap(ids, torch.ones_like(correct), resamples=50)
    assert (all_right.low, all_right.high) == (1.0, 1.0)


def test_image_bootstrap_bad_input():
    ids, correct, _ = _queries()
    with pytest.raises(TypeError, match="image"):
        image_bootstrap(ids.double(), correct)
    with pytest.raises(TypeError, match="correct"):
        image_bootstrap(ids, correct.long())
    with pytest.raises(ValueError, match="correct"):
        image_bootstrap(ids, correct[:-1])
    with pytest.raises(ValueError, match="within"):
        image_bootstrap(ids, correct, torch.zeros_like(correct))
    with pytest.raises(ValueError, match="minus"):
        image_bootstrap(ids, correct, None, correct[:3])
    with pytest.raises(ValueError, match="level"):
        image_bootstrap(ids, correct, level=1.0)
    with pytest.raises(ValueError, match="resamples"):
        image_bootstrap(ids, correct, resamples=0)
    with pytest.raises(TypeError, match="generator"):
        image_bootstrap(ids, correct, generator=0)
