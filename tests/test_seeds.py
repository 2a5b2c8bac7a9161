"""ccnet_edu.analysis.seeds: finding, evaluating and summarising several seeds per model."""

from __future__ import annotations

import math
import statistics

import pytest
import torch

from ccnet_edu.analysis import seeds
from ccnet_edu.analysis.seeds import (
    SeedRun,
    Spread,
    checkpoint_stem,
    curve_band,
    evaluate_seeds,
    format_summary,
    load_seed,
    paired_below_count,
    paired_sign_flip_p,
    paired_t_p,
    recorded_seeds,
    shape_confusion,
    shipped_seeds,
    smallest_paired_p,
    summarise,
)
from ccnet_edu.data import make_sample
from ccnet_edu.models import CHECKPOINT_DIR, SegmentationModel, save_checkpoint
from ccnet_edu.train import evaluate


def _save(folder, stem, head="fcn", meta=None):
    torch.manual_seed(len(stem))
    model = SegmentationModel(head).eval()
    save_checkpoint(folder / f"{stem}.pt", model, meta or {})
    return model


def test_checkpoint_stem_follows_the_train_command():
    assert checkpoint_stem("rcca2", 0) == "rcca2"
    assert checkpoint_stem("rcca2", 3) == "rcca2_seed3"
    assert checkpoint_stem("rcca2_ccl0.1", 2) == "rcca2_ccl0.1_seed2"
    with pytest.raises(ValueError, match="_seed suffix"):
        checkpoint_stem("rcca2_seed1", 0)
    with pytest.raises(ValueError, match="seed must be >= 0"):
        checkpoint_stem("rcca2", -1)
    with pytest.raises(TypeError, match="seed must be an int"):
        checkpoint_stem("rcca2", 1.0)


def test_shipped_seeds_matches_whole_names_only(tmp_path):
    for stem in (
        "rcca2",
        "rcca2_seed3",
        "rcca2_seed10",
        "rcca2_ccl",
        "rcca2_ccl_seed1",
        "rcca2_ccl0.1",
        "rcca2x_seed1",
    ):
        (tmp_path / f"{stem}.pt").write_bytes(b"")
    (tmp_path / "rcca2_seed4.txt").write_bytes(b"")
    assert shipped_seeds("rcca2", tmp_path) == [0, 3, 10]
    assert shipped_seeds("rcca2_ccl", tmp_path) == [0, 1]
    assert shipped_seeds("rcca2_ccl0.1", tmp_path) == [0]
    assert shipped_seeds("nonlocal", tmp_path) == []
    with pytest.raises(ValueError, match="does not exist"):
        shipped_seeds("rcca2", tmp_path / "missing")


def test_shipped_checkpoints_are_found_by_default():
    stems = {p.stem for p in CHECKPOINT_DIR.glob("*.pt")}
    for name in ("fcn", "rcca2", "nonlocal"):
        found = shipped_seeds(name)
        assert found, name
        assert {checkpoint_stem(name, s) for s in found} <= stems


def test_load_seed_and_evaluate_seeds_agree_with_evaluate(tmp_path):
    curve = {"every": 2, "step": [2, 4], "loss": [1.0, 0.5]}
    meta = {
        "train_seconds": 12.5,
        "loss_curve": curve,
        "metrics": {"miou": 0.1},
        "command": "python -m ccnet_edu.train --all",
    }
    models = {s: _save(tmp_path, checkpoint_stem("fcn", s), meta=meta) for s in (0, 2)}
    loaded = load_seed("fcn", 2, tmp_path)
    assert torch.equal(loaded.head.classifier.weight, models[2].head.classifier.weight)
    with pytest.raises(ValueError, match=r"fcn_seed1\.pt.*seeds there for 'fcn': \[0, 2\]"):
        load_seed("fcn", 1, tmp_path)

    runs = evaluate_seeds(["fcn"], length=3, directory=tmp_path)
    assert [r.seed for r in runs["fcn"]] == [0, 2]
    for run in runs["fcn"]:
        direct = evaluate(models[run.seed], length=3)
        assert run.miou == direct["miou"] and run.far_acc == direct["far_acc"]
        assert run.iou == direct["iou"] and run.pixel_acc == direct["pixel_acc"]
        assert run.train_seconds == 12.5 and run.loss_curve == curve
        assert run.recorded == {"miou": 0.1} and run.command.startswith("python -m")
    only = evaluate_seeds(["fcn"], seeds=[2], length=2, directory=tmp_path)
    assert [r.seed for r in only["fcn"]] == [2]
    with pytest.raises(ValueError, match=r"seeds \[5\] not found"):
        evaluate_seeds(["fcn"], seeds=[0, 5], length=2, directory=tmp_path)
    with pytest.raises(ValueError, match="not found"):
        evaluate_seeds(["isa"], length=2, directory=tmp_path)
    with pytest.raises(TypeError, match="not one str"):
        evaluate_seeds("fcn", directory=tmp_path)


