"""Tests of ccnet_edu.analysis: FLOPs against closed forms, saved bytes against hand counts,
peak memory against the allocator's own log, reachability and measured influence."""

from __future__ import annotations

import copy
import csv
import json
import subprocess
import sys

import pytest
import torch
from torch import nn

from ccnet_edu.analysis import (
    attention_map_bytes,
    boolean_power,
    cca_flops,
    comparison_table,
    conv_stack,
    count_flops,
    criss_cross_reachability,
    duplicate_centre_flops,
    einsum_flops,
    erf_width,
    fit_exponent,
    flops_by_kind,
    flops_by_module,
    format_claims,
    format_table,
    influence_map,
    issa_flops,
    issa_reachability,
    linear_stack,
    nonlocal_flops,
    paper_claims,
    peak_memory,
    rcca_flops,
    saved_bytes,
    saved_tensors,
    scaling_sweep,
)
from ccnet_edu.analysis.__main__ import main
from ccnet_edu.cca import CrissCrossAttention, RecurrentCrissCrossAttention
from ccnet_edu.dense import criss_cross_mask
from ccnet_edu.issa import InterlacedSparseSelfAttention, interlaced_sparse_attention
from ccnet_edu.nonlocal_block import NonLocal2d

# (B, C, C', H, W): odd, non-square, batch > 1, a single row and a single column.
SHAPES = [(2, 16, 3, 5, 7), (1, 8, 2, 6, 4), (3, 4, 1, 1, 6), (1, 6, 2, 5, 1), (2, 4, 1, 2, 3)]


def _fused_available() -> bool:
    try:
        from ccnet_edu import ops

        return ops.is_available("cpu")
    except Exception:  # noqa: BLE001
        return False


needs_fused = pytest.mark.skipif(not _fused_available(), reason="fused operator not built")


def _with_gamma(module: nn.Module, value: float = 0.7) -> nn.Module:
    target = module.cca if hasattr(module, "cca") else module
    nn.init.constant_(target.gamma, value)
    return module


# ---------------------------------------------------------------------------
# FLOPs
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
def test_nonlocal_flops_equal_closed_form(shape):
    b, c, cq, h, w = shape
    x = torch.randn(b, c, h, w)
    expected = nonlocal_flops(h, w, c, cq, b)
    split = flops_by_kind(NonLocal2d(c, cq), x)
    assert split["projections"] == expected["projections"]
    assert split["attention"] == expected["attention"]
    assert count_flops(NonLocal2d(c, cq), x) == expected["total"]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("recurrence", [1, 2, 3])
def test_reference_rcca_flops_equal_closed_form_plus_duplicate_centre(shape, recurrence):
    # The readable CCA handles the centre twice in the column: +2 B N (C' + C) per loop.
    b, c, cq, h, w = shape
    x = torch.randn(b, c, h, w)
    module = RecurrentCrissCrossAttention(c, recurrence, qk_channels=cq, impl="reference")
    expected = rcca_flops(h, w, c, cq, recurrence, b)
    split = flops_by_kind(module, x)
    assert split["projections"] == expected["projections"]
    assert split["attention"] == expected["attention"] + recurrence * duplicate_centre_flops(
        h, w, cq, c, b
    )


def test_cca_closed_form_by_hand():
    # H=2, W=3, C=4, C'=1, B=1: N=6, H+W-1=4.
    f = cca_flops(2, 3, 4, 1)
    assert f["projections"] == 2 * 6 * 4 * (2 * 1 + 4)  # 288
    assert f["energy"] == 2 * 6 * 4 * 1  # 48
    assert f["aggregation"] == 2 * 6 * 4 * 4  # 192
    assert f["total"] == 288 + 48 + 192


@needs_fused
@pytest.mark.parametrize("shape", SHAPES)
def test_fused_cca_flops_equal_closed_form_exactly(shape):
    b, c, cq, h, w = shape
    x = torch.randn(b, c, h, w)
    module = CrissCrossAttention(c, cq, impl="fused")
    assert count_flops(module, x) == cca_flops(h, w, c, cq, b)["total"]


