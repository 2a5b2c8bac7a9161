"""The tiled GPU kernels' arithmetic, run on the CPU.

``csrc/cca_lines.h`` holds the bodies of the tiled CUDA kernels, written against
an executor; ``csrc/cca_lines_host.h`` is a CPU executor that runs the same bodies
phase by phase (threads and warps in turn, tensor-core products in float
arithmetic on the same operands, float32 split into TF32 parts as the GPU splits
it).  :mod:`ccnet_edu.emulation` compiles ``csrc/cca_lines_emulate.cpp`` with the C++
compiler alone (no torch headers, no CUDA) and calls it through ctypes; every output
and gradient is compared with the float64 reference.  Outputs start as NaN, scratch
buffers and shared memory too: an element nothing wrote, or a read of anything
nothing wrote, shows as NaN.

What this cannot check is what only a GPU does: the tensor cores' own rounding,
the WMMA fragment layouts, races between threads; ``tests/test_gpu.py`` and
``benchmarks/gpu_check.sh`` do, on a GPU.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from cca_cases import REL_TOL, SHAPES, float64_reference, qkv_case

from ccnet_edu import emulation, roofline
from ccnet_edu.ops import csrc_dir


@pytest.fixture(scope="module", autouse=True)
def _compiled():
    """The emulation, compiled from csrc/ alone (a failure fails every test)."""
    emulation.library()


def _assert_close(name, got, want, dtype):
    assert not torch.isnan(got).any(), f"{name}: NaN (an element no pass wrote)"
    got = got.double()
    scale = want.norm().item()
    error = (got - want).norm().item()
    if scale == 0.0:  # e.g. grad query/key of a one-pixel map
        assert error <= REL_TOL[dtype], f"{name}: |error| {error:.3g} where the reference is 0"
    else:
        assert error / scale <= REL_TOL[dtype], f"{name}: relative error {error / scale:.3g}"


@pytest.mark.parametrize("dtype", list(emulation.DTYPES), ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_tiled_kernels_match_reference(shape, dtype):
    """NCHW tensors, read and written in place (what a convolution gives the operator)."""
    q, k, v, go, ga = qkv_case(shape, dtype)
    want = float64_reference(q, k, v, go, ga)
    out, att = emulation.forward(q, k, v)
    grads = emulation.backward(go, ga, att, q, k, v)
    names = ("out", "attention", "grad_query", "grad_key", "grad_value")
    for name, got, expected in zip(names, [out, att, *grads], want, strict=True):
        _assert_close(name, got, expected, dtype)


def test_float32_is_about_float32_precise():
    """3xTF32 keeps float32's precision: 1xTF32 (10 mantissa bits) would be ~1e-3 off."""
    shape = (2, 64, 96, 23, 29)
    q, k, v, go, ga = qkv_case(shape, torch.float32, seed=3)
    want = float64_reference(q, k, v, go, ga)
    out, att = emulation.forward(q, k, v)
    rel = ((out.double() - want[0]).norm() / want[0].norm()).item()
    assert rel < 3e-6


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_ctas_in_any_order_give_the_same_bits(dtype):
    """No CTA reads what another CTA of the same launch writes."""
    q, k, v, go, ga = qkv_case((2, 8, 136, 9, 70), dtype, seed=1)
    forward = emulation.forward(q, k, v)
    reverse = emulation.forward(q, k, v, reverse=True)
    for a, b in zip(forward, reverse, strict=True):
        assert torch.equal(a, b)
    grads = emulation.backward(go, ga, forward[1], q, k, v)
    grads_reverse = emulation.backward(go, ga, forward[1], q, k, v, reverse=True)
    for a, b in zip(grads, grads_reverse, strict=True):
        assert torch.equal(a, b)