def test_recorded_seeds_read_the_checkpoints_metrics(tmp_path):
    metrics = {"miou": 0.5, "pixel_acc": 0.9, "far_acc": 0.85, "iou": [0.9, 0.5, 0.4, 0.2]}
    for seed in (0, 1):
        _save(
            tmp_path,
            checkpoint_stem("rcca2", seed),
            head="rcca2",
            meta={"metrics": dict(metrics, far_acc=0.85 - 0.1 * seed), "train_seconds": 3.0},
        )
    runs = recorded_seeds(["rcca2"], directory=tmp_path)["rcca2"]
    assert [r.seed for r in runs] == [0, 1]
    assert [r.far_acc for r in runs] == [0.85, 0.75] and runs[0].iou == metrics["iou"]
    assert [r.succeeded() for r in runs] == [True, False] and runs[1].train_seconds == 3.0
    _save(tmp_path, "fcn", meta={})
    with pytest.raises(ValueError, match="recorded no"):
        recorded_seeds(["fcn"], directory=tmp_path)
    with pytest.raises(ValueError, match="no checkpoints"):
        recorded_seeds(["isa"], directory=tmp_path)


def test_recorded_metrics_of_shipped_checkpoints_reproduce():
    """The shipped seed-0 checkpoints' recorded metrics equal a fresh evaluation."""
    for name in ("fcn", "rcca2"):
        recorded = recorded_seeds([name])[name][0]
        measured = evaluate_seeds([name], seeds=[0])[name][0]
        assert measured.miou == pytest.approx(recorded.miou, abs=1e-12)
        assert measured.far_acc == pytest.approx(recorded.far_acc, abs=1e-12)


def _run(seed, far, miou=None, iou=None, seconds=10.0, name="m", curve=None):
    return SeedRun(
        name,
        seed,
        miou if miou is not None else far,
        0.9,
        far,
        iou or [0.9, far, far / 2, 0.0],
        seconds,
        curve,
    )


def test_summarise_counts_successes_and_takes_medians():
    fars = [0.95, 0.6, 0.81, 0.79, 0.8]
    runs = [_run(s, f, seconds=10.0 * (s + 1)) for s, f in enumerate(fars)]
    summary = summarise(runs)
    assert summary.successes == 3  # 0.95, 0.81 and 0.8 (the threshold is inclusive)
    assert summary.threshold == seeds.SUCCESS_FAR_ACC == 0.8
    assert summary.runs == 5 and summary.seeds == [0, 1, 2, 3, 4]
    assert summary.far_acc.median == statistics.median(fars) == 0.8
    assert (summary.far_acc.low, summary.far_acc.high) == (0.6, 0.95)
    assert summary.iou_median == [0.9, 0.8, 0.4, 0.0]
    assert summary.train_seconds.median == 30.0 and summary.train_seconds.high == 50.0
    assert summarise(runs, threshold=0.9).successes == 1
    with pytest.raises(ValueError, match="one model"):
        summarise([_run(0, 0.9), _run(1, 0.9, name="other")])
    with pytest.raises(TypeError, match="non-empty"):
        summarise([])
    with pytest.raises(ValueError, match="threshold"):
        summarise(runs, threshold=1.5)


def test_spread_and_table_format():
    assert Spread.of([3, 1, 2]).format(1) == "2.0 [1.0–3.0]"
    assert Spread.of([1, 2, 3, 4]).median == 2.5
    with pytest.raises(ValueError, match="empty"):
        Spread.of([])
    table = format_summary([summarise([_run(0, 0.95, name="rcca2"), _run(1, 0.5, name="rcca2")])])
    lines = table.splitlines()
    assert lines[0].startswith("model") and "background / red / green / blue" in lines[0]
    assert lines[2].split()[:2] == ["rcca2", "1/2"]
    assert "0.725 [0.500–0.950]" in lines[2]