@needs_fused
def test_fused_backward_flops_twice_forward():
    q, k, v = torch.randn(2, 3, 5, 7), torch.randn(2, 3, 5, 7), torch.randn(2, 16, 5, 7)

    def attend(q, k, v):
        return torch.ops.ccnet_edu.criss_cross_attention(q, k, v)[0]

    forward = cca_flops(5, 7, 16, 3, 2)["attention"]
    assert count_flops(attend, q, k, v) == forward
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    assert count_flops(attend, q, k, v, backward=True) == 3 * forward


_FRESH_FUSED_COUNT = """
import json, torch
from ccnet_edu.analysis import flops
from ccnet_edu.cca import RecurrentCrissCrossAttention
assert not hasattr(torch.ops.ccnet_edu, "criss_cross_attention")  # not loaded yet
x = torch.empty(1, 16, 9, 11, device="meta")
block = RecurrentCrissCrossAttention(16, 2, 4, impl="fused").to("meta")
print(json.dumps([flops.flops_by_kind(block, x), flops.cca_flops(9, 11, 16, 4)]))
"""


@needs_fused
def test_fused_module_counted_in_a_fresh_process():
    # The first forward of a fused module loads the operator inside the counter; its
    # attention must still be counted (it was counted as 0 before the counter learned
    # formulas lazily).
    result = subprocess.run(
        [sys.executable, "-c", _FRESH_FUSED_COUNT], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    split, closed = json.loads(result.stdout.splitlines()[-1])
    assert split["attention"] == 2 * (closed["energy"] + closed["aggregation"])
    assert split["projections"] == 2 * closed["projections"]


@pytest.mark.parametrize("size", [(5, 7), (16, 16), (9, 3)])
def test_issa_flops_equal_closed_form_with_padding(size):
    h, w = size
    x = torch.randn(2, 8, h, w)
    module = InterlacedSparseSelfAttention(8, (4, 2), key_channels=3)
    assert count_flops(module, x) == issa_flops(h, w, 8, (4, 2), 3, batch=2)["total"]


def test_einsum_flops_formula_and_size_one_contraction():
    assert einsum_flops("bij,bjk->bik", (2, 3, 4), (2, 4, 5)) == 2 * 2 * 3 * 4 * 5
    assert einsum_flops("ij,ij->ij", (3, 4), (3, 4)) == 0  # element-wise: not counted
    # A contraction over a size-1 index is lowered to a multiply; still charged.
    a, b = torch.randn(3, 1), torch.randn(1, 4)
    assert count_flops(lambda x, y: torch.einsum("ik,kj->ij", x, y), a, b) == 2 * 3 * 4
    with pytest.raises(NotImplementedError):
        einsum_flops("...i,...i->...", (2, 3), (2, 3))


def test_conventions_bias_and_softmax_not_counted():
    x = torch.randn(2, 5, 3, 4)
    conv = nn.Conv2d(5, 7, 1, bias=True)
    assert count_flops(conv, x) == 2 * (2 * 3 * 4) * 5 * 7  # no bias adds
    assert count_flops(lambda t: torch.softmax(t, -1), x) == 0


def test_flops_on_meta_equal_cpu_and_by_module():
    x = torch.randn(1, 16, 6, 5)
    module = RecurrentCrissCrossAttention(16, 2, qk_channels=2)
    meta = copy.deepcopy(module).to("meta")
    assert count_flops(meta, x.to("meta")) == count_flops(module, x)
    per_module = flops_by_module(module, x)
    # The shared block runs twice: its query conv is charged twice.
    assert per_module["RecurrentCrissCrossAttention.cca.query"] == 2 * 2 * 30 * 16 * 2
    assert per_module["Global"] == count_flops(module, x)


def test_paper_setting_flops_claim():
    # Closed forms and the counter agree at 97x97, C=512, C'=64 (counted on meta).
    x = torch.empty(1, 512, 97, 97, device="meta")
    dense = count_flops(NonLocal2d(512, 64).to("meta"), x)
    rcca = count_flops(RecurrentCrissCrossAttention(512, 2, 64).to("meta"), x)
    assert dense == nonlocal_flops(97, 97, 512, 64)["total"]
    duplicate = 2 * duplicate_centre_flops(97, 97, 64, 512)
    assert rcca == rcca_flops(97, 97, 512, 64, 2)["total"] + duplicate
    assert 0.84 < 1 - rcca / dense < 0.86


# ---------------------------------------------------------------------------
# Saved for backward
# ---------------------------------------------------------------------------


def test_saved_bytes_hand_counts_elementwise():
    x = torch.randn(10, 3)
    n = x.numel() * 4
    assert saved_bytes(torch.exp, x) == n  # exp saves its result
    assert saved_bytes(lambda t: t.sin().sin(), x) == 2 * n  # x and sin(x)
    assert saved_bytes(lambda a, b: a * b, x, x.clone()) == 2 * n
    # Two views of one storage, both saved by mul: the storage counts once.
    y = torch.randn(10, 4)
    assert saved_bytes(lambda t: t[:, :2] * t[:, 2:], y) == y.numel() * 4


def test_saved_bytes_kinds_linear():
    linear = nn.Linear(6, 5)
    x = torch.randn(4, 6)
    report = saved_tensors(linear, x)
    assert report.bytes_of("input") == 4 * 6 * 4
    assert report.bytes_of("parameter") == 5 * 6 * 4  # the weight; the bias is not needed
    assert report.bytes_of("activation") == 0


@pytest.mark.parametrize("shape", SHAPES[:2])
def test_saved_bytes_nonlocal_hand_count(shape):
    # query, key (C'), the N x N attention, value (C) and out (for gamma * out), float32.
    b, c, cq, h, w = shape
    n = h * w
    x = torch.randn(b, c, h, w)
    expected = 4 * b * (2 * cq * n + n * n + 2 * c * n)
    assert saved_bytes(_with_gamma(NonLocal2d(c, cq)), x, kind="activation") == expected


@needs_fused
@pytest.mark.parametrize("shape", SHAPES[:2])
def test_saved_bytes_fused_cca_hand_count(shape):
    # query, key, value, the (H+W-1)-entry attention, and out (for gamma * out).
    b, c, cq, h, w = shape
    n = h * w
    x = torch.randn(b, c, h, w)
    module = _with_gamma(CrissCrossAttention(c, cq, impl="fused"))
    expected = 4 * b * n * (2 * cq + c + (h + w - 1) + c)
    assert saved_bytes(module, x, kind="activation") == expected


def test_saved_bytes_meta_equal_cpu():
    x = torch.randn(2, 8, 5, 6)
    for module in [NonLocal2d(8, 2), RecurrentCrissCrossAttention(8, 2, 2)]:
        meta = copy.deepcopy(module).to("meta")
        assert saved_bytes(meta, x.to("meta")) == saved_bytes(module, x)


# ---------------------------------------------------------------------------
# Peak memory
# ---------------------------------------------------------------------------


def test_peak_tracking_hand_count():
    x = torch.randn(1000)
    n = x.numel() * 4
    # forward: exp(x) (n); backward: grad * exp(x) (n), becomes x.grad; plus scalars.
    peak = peak_memory(torch.exp, x).peak_bytes
    assert 2 * n <= peak <= 2 * n + 64
    # forward only: just the output
    assert n <= peak_memory(torch.exp, x, backward=False).peak_bytes <= n + 64


def test_peak_tracking_sees_freed_temporaries():
    x = torch.randn(100)

    def fn(t):
        big = torch.ones(10_000)  # 40 kB, freed before returning
        return t * big[:100]

    assert peak_memory(fn, x, backward=False).peak_bytes >= 40_000


@pytest.mark.parametrize(
    "build", [lambda: NonLocal2d(16, 2), lambda: RecurrentCrissCrossAttention(16, 2, 2)]
)
def test_peak_tracking_matches_profiler_and_meta(build):
    module = _with_gamma(build())
    x = torch.randn(2, 16, 7, 9)
    tracked = peak_memory(module, x).peak_bytes
    logged = peak_memory(module, x, method="profiler").peak_bytes
    assert abs(tracked - logged) <= 64  # the allocator log holds a few scalars more
    meta = copy.deepcopy(module).to("meta")
    assert peak_memory(meta, x.to("meta")).peak_bytes == tracked


def test_peak_memory_bad_method():
    with pytest.raises(ValueError, match="method"):
        peak_memory(torch.exp, torch.randn(3), method="rss")
    with pytest.raises(ValueError, match="CUDA"):
        peak_memory(torch.exp, torch.randn(3), method="cuda")


def test_attention_map_bytes():
    assert attention_map_bytes("dense", 97, 97) == 9409**2 * 4
    assert attention_map_bytes("criss_cross", 5, 7, batch=2) == 2 * 35 * 11 * 4
    # 5x7 with 4x2 blocks pads to 8x8: Q = (2, 4), 8 + 8 entries per position.
    assert attention_map_bytes("issa", 5, 7, block_size=(4, 2)) == 64 * (8 + 8) * 4
    with pytest.raises(ValueError, match="kind"):
        attention_map_bytes("sparse", 3, 3)


# ---------------------------------------------------------------------------
# Reachability and influence
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(3, 5), (7, 4), (1, 6), (5, 1), (4, 4)])
def test_criss_cross_reachability(size):
    h, w = size
    one = criss_cross_reachability(h, w, 1)
    assert torch.equal(one, criss_cross_mask(h, w))
    assert one.sum(1).eq(h + w - 1).all()
    assert criss_cross_reachability(h, w, 2).all()
    assert torch.equal(criss_cross_reachability(h, w, 3), criss_cross_reachability(h, w, 2))
    if h > 1 and w > 1:
        assert not one.all()