# Lines of several key tiles (W = 70, H = 67) so that the copies of the next tile are in
# flight while one is used; C = 136 and C' = 16 in 16-byte vectors (asynchronous copies),
# C = 33 and C' = 3 in scalars; H = 1 and W = 1.
ASYNC_SHAPES = [(2, 16, 136, 9, 70), (1, 3, 33, 67, 2), (1, 8, 64, 1, 130), (2, 8, 16, 70, 1)]


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("dtype", list(emulation.DTYPES), ids=str)
@pytest.mark.parametrize("shape", ASYNC_SHAPES, ids=str)
def test_asynchronous_copies_landing_early_or_late_give_the_same_bits(shape, dtype, layout):
    """A GPU's copies land between their issue and their wait.  Landing at the wait (the
    default), a tile read before its wait reads NaN; landing at the issue, a copy into a
    buffer still being read overwrites it: the same bits either way, and right; and the
    same bits whether the tensors are NCHW or channels-last (the same products)."""
    q, k, v, go, ga = qkv_case(shape, dtype, seed=5)
    late = emulation.forward(q, k, v, layout=layout)
    early = emulation.forward(q, k, v, early_copies=True, layout=layout)
    other = emulation.forward(q, k, v, layout="nchw" if layout != "nchw" else "channels_last")
    for a, b, c in zip(late, early, other, strict=True):
        assert torch.equal(a, b)
        assert torch.equal(a, c)
    grads = emulation.backward(go, ga, late[1], q, k, v, layout=layout)
    grads_early = emulation.backward(go, ga, late[1], q, k, v, early_copies=True, layout=layout)
    # grad_out channels-last (as the operations after out may pass it), the inputs NCHW
    grads_mixed = emulation.backward(go, ga, late[1], q, k, v, grad_out_layout="channels_last")
    for a, b, c in zip(grads, grads_early, grads_mixed, strict=True):
        assert torch.equal(a, b)
        assert torch.equal(a, c)
    want = float64_reference(q, k, v, go, ga)
    names = ("out", "attention", "grad_query", "grad_key", "grad_value")
    for name, got, expected in zip(names, [*late, *grads], want, strict=True):
        _assert_close(name, got, expected, dtype)


def _reused(shape, size, mode, width):
    """What the column pass reads again, per map (csrc/cca_tiling.h, reused_bytes)."""
    _, qk, _, height, width_ = shape
    pixels = height * width_
    if mode == "forward":
        return pixels * size * (2 * qk + 2 * width)
    return pixels * (size * (4 * qk + 2 * width) + 4)


@pytest.mark.parametrize("dtype", list(emulation.DTYPES), ids=str)
def test_passes_by_groups_of_maps_and_slices_of_channels_give_the_same_bits(dtype):
    """The passes run a group of maps and a slice of the value channels at a time (so
    that the column pass's second reads hit the L2): the same bits as all at once."""
    shape = (3, 8, 136, 9, 70)
    size = 4 if dtype == torch.float32 else 2
    q, k, v, go, ga = qkv_case(shape, dtype, seed=6)
    whole = emulation.forward(q, k, v)
    grads = emulation.backward(go, ga, whole[1], q, k, v)
    seen = set()
    for mode in ("forward", "backward"):
        # three slices of one map; one slice of two maps (a group, then the rest)
        for l2 in (2 * _reused(shape, size, mode, 48), 4 * _reused(shape, size, mode, 136)):
            plan = emulation.plan(shape, dtype, mode, l2)
            seen.add((plan["maps"], plan["slices"]))
            grouped = emulation.forward(q, k, v, l2_bytes=l2)
            for a, b in zip(whole, grouped, strict=True):
                assert torch.equal(a, b)
            grouped = emulation.backward(go, ga, whole[1], q, k, v, l2_bytes=l2)
            for a, b in zip(grads, grouped, strict=True):
                assert torch.equal(a, b)
    assert {(1, 3), (2, 1)} <= seen


def _sliced_da(shape, size, width):
    """What one map keeps in the L2 when the backward accumulates dA slice by slice
    (csrc/cca_tiling.h, sliced_da_bytes; roofline.v4_kept_bytes)."""
    return roofline.v4_kept_bytes(shape, size, width)


# C = 136: dA's 64-channel steps 64, 64, 8; odd maps, one row, one column, three maps
SLICED_DA_SHAPES = [(3, 8, 136, 9, 70), (2, 3, 136, 1, 70), (2, 5, 136, 67, 1)]


