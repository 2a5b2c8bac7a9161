"""ccnet_edu.analysis.beacon_attention: far queries, beacon-seeing cells, attention shares."""

from __future__ import annotations

import pytest
import torch

from ccnet_edu.analysis import beacon_attention as ba
from ccnet_edu.data import distance_to_beacon, make_sample
from ccnet_edu.models import Backbone, SegmentationModel
from ccnet_edu.train import FAR


@pytest.fixture(scope="module")
def receptive_rows():
    """Rows of input pixels each feature row depends on, from gradients (cells (i, i);
    models.receptive_field, through the layers with the ReLUs made identities)."""
    from ccnet_edu import models

    torch.manual_seed(0)
    backbone = Backbone()
    spans = []
    for i in range(12):
        rows, cols = models.receptive_field(
            backbone, (i, i), generator=torch.Generator().manual_seed(i)
        )
        assert rows == cols  # the backbone is symmetric in rows and columns
        spans.append((rows[0], rows[-1]))
    return spans


def test_receptive_field_constant_matches_gradients(receptive_rows):
    for i, (low, high) in enumerate(receptive_rows):
        centre = ba.STRIDE * i
        assert (low, high) == (
            max(centre - ba.RECEPTIVE_HALF, 0),
            min(centre + ba.RECEPTIVE_HALF, 95),
        )


@pytest.mark.parametrize("index", range(6))
def test_cells_seeing_beacon_by_brute_force(receptive_rows, index):
    s = make_sample(10_000, index)
    br, bc = s["beacon_corner"]
    beacon = torch.zeros(96, 96, dtype=torch.bool)
    beacon[br : br + 6, bc : bc + 6] = True
    expected = torch.zeros(12, 12, dtype=torch.bool)
    for i, (r0, r1) in enumerate(receptive_rows):
        for j, (c0, c1) in enumerate(receptive_rows):
            expected[i, j] = bool(beacon[r0 : r1 + 1, c0 : c1 + 1].any())
    assert torch.equal(ba.cells_seeing_beacon(s), expected)
    assert expected.any()


@pytest.mark.parametrize("index", range(6))
def test_cells_holding_beacon_by_brute_force(index):
    s = make_sample(10_000, index)
    br, bc = s["beacon_corner"]
    size = int(s["beacon_size"])
    beacon = torch.zeros(96, 96, dtype=torch.bool)
    beacon[br : br + size, bc : bc + size] = True
    expected = beacon.reshape(12, 8, 12, 8).any(3).any(1)
    held = ba.cells_holding_beacon(s)
    assert torch.equal(held, expected)
    assert held.any() and not (held & ~ba.cells_seeing_beacon(s)).any()  # held cells see it


@pytest.mark.parametrize("index", range(6))
def test_far_query_cells_and_off_cross_by_brute_force(index):
    s = make_sample(10_000, index)
    d = distance_to_beacon(s)
    expected = torch.zeros(12, 12, dtype=torch.bool)
    for i in range(12):
        for j in range(12):
            cell = (slice(8 * i, 8 * i + 8), slice(8 * j, 8 * j + 8))
            expected[i, j] = bool(s["shape_mask"][cell].all() and (d[cell] > FAR).all())
    assert torch.equal(ba.far_query_cells(s), expected)
    seeing = ba.cells_seeing_beacon(s)
    # A far cell never sees the beacon itself: its receptive field ends 17 px past it.
    assert not (expected & seeing).any()
    off = ba.off_cross(seeing)
    for i in range(12):
        for j in range(12):
            assert off[i, j] == (not seeing[i, :].any() and not seeing[:, j].any())


def test_input_errors():
    with pytest.raises(TypeError, match="make_sample"):
        ba.cells_seeing_beacon({"label": torch.zeros(96, 96)})
    with pytest.raises(TypeError, match="make_sample"):
        ba.cells_holding_beacon({"label": torch.zeros(96, 96)})
    with pytest.raises(TypeError, match="bool tensor"):
        ba.off_cross(torch.zeros(3, 3))
    with pytest.raises(TypeError, match="SegmentationModel"):
        ba.far_query_attention(torch.nn.Identity())


