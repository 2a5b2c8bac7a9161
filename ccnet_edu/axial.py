"""Axial attention: a height pass then a width pass, each with its own softmax.

Axial attention factorises 2-D self-attention into 1-D attentions along one
axis at a time.  Ho et al. (2019, "Axial Attention in Multidimensional
Transformers", arXiv 1912.12180) introduced it as transformer layers, a row
layer and a column layer in turn (the row first), each with its own residual
connection and MLP.  This module follows the axial-attention block of
Axial-DeepLab (Wang et al., ECCV 2020, arXiv 2003.07853): every pixel first
attends along its *column* (the height axis), then, on the result, along its
*row* (the width axis), with no residual between the two passes.  Each pass is
an ordinary softmax attention over one line of positions, with its own
query/key/value projections.

One pass along a line of ``T`` positions, for the output position ``o``
(Axial-DeepLab's position-sensitive self-attention, Eq. (3), on the ``1 x m``
line region of its axial-attention layer, Eq. (4))::

    y_o = sum_{p in N_m(o)} softmax_p(q_o^T k_p + q_o^T r^q_{p-o} + k_p^T r^k_{p-o})
                            (v_p + r^v_{p-o})

where ``N_m(o)`` is the paper's ``1 x m`` region: the ``m`` positions of the
line centred on ``o`` (``m`` odd), ``|p - o| <= (m - 1) / 2``, cut at the ends
of the line; it holds the whole line when ``m >= 2 T - 1`` (*global* axial
attention; the default when no span is given).  ``r^q``, ``r^k``, ``r^v`` are
learned *relative positional encodings*, one vector per offset ``p - o`` in
``-(m-1)/2 .. (m-1)/2`` (a table of ``m`` rows): Axial-DeepLab's
*position-sensitive* terms.  This is the paper's span: deeplab2's
``memory_flange`` of 32 is "a span of 65" (32 positions either side).
Without them (``positional=False``) the energy is ``q_o^T k_p``, the energy of
criss-cross attention (CCNet, Huang et al., ICCV 2019, Eq. (1)) and of Ho et
al.'s axial attention, and the pass is plain 1-D attention.  The scale is 1, as
in CCNet and Axial-DeepLab (Ho et al. scale by ``1/sqrt(d)``, which a query
projection can absorb).

The difference from criss-cross attention, exactly: CCA takes **one** softmax
over the ``H + W - 1`` energies of a pixel's row and column together; axial
attention takes one softmax over the column (height pass), then a second over
the row (width pass) of the height pass's *output*.  With a global span (the
default), after the two passes every pixel depends on every pixel (through the
pixel at its row and the other's column); one CCA loop reaches only its own row
and column.

* :func:`axial_line_attention` -- the functional core: one pass along
  ``axis`` (``"height"`` or ``"width"``), multi-head, optional positional terms,
  on einsum (``impl="einsum"``) or on the line formulation of
  :mod:`ccnet_edu.flex` (``impl="flex"``: the same row/column attentions that
  criss-cross attention's flex route runs, without the centre mask).
* :class:`AxialAttentionLayer` -- one pass with its 1x1 projections.
* :class:`AxialAttention` -- height pass then width pass, ``y = gamma * out + x``.
* :func:`relative_offsets`, :func:`axial_mask`, :func:`axial_attention_to_dense`
  -- the offsets ``p - o``, the (N, N) pattern of a pass, and the dense
  (N, N) attention of the two passes, for teaching and testing.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ._checks import (
    check_bool,
    check_channels,
    check_choice,
    check_device,
    check_feature_map,
    check_int,
    check_qkv_agree,
    check_same_device,
    check_tensor,
)

__all__ = [
    "AXES",
    "relative_offsets",
    "axial_line_attention",
    "axial_mask",
    "axial_attention_to_dense",
    "AxialAttentionLayer",
    "AxialAttention",
]

Axis = Literal["height", "width"]
#: The values of ``axis``: the height pass attends along columns, the width pass along rows.
AXES = ("height", "width")
_IMPLS = ("einsum", "flex")


def relative_offsets(
    length: int, span: int, device: torch.device | str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Index of ``r_{p-o}`` and the window of ``span`` positions centred on ``o``.

    ``span`` is Axial-DeepLab's ``m`` (odd): the positions ``|p - o| <= (m - 1) / 2``.
    Returns ``(index, inside)``, both (T, T) indexed ``[o, p]`` (query, key):
    ``index[o, p] = p - o + (m - 1) / 2`` clamped to the table's ``m`` rows, and
    ``inside[o, p] = |p - o| <= (m - 1) / 2`` (bool).
    """
    length = check_int("length", length, minimum=1)
    radius = _radius(span)
    device = check_device("device", device, optional=True)
    position = torch.arange(length, device=device)
    offset = position[None, :] - position[:, None]  # (T, T): p - o
    inside = offset.abs() <= radius
    return (offset + radius).clamp(0, 2 * radius), inside