@pytest.mark.parametrize("dtype", list(emulation.DTYPES), ids=str)
@pytest.mark.parametrize("shape", SLICED_DA_SHAPES, ids=str)
def test_da_accumulated_slice_by_slice_gives_the_bits_of_one_pass(shape, dtype):
    """Where a map's attention and dA fit the L2 beside a slice, the backward adds each
    slice's dout V^T to dA in its own launch, continuing the float accumulators the
    previous slice left (ex.load), grad_attention and D with the last slice, grad value per
    slice, grad key and grad query after the last: slices of 64 and 128 channels (with the
    8-channel tail), and one slice for a group of two maps, give the same bits as all the
    channels and maps at once, with and without grad_attention, NCHW or channels-last."""
    size = 4 if dtype == torch.float32 else 2
    q, k, v, go, ga = qkv_case(shape, dtype, seed=9)
    att = emulation.forward(q, k, v)[1]
    whole = {g is None: emulation.backward(go, g, att, q, k, v) for g in (ga, None)}
    seen = set()
    for l2 in (
        2 * _sliced_da(shape, size, 64),
        2 * _sliced_da(shape, size, 128),
        4 * _sliced_da(shape, size, 136),
    ):
        plan = emulation.plan(shape, dtype, "backward", l2)
        assert plan["sliced_da"] and plan["fits"]
        seen.add((plan["maps"], plan["width"], plan["slices"]))
        for g in (ga, None):
            sliced = emulation.backward(go, g, att, q, k, v, l2_bytes=l2)
            for a, b in zip(whole[g is None], sliced, strict=True):
                assert torch.equal(a, b)
        cl = emulation.backward(go, ga, att, q, k, v, l2_bytes=l2, layout="channels_last")
        for a, b in zip(whole[False], cl, strict=True):
            assert torch.equal(a, b)
    assert seen == {(1, 64, 3), (1, 128, 2), (2, 136, 1)}
    # one 64-channel step less than the smallest slice: v2's order, the same bits again
    l2 = 2 * _sliced_da(shape, size, 64) - 2
    assert not emulation.plan(shape, dtype, "backward", l2)["sliced_da"]
    for a, b in zip(
        whole[False], emulation.backward(go, ga, att, q, k, v, l2_bytes=l2), strict=True
    ):
        assert torch.equal(a, b)
    want = float64_reference(q, k, v, go, ga)
    for name, got, expected in zip(
        ("grad_query", "grad_key", "grad_value"), whole[False], want[2:], strict=True
    ):
        _assert_close(name, got, expected, dtype)


