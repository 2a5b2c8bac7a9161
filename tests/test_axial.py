"""Axial attention (ccnet_edu.axial) against independent computations.

* a dense masked float64 attention (:func:`ccnet_edu.dense.dense_attention` under
  :func:`~ccnet_edu.axial.axial_mask`), one pass and both passes chained;
* H = 1 or W = 1: the passes reduce to plain 1-D attention (torch's
  ``scaled_dot_product_attention`` with scale 1);
* the position-sensitive terms against a loop over pixels written from
  Axial-DeepLab's Eqs. (3)-(4);
* gradcheck in float64;
* a restatement of the PyTorch re-implementation of Axial-DeepLab linked from the
  paper (csrhddlam/axial-deeplab, by the first author; ImageNet classification only;
  ``lib/models/axialnet.py``, class ``AxialAttention``, commit 0bcd864c), written here
  in our own words, weights copied (Google's official re-implementation, deeplab2, is
  TensorFlow and is not restated);
* the line formulation: criss-cross attention's row half and column half
  (:mod:`ccnet_edu.flex`) are axial attention's width and height passes.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ccnet_edu.analysis import (
    attention_map_bytes,
    axial_flops,
    axial_reachability,
    boolean_matmul,
    cca_flops,
    count_flops,
    criss_cross_reachability,
    flops_by_kind,
    paper_candidates,
)
from ccnet_edu.axial import (
    AxialAttention,
    AxialAttentionLayer,
    axial_attention_to_dense,
    axial_line_attention,
    axial_mask,
    relative_offsets,
)
from ccnet_edu.dense import criss_cross_mask, dense_attention
from ccnet_edu.flex import dense_line_attention, merge_halves
from ccnet_edu.functional import criss_cross_attention_reference

TOL = {"rtol": 1e-10, "atol": 1e-12}
SHAPES = [(2, 5, 7), (3, 6, 4), (1, 1, 5), (2, 4, 1), (1, 3, 3)]  # (B, H, W)


def qkv(batch, height, width, qk=4, c=6, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, qk, height, width, generator=g, dtype=dtype)
    k = torch.randn(batch, qk, height, width, generator=g, dtype=dtype)
    v = torch.randn(batch, c, height, width, generator=g, dtype=dtype)
    return q, k, v


# --------------------------------------------------------------------------- dense reference


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("axis", ["height", "width"])
def test_one_pass_is_dense_masked_attention(shape, axis):
    q, k, v = qkv(*shape)
    out, attention = axial_line_attention(q, k, v, axis=axis, return_attention=True)
    expected, dense = dense_attention(
        q, k, v, mask=axial_mask(*shape[1:], axis), return_attention=True
    )
    torch.testing.assert_close(out, expected, **TOL)
    if axis == "height":
        torch.testing.assert_close(axial_attention_to_dense(attention), dense, **TOL)


@pytest.mark.parametrize("shape", SHAPES)
def test_two_passes_are_two_dense_attentions(shape):
    torch.manual_seed(1)
    module = AxialAttention(8, qk_channels=4).double()
    nn.init.constant_(module.gamma, 0.7)
    x = torch.randn(shape[0], 8, *shape[1:], dtype=torch.float64)
    y, (a_h, a_w) = module(x, return_attention=True)
    h, w = module.height, module.width
    column = dense_attention(
        h.query(x), h.key(x), h.value(x), mask=axial_mask(*shape[1:], "height")
    )
    out = dense_attention(
        w.query(column), w.key(column), w.value(column), mask=axial_mask(*shape[1:], "width")
    )
    torch.testing.assert_close(y, 0.7 * out + x, **TOL)
    # The dense product A_width @ A_height carries each value through both passes.
    a = axial_attention_to_dense(a_h, a_w)  # (B, N, N)
    assert a.shape == (shape[0], shape[1] * shape[2], shape[1] * shape[2])
    torch.testing.assert_close(a.sum(-1), torch.ones_like(a.sum(-1)), **TOL)
    assert bool((a > 0).all())  # every output pixel weighs every input pixel


def test_two_passes_reach_every_pixel_one_cross_does_not():
    a = axial_mask(4, 5, "width").double() @ axial_mask(4, 5, "height").double()
    assert bool((a > 0).all())
    assert not bool(criss_cross_mask(4, 5).all())
    assert torch.equal(
        criss_cross_mask(4, 5), axial_mask(4, 5, "height") | axial_mask(4, 5, "width")
    )


# --------------------------------------------------------------------------- 1-D reductions


@pytest.mark.parametrize("heads", [1, 2])
def test_single_row_is_plain_1d_attention(heads):
    q, k, v = qkv(2, 1, 7)
    out = axial_line_attention(q, k, v, axis="width", heads=heads)
    # (B, G, L, d) for torch's own attention, scale 1
    lines = [
        t[:, :, 0].transpose(1, 2).unflatten(2, (heads, -1)).transpose(1, 2) for t in (q, k, v)
    ]
    expected = F.scaled_dot_product_attention(*lines, scale=1.0)  # (B, G, W, d)
    expected = expected.transpose(1, 2).flatten(2).transpose(1, 2)[:, :, None]  # (B, C, 1, W)
    torch.testing.assert_close(out, expected, **TOL)
    # The height pass over a one-pixel column is the identity on the values.
    torch.testing.assert_close(axial_line_attention(q, k, v, axis="height"), v, **TOL)


def test_single_column_is_plain_1d_attention():
    q, k, v = qkv(3, 6, 1)
    out = axial_line_attention(q, k, v, axis="height")
    lines = [t[..., 0].transpose(1, 2) for t in (q, k, v)]  # (B, H, C)
    expected = torch.softmax(lines[0] @ lines[1].transpose(1, 2), -1) @ lines[2]
    torch.testing.assert_close(out, expected.transpose(1, 2)[..., None], **TOL)
    torch.testing.assert_close(axial_line_attention(q, k, v, axis="width"), v, **TOL)


# --------------------------------------------------------------------------- positional terms


def loop_reference(q, k, v, axis, heads, r_q, r_k, r_v, span):
    """Axial-DeepLab Eqs. (3)-(4), pixel by pixel, offset by offset.

    ``span`` is the paper's ``m``: the ``m`` positions centred on ``o`` (``m`` odd).
    """
    radius = (span - 1) // 2
    batch, qk, height, width = q.shape
    c = v.shape[1]
    dq, dv = qk // heads, c // heads
    out = torch.zeros_like(v)
    for b in range(batch):
        for i in range(height):
            for j in range(width):
                line = (
                    [(p, j) for p in range(height)]
                    if axis == "height"
                    else [(i, p) for p in range(width)]
                )
                o = i if axis == "height" else j
                for g in range(heads):
                    sq, sv = slice(g * dq, (g + 1) * dq), slice(g * dv, (g + 1) * dv)
                    energies, keys = [], []
                    for p, pos in enumerate(line):
                        if abs(p - o) > radius:
                            continue
                        r = p - o + radius
                        qo, kp = q[b, sq, i, j], k[b, sq, pos[0], pos[1]]
                        energies.append(qo @ kp + qo @ r_q[r] + kp @ r_k[r])
                        keys.append((pos, r))
                    weights = torch.softmax(torch.stack(energies), 0)
                    for wgt, (pos, r) in zip(weights, keys, strict=True):
                        out[b, sv, i, j] += wgt * (v[b, sv, pos[0], pos[1]] + r_v[r])
    return out


@pytest.mark.parametrize("axis", ["height", "width"])
@pytest.mark.parametrize("span,heads", [(5, 1), (11, 2), (3, 2), (1, 1)])
def test_position_sensitive_terms_match_the_equation(axis, span, heads):
    q, k, v = qkv(2, 5, 4, qk=4, c=6)
    g = torch.Generator().manual_seed(3)
    r_q, r_k = (torch.randn(span, 4 // heads, generator=g, dtype=torch.float64) for _ in "qk")
    r_v = torch.randn(span, 6 // heads, generator=g, dtype=torch.float64)
    out = axial_line_attention(
        q, k, v, axis=axis, heads=heads, rel_query=r_q, rel_key=r_k, rel_value=r_v
    )
    torch.testing.assert_close(
        out, loop_reference(q, k, v, axis, heads, r_q, r_k, r_v, span), **TOL
    )


def test_relative_offsets():
    """Span m = 3 (Axial-DeepLab's 1 x 3 region): the query and one position either side."""
    index, inside = relative_offsets(4, 3)
    assert index.tolist() == [[1, 2, 2, 2], [0, 1, 2, 2], [0, 0, 1, 2], [0, 0, 0, 1]]
    assert inside.sum(1).tolist() == [2, 3, 3, 2]  # m = 3 positions, cut at the line's ends
    _, inside = relative_offsets(9, 65)  # deeplab2's flange 32: 32 either side, all of 9
    assert bool(inside.all())
    assert relative_offsets(9, 5)[1][4].tolist() == [0, 0, 1, 1, 1, 1, 1, 0, 0]


def test_span_masks_far_keys():
    q, k, v = qkv(1, 6, 3)
    _, attention = axial_line_attention(q, k, v, axis="height", span=3, return_attention=True)
    index, inside = relative_offsets(6, 3)
    assert bool((attention[0, 0].permute(1, 0, 2)[:, ~inside] == 0).all())
    assert bool((attention[0, 0].permute(1, 0, 2)[:, inside] > 0).all())
    assert axial_mask(6, 3, "height", span=3).sum(1).tolist()[:3] == [2, 2, 2]


def test_gradcheck():
    q, k, v = (t.requires_grad_() for t in qkv(2, 3, 4, qk=2, c=2))
    g = torch.Generator().manual_seed(5)
    tables = [
        torch.randn(5, 1, generator=g, dtype=torch.float64).requires_grad_() for _ in range(3)
    ]

    def fn(q, k, v, r_q, r_k, r_v):
        h = axial_line_attention(
            q, k, v, axis="height", heads=2, rel_query=r_q, rel_key=r_k, rel_value=r_v
        )
        return axial_line_attention(h, h, h, axis="width", heads=2)

    assert torch.autograd.gradcheck(fn, (q, k, v, *tables))


@pytest.mark.parametrize("axis", ["height", "width"])
def test_gradcheck_local_span(axis):
    """A span shorter than the lines: the gradient through the masked (-inf) energies."""
    q, k, v = (t.requires_grad_() for t in qkv(2, 5, 6, qk=2, c=2))
    g = torch.Generator().manual_seed(6)
    tables = [
        torch.randn(3, 1, generator=g, dtype=torch.float64).requires_grad_() for _ in range(3)
    ]

    def fn(q, k, v, r_q, r_k, r_v):
        return axial_line_attention(
            q, k, v, axis=axis, heads=2, rel_query=r_q, rel_key=r_k, rel_value=r_v
        )

    assert torch.autograd.gradcheck(fn, (q, k, v, *tables))


# --------------------------------------------------------------------------- the line formulation


@pytest.mark.parametrize("shape", SHAPES)
def test_criss_cross_halves_are_the_axial_passes(shape):
    """CCA's row half = the width pass; its column half (centre kept) = the height pass."""
    q, k, v = qkv(*shape)
    rows = [t.permute(0, 2, 3, 1) for t in (q, k, v)]  # (B, H, W, C): lines of the width pass
    cols = [t.permute(0, 3, 2, 1) for t in (q, k, v)]  # (B, W, H, C): lines of the height pass
    out_row, lse_row = dense_line_attention(*rows, mask_centre=False)
    out_col, _ = dense_line_attention(*cols, mask_centre=False)
    torch.testing.assert_close(
        axial_line_attention(q, k, v, axis="width"), out_row.permute(0, 3, 1, 2), **TOL
    )
    torch.testing.assert_close(
        axial_line_attention(q, k, v, axis="height"), out_col.permute(0, 3, 2, 1), **TOL
    )
    # CCA is the two halves joined by one softmax (the column without its centre).
    if shape[1] > 1:
        out_c, lse_c = dense_line_attention(*cols, mask_centre=True)
        joined, _ = merge_halves(out_row, lse_row, out_c.transpose(1, 2), lse_c.transpose(1, 2))
        expected, _ = criss_cross_attention_reference(q, k, v)
        torch.testing.assert_close(joined.permute(0, 3, 1, 2), expected, **TOL)


@pytest.mark.parametrize("axis", ["height", "width"])
@pytest.mark.parametrize("heads", [1, 2])
def test_flex_route_matches_einsum(axis, heads):
    q, k, v = qkv(2, 5, 6, dtype=torch.float32)
    expected = axial_line_attention(q, k, v, axis=axis, heads=heads)
    torch.testing.assert_close(
        axial_line_attention(q, k, v, axis=axis, heads=heads, impl="flex"),
        expected,
        rtol=1e-5,
        atol=1e-5,
    )
    # With a gradient on the CPU the flex route runs the dense line products.
    q64, k64, v64 = (t.double().requires_grad_() for t in (q, k, v))
    flex = axial_line_attention(q64, k64, v64, axis=axis, heads=heads, impl="flex")
    ref = axial_line_attention(q64, k64, v64, axis=axis, heads=heads)
    torch.testing.assert_close(flex, ref, **TOL)
    g_flex = torch.autograd.grad(flex.sum(), (q64, k64, v64))
    g_ref = torch.autograd.grad(ref.sum(), (q64, k64, v64))
    for a, b in zip(g_flex, g_ref, strict=True):
        torch.testing.assert_close(a, b, **TOL)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")
@pytest.mark.parametrize("axis", ["height", "width"])
def test_flex_route_compiled_on_gpu(axis):
    """On CUDA the flex route compiles FlexAttention (Triton), two value chunks of 128."""
    g = torch.Generator().manual_seed(11)
    q, k = (torch.randn(1, 64, 33, 47, generator=g) for _ in "qk")
    v = torch.randn(1, 256, 33, 47, generator=g)
    q, k, v = (t.cuda().requires_grad_() for t in (q, k, v))  # drawn on the CPU, moved
    out = axial_line_attention(q, k, v, axis=axis, heads=2, impl="flex")
    leaves = [t.detach().double().requires_grad_() for t in (q, k, v)]
    want = axial_line_attention(*leaves, axis=axis, heads=2)
    go = torch.randn(out.shape, generator=g).cuda()
    got = (out, *torch.autograd.grad(out, (q, k, v), go))
    wanted = (want, *torch.autograd.grad(want, leaves, go.double()))
    for a, b in zip(got, wanted, strict=True):  # float32: Triton's dot may run as TF32
        assert (a.double() - b).norm() <= 1e-3 * b.norm()


# --------------------------------------------------------------------------- the published port


class PortAxialAttention(nn.Module):
    """csrhddlam/axial-deeplab ``AxialAttention`` (one pass), restated in our own words.

    Its structure: a bias-free 1x1 Conv1d to ``2 C`` channels then BatchNorm1d
    (``qkv_transform``, ``bn_qkv``); per group of ``C/G`` channels, query and key
    take half a group each and the value a whole group; one table ``relative``
    (2 C/G, 2 L - 1) of relative encodings, split the same way; the three
    similarity terms ``qk``, ``qr``, ``kr`` each go through their own channels of a
    BatchNorm2d (``bn_similarity``) and are summed; softmax over the keys; the
    value and its encoding term are BatchNorm1d-ed (``bn_output``) and summed.
    ``kernel_size`` must be the line length (global attention).
    """

    def __init__(self, planes: int, groups: int, kernel_size: int, width: bool):
        super().__init__()
        self.groups, self.group_planes = groups, planes // groups
        self.kernel_size, self.width, self.planes = kernel_size, width, planes
        self.qkv_transform = nn.Conv1d(planes, 2 * planes, 1, bias=False)
        self.bn_qkv = nn.BatchNorm1d(2 * planes)
        self.bn_similarity = nn.BatchNorm2d(3 * groups)
        self.bn_output = nn.BatchNorm1d(2 * planes)
        self.relative = nn.Parameter(torch.randn(2 * self.group_planes, 2 * kernel_size - 1))
        pos = torch.arange(kernel_size)
        # [a, b] -> column a - b + L - 1 of the table, a and b positions on the line
        self.register_buffer(
            "flatten_index", (pos[:, None] - pos[None, :] + kernel_size - 1).reshape(-1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lines = x.permute(0, 2, 1, 3) if self.width else x.permute(0, 3, 1, 2)  # (B, n, C, L)
        batch, n, c, length = lines.shape
        lines = lines.reshape(batch * n, c, length)
        gp, g = self.group_planes, self.groups
        qkv = self.bn_qkv(self.qkv_transform(lines)).reshape(batch * n, g, 2 * gp, length)
        q, k, v = qkv.split([gp // 2, gp // 2, gp], dim=2)  # (bn, G, d, L)
        table = self.relative[:, self.flatten_index].reshape(2 * gp, length, length)
        e_q, e_k, e_v = table.split([gp // 2, gp // 2, gp], dim=0)  # (d, L, L)
        qr = torch.einsum("bgci,cij->bgij", q, e_q)
        kr = torch.einsum("bgci,cij->bgij", k, e_k).transpose(2, 3)
        qk = torch.einsum("bgci,bgcj->bgij", q, k)
        sim = self.bn_similarity(torch.cat([qk, qr, kr], dim=1))
        sim = F.softmax(sim.reshape(batch * n, 3, g, length, length).sum(1), dim=3)
        sv = torch.einsum("bgij,bgcj->bgci", sim, v)
        sve = torch.einsum("bgij,cij->bgci", sim, e_v)
        # The port joins sv and sve along the positions, then reads 2 C channels.
        stacked = torch.cat([sv, sve], dim=-1).reshape(batch * n, 2 * c, length)
        out = self.bn_output(stacked).reshape(batch, n, c, 2, length).sum(-2)  # (B, n, C, L)
        return out.permute(0, 2, 1, 3) if self.width else out.permute(0, 2, 3, 1)


def _randomise_bn(bn: nn.Module, g: torch.Generator) -> None:
    n = bn.num_features
    bn.running_mean.copy_(torch.randn(n, generator=g, dtype=torch.float64))
    bn.running_var.copy_(torch.rand(n, generator=g, dtype=torch.float64) + 0.5)
    bn.weight.data.copy_(torch.rand(n, generator=g, dtype=torch.float64) + 0.5)
    bn.bias.data.copy_(torch.randn(n, generator=g, dtype=torch.float64))


def _affine(bn: nn.BatchNorm1d | nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """eval() BatchNorm as ``a x + b`` per channel."""
    a = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return a, bn.bias - a * bn.running_mean


def copy_port_into_ours(port: PortAxialAttention, ours: AxialAttentionLayer) -> None:
    """Fold the port's eval() BatchNorms into our projections and tables (exact).

    Our relative tables are indexed by ``p - o`` (key minus query, the paper's
    ``r_{p-o}``); the port indexes query and value encodings by ``o - p``: those
    tables are flipped.  ``bn_similarity`` scales each term per group and
    ``bn_output`` each value channel; our tables are shared by the heads, so those
    two fold exactly when their scales agree across groups (always with one group).
    """
    g, gp = port.groups, port.group_planes
    a_qkv, b_qkv = _affine(port.bn_qkv)
    weight = port.qkv_transform.weight[:, :, 0] * a_qkv[:, None]  # (2C, C)
    bias = b_qkv
    rows = torch.arange(2 * port.planes).reshape(g, 2 * gp)
    q_rows, k_rows, v_rows = (r.reshape(-1) for r in rows.split([gp // 2, gp // 2, gp], dim=1))
    a_s, _ = _affine(port.bn_similarity)  # (3 G,): the constant shifts do not move a softmax
    a_qk, a_qr, a_kr = a_s[:g], a_s[g : 2 * g], a_s[2 * g :]
    a_o, b_o = _affine(port.bn_output)
    a_sv, a_sve = a_o[0::2], a_o[1::2]  # (C,) each: channels 2c (sv) and 2c + 1 (sve)
    b_out = b_o[0::2] + b_o[1::2]
    rel_q, rel_k, rel_v = port.relative.split([gp // 2, gp // 2, gp], dim=0)
    with torch.no_grad():
        head_q = a_qk.repeat_interleave(gp // 2)[:, None]
        ours.query.weight.copy_((weight[q_rows] * head_q)[:, :, None, None])
        ours.query.bias.copy_(bias[q_rows] * head_q[:, 0])
        ours.key.weight.copy_(weight[k_rows][:, :, None, None])
        ours.key.bias.copy_(bias[k_rows])
        ours.value.weight.copy_((weight[v_rows] * a_sv[:, None])[:, :, None, None])
        ours.value.bias.copy_(bias[v_rows] * a_sv + b_out)
        ours.rel_query.copy_((rel_q * (a_qr[0] / a_qk[0])).T.flip(0))
        ours.rel_key.copy_((rel_k * a_kr[0]).T)
        ours.rel_value.copy_((rel_v * a_sve[:gp, None]).T.flip(0))


@pytest.mark.parametrize("axis", ["height", "width"])
@pytest.mark.parametrize("groups", [1, 2])
def test_restated_port_matches(axis, groups):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(7)
    planes, height, width = 8, 5, 7
    length = height if axis == "height" else width
    port = PortAxialAttention(planes, groups, length, width=axis == "width").double()
    _randomise_bn(port.bn_qkv, g)
    if groups == 1:  # per-group scales only fold into shared tables with one group
        _randomise_bn(port.bn_similarity, g)
        _randomise_bn(port.bn_output, g)
    port.eval()
    ours = AxialAttentionLayer(  # the port's kernel_size L is a global span of 2 L - 1
        planes, axis, qk_channels=planes // 2, heads=groups, span=2 * length - 1, positional=True
    ).double()
    copy_port_into_ours(port, ours)
    x = torch.randn(2, planes, height, width, dtype=torch.float64)
    torch.testing.assert_close(ours(x), port(x), **TOL)


def test_restated_port_block_matches():
    """The port's block chains its height layer and width layer: our two passes."""
    g = torch.Generator().manual_seed(9)
    torch.manual_seed(1)
    h, w = PortAxialAttention(8, 1, 5, width=False), PortAxialAttention(8, 1, 6, width=True)
    h, w = h.double(), w.double()
    for bn in (h.bn_qkv, h.bn_similarity, h.bn_output, w.bn_qkv, w.bn_similarity, w.bn_output):
        _randomise_bn(bn, g)
    h.eval(), w.eval()
    ours = AxialAttention(8, qk_channels=4, span=11, positional=True).double()
    ours.height = AxialAttentionLayer(8, "height", qk_channels=4, span=9, positional=True).double()
    copy_port_into_ours(h, ours.height)
    copy_port_into_ours(w, ours.width)
    nn.init.constant_(ours.gamma, 1.0)
    x = torch.randn(2, 8, 5, 6, dtype=torch.float64)
    torch.testing.assert_close(ours(x) - x, w(h(x)), **TOL)


def test_port_in_train_mode_differs():
    """In train() the port's BatchNorms use batch statistics: no fixed attention to fold."""
    port = PortAxialAttention(8, 1, 5, width=False).double().train()
    ours = AxialAttentionLayer(8, "height", qk_channels=4, span=9, positional=True).double()
    port.eval()
    copy_port_into_ours(port, ours)
    port.train()
    x = torch.randn(2, 8, 5, 4, dtype=torch.float64)
    assert not torch.allclose(ours(x), port(x), atol=1e-3)


def test_module_shapes_and_identity_at_start():
    module = AxialAttention(16, heads=2, qk_channels=4, span=3, positional=True)
    x = torch.randn(2, 16, 5, 4)
    y, (a_h, a_w) = module(x, return_attention=True)
    assert torch.equal(y, x)  # gamma = 0
    assert a_h.shape == (2, 2, 5, 4, 5) and a_w.shape == (2, 2, 5, 4, 4)
    assert "axis='height'" in repr(module) and math.isclose(float(module.gamma.detach()), 0.0)


# --------------------------------------------------------------------------- costs and reach


@pytest.mark.parametrize("shape", [(2, 16, 4, 5, 7), (1, 8, 2, 6, 6), (1, 8, 8, 1, 9)])
def test_axial_flops_equal_the_counter(shape):
    b, c, cq, h, w = shape
    x = torch.randn(b, c, h, w)
    expected = axial_flops(h, w, c, cq, b)
    split = flops_by_kind(AxialAttention(c, qk_channels=cq), x)
    assert split["projections"] == expected["projections"]
    assert split["attention"] == expected["attention"]
    assert count_flops(AxialAttention(c, qk_channels=cq), x) == expected["total"]


def test_axial_flops_beside_cca():
    """Same projections twice; H + W keys per pixel against H + W - 1."""
    ax, cc = axial_flops(97, 97, 512, 64), cca_flops(97, 97, 512, 64)
    assert ax["projections"] == 2 * cc["projections"]
    assert ax["energy"] * 193 == cc["energy"] * 194


def test_axial_attention_map_bytes_and_candidate():
    assert attention_map_bytes("axial", 5, 7, batch=2) == 2 * 35 * 12 * 4
    (candidate,) = paper_candidates(channels=16, qk_channels=4, include=["axial"])
    assert candidate.map_kind == "axial"
    assert candidate.formula_flops(6, 5) == axial_flops(6, 5, 16, 4)["total"]
    assert isinstance(candidate.build(), AxialAttention)


@pytest.mark.parametrize("size", [(3, 5), (7, 4), (1, 6), (5, 1), (4, 4)])
def test_axial_reachability(size):
    h, w = size
    assert axial_reachability(h, w).all()
    one_pass = axial_mask(h, w, "height")  # holds the diagonal: a pass reads its own pixel
    assert one_pass.diagonal().all()
    assert boolean_matmul(one_pass, one_pass).equal(one_pass)  # a second pass adds nothing
    if h > 1 and w > 1:
        assert not criss_cross_reachability(h, w, 1).all()