def test_curve_band_is_median_and_range_per_step():
    curves = [
        {"step": [20, 40], "loss": [3.0, 1.0]},
        {"step": [20, 40], "loss": [1.0, 0.2]},
        {"step": [20, 40], "loss": [2.0, 0.4]},
    ]
    runs = [_run(s, 0.9, curve=c) for s, c in enumerate(curves)]
    assert curve_band(runs) == ([20, 40], [2.0, 0.4], [1.0, 0.2], [3.0, 1.0])
    with pytest.raises(ValueError, match="no stored 'ccl' curve"):
        curve_band(runs, "ccl")
    runs[1].loss_curve = {"step": [10, 40], "loss": [1.0, 0.2]}
    with pytest.raises(ValueError, match="different steps"):
        curve_band(runs)


class _Oracle(torch.nn.Module):
    """Predicts the true labels of the validation samples, in the order they are drawn."""

    def __init__(self, seed, size):
        super().__init__()
        self.next, self.seed, self.size = 0, seed, size

    def forward(self, x):
        labels = [
            make_sample(self.seed, self.next + i, size=self.size)["label"] for i in range(len(x))
        ]
        self.next += len(x)
        return torch.nn.functional.one_hot(torch.stack(labels), 4).permute(0, 3, 1, 2).float()


class _Constant(torch.nn.Module):
    def __init__(self, label):
        super().__init__()
        self.label = label

    def forward(self, x):
        out = torch.zeros(len(x), 4, *x.shape[-2:])
        out[:, self.label] = 1.0
        return out


def test_shape_confusion_counts_shape_pixels_by_beacon_class():
    length, size = 7, 48
    expected = torch.zeros(3, dtype=torch.int64)
    for i in range(length):
        s = make_sample(10_000, i, size=size)
        expected[s["beacon_class"] - 1] += int(s["shape_mask"].sum())
    oracle = shape_confusion(_Oracle(10_000, size), length=length, size=size)
    assert torch.equal(oracle.diagonal(offset=1), expected)  # true class c -> column c
    assert oracle.sum() == expected.sum()
    constant = shape_confusion(_Constant(2), length=length, size=size)
    assert torch.equal(constant[:, 2], expected) and constant.sum() == expected.sum()
    with pytest.raises(TypeError, match="nn.Module"):
        shape_confusion("model")


def test_shape_confusion_feeds_a_float64_model_float64_images():
    length, size = 3, 48
    model = torch.nn.Conv2d(3, 4, 1).double()
    counts = shape_confusion(model, length=length, size=size)  # a float32 image would raise
    pixels = sum(int(make_sample(10_000, i, size=size)["shape_mask"].sum()) for i in range(length))
    assert counts.sum() == pixels


# Fisher's exact test against hand-computed hypergeometric sums (and SciPy's documented values).
@pytest.mark.parametrize(
    ("counts", "alternative", "expected"),
    [
        ((3, 5, 5, 5), "two-sided", 20 / 45),  # k = 3 and k = 5 (10/45 each) are as unlikely
        ((5, 5, 3, 5), "two-sided", 20 / 45),
        ((3, 5, 5, 5), "less", 10 / 45),
        ((3, 5, 5, 5), "greater", 1.0),
        ((5, 5, 0, 5), "greater", 1 / 252),  # every success in group a: one table of C(10, 5)
        ((5, 5, 0, 5), "two-sided", 2 / 252),
        ((0, 5, 5, 5), "less", 1 / 252),
        ((3, 4, 1, 4), "two-sided", 34 / 70),  # Fisher's tea tasting: weights 1, 16, 36, 16, 1
        ((3, 4, 1, 4), "greater", 17 / 70),
        ((3, 4, 1, 4), "less", 69 / 70),
        ((8, 10, 1, 6), "two-sided", 400 / 11440),  # scipy.stats.fisher_exact: 0.034965...
        ((0, 5, 0, 5), "two-sided", 1.0),
        ((5, 5, 5, 5), "two-sided", 1.0),
    ],
)
def test_fisher_exact_known_values(counts, alternative, expected):
    assert seeds.fisher_exact(*counts, alternative=alternative) == pytest.approx(
        expected, rel=1e-12
    )


