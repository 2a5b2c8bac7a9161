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
