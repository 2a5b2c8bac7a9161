"""The two numbers of ``ccnet_edu.roofline``: the floor, and what each kernel design moves."""

from __future__ import annotations

import pytest

from ccnet_edu import roofline

DTYPE_BYTES = (2, 4)  # bfloat16/float16, float32
MODES = ("forward", "backward", "forward+backward")


def test_floor_counts_each_input_once_and_each_output_once():
    batch, qk, channels, height, width = shape = (8, 64, 512, 97, 97)
    n, slots = batch * height * width, height + width - 1
    forward = roofline.costs(shape, 2, "forward")
    assert forward.bytes == 2 * n * (2 * qk + 2 * channels + slots)
    assert forward.flops == 2 * n * slots * (qk + channels)
    assert round(forward.bytes / 1e6) == 202  # the issue's floor, bfloat16
    assert round(roofline.costs(shape, 4, "forward").bytes / 1e6) == 405


@pytest.mark.parametrize("design", roofline.DESIGNS)
@pytest.mark.parametrize("size", DTYPE_BYTES)
@pytest.mark.parametrize("shape", roofline.SHAPES, ids=str)
def test_design_terms_add_up_and_never_go_under_the_floor(shape, size, design):
    for mode in MODES:
        c = roofline.design_costs(shape, size, mode, design)
        floor = roofline.costs(shape, size, mode)
        assert sum(c.terms.values()) == c.bytes
        assert c.bytes >= floor.bytes
        assert c.flops >= floor.flops
    both = roofline.design_costs(shape, size, "forward+backward", design)
    parts = [roofline.design_costs(shape, size, m, design) for m in ("forward", "backward")]
    assert both.bytes == sum(p.bytes for p in parts)
    assert both.flops == sum(p.flops for p in parts)


def test_v1_is_what_the_issue_counted():
    """3.4 x the floor in bytes at (8, 64, 512, 97, 97), 193 MB of them the channels-last
    copies; the energies computed once more per 128-channel chunk."""
    shape = roofline.SHAPES[1]
    v1 = roofline.design_costs(shape, 2, "forward", "v1")
    floor = roofline.costs(shape, 2, "forward")
    assert round(v1.bytes / 1e6) == 688
    assert 3.3 < v1.bytes / floor.bytes < 3.5
    assert round(v1.terms["channels-last copies of query, key, value"] / 1e6) == 193
    # energies 1 + 4 chunks times, aggregation once: (5 C' + C) / (C' + C)
    assert v1.flops / floor.flops == pytest.approx((5 * 64 + 512) / (64 + 512))