def test_fisher_exact_symmetries():
    for a in range(6):
        for b in range(4):
            two = seeds.fisher_exact(a, 5, b, 3)
            assert two == pytest.approx(seeds.fisher_exact(b, 3, a, 5), rel=1e-12)
            assert 0.0 < two <= 1.0
            greater = seeds.fisher_exact(a, 5, b, 3, "greater")
            assert greater == pytest.approx(seeds.fisher_exact(b, 3, a, 5, "less"), rel=1e-12)
            assert two <= 2 * min(greater, seeds.fisher_exact(a, 5, b, 3, "less")) + 1e-12


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "match"),
    [
        ((6, 5, 0, 5), {}, ValueError, "successes_a"),
        ((1, 5, -1, 5), {}, ValueError, "successes_b"),
        ((0, 0, 0, 5), {}, ValueError, "runs_a"),
        ((1.0, 5, 0, 5), {}, TypeError, "successes_a"),
        ((1, 5, 0, 10**9), {}, ValueError, "runs_b"),
        ((1, 5, 0, 5), {"alternative": "two_sided"}, ValueError, "alternative"),
    ],
)
def test_fisher_exact_bad_input(args, kwargs, error, match):
    with pytest.raises(error, match=match):
        seeds.fisher_exact(*args, **kwargs)


def test_paired_sign_flip_p_matches_hand_counts():
    # Five differences of one sign: only the observed pattern and its mirror are as extreme.
    assert paired_sign_flip_p([0, 0, 0, 0, 0], [1, 2, 3, 4, 5]) == 2 / 32 == smallest_paired_p(5)
    assert paired_sign_flip_p([1, 2, 3, 4, 5], [0, 0, 0, 0, 0]) == 0.0625
    # d = (1, -2, 3), sum 2: the 8 signed sums are 2, -4, 6, 0, 0, -6, 4, -2; six reach |2|.
    assert paired_sign_flip_p([0, 2, 0], [1, 0, 3]) == 6 / 8
    # d = (1, 1, 1, 1, -1), sum 3: |signed sum| >= 3 for 1 + 5 + 5 + 1 of 32 patterns.
    assert paired_sign_flip_p([0.5] * 5, [1.5, 1.5, 1.5, 1.5, -0.5]) == 12 / 32
    # A zero difference flips to itself: d = (0, 1) gives |sum| = 1 for all four patterns.
    assert paired_sign_flip_p([1.0, 1.0], [1.0, 2.0]) == 1.0
    # d = (3, 1, -2), sum 2: signed sums 2, 6, 0, 4, -4, 0, -6, -2; six reach |2|. The same
    # differences / 10 in float64 (0.3, 0.1, -0.2 as b - a) tie only up to rounding: still 6/8.
    assert paired_sign_flip_p([0, 0, 0], [3, 1, -2]) == 6 / 8
    assert paired_sign_flip_p([0.1, 0.2, 0.3], [0.4, 0.3, 0.1]) == 6 / 8
    assert paired_below_count([0.9, 0.8, 0.7], [0.95, 0.8, 0.6]) == 1
    assert smallest_paired_p(1) == 1.0 and smallest_paired_p(4) == 0.125


@pytest.mark.parametrize(
    "df, t_crit",  # two-sided 5% critical values of Student's t (printed tables)
    [
        (1, 12.7062047),
        (2, 4.3026527),
        (3, 3.1824463),
        (4, 2.7764451),
        (5, 2.5705818),
        (10, 2.2281389),
    ],
)
def test_paired_t_p_matches_t_tables_and_integration(df, t_crit):
    # Differences with mean t_crit * sd / sqrt(n): d = m + sd * z with z centred, unit sd.
    n = df + 1
    z = torch.linspace(-1.0, 1.0, n, dtype=torch.float64)
    z = (z - z.mean()) / z.std()
    diffs = (t_crit / math.sqrt(n) + z).tolist()
    t, p = paired_t_p([0.0] * n, diffs)
    assert t == pytest.approx(t_crit, rel=1e-9) and p == pytest.approx(0.05, abs=1e-7)
    # An independent check: integrate torch's Student t density over |T| >= 1.5.
    x = torch.linspace(1.5, 4000.0, 2_000_001, dtype=torch.float64)
    density = torch.distributions.StudentT(torch.tensor(float(df), dtype=torch.float64))
    tail = 2 * torch.trapezoid(density.log_prob(x).exp(), x).item()
    _, p_15 = paired_t_p([0.0] * n, (1.5 / math.sqrt(n) + z).tolist())
    assert p_15 == pytest.approx(tail, abs=2e-4 if df == 1 else 1e-6)