def test_boolean_power_path_graph():
    # A path 0-1-2-3 with self loops: k steps reach distance k.
    m = torch.eye(4, dtype=torch.bool) | torch.diag(torch.ones(3, dtype=torch.bool), 1)
    m = m | m.T
    assert not boolean_power(m, 2)[0, 3]
    assert boolean_power(m, 3)[0, 3]
    with pytest.raises(ValueError, match="power"):
        boolean_power(m, 0)


def test_issa_reachability_all_after_two_steps():
    from ccnet_edu.issa import interlaced_masks

    long_mask, short_mask = interlaced_masks(7, 9, (2, 3))
    assert not long_mask.all() and not short_mask.all()
    assert issa_reachability(7, 9, (2, 3)).all()


@pytest.mark.parametrize("size", [(5, 7), (6, 4)])
def test_influence_rcca_one_loop_is_the_cross_two_loops_everything(size):
    h, w = size
    x = torch.randn(2, 6, h, w, dtype=torch.float64)
    cross = criss_cross_mask(h, w).reshape(h * w, h, w)
    for pixel in [(0, 0), (h // 2, w - 1), (h - 1, 1)]:
        one = _with_gamma(RecurrentCrissCrossAttention(6, 1, qk_channels=2)).double()
        influence = influence_map(one, x, pixel)
        reach = cross[pixel[0] * w + pixel[1]]
        assert (influence[~reach] == 0).all()
        assert (influence[reach] > 0).all()
        two = _with_gamma(RecurrentCrissCrossAttention(6, 2, qk_channels=2)).double()
        assert (influence_map(two, x, pixel) > 0).all()


def test_influence_gamma_zero_is_identity():
    module = RecurrentCrissCrossAttention(4, 2, qk_channels=1)  # gamma = 0: y = x
    influence = influence_map(module, torch.randn(1, 4, 5, 5), (2, 3))
    expected = torch.zeros(5, 5)
    expected[2, 3] = 4.0  # d(sum_c y_c)/dx_c = 1 for each of the 4 channels
    assert torch.equal(influence, expected)


def test_influence_issa_reaches_everything():
    x = torch.randn(1, 4, 7, 9, dtype=torch.float64)
    influence = influence_map(lambda t: interlaced_sparse_attention(t, (2, 3)), x, (3, 4))
    assert (influence > 0).all()


def test_influence_conv_stack_bounded_by_receptive_field():
    stack = conv_stack(3, depth=2, kernel_size=3, activation=False).double()
    influence = influence_map(stack, torch.randn(1, 3, 11, 11, dtype=torch.float64), (5, 5))
    inside = torch.zeros(11, 11, dtype=torch.bool)
    inside[3:8, 3:8] = True  # two 3x3 layers: radius 2
    assert (influence[~inside] == 0).all()
    assert (influence[inside] > 0).all()


def test_linear_stack_honours_stride_and_dilation():
    # (kernel, dilation, stride): a 3x3 with stride 2, then a 3x3 with dilation 2.
    # By hand: layer-1 pixel v reads input rows 2v-1 .. 2v+1; layer-2 pixel u reads
    # layer-1 rows u-2, u, u+2, i.e. input rows 2u-5..2u-3, 2u-1..2u+1, 2u+3..2u+5:
    # a side of 11 (the recursion: 3 + (3 - 1) * 2 * 2), with holes at 2u-2 and 2u+2.
    torch.manual_seed(0)
    stack = linear_stack([(3, 1, 2), (3, 2, 1)], channels=2).double()
    x = torch.randn(1, 2, 21, 21, dtype=torch.float64)
    assert stack(x).shape[2:] == (11, 11)
    influence = influence_map(stack, x, (5, 4))
    rows = [r for c in (5, 9, 13) for r in range(c, c + 3)]  # 2*5 = 10: 5..7, 9..11, 13..15
    cols = [r for c in (3, 7, 11) for r in range(c, c + 3)]  # 2*4 = 8: 3..5, 7..9, 11..13
    expected = torch.zeros(21, 21, dtype=torch.bool)
    expected[torch.tensor(rows)[:, None], torch.tensor(cols)[None, :]] = True
    assert torch.equal(influence > 0, expected)
    support_rows = (influence > 0).any(dim=1).nonzero()
    assert int(support_rows.max() - support_rows.min() + 1) == 11


def _pixelwise_bn(channels: int) -> nn.Module:
    # 1x1 convolution + BatchNorm: output pixel u depends on input pixel u alone, in eval().
    return nn.Sequential(nn.Conv2d(channels, channels, 1), nn.BatchNorm2d(channels)).double()


def test_influence_measured_in_eval_mode():
    module = _pixelwise_bn(3)  # training mode, as constructed
    x = torch.randn(2, 3, 5, 6, dtype=torch.float64)
    influence = influence_map(module, x, (1, 4))
    assert (influence > 0).sum() == 1 and influence[1, 4] > 0
    # In training mode the batch statistics tie every output to every input.
    assert (influence_map(module, x, (1, 4), eval_mode=False) > 0).all()
    assert module.training and all(m.training for m in module.modules())


def test_influence_restores_mixed_modes():
    module = _pixelwise_bn(2)
    module[1].eval()  # a mix: the container trains, its BatchNorm does not
    influence_map(module, torch.randn(1, 2, 4, 4, dtype=torch.float64), (0, 0))
    assert module.training and module[0].training and not module[1].training
    module.eval()
    influence_map(module, torch.randn(1, 2, 4, 4, dtype=torch.float64), (0, 0), eval_mode=False)
    assert not any(m.training for m in module.modules())


def test_influence_issa_long_step_alone_is_its_group_in_eval_mode():
    # The trap of the issue: ISSA holds BatchNorm, so its long-range step alone "reaches"
    # every pixel in training mode but only its own long-range group in eval mode.
    from ccnet_edu.issa import (
        long_range_groups,
        long_range_permute,
        long_range_unpermute,
        pad_to_blocks,
    )

    torch.manual_seed(0)
    block = (2, 3)
    issa = InterlacedSparseSelfAttention(4, block_size=block, key_channels=2).double()

    def long_step(t: torch.Tensor) -> torch.Tensor:
        feats, _ = pad_to_blocks(t, block)
        out, _ = issa.long_range(long_range_permute(feats, block))
        return long_range_unpermute(out, t.shape[0], *feats.shape[2:], block)

    x = torch.randn(2, 4, 6, 9, dtype=torch.float64)  # multiples of the block: no padding
    u = (3, 4)
    issa.train()
    assert (influence_map(long_step, x, u) > 0).all()  # a function is measured as it is
    issa.eval()
    influence = influence_map(long_step, x, u)
    group = long_range_groups(6, 9, block)
    members = group[(group == u[0] * 9 + u[1]).any(dim=1)][0]
    expected = torch.zeros(6 * 9, dtype=torch.bool)
    expected[members] = True
    assert torch.equal(influence.flatten() > 0, expected)


def test_influence_issa_long_range_step_is_its_group_in_eval_mode():
    # The same trap through the module's own long_range_step, on a map that needs padding.
    from ccnet_edu.issa import pixel_groups

    torch.manual_seed(1)
    block = (3, 2)
    issa = InterlacedSparseSelfAttention(4, block_size=block, key_channels=2).double()
    x = torch.randn(2, 4, 7, 5, dtype=torch.float64)
    u = (4, 1)
    issa.train()
    assert (influence_map(issa.long_range_step, x, u) > 0).all()
    issa.eval()
    offset, _ = pixel_groups(7, 5, block)
    influence = influence_map(issa.long_range_step, x, u)
    assert torch.equal(influence > 0, offset == offset[u])


def test_erf_width_by_hand():
    # All the influence two rows above and below the centre row: the width is 2 exactly.
    influence = torch.zeros(7, 4, dtype=torch.float64)
    influence[1, 0] = influence[5, 3] = 3.0
    assert erf_width(influence) == pytest.approx(2.0, abs=1e-15)
    # A point at the centre has width 0; the scale of the map does not matter.
    point = torch.zeros(5, 5)
    point[2, 2] = 7.0
    assert erf_width(point) == 0.0
    # Another centre: rows 0 and 2 with shares 1/4 and 3/4 around centre 0 -> sqrt(3/4 * 4).
    two = torch.zeros(3, 2, dtype=torch.float64)
    two[0, 1], two[2, 0] = 1.0, 3.0
    assert erf_width(two, centre=0) == pytest.approx(3**0.5, abs=1e-15)


def test_erf_width_of_a_gaussian_is_its_sigma():
    # A wide discrete Gaussian of standard deviation 4 along the rows: width close to 4.
    offsets = torch.arange(61, dtype=torch.float64) - 30
    gauss = torch.exp(-(offsets**2) / (2 * 4.0**2))
    influence = gauss[:, None] * gauss[None, :]
    assert erf_width(influence) == pytest.approx(4.0, rel=1e-6)


def test_influence_bad_pixel():
    with pytest.raises(ValueError, match="pixel"):
        influence_map(nn.Identity(), torch.randn(1, 2, 3, 3), (3, 0))


# ---------------------------------------------------------------------------
# Comparison table, sweep and CLI (tiny shapes)
# ---------------------------------------------------------------------------


def test_comparison_table_small():
    rows = comparison_table(
        9, 7, 16, 2, repeats=1, impl="reference", progress=False, time_budget=None
    )
    names = [r.model for r in rows]
    assert names[0] == "non-local" and any(n.startswith("RCCA R=2") for n in names)
    dense = rows[0]
    assert dense.gflops * 1e9 == pytest.approx(nonlocal_flops(9, 7, 16, 2)["total"])
    assert dense.gflops_formula == pytest.approx(dense.gflops)
    assert all(r.peak_mb > 0 and r.saved_mb > 0 and r.time_s > 0 and r.runs == 1 for r in rows)
    claims = paper_claims(rows)
    rcca2 = next(r for r in rows if r.model.startswith("RCCA R=2"))
    assert claims["flops_reduction"] == pytest.approx(1 - rcca2.gflops / dense.gflops)
    text = format_table(rows)
    assert all(name in text for name in names)
    assert "fewer" in format_claims(claims)


def test_comparison_table_times_every_row_in_turn_with_its_spread():
    rows = comparison_table(
        9, 7, 16, 2, repeats=3, impl="reference", progress=False, time_budget=None, peak=False
    )
    assert all(r.runs == 3 for r in rows)
    assert all(0 < r.time_low_s <= r.time_s <= r.time_high_s for r in rows)
    low, high = (f"{1e3 * t:.3g}" for t in (rows[0].time_low_s, rows[0].time_high_s))
    table = format_table(rows)
    assert "time ms" in table.splitlines()[0]
    assert float(table.splitlines()[2].split("[")[1].split("–")[0]) == pytest.approx(float(low))
    assert float(table.splitlines()[2].split("–")[1].split("]")[0]) == pytest.approx(float(high))
    untimed = comparison_table(9, 7, 16, 2, impl="reference", progress=False, timing=False)
    assert all(r.time_s is None and r.time_low_s is None and r.runs == 0 for r in untimed)


def test_scaling_sweep_skips_over_limit():
    sizes = (6, 16)
    unlimited = scaling_sweep(sizes, 8, 2, timing=False, progress=False)
    small, large = (p.peak_mb for p in unlimited if p.model == "non-local")
    assert small < large
    points = scaling_sweep(
        sizes, 8, 2, memory_limit_mb=(small + large) / 2, repeats=1, progress=False
    )
    dense = [p for p in points if p.model == "non-local"]
    assert dense[0].peak_mb is not None
    assert dense[1].peak_mb is None and dense[1].note.startswith("skipped")
    assert all(p.gflops > 0 for p in points)
    assert fit_exponent([1, 2, 4], [3, 12, 48]) == pytest.approx(2.0)


def test_cli_small(tmp_path, capsys):
    out_csv = tmp_path / "t.csv"
    code = main(
        [
            "--height", "17", "--width", "9", "--channels", "8", "--qk-channels", "2",
            "--repeats", "1", "--quiet", "--impl", "reference", "--csv", str(out_csv),
        ]
    )  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "non-local" in printed and "fewer" in printed
    with open(out_csv) as f:
        assert len(list(csv.DictReader(f))) == 6


@pytest.mark.parametrize(
    "argv,names",
    [
        (["--height", "0"], "--height"),
        (["--width", "-3"], "--width"),
        (["--width", "9.5"], "--width"),
        (["--channels", "0"], "--channels"),
        (["--qk-channels", "zero"], "--qk-channels"),
        (["--batch", "0"], "--batch"),
        (["--repeats", "0"], "--repeats"),
        (["--time-budget", "0"], "--time-budget"),
        (["--time-budget", "nan"], "--time-budget"),
        (["--impl", "cuda"], "--impl"),
        (["--device", "gpu"], "--device"),
        (["--sweep", "--sizes", "16", "0"], "--sizes"),
        (["--sweep", "--memory-limit-mb", "-1"], "--memory-limit-mb"),
        (["--sizes", "16"], "--sizes"),
        (["--memory-limit-mb", "10"], "--memory-limit-mb"),
        (["--sweep", "--height", "16"], "--height"),
        (["--sweep", "--no-peak"], "--no-peak"),
    ],
)
def test_cli_rejects_bad_options(capsys, argv, names):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("python -m ccnet_edu.analysis: error: ")
    assert names in err


def test_cli_checks_output_paths_before_measuring(capsys, tmp_path, monkeypatch):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    monkeypatch.setattr("ccnet_edu.analysis.__main__.comparison_table", None)  # no work
    monkeypatch.setattr("ccnet_edu.analysis.__main__.scaling_sweep", None)
    for argv, option in [
        (["--csv", str(blocker / "t.csv")], "--csv"),
        (["--png", str(tmp_path)], "--png"),
        (["--sweep", "--png", str(blocker / "x" / "s.png")], "--png"),
    ]:
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 2
        assert option in capsys.readouterr().err


def test_cli_usage_error_exit_code_is_2():
    result = subprocess.run(
        [sys.executable, "-m", "ccnet_edu.analysis", "--repeats", "0"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.splitlines() == [
        "python -m ccnet_edu.analysis: error: argument --repeats: must be >= 1, got 0 (see --help)"
    ]


def test_plot_query_attention_masks_exact_zeros_and_shares_the_scale():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ccnet_edu.analysis import plots

    weights = torch.tensor([[0.0, 0.25], [1e-9, 0.5]], dtype=torch.float64)
    fig, ax = plt.subplots()
    plots.plot_query_attention(weights, pixel=(1, 1), ax=ax, vmax=0.8)
    image = ax.images[0]
    shown = image.get_array()
    assert bool(shown.mask[0, 0]) and not bool(shown.mask[1, 0])  # 0 masked, 1e-9 drawn
    assert image.get_clim() == (0.0, 0.8)
    assert ax.get_xlabel() == "column j" and ax.get_ylabel() == "row i"
    plt.close(fig)


# ---------------------------------------------------------------------------
# A segmentation model's logit reach and the beacon
# ---------------------------------------------------------------------------


def test_logit_reach_predicts_the_gradient_support_of_any_pixel():
    from ccnet_edu import data, models
    from ccnet_edu.analysis.propagation import logit_reach, support_meets_beacon

    torch.manual_seed(0)
    net = models.SegmentationModel("fcn")
    reach = logit_reach(net, size=64)
    assert reach.shape == (8, 4) and reach.dtype == torch.int64
    # the reach is not symmetric (bilinear upsampling of stride-8 cells)
    assert not torch.equal(reach[:, 0], reach[:, 1])
    net64 = copy.deepcopy(net).double().eval()
    gen = torch.Generator().manual_seed(1)
    outcomes = []
    for index in range(4):
        sample = data.make_sample(3, index)
        predicted = support_meets_beacon(sample, reach)
        beacon = torch.zeros_like(predicted)
        br, bc = sample["beacon_corner"]
        beacon[br : br + 6, bc : bc + 6] = True
        assert bool(predicted[beacon].all())  # the beacon's own pixels read it
        # pixels just inside and just outside the predicted region, and the image's corners
        edge = (
            predicted
            & ~torch.nn.functional.max_pool2d((~predicted)[None, None].float(), 3, 1, 1)[0, 0]
            .bool()
            .logical_not()
        )
        outside = (
            ~predicted
            & torch.nn.functional.max_pool2d(predicted[None, None].float(), 3, 1, 1)[0, 0].bool()
        )
        pixels = [(0, 0), (95, 95), (2, 93)]
        for region in (edge, outside):
            found = region.nonzero()
            pixels += found[torch.randperm(len(found), generator=gen)[:3]].tolist()
        image = sample["image"][None].double()
        for r, c in pixels:
            support = influence_map(net64, image, (r, c)) > 0
            rows, cols = support.any(1).nonzero().flatten(), support.any(0).nonzero().flatten()
            up, down = reach[r % 8, :2].tolist()
            left, right = reach[c % 8, 2:].tolist()
            assert (int(rows.min()), int(rows.max())) == (max(r - up, 0), min(r + down, 95))
            assert (int(cols.min()), int(cols.max())) == (max(c - left, 0), min(c + right, 95))
            outcomes.append(bool(predicted[r, c]))
            assert outcomes[-1] == bool((support & beacon).any())
    assert True in outcomes and False in outcomes


def test_support_meets_beacon_by_hand():
    from ccnet_edu.analysis.propagation import support_meets_beacon

    sample = {"label": torch.zeros(20, 20), "beacon_corner": (8, 8), "beacon_size": 2}
    reach = torch.tensor([[2, 0, 1, 3]])  # up 2, down 0, left 1, right 3, every offset
    meets = support_meets_beacon(sample, reach)
    rows = meets.any(1).nonzero().flatten().tolist()
    cols = meets.any(0).nonzero().flatten().tolist()
    assert rows == [8, 9, 10, 11]  # rows r with r - 2 <= 9 and r >= 8
    assert cols == [5, 6, 7, 8, 9, 10]  # cols c with c - 1 <= 9 and c + 3 >= 8
    assert int(meets.sum()) == len(rows) * len(cols)


def test_times_print_in_ms_with_three_significant_digits():
    from ccnet_edu.analysis.compare import _fmt_ms

    cases = {0.01234: "12.3", 0.04: "40.0", 0.0001234: "0.123", 0.0099996: "10.0", 0.0: "0.00"}
    assert {t: _fmt_ms(t) for t in cases} == cases
    assert _fmt_ms(1.23456) == "1,235"  # above a second: whole milliseconds
    with pytest.raises(ValueError, match="seconds"):
        _fmt_ms(-1.0)


def test_format_claims_names_the_papers_setting():
    text = format_claims({"flops_reduction": 0.75, "saved_ratio": 2.0, "peak_ratio": 4.0})
    assert text.count("paper, at 97 x 97, C = 512") == 2


def test_format_claims_gives_the_flop_ratio_beside_the_saving():
    # The time line is a ratio non-local / RCCA, so the FLOP line gives the same ratio:
    # 1 / (1 - saving), 4.00x for a saving of 75%.
    text = format_claims({"flops_reduction": 0.75, "saved_ratio": 2.0, "time_ratio": 3.0})
    assert "75.0% fewer" in text and "non-local / RCCA = 4.00x" in text.splitlines()[0]
    assert "Time (forward + backward): non-local / RCCA = 3.00x" in text