@pytest.mark.parametrize("size", DTYPE_BYTES)
@pytest.mark.parametrize("shape", roofline.SHAPES, ids=str)
def test_v2_forward_is_within_1_5_x_of_the_byte_floor(shape, size):
    v2 = roofline.design_costs(shape, size, "forward", "v2")
    assert v2.fits
    assert v2.bytes <= 1.5 * roofline.costs(shape, size, "forward").bytes
    # the energies once for the statistics and once per CTA of 128 channels of a slice
    batch, qk, channels, height, width = shape
    n, slots = batch * height * width, height + width - 1
    slices, width_of, _ = roofline.v2_slices(shape, size, "forward")
    ctas = sum(-(-min(width_of, channels - s * width_of) // 128) for s in range(slices))
    assert v2.flops == 2 * n * slots * (qk * (1 + ctas) + channels)


@pytest.mark.parametrize("size", DTYPE_BYTES)
@pytest.mark.parametrize("shape", roofline.SHAPES, ids=str)
def test_v2_moves_fewer_bytes_than_v1(shape, size):
    for mode in MODES:
        v1 = roofline.design_costs(shape, size, mode, "v1")
        v2 = roofline.design_costs(shape, size, mode, "v2")
        assert v2.bytes < v1.bytes


def test_v2_slices_fit_the_l2_share():
    """The fewest slices whose reused tensors fit half the L2; a smaller L2, more slices."""
    shape, size = roofline.SHAPES[1], 4
    slices, width_of, fits = roofline.v2_slices(shape, size, "forward")
    assert fits and (slices, width_of) == (2, 256)  # float32: 512 do not fit 25 MiB, 256 do
    _, qk, channels, height, width = shape
    assert height * width * size * (2 * qk + 2 * width_of) <= roofline.L2_SHARE * roofline.L2_BYTES
    smaller = roofline.v2_slices(shape, size, "forward", l2_bytes=roofline.L2_BYTES // 4)
    assert smaller[0] > slices
    assert roofline.v2_slices(shape, size, "forward", l2_bytes=1) == (1, 512, False)
    not_fitting = roofline.design_costs(shape, size, "forward", "v2", l2_bytes=1)
    assert not not_fitting.fits
    assert not_fitting.bytes > roofline.design_costs(shape, size, "forward", "v2").bytes


def test_bad_design_or_mode():
    with pytest.raises(ValueError, match="design"):
        roofline.design_costs(roofline.SHAPES[0], 2, "forward", "v9")
    with pytest.raises(ValueError, match="mode"):
        roofline.design_costs(roofline.SHAPES[0], 2, "sideways", "v2")


@pytest.mark.parametrize("size", DTYPE_BYTES)
@pytest.mark.parametrize("shape", roofline.SHAPES, ids=str)
def test_v3_forward_computes_each_line_s_energies_once_per_slice(shape, size):
    """v3 moves v2's bytes; its energies are computed once for the statistics and once
    per slice of the values (not once per 128-channel CTA)."""
    v2 = roofline.design_costs(shape, size, "forward", "v2")
    v3 = roofline.design_costs(shape, size, "forward", "v3")
    assert v3.bytes == v2.bytes and v3.slices == v2.slices
    batch, qk, channels, height, width = shape
    n, slots = batch * height * width, height + width - 1
    assert v3.flops == 2 * n * slots * (qk * (1 + v3.slices) + channels)
    assert v3.flops <= v2.flops


def test_v3_forward_operations_at_ccnet_s_setting():
    """At 97 x 97, C = 512: 1.44 x the floor's operations in v2 (energies 1 + 4 times),
    1.11 x in v3 in bfloat16 (one slice: twice), 1.22 x in float32 (two slices)."""
    shape = roofline.SHAPES[1]
    floor = roofline.costs(shape, 2, "forward").flops
    ratios = {
        (d, s): roofline.design_costs(shape, s, "forward", d).flops / floor
        for d in ("v2", "v3")
        for s in DTYPE_BYTES
    }
    assert ratios["v2", 2] == ratios["v2", 4] == pytest.approx((5 * 64 + 512) / (64 + 512))
    assert ratios["v3", 2] == pytest.approx((2 * 64 + 512) / (64 + 512))
    assert ratios["v3", 4] == pytest.approx((3 * 64 + 512) / (64 + 512))


def test_v3_backward_keeps_da_on_chip_but_reads_the_attention_once_per_slice():
    """bfloat16 at 97 x 97: D from the saved out, dA recomputed on chip (twice the dA
    operations), no dA scratch; but grad value in 6 slices of 96 channels, each slice's
    grad-value CTAs reading the attention again: as many bytes as v2 (1.75 x the floor),
    not fewer.  Where one map's grad out and value do not fit half the L2, v3 keeps v2's
    passes."""
    for shape in roofline.SHAPES[:2]:
        batch, qk, channels, height, width = shape
        n, slots = batch * height * width, height + width - 1
        floor = roofline.costs(shape, 2, "backward")
        v3 = roofline.design_costs(shape, 2, "backward", "v3")
        v2 = roofline.design_costs(shape, 2, "backward", "v2")
        assert roofline.v3_backward_slices(shape, 2) == (6, 96, True)
        assert v3.fits and v3.slices == 6
        # out read, the attention read by five more slices, D written
        assert v3.bytes - floor.bytes == n * channels * 2 + 5 * n * slots * 2 + 4 * n
        assert v3.terms["attention read by each slice's gradient launches"] == 6 * n * slots * 2
        assert round(v3.bytes / floor.bytes, 2) == round(v2.bytes / floor.bytes, 2) == 1.75
        assert v3.bytes > 1.5 * floor.bytes
        assert v3.flops == floor.flops + 2 * n * slots * channels + 2 * n * channels
        assert not any("dA" in term for term in v3.terms)
    for shape, size in ((roofline.SHAPES[1], 4), (roofline.SHAPES[2], 2), (roofline.SHAPES[2], 4)):
        assert not roofline.v3_backward_slices(shape, size)[2]
        v3 = roofline.design_costs(shape, size, "backward", "v3")
        v2 = roofline.design_costs(shape, size, "backward", "v2")
        assert (v3.bytes, v3.flops, v3.terms) == (v2.bytes, v2.flops, v2.terms)


@pytest.mark.parametrize("size", DTYPE_BYTES)
@pytest.mark.parametrize("shape", roofline.SHAPES, ids=str)
def test_v2_backward_counts_the_launches_it_runs(shape, size):
    """The dA launch reads grad out and value over all the channels (its column lines
    again where one group's do not fit half the L2) and the attention; each slice's
    gradient launches read the attention again; D is two partial sums a pixel."""
    batch, qk, channels, height, width = shape
    n, slots, pixels = batch * height * width, height + width - 1, height * width
    v2 = roofline.design_costs(shape, size, "backward", "v2")
    slices, _, fits = roofline.v2_slices(shape, size, "backward")
    assert v2.slices == slices
    terms = v2.terms
    assert terms["dA pass: grad out and value (all channels)"] == 2 * n * channels * size
    assert terms["attention read by the dA pass"] == n * slots * size
    assert terms["attention read again by each slice's gradient launches"] == (
        slices * n * slots * size
    )
    assert terms["D (scratch: a partial sum per half) written"] == 8 * n
    again = v2.maps * pixels * 2 * channels * size > roofline.L2_SHARE * roofline.L2_BYTES
    assert ("dA pass, column lines: grad out and value read again" in terms) == again
    assert ("column pass: query, key, grad out, gradients read again" in terms) == (not fits)


def test_v2_backward_at_the_check_s_sizes():
    """What the corrected count gives (MB, x the floor): float32 at 97 x 97 in 3 slices,
    the dA pass's column lines re-reading 38.5 MB a map and the attention read 4 times;
    bfloat16 at 128 x 256 in 8 slices (the attention read 9 times); float32 at 128 x 256,
    not even a 16-channel slice fitting."""
    expected = {
        (roofline.SHAPES[0], 2): (65, 1.75),
        (roofline.SHAPES[0], 4): (169, 2.26),
        (roofline.SHAPES[1], 4): (1351, 2.26),
        (roofline.SHAPES[2], 2): (1089, 3.82),
        (roofline.SHAPES[2], 4): (1779, 3.12),
    }
    for (shape, size), (mb, ratio) in expected.items():
        v2 = roofline.design_costs(shape, size, "backward", "v2")
        floor = roofline.costs(shape, size, "backward")
        assert (round(v2.bytes / 1e6), round(v2.bytes / floor.bytes, 2)) == (mb, ratio)


@pytest.mark.parametrize("size", DTYPE_BYTES)
@pytest.mark.parametrize("shape", roofline.SHAPES, ids=str)
def test_v2_forward_reads_the_statistics_in_every_aggregation_launch(shape, size):
    batch, _, _, height, width = shape
    n = batch * height * width
    v2 = roofline.design_costs(shape, size, "forward", "v2")
    key = "statistics read by every aggregation launch (each slice's rows and columns)"
    assert v2.terms[key] == v2.slices * 2 * 16 * n


def test_peak_rate_per_dtype():
    h100 = roofline.CEILINGS["H100 SXM"]
    assert roofline.peak_rate(h100, 2) == h100.bf16
    assert roofline.peak_rate(h100, 4) == h100.tf32 / 3  # 3xTF32: three TF32 products
    for bad in (1, 8):
        with pytest.raises(ValueError, match="element_bytes"):
            roofline.peak_rate(h100, bad)
    for bad in (True, 4.0):
        with pytest.raises(TypeError, match="element_bytes"):
            roofline.peak_rate(h100, bad)
    with pytest.raises(TypeError, match="ceiling"):
        roofline.peak_rate("H100 SXM", 2)


def test_out_only_costs_drop_the_map_and_add_the_log_sum_exp():
    shape = (2, 3, 5, 7, 11)
    n, slots = 2 * 7 * 11, 7 + 11 - 1
    for size in (2, 4):
        with_map = roofline.costs(shape, size, "forward")
        out_only = roofline.costs(shape, size, "forward", attention=False)
        assert with_map.bytes - out_only.bytes == size * n * slots - 4 * n
        assert with_map.flops == out_only.flops
        back, back_only = (
            roofline.costs(shape, size, "backward", attention=a) for a in (True, False)
        )
        # no map read; out read for D, and the log-sum-exp
        assert back.bytes - back_only.bytes == size * n * (slots - 5) - 4 * n
        # the energies again (C' = 3); the products only (D is element-wise, in neither)
        assert back_only.flops - back.flops == 2 * n * slots * 3
    # fewer bytes without the map: the forward wherever the map outweighs the 4-byte
    # log-sum-exp; the backward where L > C; forward + backward where 2 L > C
    for qk, channels, height, width, fewer_back, fewer_both in (
        (64, 512, 97, 97, False, False),
        (64, 512, 128, 256, False, True),
        (8, 16, 9, 11, True, True),
    ):
        shape = (1, qk, channels, height, width)
        for mode, fewer in (
            ("forward", True),
            ("backward", fewer_back),
            ("forward+backward", fewer_both),
        ):
            a, b = (roofline.costs(shape, 2, mode, attention=x).bytes for x in (True, False))
            assert (b < a) == fewer, (shape, mode)
    with pytest.raises(TypeError, match="attention"):
        roofline.costs(shape, 2, "forward", attention="no")


def test_out_only_forward_at_the_smallest_maps():
    """A 1 x 1 map's one slot weighs less than the 4-byte log-sum-exp (more bytes without
    the map), a 1 x 2 map's two 16-bit slots as much (equal), anything larger more."""
    cases = [((1, 1), 2, 1), ((1, 1), 4, 0), ((1, 2), 2, 0), ((2, 1), 2, 0), ((1, 2), 4, -1),
             ((2, 2), 2, -1)]  # fmt: skip
    for (height, width), size, sign in cases:
        shape = (1, 8, 16, height, width)
        with_map, out_only = (
            roofline.costs(shape, size, "forward", attention=a).bytes for a in (True, False)
        )
        assert (out_only > with_map) - (out_only < with_map) == sign, (height, width, size)


def test_v4_backward_accumulates_da_in_the_l2_where_a_map_s_attention_and_da_fit():
    """At 97 x 97 one map's attention, float32 dA and D fit half the L2 beside a slice of
    grad out, value and grad value (2 slices of 256 channels in bfloat16, 8 of 64 in
    float32): grad out, value and the attention are read once, dA is written back once,
    1.20 x and 1.10 x the floor, no more operations than it.  At 128 x 256 they take
    75 MB (bfloat16) a map, more than the 50 MiB L2: v2's passes."""
    for shape in roofline.SHAPES[:2]:
        batch, qk, channels, height, width = shape
        n, slots = batch * height * width, height + width - 1
        for size, plan, ratio in ((2, (2, 256, True, 1), 1.20), (4, (8, 64, True, 1), 1.10)):
            assert roofline.v4_backward_plan(shape, size) == plan
            floor = roofline.costs(shape, size, "backward")
            v4 = roofline.design_costs(shape, size, "backward", "v4")
            assert v4.bytes - floor.bytes == 4 * n * slots + 8 * n
            assert round(v4.bytes / floor.bytes, 2) == ratio
            assert v4.bytes <= 1.5 * floor.bytes
            assert v4.flops == floor.flops
            assert (v4.slices, v4.maps) == (plan[0], plan[3])
    shape = roofline.SHAPES[2]
    batch, qk, channels, height, width = shape
    slots = height + width - 1
    assert round(height * width * (2 * slots + 4 * slots) / 1e6) == 75
    for size in DTYPE_BYTES:
        assert roofline.v4_backward_plan(shape, size) == (1, channels, False, 1)
        v4 = roofline.design_costs(shape, size, "backward", "v4")
        v2 = roofline.design_costs(shape, size, "backward", "v2")
        assert (v4.bytes, v4.flops, v4.terms) == (v2.bytes, v2.flops, v2.terms)
        assert v4.bytes > 3 * roofline.costs(shape, size, "backward").bytes


@pytest.mark.parametrize("size", DTYPE_BYTES)
@pytest.mark.parametrize("shape", roofline.SHAPES, ids=str)
def test_v4_forward_is_v3_s_and_its_plan_fits_the_share(shape, size):
    v3 = roofline.design_costs(shape, size, "forward", "v3")
    v4 = roofline.design_costs(shape, size, "forward", "v4")
    assert (v4.bytes, v4.flops, v4.terms) == (v3.bytes, v3.flops, v3.terms)
    slices, width, fits, maps = roofline.v4_backward_plan(shape, size)
    batch, qk, channels, height, width_ = shape
    slots = height + width_ - 1
    if fits:
        assert width % roofline.BWD_CHUNK == 0 or width == channels
        kept = size * slots + 4 * slots + 8 + max(3 * size * width, 4 * size * qk)
        assert roofline.v4_kept_bytes(shape, size, width) == height * width_ * kept
        assert maps * height * width_ * kept <= roofline.L2_SHARE * roofline.L2_BYTES
        assert slices == -(-channels // width) and 1 <= maps <= batch
    assert roofline.v4_backward_plan(shape, size, l2_bytes=1) == (1, channels, False, 1)