def test_paired_t_p_by_hand_and_bad_input():
    # d = (1, 2, 3): mean 2, sd 1, t = 2 sqrt(3), df 2, p = 1 - t / sqrt(2 + t^2).
    t, p = paired_t_p([0, 0, 0], [1, 2, 3])
    assert t == pytest.approx(2 * math.sqrt(3)) and p == pytest.approx(1 - t / math.sqrt(2 + t * t))
    assert paired_t_p([1, 2, 3], [0, 0, 0])[1] == pytest.approx(p)
    with pytest.raises(ValueError, match="at least 2"):
        paired_t_p([0.0], [1.0])
    with pytest.raises(ValueError, match="all equal"):
        paired_t_p([0, 0, 0], [1, 1, 1])


def test_paired_sign_flip_p_refuses_unpaired_or_oversized_input():
    with pytest.raises(ValueError, match="pair up"):
        paired_sign_flip_p([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="1 to 20 pairs"):
        paired_sign_flip_p([0.0] * 21, [1.0] * 21)
    with pytest.raises(TypeError, match="list or tuple"):
        paired_sign_flip_p("12", [1.0, 2.0])
    with pytest.raises(ValueError):
        smallest_paired_p(0)


def _runs(name, mious, far=None, seeds_=None):
    far = far or mious
    seeds_ = seeds_ or list(range(len(mious)))
    return [
        SeedRun(name=name, seed=s, miou=m, pixel_acc=m, far_acc=f, iou=[m] * 4)
        for s, m, f in zip(seeds_, mious, far, strict=True)
    ]


def test_paired_comparison_by_hand():
    runs = {
        "a": _runs("a", [0.10, 0.20, 0.30, 0.40], far=[0.5, 0.5, 0.5, 0.5]),
        "b": _runs("b", [0.20, 0.25, 0.40, 0.60], far=[0.5, 0.6, 0.7, 0.8]),
        "c": _runs("c", [0.30, 0.10, 0.35, 0.30], far=[0.9, 0.1, 0.9, 0.1]),
    }
    cmp = seeds.paired_comparison(runs, ["a", "b", "c"], "miou")
    assert cmp.seeds == (0, 1, 2, 3) and cmp.pairs_compared == 3
    assert cmp.ordered == [("a", "b")]  # a below b on all four seeds
    assert cmp.changing == [("a", "c"), ("b", "c")]
    assert cmp.below["a", "b"] == 4 and cmp.below["b", "a"] == 0
    assert cmp.differences["a", "b"] == pytest.approx([0.10, 0.05, 0.10, 0.20])
    assert cmp.sign_flip_p["a", "b"] == paired_sign_flip_p(
        [0.1, 0.2, 0.3, 0.4], [0.2, 0.25, 0.4, 0.6]
    )
    t_p = {
        pair: paired_t_p([r.miou for r in runs[pair[0]]], [r.miou for r in runs[pair[1]]])[1]
        for pair in (("a", "b"), ("a", "c"), ("b", "c"))
    }
    assert cmp.t_p["a", "b"] == cmp.t_p["b", "a"] == pytest.approx(t_p["a", "b"])
    # Bonferroni: times 3; Holm: the smallest times 3, the next times 2 (never below the
    # previous), the largest times 1 (never below the previous), all capped at 1.
    ordered_p = sorted(t_p.values())
    holm = [min(1, 3 * ordered_p[0])]
    holm.append(max(holm[0], min(1, 2 * ordered_p[1])))
    holm.append(max(holm[1], min(1, ordered_p[2])))
    for pair, p in t_p.items():
        assert cmp.bonferroni_p[pair] == pytest.approx(min(1, 3 * p))
        assert cmp.holm_p[pair] == pytest.approx(holm[ordered_p.index(p)])
        assert cmp.holm_p[pair[::-1]] == cmp.holm_p[pair]
    # On far accuracy: a at or below b (tied on seed 0), and equal runs give a t p-value of 1.
    far = seeds.paired_comparison(runs, ["a", "b"], "far_acc")
    assert far.ordered == [] and far.at_or_below == [("a", "b")] and far.changing == []
    same = seeds.paired_comparison(
        {"a": runs["a"], "d": _runs("d", [0.1, 0.2, 0.3, 0.4])}, ["a", "d"]
    )
    assert same.t_p["a", "d"] == 1.0 and same.ordered == [] and same.changing == []


@pytest.mark.parametrize(
    ("runs", "heads", "metric", "error", "match"),
    [
        ([], ["a", "b"], "miou", TypeError, "runs must be a dict"),
        ({"a": _runs("a", [0.1, 0.2])}, "ab", "miou", TypeError, "heads must be a list"),
        ({"a": _runs("a", [0.1, 0.2])}, ["a", 3], "miou", TypeError, r"heads\[1\]"),
        ({"a": _runs("a", [0.1, 0.2])}, ["a", "a"], "miou", ValueError, "2 distinct"),
        ({"a": _runs("a", [0.1, 0.2])}, ["a", "b"], "miou", ValueError, "no runs"),
        (
            {"a": _runs("a", [0.1, 0.2]), "b": _runs("b", [0.1, 0.2])},
            ["a", "b"],
            "iou",
            ValueError,
            "metric",
        ),
        (
            {"a": _runs("a", [0.1, 0.2]), "b": _runs("b", [0.1, 0.2], seeds_=[1, 0])},
            ["a", "b"],
            "miou",
            ValueError,
            "same seeds",
        ),
        (
            {"a": _runs("a", [0.1]), "b": _runs("b", [0.2])},
            ["a", "b"],
            "miou",
            ValueError,
            "2 to 20 seeds",
        ),
    ],
)
def test_paired_comparison_bad_input(runs, heads, metric, error, match):
    with pytest.raises(error, match=match):
        seeds.paired_comparison(runs, heads, metric)


def test_paired_comparison_of_the_shipped_global_heads():
    """The analysis chapters 9 and 10 print: ISSA below SA and RCCA R=2 on every seed."""
    heads = ["nonlocal", "sa", "isa", "rcca2"]
    cmp = seeds.paired_comparison(recorded_seeds(heads), heads, "miou")
    assert cmp.ordered == [("isa", "sa"), ("isa", "rcca2")]
    assert all(cmp.sign_flip_p[pair] == smallest_paired_p(5) for pair in cmp.ordered)


def test_family_adjusted_p_by_hand():
    runs = {
        "a": _runs("a", [0.10, 0.20, 0.30, 0.40], far=[0.5, 0.4, 0.5, 0.55]),
        "b": _runs("b", [0.20, 0.25, 0.40, 0.60], far=[0.5, 0.6, 0.7, 0.8]),
        "c": _runs("c", [0.30, 0.10, 0.35, 0.30], far=[0.9, 0.1, 0.9, 0.1]),
    }
    heads = ["a", "b", "c"]
    miou = seeds.paired_comparison(runs, heads, "miou")
    far = seeds.paired_comparison(runs, heads, "far_acc")
    # one comparison alone: the same adjustments as its own (three pairs here)
    bonferroni, holm = seeds.family_adjusted_p([miou])
    for a, b in [("a", "b"), ("a", "c"), ("c", "b")]:
        assert bonferroni["miou", a, b] == pytest.approx(miou.bonferroni_p[a, b])
        assert holm["miou", a, b] == pytest.approx(miou.holm_p[a, b])
    # both metrics: a family of 6; Bonferroni times 6, Holm step-down over the 6
    bonferroni, holm = seeds.family_adjusted_p([miou, far])
    family = {
        (c.metric, a, b): c.t_p[a, b]
        for c in (miou, far)
        for a, b in [("a", "b"), ("a", "c"), ("b", "c")]
    }
    ordered = sorted(family.values())
    expected, running = [], 0.0
    for rank, p in enumerate(ordered):
        running = max(running, min(1.0, (6 - rank) * p))
        expected.append(running)
    for (metric, a, b), p in family.items():
        assert bonferroni[metric, a, b] == bonferroni[metric, b, a] == pytest.approx(min(1, 6 * p))
        assert holm[metric, a, b] == holm[metric, b, a] == pytest.approx(expected[ordered.index(p)])
        # a larger family never adjusts less
        assert holm[metric, a, b] >= (miou if metric == "miou" else far).holm_p[a, b]


@pytest.mark.parametrize(
    ("comparisons", "error", "match"),
    [
        ("miou", TypeError, "comparisons must be a list"),
        ([], ValueError, "1 to 10"),
        ([1], TypeError, r"comparisons\[0\]"),
    ],
)
def test_family_adjusted_p_bad_input(comparisons, error, match):
    with pytest.raises(error, match=match):
        seeds.family_adjusted_p(comparisons)


def test_family_adjusted_p_needs_distinct_metrics_and_the_same_heads():
    runs = {h: _runs(h, [0.1, 0.2, 0.4]) for h in "abc"}
    ab = seeds.paired_comparison(runs, ["a", "b"])
    with pytest.raises(ValueError, match="distinct metrics"):
        seeds.family_adjusted_p([ab, ab])
    bc = seeds.paired_comparison(runs, ["b", "c"], "far_acc")
    with pytest.raises(ValueError, match="same heads"):
        seeds.family_adjusted_p([ab, bc])