def _radius(span: object) -> int:
    """``(m - 1) / 2`` for Axial-DeepLab's span ``m``: a positive odd integer."""
    span = check_int("span", span, minimum=1)
    if span % 2 != 1:
        raise ValueError(
            f"span must be odd (the m positions centred on the query, Axial-DeepLab's 1 x m "
            f"region), got {span}"
        )
    return (span - 1) // 2


def _check_table(name: str, table: object, channels: int, like: torch.Tensor) -> torch.Tensor:
    check_tensor(name, table, dim=2, kind="float", layout="(span, channels per head)")
    assert isinstance(table, torch.Tensor)
    rows, width = table.shape
    if rows % 2 != 1 or width != channels:
        raise ValueError(
            f"{name} must have shape (span, {channels}) (an odd number of offsets, "
            f"the channels of one head), got {tuple(table.shape)}"
        )
    if table.dtype != like.dtype:
        raise TypeError(f"{name} must have the dtype of query ({like.dtype}), got {table.dtype}")
    check_same_device(query=like, **{name: table})
    return table


def _to_lines(t: torch.Tensor, axis: str, heads: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, n, G, T, C/G): ``n`` lines of ``T`` positions, ``G`` heads."""
    lines = t.permute(0, 3, 2, 1) if axis == "height" else t.permute(0, 2, 3, 1)  # (B, n, T, C)
    batch, n, length, channels = lines.shape
    return lines.reshape(batch, n, length, heads, channels // heads).transpose(2, 3)


def _from_lines(t: torch.Tensor, axis: str) -> torch.Tensor:
    """(B, n, G, T, d) -> (B, G d, H, W), the inverse of :func:`_to_lines`."""
    batch, n, heads, length, d = t.shape
    lines = t.transpose(2, 3).reshape(batch, n, length, heads * d)  # (B, n, T, C)
    return lines.permute(0, 3, 2, 1) if axis == "height" else lines.permute(0, 3, 1, 2)


def axial_line_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    *,
    axis: Axis,
    heads: int = 1,
    rel_query: torch.Tensor | None = None,
    rel_key: torch.Tensor | None = None,
    rel_value: torch.Tensor | None = None,
    span: int | None = None,
    return_attention: bool = False,
    impl: Literal["einsum", "flex"] = "einsum",
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """One axial pass: 1-D softmax attention along each column (``"height"``) or row (``"width"``).

    ``y_o = sum_p softmax_p(q_o.k_p + q_o.r^q_{p-o} + k_p.r^k_{p-o}) (v_p + r^v_{p-o})``
    over the ``span`` positions ``p`` of ``o``'s line centred on ``o``,
    ``|p - o| <= (span - 1) / 2`` (Axial-DeepLab, Eqs. (3) and (4)); each head ``g`` uses
    its own slice of the channels.

    Args:
        query, key: (B, C', H, W); value: (B, C, H, W); one floating dtype and device.
        axis: ``"height"`` (attend along the column of each pixel) or ``"width"`` (its row).
        heads: G, dividing C' and C (the relative tables are shared by the heads).
        rel_query, rel_key: optional (span, C'/G) tables ``r^q``, ``r^k``; row
            ``p - o + (span - 1) / 2`` is the offset ``p - o``.
        rel_value: optional (span, C/G) table ``r^v``.
        span: Axial-DeepLab's ``m``, odd: the keys with ``|p - o| <= (m - 1) / 2``;
            default: the tables' row count, else the whole line (``m >= 2 T - 1`` is global).
        return_attention: also return the weights, (B, G, H, W, T) with ``T`` the line
            length: ``[b, g, i, j, l]`` is the weight of ``(l, j)`` (height) or ``(i, l)``
            (width) for the query ``(i, j)``; 0 outside the span.
        impl: ``"einsum"`` (readable, any option) or ``"flex"`` (the line attention of
            :mod:`ccnet_edu.flex`; no positional terms, no span, no attention returned).

    Returns:
        ``out`` (B, C, H, W), or ``(out, attention)``.
    """
    check_feature_map("query", query)
    check_feature_map("key", key)
    check_feature_map("value", value)
    check_qkv_agree(query, key, value, layout="(B, C', H, W)", shared="batch size and spatial size")
    check_choice("axis", axis, AXES)
    heads = check_int("heads", heads, minimum=1, maximum=max(query.shape[1], 1))
    check_bool("return_attention", return_attention)
    check_choice("impl", impl, _IMPLS)
    qk_channels, channels = query.shape[1], value.shape[1]
    if qk_channels % heads or channels % heads:
        raise ValueError(
            f"heads must divide the channels of query ({qk_channels}) and value ({channels}), "
            f"got heads={heads}"
        )
    tables = {"rel_query": rel_query, "rel_key": rel_key, "rel_value": rel_value}
    widths = {"rel_query": qk_channels // heads, "rel_key": qk_channels // heads}
    widths["rel_value"] = channels // heads
    for name, table in tables.items():
        if table is not None:
            _check_table(name, table, widths[name], query)
    spans = {t.shape[0] for t in tables.values() if t is not None}
    if len(spans) > 1:
        raise ValueError(f"rel_query, rel_key and rel_value must have one span, got {spans}")
    length = query.shape[2] if axis == "height" else query.shape[3]
    if span is not None:
        _radius(span)
        if spans and spans != {span}:
            raise ValueError(f"span must match the tables' span {spans.pop()}, got {span}")
    elif spans:
        span = spans.pop()
    if impl == "flex":
        if span is not None or return_attention:
            raise ValueError(
                "impl 'flex' runs plain global line attention: no rel_* tables, span "
                "or return_attention"
            )
        return _line_attention_flex(query, key, value, axis, heads)

    q = _to_lines(query, axis, heads)  # (B, n, G, T, d')
    k = _to_lines(key, axis, heads)  # (B, n, G, T, d')
    v = _to_lines(value, axis, heads)  # (B, n, G, T, d)
    energy = torch.einsum("bngod,bngpd->bngop", q, k)  # (B, n, G, T, T): q_o . k_p
    inside = None
    if span is not None:
        index, inside = relative_offsets(length, span, query.device)  # (T, T) each
        if rel_query is not None:
            r_q = rel_query[index]  # (T, T, d'): r^q_{p-o} at [o, p]
            energy = energy + torch.einsum("bngod,opd->bngop", q, r_q)
        if rel_key is not None:
            r_k = rel_key[index]  # (T, T, d')
            energy = energy + torch.einsum("bngpd,opd->bngop", k, r_k)
        energy = energy.masked_fill(~inside, float("-inf"))  # outside the span N_m(o)
    attention = F.softmax(energy, dim=-1)  # (B, n, G, T, T): rows sum to one
    out = torch.einsum("bngop,bngpd->bngod", attention, v)  # (B, n, G, T, d)
    if rel_value is not None:
        r_v = rel_value[index]  # (T, T, d)
        out = out + torch.einsum("bngop,opd->bngod", attention, r_v)
    out = _from_lines(out, axis)  # (B, C, H, W)
    if not return_attention:
        return out
    # (B, n, G, T, T) -> (B, G, H, W, T): the weights of each query pixel (i, j).
    weights = (
        attention.permute(0, 2, 3, 1, 4) if axis == "height" else attention.permute(0, 2, 1, 3, 4)
    )
    return out, weights


def _line_attention_flex(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, axis: str, heads: int
) -> torch.Tensor:
    """The pass on :mod:`ccnet_edu.flex`'s line attention (lines and heads as its heads).

    As :func:`~ccnet_edu.flex.criss_cross_attention_flex`: compiled (Triton kernels) with
    ``flex.GPU_VALUE_CHUNK`` value channels per call on CUDA, eager elsewhere.
    """
    from .flex import GPU_VALUE_CHUNK, _needs_dense, dense_line_attention, flex_line_attention

    def lines(t: torch.Tensor) -> torch.Tensor:
        x = _to_lines(t, axis, heads)  # (B, n, G, T, d)
        return x.reshape(x.shape[0], -1, *x.shape[3:])  # (B, n G, T, d)

    q, k, v = lines(query), lines(key), lines(value)
    on_gpu = query.device.type == "cuda"
    if _needs_dense(q, k, v):  # FlexAttention has no backward on the CPU
        out, _ = dense_line_attention(q, k, v, mask_centre=False)
    elif on_gpu:  # the Triton kernels read the channels of a position contiguously
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        out, _ = flex_line_attention(
            q, k, v, mask_centre=False, compiled=True, value_chunk=GPU_VALUE_CHUNK
        )
    else:
        out, _ = flex_line_attention(q, k, v, mask_centre=False)
    batch, _, height, width = value.shape
    n = width if axis == "height" else height
    out = out.reshape(batch, n, heads, *out.shape[2:])  # (B, n, G, T, d)
    return _from_lines(out, axis).to(value.dtype)


def axial_mask(
    height: int,
    width: int,
    axis: Axis,
    span: int | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Bool (N, N), ``N = H W`` row-major: may query ``u`` attend to key ``p`` in one pass?

    ``"height"``: ``p`` in ``u``'s column, ``"width"``: in its row; with ``span``
    (Axial-DeepLab's ``m``, odd), only the ``m`` positions of that line centred on
    ``u``, ``|p - u| <= (m - 1) / 2``.
    """
    height = check_int("height", height, minimum=1)
    width = check_int("width", width, minimum=1)
    check_choice("axis", axis, AXES)
    device = check_device("device", device, optional=True)
    position = torch.arange(height * width, device=device)
    row, col = position // width, position % width  # (N,), (N,)
    if axis == "height":
        same, along = col[:, None] == col[None, :], row
    else:
        same, along = row[:, None] == row[None, :], col
    if span is None:
        return same
    return same & ((along[:, None] - along[None, :]).abs() <= _radius(span))


def _pass_to_dense(weights: torch.Tensor, axis: str) -> torch.Tensor:
    """(B, H, W, T) weights of one pass -> (B, N, N) dense."""
    batch, height, width, _ = weights.shape
    dense = weights.new_zeros(batch, height, width, height, width)  # [b, i, j, i', j']
    rows = torch.arange(height, device=weights.device)
    cols = torch.arange(width, device=weights.device)
    if axis == "height":  # query (i, j) -> key (l, j)
        dense[:, :, cols, :, cols] = weights.permute(2, 0, 1, 3)  # [j, b, i, l]
    else:  # query (i, j) -> key (i, l)
        dense[:, rows, :, rows, :] = weights.permute(1, 0, 2, 3)  # [i, b, j, l]
    return dense.reshape(batch, height * width, height * width)


def axial_attention_to_dense(
    attention_height: torch.Tensor, attention_width: torch.Tensor | None = None
) -> torch.Tensor:
    """The dense (B, N, N) attention of the passes: the product of head-averaged pass matrices.

    ``attention_height``: (B, G, H, W, H) from the height pass; ``attention_width``:
    (B, G, H, W, W) from the width pass, or ``None`` for the height pass alone.  Both
    passes: ``A = mean_g(A_width) @ mean_g(A_height)``.  With one head and no ``r^v``
    it is exact: the weight with which an input pixel's value reaches each output pixel
    through the two passes (the value projections are linear).  With several heads it
    is a summary, not the effective weight (the width pass's value projection mixes the
    heads' channels, so no single spatial matrix exists), and the ``r^v`` term does not
    go through ``A``.
    """
    check_tensor(
        "attention_height", attention_height, dim=5, kind="float", layout="(B, G, H, W, H)"
    )
    batch, _, height, width, length = attention_height.shape
    if length != height:
        raise ValueError(
            f"attention_height must have H = {height} entries in its last dimension, "
            f"got shape {tuple(attention_height.shape)}"
        )
    dense = _pass_to_dense(attention_height.mean(1), "height")  # (B, N, N)
    if attention_width is None:
        return dense
    check_tensor("attention_width", attention_width, dim=5, kind="float", layout="(B, G, H, W, W)")
    if attention_width.shape[0] != batch or attention_width.shape[2:] != (height, width, width):
        raise ValueError(
            f"attention_width must have shape (B, G, H, W, W) with B={batch}, H={height}, "
            f"W={width}, got {tuple(attention_width.shape)}"
        )
    check_same_device(attention_height=attention_height, attention_width=attention_width)
    return _pass_to_dense(attention_width.mean(1), "width") @ dense


class AxialAttentionLayer(nn.Module):
    """One axial pass with its own projections (Axial-DeepLab's axial-attention layer, Eq. (4)).

    ``x`` (B, C, H, W) -> 1x1 query, key (C' channels), value (C channels) ->
    :func:`axial_line_attention` along ``axis`` -> (B, C, H, W).  No residual: the
    two passes of :class:`AxialAttention` chain, as in Axial-DeepLab's block.

    Args:
        in_channels: C.
        axis: ``"height"`` or ``"width"``.
        qk_channels: C' (default ``C // 8``, at least 1, as
            :class:`~ccnet_edu.cca.CrissCrossAttention`).
        heads: G, dividing C' and C.
        span: Axial-DeepLab's span ``m`` (odd): each query reads the ``m`` positions of
            its line centred on it, ``|p - o| <= (m - 1) / 2``; with ``positional`` it
            sizes the tables (``m`` rows).  Lines of at most ``(m + 1) / 2`` positions are
            attended globally; ``None``: global, no tables.
        positional: add the position-sensitive terms ``r^q``, ``r^k``, ``r^v``.
    """

    def __init__(
        self,
        in_channels: int,
        axis: Axis,
        qk_channels: int | None = None,
        heads: int = 1,
        span: int | None = None,
        positional: bool = False,
    ):
        super().__init__()
        self.in_channels = check_channels("in_channels", in_channels, minimum=1)
        self.axis = check_choice("axis", axis, AXES)
        if qk_channels is None:
            qk_channels = max(self.in_channels // 8, 1)
        self.qk_channels = check_channels("qk_channels", qk_channels, minimum=1)
        self.heads = check_int("heads", heads, minimum=1)
        if self.qk_channels % self.heads or self.in_channels % self.heads:
            raise ValueError(
                f"heads must divide qk_channels ({self.qk_channels}) and in_channels "
                f"({self.in_channels}), got heads={heads}"
            )
        self.positional = check_bool("positional", positional)
        if positional and span is None:
            raise ValueError("span must be given with positional=True (it sizes the tables)")
        if span is not None:
            check_int("span", span, minimum=1, maximum=8191)
            _radius(span)
        self.span = span
        self.query = nn.Conv2d(in_channels, self.qk_channels, kernel_size=1)
        self.key = nn.Conv2d(in_channels, self.qk_channels, kernel_size=1)
        self.value = nn.Conv2d(in_channels, in_channels, kernel_size=1)
        if positional:
            d_qk, d_v = self.qk_channels // heads, in_channels // heads
            # As the PyTorch re-implementation (csrhddlam/axial-deeplab): one std for all
            # three tables, 1/sqrt(value channels per head).
            std = d_v**-0.5
            self.rel_query = nn.Parameter(torch.randn(self.span, d_qk) * std)
            self.rel_key = nn.Parameter(torch.randn(self.span, d_qk) * std)
            self.rel_value = nn.Parameter(torch.randn(self.span, d_v) * std)
        else:
            self.rel_query = self.rel_key = self.rel_value = None

    def forward(
        self, x: torch.Tensor, return_attention: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """``x`` (B, C, H, W) -> ``out`` (B, C, H, W) [, attention (B, G, H, W, T)]."""
        check_feature_map("x", x, channels=self.in_channels, channels_from="in_channels")
        check_same_device(x=x, weight=self.query.weight)
        check_bool("return_attention", return_attention)
        return axial_line_attention(
            self.query(x),  # (B, C', H, W)
            self.key(x),  # (B, C', H, W)
            self.value(x),  # (B, C, H, W)
            axis=self.axis,
            heads=self.heads,
            rel_query=self.rel_query,
            rel_key=self.rel_key,
            rel_value=self.rel_value,
            span=self.span,
            return_attention=return_attention,
        )

    def extra_repr(self) -> str:
        return (
            f"in_channels={self.in_channels}, axis={self.axis!r}, qk_channels={self.qk_channels}, "
            f"heads={self.heads}, span={self.span}, positional={self.positional}"
        )


class AxialAttention(nn.Module):
    """Axial attention: a height pass, then a width pass, then ``y = gamma * out + x``.

    ``out = width(height(x))``: each pass is an :class:`AxialAttentionLayer` with its
    own projections and its own softmax; ``gamma`` starts at 0 (identity at start),
    as in :class:`~ccnet_edu.cca.CrissCrossAttention`.  With a global span (the default),
    after the two passes every output pixel depends on every input pixel.

    Args:
        in_channels: C.
        qk_channels, heads, span, positional: passed to both :class:`AxialAttentionLayer`\\ s.
    """

    def __init__(
        self,
        in_channels: int,
        qk_channels: int | None = None,
        heads: int = 1,
        span: int | None = None,
        positional: bool = False,
    ):
        super().__init__()
        options = dict(qk_channels=qk_channels, heads=heads, span=span, positional=positional)
        self.height = AxialAttentionLayer(in_channels, "height", **options)
        self.width = AxialAttentionLayer(in_channels, "width", **options)
        self.in_channels = self.height.in_channels
        self.gamma = nn.Parameter(torch.zeros(()))

    def forward(
        self, x: torch.Tensor, return_attention: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """``x`` (B, C, H, W) -> ``y`` [, (attention_height, attention_width)]."""
        check_feature_map("x", x, channels=self.in_channels, channels_from="in_channels")
        check_same_device(x=x, gamma=self.gamma)
        check_bool("return_attention", return_attention)
        column, attention_height = self.height(x, return_attention=True)  # (B, C, H, W)
        out, attention_width = self.width(column, return_attention=True)  # (B, C, H, W)
        y = self.gamma * out + x
        return (y, (attention_height, attention_width)) if return_attention else y