def _model(head):
    torch.manual_seed(0)
    model = SegmentationModel(head).eval()
    context = model.head.context
    gamma = getattr(getattr(context, "cca", context), "gamma", None)
    if gamma is not None:
        torch.nn.init.constant_(gamma, 0.7)  # gamma != 0: the second loop sees a changed map
    return model


def test_one_loop_cannot_reach_the_beacon_off_the_cross():
    queries = ba.far_query_attention(_model("rcca1"), length=20)
    assert len(queries) > 0 and queries.off_cross.any() and (~queries.off_cross).any()
    assert torch.all(queries.share[queries.off_cross] == 0)  # no path at all
    assert torch.all(queries.share[~queries.off_cross] > 0)  # the cross holds a seeing cell


def test_two_loops_reach_it_through_the_product():
    queries = ba.far_query_attention(_model("rcca2"), length=20)
    assert torch.all(queries.share[queries.off_cross] > 0)
    assert torch.all(queries.share <= 1 + 1e-9)


@pytest.mark.parametrize("head", ["nonlocal", "isa", "rcca2"])
def test_shares_and_correctness_by_hand(head):
    model = _model(head)
    queries = ba.far_query_attention(model, length=8, batch_size=3)
    for k in range(len(queries)):
        index, (i, j) = int(queries.image[k]), queries.cell[k].tolist()
        s = make_sample(10_000, index)
        with torch.no_grad():
            out = model(s["image"][None], return_all=True)
        dense = ba.effective_attention(model, out)[0].double()
        row = dense[i * 12 + j].reshape(12, 12)
        assert torch.isclose(queries.share[k], row[ba.cells_seeing_beacon(s)].sum())
        assert bool(queries.correct[k]) == (
            int(out["logits_small"][0, :, i, j].argmax()) == s["beacon_class"]
        )
        assert torch.allclose(dense.sum(-1), torch.ones(144, dtype=torch.float64))


def test_heads_without_pairwise_attention_have_no_share():
    for head in ("fcn", "sa"):
        queries = ba.far_query_attention(_model(head), length=10)
        assert len(queries) > 0 and torch.isnan(queries.share).all()
    sub = queries.select(queries.off_cross)
    assert len(sub) == int(queries.off_cross.sum())


def test_far_query_attention_restores_training_mode():
    model = _model("rcca2").train()
    ba.far_query_attention(model, length=2)
    assert model.training


def test_farthest_off_cross_query_is_the_farthest_far_cell_off_the_cross():
    index, sample, (r, c) = ba.farthest_off_cross_query()
    for earlier in range(index):  # no earlier image has a far query off the cross
        s = make_sample(10_000, earlier)
        assert not (ba.far_query_cells(s) & ba.off_cross(ba.cells_seeing_beacon(s))).any()
    off = ba.far_query_cells(sample) & ba.off_cross(ba.cells_seeing_beacon(sample))
    assert off[r, c]
    br, bc = sample["beacon_corner"]
    distances = [max(abs(8 * i - br), abs(8 * j - bc)) for i, j in off.nonzero().tolist()]
    assert max(abs(8 * r - br), abs(8 * c - bc)) == max(distances)
    assert ba.farthest_off_cross_query(length=index) is None


def test_off_cross_summary_by_hand():
    queries = ba.FarQueries(
        image=torch.tensor([0, 0, 1, 1, 2]),
        cell=torch.zeros(5, 2, dtype=torch.long),
        off_cross=torch.tensor([True, True, True, False, False]),
        share=torch.tensor([0.1, 0.9, 0.4, 0.2, 0.3], dtype=torch.float64),
        correct=torch.tensor([True, False, True, False, False]),
    )
    summary = queries.off_cross_summary()
    assert (summary.off_count, summary.on_count) == (3, 2)
    assert summary.off_median_share == pytest.approx(0.4)
    assert summary.off_accuracy == pytest.approx(2 / 3)
    assert summary.on_accuracy == 0.0
    empty = queries.select(torch.zeros(5, dtype=torch.bool)).off_cross_summary()
    assert empty.off_count == 0 and empty.on_count == 0
    assert empty.off_median_share != empty.off_median_share  # nan