def _backward_order(shape, plan):
    """run_backward's launches restated (csrc/cca_lines.h): (pass, direction, maps, v0, v1,
    qk_grads, grid) per launch, for the plan the launcher took."""
    batch, _, channels, height, width = shape
    columns = height > 1
    blocks = {0: -(-width // 64), 1: -(-height // 64)}

    def da(maps, v0, v1, qk):
        lines = maps * height * blocks[0] + (maps * width * blocks[1] if columns else 0)
        return ("bwd_da", -1, maps, v0, v1, qk, lines)

    def grads(maps, v0, v1, qk):
        out = []
        for d in (0, 1) if columns else (0,):
            lines = maps * (height if d == 0 else width)
            chunks = -(-(v1 - v0) // 128)
            grid = lines * blocks[d] * chunks + (2 * lines * blocks[d] if qk else 0)
            out.append(("bwd_grads", d, maps, v0, v1, qk, grid))
        return out

    order, step = [], plan["width"]
    for b0 in range(0, batch, plan["maps"]):
        maps = min(plan["maps"], batch - b0)
        slices = [(v0, min(v0 + step, channels)) for v0 in range(0, channels, step)]
        if plan["sliced_da"]:
            for v0, v1 in slices:
                order += [da(maps, v0, v1, 0), *grads(maps, v0, v1, 0)]
            order += grads(maps, channels, channels, 1)
        else:
            order.append(da(maps, 0, channels, 1))
            for v0, v1 in slices:
                order += grads(maps, v0, v1, int(v0 == 0))
    return order


ORDER_SHAPES = [*roofline.SHAPES, (5, 8, 40, 9, 10), *SLICED_DA_SHAPES]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", ORDER_SHAPES, ids=str)
def test_the_backward_launches_the_plan_s_order(shape, dtype):
    """Where dA is accumulated slice by slice: per group of maps and per slice, one dA
    launch over rows and columns, then the slice's grad-value launches (no grad key or
    grad query CTAs), and after the last slice one row and one column launch of grad key
    and grad query only (no value channels); else v2's order (one dA launch over all the
    channels, the gradient launches per slice, grad key and grad query with the first).
    Plans: the H100's L2, a few slices, one slice for groups of maps, v2's slices, one
    pass; and the plan's slices are what the roofline counts."""
    size = 4 if dtype == torch.float32 else 2
    channels = shape[2]
    sizes = (
        roofline.L2_BYTES,
        2 * _sliced_da(shape, size, 64),
        4 * _sliced_da(shape, size, channels),
        2 * _reused(shape, size, "backward", 16),
        0,
    )
    kinds = set()
    for l2 in sizes:
        plan = emulation.plan(shape, dtype, "backward", l2)
        got = [tuple(r.values()) for r in emulation.launches(shape, dtype, "backward", l2)]
        got = [(p, d, m, v0, v1, qk, grid) for p, d, grid, m, v0, v1, qk in got]
        assert got == _backward_order(shape, plan), l2
        kinds.add(plan["sliced_da"])
        if l2 == roofline.L2_BYTES and shape in roofline.SHAPES:
            v4 = roofline.design_costs(shape, size, "backward", "v4")
            dA_launches = sum(r[0] == "bwd_da" for r in got)
            groups = -(-shape[0] // plan["maps"])
            assert dA_launches == groups * (v4.slices if plan["sliced_da"] else 1)
    assert kinds == {True, False}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_the_v4_plan_is_plan_passes(dtype):
    """roofline.v4_backward_plan makes plan_passes' choice, groups of maps included, and
    takes at most MAX_DA_SLICES slices (C = 2048 at 97 x 97 in float32 would need 32:
    v2's order)."""
    size = 4 if dtype == torch.float32 else 2
    shapes = [
        *ORDER_SHAPES,
        (7, 16, 96, 11, 13),
        (1, 64, 576, 97, 97),
        (1, 64, 2048, 97, 97),
        (4, 3, 5, 2, 2),
    ]
    for shape in shapes:
        one = _sliced_da(shape, size, shape[2])
        for l2 in (1, 2 * one // 3, 2 * one, 5 * one, roofline.L2_BYTES, 2**31):
            plan = emulation.plan(shape, dtype, "backward", l2)
            want = roofline.v4_backward_plan(shape, size, l2)
            assert plan["sliced_da"] == want[2], (shape, l2)
            if want[2]:
                assert (plan["slices"], plan["width"], plan["fits"], plan["maps"]) == want
                assert plan["slices"] <= roofline.MAX_DA_SLICES
    assert (
        emulation.plan(
            (5, 8, 40, 9, 10), dtype, "backward", 2 * 2 * _sliced_da((5, 8, 40, 9, 10), size, 40)
        )["maps"]
        == 2
    )
    # the bound binds right past CCNet's C = 512 in float32: 8 slices of 64 there; at
    # C = 576, 9 would fit (so a bound of 9 or more, in C++ or Python, fails here)
    ccnet = emulation.plan((1, 64, 512, 97, 97), dtype, "backward", roofline.L2_BYTES)
    wider = emulation.plan((1, 64, 576, 97, 97), dtype, "backward", roofline.L2_BYTES)
    if dtype == torch.float32:
        assert (ccnet["sliced_da"], ccnet["slices"]) == (True, roofline.MAX_DA_SLICES)
        assert roofline.v4_kept_bytes((1, 64, 576, 97, 97), 4, 64) <= roofline.L2_BYTES // 2
        assert not wider["sliced_da"]
    capped = emulation.plan((1, 64, 2048, 97, 97), dtype, "backward", roofline.L2_BYTES)
    if dtype == torch.float32:  # 64-channel slices fit, 32 of them: over the bound
        assert not capped["sliced_da"]
    else:  # 256-channel slices: 8
        assert capped["sliced_da"] and capped["slices"] == roofline.MAX_DA_SLICES


@pytest.mark.parametrize("dtype", list(emulation.DTYPES), ids=str)
@pytest.mark.parametrize("shape", [(3, 3, 40, 1, 70), (3, 2, 40, 67, 1)], ids=str)
def test_slices_with_a_tail_on_one_row_or_one_column_give_the_same_bits(shape, dtype):
    """16-channel slices (16, 16, then a tail of 8) of maps of one row (no column pass) or
    one column: the same bits as all at once."""
    size = 4 if dtype == torch.float32 else 2
    q, k, v, go, ga = qkv_case(shape, dtype, seed=7)
    whole = emulation.forward(q, k, v)
    grads = emulation.backward(go, ga, whole[1], q, k, v)
    for mode in ("forward", "backward"):
        l2 = 2 * _reused(shape, size, mode, 16)
        plan = emulation.plan(shape, dtype, mode, l2)
        assert (plan["maps"], plan["width"], plan["slices"]) == (1, 16, 3)
        if mode == "forward":
            for a, b in zip(whole, emulation.forward(q, k, v, l2_bytes=l2), strict=True):
                assert torch.equal(a, b)
        else:
            grouped = emulation.backward(go, ga, whole[1], q, k, v, l2_bytes=l2)
            for a, b in zip(grads, grouped, strict=True):
                assert torch.equal(a, b)


# Lines of at most 128 positions with several 128-channel chunks: one aggregation CTA
# for all of them (the weights kept); rows of 129 (per chunk) beside columns of 7
# (whole line) with a 44-channel tail; H = 1; W = 1.
WHOLE_LINE_SHAPES = [(2, 5, 300, 7, 129), (1, 3, 200, 1, 100), (2, 3, 200, 100, 1)]


@pytest.mark.parametrize("dtype", list(emulation.DTYPES), ids=str)
@pytest.mark.parametrize("shape", WHOLE_LINE_SHAPES, ids=str)
def test_one_cta_for_all_chunks_gives_the_bits_of_one_cta_per_chunk(shape, dtype):
    """An aggregation CTA that computes its line's energies and exponentials once and
    sweeps every chunk over them gives the same bits as one CTA per chunk (16-channel
    slices: one chunk each), and the attention is written once."""
    batch, _, channels, height, width = shape
    whole_line = {d: -(-n // 64) * 64 <= 128 for d, n in ((0, width), (1, height))}
    lines = {0: batch * height, 1: batch * width}
    for d in (0, 1) if height > 1 else (0,):
        ctas = emulation.grid("agg", d, shape)
        chunks = 1 if whole_line[d] else -(-channels // 128)
        assert ctas == lines[d] * -(-(width if d == 0 else height) // 64) * chunks
    size = 4 if dtype == torch.float32 else 2
    q, k, v, go, ga = qkv_case(shape, dtype, seed=8)
    whole = emulation.forward(q, k, v)
    l2 = 2 * _reused(shape, size, "forward", 16)
    assert emulation.plan(shape, dtype, "forward", l2)["width"] == 16
    for a, b in zip(whole, emulation.forward(q, k, v, l2_bytes=l2), strict=True):
        assert torch.equal(a, b)
    early = emulation.forward(q, k, v, early_copies=True, layout="channels_last")
    for a, b in zip(whole, early, strict=True):
        assert torch.equal(a, b)
    want = float64_reference(q, k, v, go, ga)
    for name, got, expected in zip(("out", "attention"), whole, want[:2], strict=True):
        _assert_close(name, got, expected, dtype)


@pytest.mark.parametrize("dtype", list(emulation.DTYPES), ids=str)
@pytest.mark.parametrize("shape", roofline.SHAPES, ids=str)
def test_plan_is_the_roofline_design(shape, dtype):
    """The kernels slice the channels as ccnet_edu.roofline.design_costs counts them."""
    size = 4 if dtype == torch.float32 else 2
    for mode in ("forward", "backward"):
        plan = emulation.plan(shape, dtype, mode, roofline.L2_BYTES)
        sliced_da = roofline.v4_backward_plan(shape, size)
        assert plan["sliced_da"] == (mode == "backward" and sliced_da[2])
        if plan["sliced_da"]:
            assert (plan["slices"], plan["width"], plan["fits"], plan["maps"]) == sliced_da
            assert _sliced_da(shape, size, plan["width"]) <= roofline.L2_BYTES // 2
            assert roofline.design_costs(shape, size, mode, "v4").slices == plan["slices"]
            continue
        assert (plan["slices"], plan["width"], plan["fits"]) == roofline.v2_slices(
            shape, size, mode
        )
        if plan["fits"]:
            assert _reused(shape, size, mode, plan["width"]) <= roofline.L2_BYTES // 2
        assert 1 <= plan["maps"] <= shape[0]
    assert emulation.plan(shape, dtype, "forward", 0)["maps"] == shape[0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", roofline.SHAPES, ids=str)
def test_the_backward_count_reads_the_attention_as_the_grids_do(shape, dtype):
    """ccnet_edu.roofline counts the attention read once by the dA launch and once more by
    every slice's gradient launches: the dA grid covers every line's query blocks, rows
    and columns in one launch, and a slice's gradient grid holds grad-value CTAs for every
    key block of every line (each weighting grad out by the attention of all its
    queries), which later slices launch again (grads_per_line); the groups of maps are
    the plan's.  Where the plan accumulates dA slice by slice instead, v4 counts the
    attention read once, kept in the L2 for every slice (its bits: above)."""
    size = 4 if dtype == torch.float32 else 2
    batch, qk, channels, height, width = shape
    n, slots = batch * height * width, height + width - 1
    plan = emulation.plan(shape, dtype, "backward", roofline.L2_BYTES)
    if plan["sliced_da"]:
        v4 = roofline.design_costs(shape, size, "backward", "v4")
        assert (v4.maps, v4.slices) == (plan["maps"], plan["slices"])
        assert [t for t in v4.terms if "attention" in t] == [
            "attention read once (kept in the L2 for every slice)"
        ]
        assert v4.terms["attention read once (kept in the L2 for every slice)"] == (
            n * slots * size
        )
        return
    v2 = roofline.design_costs(shape, size, "backward", "v2")
    assert (v2.maps, v2.slices) == (plan["maps"], plan["slices"])
    group = (plan["maps"], qk, channels, height, width)
    blocks = {0: -(-width // 64), 1: -(-height // 64)}
    lines = {0: plan["maps"] * height, 1: plan["maps"] * width}
    assert emulation.grid("bwd_da", 0, group) == sum(lines[d] * blocks[d] for d in (0, 1))
    one = (plan["maps"], qk, plan["width"], height, width)  # the first slice's launches
    chunks = -(-plan["width"] // 128)
    for d in (0, 1):
        kinds = [
            emulation.decode("bwd_grads", d, one, i)
            for i in range(emulation.grid("bwd_grads", d, one))
        ]
        by_value = {(c["line"], c["block"]) for c in kinds if c["kind"] == 0}
        assert len(by_value) == lines[d] * blocks[d]  # every key block of every line
        assert sum(c["kind"] == 0 for c in kinds) == lines[d] * blocks[d] * chunks
    attention = n * slots * size
    assert v2.terms["attention read by the dA pass"] == attention
    assert v2.terms["attention read again by each slice's gradient launches"] == (
        plan["slices"] * attention
    )


def test_without_grad_attention_is_grad_attention_zero():
    q, k, v, go, _ = qkv_case((2, 5, 7, 5, 9), torch.float32, seed=2)
    _, att = emulation.forward(q, k, v)
    without = emulation.backward(go, None, att, q, k, v)
    zeros = emulation.backward(go, torch.zeros_like(att), att, q, k, v)
    for a, b in zip(without, zeros, strict=True):
        assert torch.equal(a, b)


def _work(pass_, direction, shape, index):
    w = emulation.decode(pass_, direction, shape, index)
    return w["dir"], w["line"], w["block"], w["chunk"], w["kind"]


@pytest.mark.parametrize("shape", [(2, 8, 300, 67, 3), (1, 64, 512, 97, 97), (3, 4, 5, 1, 130)])
def test_every_work_item_is_one_cta(shape):
    """The CTAs of each pass cover every (line, block, chunk) of the map exactly once."""
    batch, _, channels, height, width = shape
    lines = {0: batch * height, 1: batch * width}
    length = {0: width, 1: height}
    blocks = {d: -(-length[d] // 64) for d in (0, 1)}
    chunks = -(-channels // 128)
    directions = [0, 1] if height > 1 else [0]

    both = [_work("stats", 0, shape, i) for i in range(emulation.grid("stats", 0, shape))]
    expected = [(d, n, b) for d in directions for n in range(lines[d]) for b in range(blocks[d])]
    assert sorted(w[:3] for w in both) == expected

    for d in directions:
        agg = [_work("agg", d, shape, i) for i in range(emulation.grid("agg", d, shape))]
        # a line of at most 128 positions: one CTA for all the chunks (chunk 0)
        whole_line = chunks > 1 and blocks[d] * 64 <= 128
        per_line = range(1) if whole_line else range(chunks)
        expected = list(itertools.product([d], range(lines[d]), range(blocks[d]), per_line))
        assert sorted(w[:4] for w in agg) == expected

        grid = emulation.grid("bwd_grads", d, shape)
        items = sorted(
            (w[1], w[4], w[2], w[3] if w[4] == 0 else 0)
            for w in (_work("bwd_grads", d, shape, i) for i in range(grid))
        )
        expected = sorted(
            [(n, 0, b, c) for n in range(lines[d]) for b in range(blocks[d]) for c in range(chunks)]
            + [
                (n, kind, b, 0)
                for n in range(lines[d])
                for kind in (1, 2)
                for b in range(blocks[d])
            ]
        )
        assert items == expected
    if height == 1:  # no column half: no column passes
        assert emulation.grid("agg", 1, shape) == 0


def test_shared_memory_fits_two_ctas_per_multiprocessor():
    """At CCNet's C' = 64 every pass fits twice in an H100/H200 multiprocessor's 228 KB
    (the kernels ask for 2 CTAs per multiprocessor), and the widest C' still fits once."""
    for dtype in emulation.DTYPES:
        for p in emulation.PASSES:
            assert emulation.smem_bytes(p, (1, 64, 512, 97, 97), dtype) <= 113 * 1024
            assert emulation.smem_bytes(p, (1, 128, 512, 97, 97), dtype) <= 227 * 1024


def test_what_the_tiled_kernels_take():
    assert emulation.supported((2, 128, 512, 97, 97), torch.float32)
    assert not emulation.supported((2, 129, 512, 97, 97), torch.float32)  # C' > 128: portable
    assert not emulation.supported((2, 64, 512, 97, 97), torch.float64)  # float64: portable
    assert not emulation.supported((0, 64, 512, 97, 97), torch.bfloat16)  # empty
    with pytest.raises(ValueError, match="do not take"):
        emulation.forward(*(torch.randn(1, 130, 3, 3) for _ in range(3)))


KIB = 1024
#: The most dynamic shared memory one CTA may ask for (the CUDA C++ Programming Guide's
#: table of compute capabilities): 99 KB on 8.6 and 8.9, 163 KB on 8.0, 227 KB on 9.0.
SMEM_LIMITS = {"sm_86": 99 * KIB, "sm_80": 163 * KIB, "sm_90": 227 * KIB}


@pytest.mark.parametrize("size", [(97, 97), (128, 256)], ids=str)
def test_the_tiled_kernels_run_only_where_the_gpu_gives_a_cta_enough_shared_memory(size):
    """The launcher reads the device's limit and passes it to ``tiled_supported``: at C' = 64,
    C = 512 the float32 aggregation CTA needs 100.2 KiB, more than a compute capability 8.6
    or 8.9 GPU gives one block, so float32 runs the portable kernels there; bfloat16 (76.2
    KiB at most) runs tiled everywhere.  The shared memory of a CTA does not depend on the
    map's size, so 97 x 97 and 128 x 256 decide alike."""
    shape = (2, 64, 512, *size)
    want = {
        (torch.float32, "sm_86"): False,
        (torch.float32, "sm_80"): True,
        (torch.float32, "sm_90"): True,
        (torch.bfloat16, "sm_86"): True,
        (torch.bfloat16, "sm_80"): True,
        (torch.bfloat16, "sm_90"): True,
    }
    for (dtype, arch), tiled in want.items():
        assert emulation.supported(shape, dtype, SMEM_LIMITS[arch]) is tiled, (dtype, arch)
    for dtype in (torch.float32, torch.bfloat16):
        # the largest CTA of all four passes decides, backward ones included
        needed = max(emulation.smem_bytes(p, shape, dtype) for p in emulation.PASSES)
        assert emulation.supported(shape, dtype, needed)
        assert not emulation.supported(shape, dtype, needed - 1)
    assert emulation.smem_bytes("agg", shape, torch.float32) > SMEM_LIMITS["sm_86"]
    # the widest C' in float32: its statistics CTA (117.5 KiB) fits an A100's, not an RTX's
    wide = (2, 128, 512, *size)
    assert not emulation.supported(wide, torch.float32, SMEM_LIMITS["sm_86"])
    assert emulation.supported(wide, torch.float32, SMEM_LIMITS["sm_80"])


def test_on_sm_90_the_tiled_kernels_take_what_they_always_took():
    """At an sm_90 CTA's 227 KiB (the default, and what ``forward``/``backward`` run as)
    every C' up to ``kMaxQk`` = 128 runs tiled in every dtype, at any map size."""
    assert emulation.SM90_SMEM_BYTES == SMEM_LIMITS["sm_90"]
    for dtype in emulation.DTYPES:
        for qk in (1, 16, 64, 100, 128):
            for size in ((1, 1), (97, 97), (128, 256)):
                shape = (2, qk, 512, *size)
                assert emulation.supported(shape, dtype)
                assert emulation.supported(shape, dtype, SMEM_LIMITS["sm_90"])
    with pytest.raises(TypeError, match="smem_limit"):
        emulation.supported((2, 64, 512, 97, 97), torch.float32, 99.5 * KIB)
    with pytest.raises(ValueError, match="smem_limit"):
        emulation.supported((2, 64, 512, 97, 97), torch.float32, -1)


def test_merge_lse_in_the_kernels():
    """The kernels' log-sum-exp merge of the two halves, against torch.logsumexp."""
    g = torch.Generator().manual_seed(4)
    for _ in range(20):
        row, col = torch.randn(7, generator=g) * 30, torch.randn(4, generator=g) * 30
        m_row, m_col = row.max(), col.max()
        s_row, s_col = (row - m_row).exp().sum(), (col - m_col).exp().sum()
        got = emulation.merge_lse(m_row.item(), s_row.item(), m_col.item(), s_col.item())
        want = torch.cat([row, col]).double().logsumexp(0).item()
        assert abs(got - want) <= 1e-5 * max(1.0, abs(want))
    # an empty column half (H == 1): the row's own log-sum-exp
    got = emulation.merge_lse(2.0, 3.0, float("-inf"), 0.0)
    assert abs(got - (2.0 + torch.tensor(3.0).log().item())) < 1e-6


def test_emulation_needs_nothing_but_csrc():
    """The emulation is compiled from these files alone: no torch or CUDA header."""
    src = csrc_dir()
    for name in ("cca_tiling.h", "cca_lines.h", "cca_lines_host.h", "cca_lines_emulate.cpp"):
        text = (src / name).read_text()
        includes = [line for line in text.splitlines() if line.startswith("#include")]
        assert not any("torch" in i or "ATen" in i or "c10" in i or "cuda" in i for i in includes)
    assert (src / "cca_lines_cuda.h").is_file()