def test_share_on_by_hand():
    # a 2 x 3 grid; query (1, 2) is position 5; the mask holds cells (0, 0) and (1, 1)
    attention = torch.full((6, 6), 0.0)
    attention[5] = torch.tensor([0.5, 0.1, 0.0, 0.0, 0.25, 0.15])
    attention[0] = torch.tensor([0.0, 0.0, 0.0, 0.0, 1.0, 0.0])
    cells = torch.tensor([[True, False, False], [False, True, False]])
    assert ba.share_on(attention, (1, 2), cells) == 0.75
    assert ba.share_on(attention, (0, 0), cells) == 1.0
    both = ba.shares_on(attention, torch.tensor([[1, 2], [0, 0], [0, 1]]), cells)
    assert both.dtype == torch.float64 and both.tolist() == [0.75, 1.0, 0.0]
    assert ba.shares_on(attention, torch.zeros(0, 2, dtype=torch.long), cells).shape == (0,)


def test_share_on_input_errors():
    attention, cells = torch.eye(6), torch.ones(2, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match="attention"):
        ba.share_on(torch.eye(4), (0, 0), cells)
    with pytest.raises(TypeError, match="cells"):
        ba.share_on(attention, (0, 0), torch.ones(2, 3))
    with pytest.raises(ValueError, match="query"):
        ba.share_on(attention, (2, 0), cells)
    with pytest.raises(TypeError, match="query"):
        ba.share_on(attention, 3, cells)
    with pytest.raises(ValueError, match="queries"):
        ba.shares_on(attention, torch.tensor([[0, 3]]), cells)
    with pytest.raises(ValueError, match="queries"):
        ba.shares_on(attention, torch.tensor([[0, 1, 2]]), cells)
    with pytest.raises(TypeError, match="queries"):
        ba.shares_on(attention, torch.tensor([[0.0, 1.0]]), cells)


def test_receptive_field_of_a_backbone_cell():
    """35 x 35 input pixels reach an inner cell, centred on 8 i (the pixel the stride-8 grid's
    nearest-neighbour labels take); at the border the field is cut by the image; the
    backbone measured is not changed."""
    from ccnet_edu import models

    torch.manual_seed(0)
    backbone = models.Backbone()
    rows, cols = models.receptive_field(
        backbone, (6, 6), generator=torch.Generator().manual_seed(0)
    )
    assert (rows, cols) == (range(31, 66), range(31, 66))
    assert (rows.start + rows.stop - 1) // 2 == 8 * 6
    rows, cols = models.receptive_field(
        backbone, (0, 11), generator=torch.Generator().manual_seed(1)
    )
    assert rows == range(0, 18) and cols == range(88 - 17, 96)
    assert backbone.training and next(backbone.parameters()).dtype == torch.float32


def test_receptive_field_is_not_cut_by_relus_that_are_off():
    """A narrow backbone has ReLUs that are off for a given input; the field is measured
    through them (relu_free_copy), so it is the layers' 35 x 35 for every seed."""
    from ccnet_edu import layers, models

    for seed in range(8):
        torch.manual_seed(seed)
        backbone = models.Backbone(width=1)
        rows, cols = models.receptive_field(backbone, (6, 6))
        assert (len(rows), len(cols)) == (35, 35), seed
    relu_free = layers.relu_free_copy(backbone)
    assert not any(isinstance(m, torch.nn.ReLU) for m in relu_free.modules())
    assert any(isinstance(m, torch.nn.ReLU) for m in backbone.modules())  # unchanged
    assert isinstance(layers.relu_free_copy(torch.nn.ReLU()), torch.nn.Identity)
