"""Interlaced sparse self-attention (ISSA).

Huang, Yuan et al., *Interlaced Sparse Self-Attention for Semantic
Segmentation* (arXiv 1907.12273), replace one dense affinity ``A``
(N x N, every position attends to every position) by the product of two
sparse ones, ``A ≈ A_S · A_L``.  Both factors are ordinary self-attention,
but restricted to *groups* of positions:

* **long-range step** (first): with block size ``(P_h, P_w)`` there are
  ``P_h · P_w`` groups; group ``(a, b)`` holds the positions
  ``(bi·P_h + a, bj·P_w + b)`` over the blocks ``(bi, bj)``: pixels ``P_h``
  (``P_w``) apart that sit at the same offset inside their block.  Each group
  has ``Q_h · Q_w`` members.
* **short-range step** (second): ``Q_h · Q_w`` groups, each one contiguous
  ``P_h x P_w`` block.

After the long step, position ``u`` has mixed in every position with its
offset; after the short step it has mixed in its block, whose members between
them carry every offset.  So two sparse steps reach all ``N`` positions.

Paper and code.  The factorisation, the two groupings, the order (long range
first) and the default ``8 x 8`` blocks are the paper's.  The layers are the
authors' code, openseg-group/openseg.pytorch, ``lib/models/modules/isa_block.py``
(``SelfAttentionBlock2D``, ``ISA_Block``, ``ISA_Module``) and
``lib/models/nets/isanet.py`` (``ISANet``): the centred zero padding, the two
layers of 1x1 conv + BN + ReLU in *each* of the query and key projections,
the bare 1x1 value convolution, the scale ``key_channels^-1/2`` and the output
projection.  ``tests/test_official_restatements.py`` restates those modules
from their published structure, copies their weights role by role into the
modules below and checks that outputs and input gradients agree.

Padding.  ``H, W`` are padded with zeros up to multiples of ``P_h, P_w``; the
padding is split evenly between top and bottom (left and right).  When the
amount is odd the *extra* row goes to the **bottom** (the extra column to the
**right**), as in the authors' ``ISA_Block``.  The padded positions **take
part** in the attention like any other position.  The map is padded once,
before the long step: there they hold zero features (in the functional form
without projections their key is the zero vector, so every query gives them
the energy 0).  In the short step they hold the long step's output, a
weighted average over their long-range group that includes real pixels, so
they are non-zero keys and values there.  They are not masked, as in the
authors' code.  The padding is cropped away at the end.  Everything
index-related below (groups, masks, dense matrices) lives on the *padded* grid
of ``N' = H'·W'`` positions, flattened row-major.

Scale.  Energies are scaled dot products ``q·k / sqrt(d)`` with ``d`` the key
channels.  Without projections the query and key are the input itself, so
``d = C``; the module with ``projections=False`` uses the same scale, so the
two agree exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ._checks import (
    check_bool,
    check_channels,
    check_feature_map,
    check_float,
    check_int,
    check_positive_pair,
    check_probability,
    check_qkv_agree,
    check_tensor,
)
from .layers import conv_bn_relu

__all__ = [
    "blocks_padding",
    "pad_to_blocks",
    "unpad",
    "long_range_permute",
    "long_range_unpermute",
    "short_range_permute",
    "short_range_unpermute",
    "long_range_groups",
    "short_range_groups",
    "pixel_groups",
    "interlaced_masks",
    "group_attention",
    "interlaced_sparse_attention",
    "interlaced_attention_to_dense",
    "SelfAttentionBlock",
    "InterlacedSparseSelfAttention",
    "ISAHead",
]

BlockSize = int | Sequence[int]


# ---------------------------------------------------------------------------
# Argument checks (bad input fails here, naming the argument, before any work)
# ---------------------------------------------------------------------------


def _traced(*values: object) -> bool:
    """Whether any of the sizes is symbolic (then the value checks are left to the tracer)."""
    return any(isinstance(v, torch.SymInt) for v in values)


def _check_grid_size(height: object, width: object) -> tuple[int, int]:
    """The input size ``(H, W)``: ints >= 1."""
    return check_int("height", height, minimum=1), check_int("width", width, minimum=1)


def _check_map(name: str, x: object) -> torch.Tensor:
    """A non-empty (B, C, H, W) tensor of any dtype (the permutations move indices too)."""
    return check_tensor(name, x, dim=4, layout="(B, C, H, W)")


def _check_unpad(x: object, padding: object) -> tuple[int, int, int, int]:
    """``x`` a (B, C, H', W') map, ``padding`` four ints >= 0 that leave something to keep."""
    _check_map("x", x)
    if not isinstance(padding, (tuple, list)):
        raise TypeError(f"padding must be a tuple (top, bottom, left, right), got {padding!r}")
    if len(padding) != 4:
        raise ValueError(f"padding must have 4 entries (top, bottom, left, right), got {padding!r}")
    top, bottom, left, right = (
        check_int(f"padding[{k}]", v, minimum=0) for k, v in enumerate(padding)
    )
    height, width = x.shape[2:]
    if not _traced(top, bottom, left, right) and (top + bottom >= height or left + right >= width):
        raise ValueError(
            f"padding (top, bottom, left, right) = {(top, bottom, left, right)} must leave at "
            f"least one row and column of x, got H', W' = {height}, {width}"
        )
    return top, bottom, left, right


def _check_unpermute(
    name: str,
    groups: object,
    batch: object,
    height: object,
    width: object,
    block_size: BlockSize,
    long_range: bool,
) -> tuple[int, int]:
    """Arguments of the two inverse permutations; returns ``(P_h, P_w)``.

    ``height, width`` are the *padded* size (multiples of the block); ``groups``
    must hold ``B·P_h·P_w`` maps of ``Q_h x Q_w`` (long range) or ``B·Q_h·Q_w``
    maps of ``P_h x P_w`` (short range).
    """
    check_tensor(name, groups, dim=4, layout="(G, C, h, w)")
    batch = check_int("batch", batch, minimum=1)
    height, width = _check_grid_size(height, width)
    p_h, p_w = check_positive_pair("block_size", block_size)
    if _traced(batch, height, width):
        return p_h, p_w
    if height % p_h or width % p_w:
        raise ValueError(
            f"height, width must be the padded size, multiples of block_size {(p_h, p_w)}, "
            f"got {height}, {width}"
        )
    q_h, q_w = height // p_h, width // p_w
    count, size = (p_h * p_w, (q_h, q_w)) if long_range else (q_h * q_w, (p_h, p_w))
    if groups.shape[0] != batch * count or tuple(groups.shape[2:]) != size:
        raise ValueError(
            f"{name} must have shape ({batch * count}, C, {size[0]}, {size[1]}) for batch={batch}, "
            f"height={height}, width={width}, block_size={(p_h, p_w)}, got {tuple(groups.shape)}"
        )
    return p_h, p_w


def _check_group_qkv(query: object, key: object, value: object, scale: object) -> None:
    """query, key (G, C', h, w) and value (G, C_v, h, w): one dtype, one device; scale > 0."""
    for name, tensor in (("query", query), ("key", key), ("value", value)):
        check_tensor(name, tensor, dim=4, kind="float", layout="(G, C, h, w)")
    check_qkv_agree(query, key, value, layout="(G, C', h, w)", shared="groups and size (G, h, w)")
    if not isinstance(scale, torch.SymFloat):  # a traced scale (read off a shape) passes
        check_float("scale", scale, minimum=0.0, exclusive_minimum=True)


def _check_optional_channels(name: str, value: object) -> int | None:
    """``None`` (the default) or an int >= 1: ``0`` is an error, not the default."""
    return None if value is None else check_int(name, value, minimum=1)


def _check_block_args(
    in_channels: object,
    key_channels: object,
    value_channels: object,
    out_channels: object,
    projections: object,
) -> int:
    """Arguments of :class:`SelfAttentionBlock`; returns ``in_channels``."""
    channels = {
        "in_channels": in_channels,
        "key_channels": key_channels,
        "value_channels": value_channels,
        "out_channels": out_channels,
    }
    for name, value in channels.items():
        check_int(name, value, minimum=1)
    if not check_bool("projections", projections):
        for name, value in list(channels.items())[1:]:
            if value != in_channels:
                raise ValueError(
                    f"{name} must equal in_channels={in_channels} when projections=False "
                    f"(identity maps), got {value}"
                )
    return in_channels


def _check_issa_args(
    in_channels: object,
    key_channels: object,
    value_channels: object,
    out_channels: object,
    projections: object,
) -> None:
    """Arguments of :class:`InterlacedSparseSelfAttention` (block_size is checked apart)."""
    check_channels("in_channels", in_channels, minimum=1)
    optional = {
        "key_channels": _check_optional_channels("key_channels", key_channels),
        "value_channels": _check_optional_channels("value_channels", value_channels),
        "out_channels": _check_optional_channels("out_channels", out_channels),
    }
    if not check_bool("projections", projections):
        for name, value in optional.items():
            if value not in (None, in_channels):
                raise ValueError(
                    f"{name} must be None or in_channels={in_channels} when "
                    f"projections=False (identity maps), got {value}"
                )


def _check_head_args(
    in_channels: object,
    num_classes: object,
    channels: object,
    block_size: BlockSize,
    dropout: object,
) -> None:
    """Arguments of :class:`ISAHead`."""
    check_channels("in_channels", in_channels, minimum=1)
    check_channels("num_classes", num_classes, minimum=1)
    _check_optional_channels("channels", channels)
    check_positive_pair("block_size", block_size)
    check_probability("dropout", dropout)


# ---------------------------------------------------------------------------
# Padding
# ---------------------------------------------------------------------------


def blocks_padding(height: int, width: int, block_size: BlockSize) -> tuple[int, int, int, int]:
    """Zero padding ``(top, bottom, left, right)`` that makes H, W multiples of the block.

    The padding is centred; an odd amount puts the extra row at the bottom and
    the extra column on the right.  ``blocks_padding(5, 7, (4, 4)) == (1, 2, 0, 1)``.
    """
    height, width = _check_grid_size(height, width)
    p_h, p_w = check_positive_pair("block_size", block_size)
    pad_h = -height % p_h  # rows missing to reach the next multiple of P_h
    pad_w = -width % p_w
    return pad_h // 2, pad_h - pad_h // 2, pad_w // 2, pad_w - pad_w // 2


def pad_to_blocks(
    x: torch.Tensor, block_size: BlockSize
) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
    """Pad ``x`` (B, C, H, W) with zeros to (B, C, H', W'); returns ``(padded, padding)``."""
    _check_map("x", x)
    top, bottom, left, right = padding = blocks_padding(x.shape[2], x.shape[3], block_size)
    return F.pad(x, (left, right, top, bottom)), padding


def unpad(x: torch.Tensor, padding: tuple[int, int, int, int]) -> torch.Tensor:
    """Crop the padding of :func:`pad_to_blocks` away again: (B, C, H', W') -> (B, C, H, W)."""
    top, bottom, left, right = _check_unpad(x, padding)
    return x[:, :, top : x.shape[2] - bottom, left : x.shape[3] - right]


# ---------------------------------------------------------------------------
# The two permutations.  A padded map (B, C, H', W') is viewed as
# (B, C, Q_h, P_h, Q_w, P_w): row i = bi·P_h + a, column j = bj·P_w + b for the pixel at
# offset (a, b) of block (bi, bj).
# ---------------------------------------------------------------------------


def _grid(x: torch.Tensor, block_size: BlockSize) -> tuple[torch.Tensor, int, int, int, int]:
    _check_map("x", x)
    p_h, p_w = check_positive_pair("block_size", block_size)
    batch, channels, height, width = x.shape
    if height % p_h or width % p_w:
        raise ValueError(
            f"x must be padded to multiples of block_size {(p_h, p_w)}, got H, W = "
            f"{height}, {width} (use pad_to_blocks first)"
        )
    q_h, q_w = height // p_h, width // p_w
    return x.reshape(batch, channels, q_h, p_h, q_w, p_w), p_h, p_w, q_h, q_w


def long_range_permute(x: torch.Tensor, block_size: BlockSize) -> torch.Tensor:
    """(B, C, H', W') -> (B·P_h·P_w, C, Q_h, Q_w): one small map per long-range group.

    Group ``g = a·P_w + b`` of image ``b_`` sits at index ``b_·P_h·P_w + g``;
    its map holds the pixels ``(bi·P_h + a, bj·P_w + b)`` at ``(bi, bj)``.
    """
    grid, p_h, p_w, q_h, q_w = _grid(x, block_size)  # (B, C, Q_h, P_h, Q_w, P_w)
    batch, channels = x.shape[:2]
    groups = grid.permute(0, 3, 5, 1, 2, 4)  # (B, P_h, P_w, C, Q_h, Q_w)
    return groups.reshape(batch * p_h * p_w, channels, q_h, q_w)


def long_range_unpermute(
    groups: torch.Tensor, batch: int, height: int, width: int, block_size: BlockSize
) -> torch.Tensor:
    """Inverse of :func:`long_range_permute`: (B·P_h·P_w, C, Q_h, Q_w) -> (B, C, H', W')."""
    p_h, p_w = _check_unpermute("groups", groups, batch, height, width, block_size, True)
    channels, q_h, q_w = groups.shape[1:]
    grid = groups.reshape(batch, p_h, p_w, channels, q_h, q_w).permute(0, 3, 4, 1, 5, 2)
    return grid.reshape(batch, channels, height, width)  # (B, C, Q_h·P_h, Q_w·P_w)


def short_range_permute(x: torch.Tensor, block_size: BlockSize) -> torch.Tensor:
    """(B, C, H', W') -> (B·Q_h·Q_w, C, P_h, P_w): one map per contiguous block.

    Block ``g = bi·Q_w + bj`` of image ``b_`` sits at index ``b_·Q_h·Q_w + g``.
    """
    grid, p_h, p_w, q_h, q_w = _grid(x, block_size)  # (B, C, Q_h, P_h, Q_w, P_w)
    batch, channels = x.shape[:2]
    blocks = grid.permute(0, 2, 4, 1, 3, 5)  # (B, Q_h, Q_w, C, P_h, P_w)
    return blocks.reshape(batch * q_h * q_w, channels, p_h, p_w)


def short_range_unpermute(
    groups: torch.Tensor, batch: int, height: int, width: int, block_size: BlockSize
) -> torch.Tensor:
    """Inverse of :func:`short_range_permute`: (B·Q_h·Q_w, C, P_h, P_w) -> (B, C, H', W')."""
    p_h, p_w = _check_unpermute("groups", groups, batch, height, width, block_size, False)
    channels = groups.shape[1]
    q_h, q_w = height // p_h, width // p_w
    grid = groups.reshape(batch, q_h, q_w, channels, p_h, p_w).permute(0, 3, 1, 4, 2, 5)
    return grid.reshape(batch, channels, height, width)


# ---------------------------------------------------------------------------
# The same permutations as index lists and boolean masks (for teaching/tests)
# ---------------------------------------------------------------------------


def _padded_index_map(height: int, width: int, block_size: BlockSize) -> torch.Tensor:
    """Flat row-major index of every position of the padded grid: (1, 1, H', W')."""
    top, bottom, left, right = blocks_padding(height, width, block_size)
    h_pad, w_pad = height + top + bottom, width + left + right
    return torch.arange(h_pad * w_pad, dtype=torch.float64).reshape(1, 1, h_pad, w_pad)


def long_range_groups(height: int, width: int, block_size: BlockSize) -> torch.Tensor:
    """Members of each long-range group: (P_h·P_w, Q_h·Q_w) long, flat padded-grid indices.

    ``height, width`` are the *input* size; indices refer to the padded grid
    (``W'`` columns), row-major, members in the order the attention uses.
    """
    index = long_range_permute(_padded_index_map(height, width, block_size), block_size)
    return index.flatten(1).long()  # (P_h·P_w, Q_h·Q_w)


def short_range_groups(height: int, width: int, block_size: BlockSize) -> torch.Tensor:
    """Members of each short-range group (block): (Q_h·Q_w, P_h·P_w) long, padded-grid indices."""
    index = short_range_permute(_padded_index_map(height, width, block_size), block_size)
    return index.flatten(1).long()  # (Q_h·Q_w, P_h·P_w)


def pixel_groups(
    height: int, width: int, block_size: BlockSize
) -> tuple[torch.Tensor, torch.Tensor]:
    """ISSA's two groups of every pixel of an H x W map: ``(offset, block)``, each (H, W) long.

    ``offset[i, j] = a·P_w + b`` is the pixel's offset inside its block, the
    index of its long-range group (the row of :func:`long_range_groups`);
    ``block[i, j] = bi·Q_w + bj`` is its block, the index of its short-range
    group (the row of :func:`short_range_groups`).  Both are taken on the
    padded grid, so a pixel keeps the groups the module puts it in.
    """
    top, bottom, left, right = blocks_padding(height, width, block_size)
    p_h, p_w = check_positive_pair("block_size", block_size)
    q_w = (width + left + right) // p_w
    rows = torch.arange(height)[:, None] + top  # padded-grid row of every input row
    cols = torch.arange(width)[None, :] + left
    offset = (rows % p_h) * p_w + cols % p_w
    block = (rows // p_h) * q_w + cols // p_w
    return offset, block


def _membership(groups: torch.Tensor, size: int) -> torch.Tensor:
    """``mask[u, p] = True`` iff u and p are in one group: (N', N') bool."""
    group_of = torch.empty(size, dtype=torch.long)
    group_of[groups.flatten()] = torch.arange(groups.shape[0]).repeat_interleave(groups.shape[1])
    return group_of[:, None] == group_of[None, :]


def interlaced_masks(
    height: int, width: int, block_size: BlockSize = (8, 8)
) -> tuple[torch.Tensor, torch.Tensor]:
    """Group-membership matrices ``(long, short)``, each (N', N') bool on the padded grid.

    ``long[u, p]`` is True when positions u and p (flat row-major indices of
    the padded ``H' x W'`` grid) are in the same long-range group, i.e. have
    the same offset inside their block; ``short[u, p]`` when they are in the
    same block.  ``long`` and ``short`` are the sparsity patterns of ``A_L``
    and ``A_S``; their boolean product is all True.
    """
    size = _padded_index_map(height, width, block_size).numel()
    long_mask = _membership(long_range_groups(height, width, block_size), size)
    short_mask = _membership(short_range_groups(height, width, block_size), size)
    return long_mask, short_mask


# ---------------------------------------------------------------------------
# Attention inside groups
# ---------------------------------------------------------------------------


def group_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scaled dot-product self-attention inside each group.

    query, key: (G, C', h, w); value: (G, C_v, h, w); every one of the ``G``
    maps is one group of ``n = h·w`` positions.
    Returns ``out`` (G, C_v, h, w) and the affinity (G, n, n), rows summing to 1.
    """
    _check_group_qkv(query, key, value, scale)
    groups, _, h, w = value.shape
    q = query.flatten(2).transpose(1, 2)  # (G, n, C')
    k = key.flatten(2)  # (G, C', n)
    v = value.flatten(2).transpose(1, 2)  # (G, n, C_v)
    energy = scale * torch.bmm(q, k)  # (G, n, n): energy[g, u, p] = q(u)·k(p) / sqrt(C')
    affinity = F.softmax(energy, dim=-1)
    out = torch.bmm(affinity, v)  # (G, n, C_v)
    return out.transpose(1, 2).reshape(groups, -1, h, w), affinity


def interlaced_sparse_attention(
    x: torch.Tensor, block_size: BlockSize = (8, 8), return_attention: bool = False
) -> torch.Tensor | tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """ISSA without projections: query = key = value = the features, scale ``C^-1/2``.

    Args:
        x: (B, C, H, W) floating tensor.
        block_size: ``(P_h, P_w)`` or one int for both.
        return_attention: also return ``(long_attention, short_attention)`` of
            shapes (B, P_h·P_w, Q_h·Q_w, Q_h·Q_w) and (B, Q_h·Q_w, P_h·P_w, P_h·P_w),
            group members ordered as in :func:`long_range_groups` /
            :func:`short_range_groups`.

    Returns:
        y (B, C, H, W) [, attentions].  On the padded grid, with ``X`` the
        padded input as an (N', C) matrix, ``y = A_S @ (A_L @ X)`` exactly,
        see :func:`interlaced_attention_to_dense`.
    """
    check_feature_map("x", x)
    block_size = check_positive_pair("block_size", block_size)
    check_bool("return_attention", return_attention)
    scale = x.shape[1] ** -0.5  # C^-1/2

    def attend(groups: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # query = key = value = the features of each group
        return group_attention(groups, groups, groups, scale)

    y, attention = _interlaced_steps(x, block_size, attend, attend)
    return (y, attention) if return_attention else y


_GroupAttention = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def _long_range_step(
    x: torch.Tensor, block_size: tuple[int, int], attend_long: _GroupAttention
) -> tuple[torch.Tensor, tuple[int, int, int, int], torch.Tensor]:
    """ISSA's first step: pad, attend among pixels P_h, P_w apart, back to the padded grid.

    Returns the long step's output on the padded grid (B, C_out, H', W'), the
    padding and the attention (B·P_h·P_w, n, n) of its groups.
    """
    feats, padding = pad_to_blocks(x, block_size)  # (B, C, H', W')
    h_pad, w_pad = feats.shape[2:]
    # Long range: attend among pixels P_h, P_w apart (same offset in their block).
    groups = long_range_permute(feats, block_size)  # (B·P_h·P_w, C, Q_h, Q_w)
    out, long_attention = attend_long(groups)
    feats = long_range_unpermute(out, x.shape[0], h_pad, w_pad, block_size)  # (B, C_out, H', W')
    return feats, padding, long_attention


def _interlaced_steps(
    x: torch.Tensor,
    block_size: tuple[int, int],
    attend_long: _GroupAttention,
    attend_short: _GroupAttention,
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """The two steps of ISSA around the attention of one group: pad, long, short, crop.

    ``attend_long`` and ``attend_short`` map a batch of groups (G, C, h, w) to
    ``(out (G, C_out, h, w), attention (G, h·w, h·w))``: plain :func:`group_attention`
    in :func:`interlaced_sparse_attention`, the two :class:`SelfAttentionBlock`
    (each with its projections) in :class:`InterlacedSparseSelfAttention`.
    Returns ``y`` (B, C_out, H, W) and the attentions of both steps, of the shapes
    documented in :func:`interlaced_sparse_attention`.
    """
    batch = x.shape[0]
    p_h, p_w = block_size
    feats, padding, long_attention = _long_range_step(x, block_size, attend_long)
    h_pad, w_pad = feats.shape[2:]

    # Short range: attend inside each contiguous P_h x P_w block.
    blocks = short_range_permute(feats, block_size)  # (B·Q_h·Q_w, C_out, P_h, P_w)
    out, short_attention = attend_short(blocks)
    feats = short_range_unpermute(out, batch, h_pad, w_pad, block_size)

    y = unpad(feats, padding)  # (B, C_out, H, W)
    long_attention = long_attention.reshape(batch, p_h * p_w, *long_attention.shape[1:])
    short_attention = short_attention.reshape(batch, -1, *short_attention.shape[1:])
    return y, (long_attention, short_attention)


def interlaced_attention_to_dense(
    long_attention: torch.Tensor,
    short_attention: torch.Tensor,
    height: int,
    width: int,
    block_size: BlockSize = (8, 8),
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scatter the per-group attentions into dense block-sparse ``(A_L, A_S)``, each (B, N', N').

    ``height, width`` are the input size; ``N' = H'·W'`` the padded grid,
    row-major.  ``A_L[b, u, p]`` is the weight position u gives to p in the
    long-range step (zero unless u, p share a group), likewise ``A_S``.  For
    the functional form, ``A_S @ (A_L @ X)`` equals the padded output.
    """
    check_tensor("long_attention", long_attention, dim=4, kind="float", layout="(B, G, n, n)")
    check_tensor("short_attention", short_attention, dim=4, kind="float", layout="(B, G, n, n)")
    long_groups = long_range_groups(height, width, block_size).to(long_attention.device)
    short_groups = short_range_groups(height, width, block_size).to(short_attention.device)
    size = long_groups.numel()

    def scatter(attention: torch.Tensor, groups: torch.Tensor, name: str) -> torch.Tensor:
        n_groups, n = groups.shape
        if attention.dim() != 4 or attention.shape[1:] != (n_groups, n, n):
            raise ValueError(
                f"{name} must have shape (B, {n_groups}, {n}, {n}) for height={height}, "
                f"width={width}, block_size={block_size!r}, got {tuple(attention.shape)}"
            )
        dense = attention.new_zeros(attention.shape[0], size, size)  # (B, N', N')
        rows = groups[:, :, None].expand(n_groups, n, n)  # query position of each entry
        cols = groups[:, None, :].expand(n_groups, n, n)  # key position of each entry
        dense[:, rows, cols] = attention
        return dense

    return (
        scatter(long_attention, long_groups, "long_attention"),
        scatter(short_attention, short_groups, "short_attention"),
    )


# ---------------------------------------------------------------------------
# Modules
# ---------------------------------------------------------------------------


def _query_key_projection(in_channels: int, key_channels: int) -> nn.Sequential:
    """Two layers of 1x1 conv + BN + ReLU, ``in -> key -> key`` (``f_query``/``f_key``).

    Each layer is the authors' ``Conv2d`` (no bias) followed by ``ModuleHelper.BNReLU``.
    """
    return nn.Sequential(
        conv_bn_relu(in_channels, key_channels, kernel_size=1),
        conv_bn_relu(key_channels, key_channels, kernel_size=1),
    )


class SelfAttentionBlock(nn.Module):
    """Self-attention applied to a batch of groups (one step of ISSA).

    The layers of the authors' ``SelfAttentionBlock2D``
    (openseg.pytorch, ``lib/models/modules/isa_block.py``):

    * ``query``, ``key``: *two* layers of 1x1 conv (no bias) + BN + ReLU each,
      ``in_channels -> key_channels -> key_channels`` (``query[0]``, ``query[1]``);
    * ``value``: one 1x1 conv (no bias) to ``value_channels``, no BN, no ReLU;
    * energies scaled by ``key_channels^-1/2``, softmax over the group;
    * ``out_proj``: 1x1 conv (no bias) + BN + ReLU to ``out_channels`` (the
      authors' ``W``); no residual (the ISA head adds the input back by
      concatenation).

    With ``projections=False`` all four maps are the identity and the block is
    :func:`group_attention` with ``q = k = v`` and scale ``C^-1/2``.
    """

    def __init__(
        self,
        in_channels: int,
        key_channels: int,
        value_channels: int,
        out_channels: int,
        projections: bool = True,
    ) -> None:
        super().__init__()
        self.in_channels = _check_block_args(
            in_channels, key_channels, value_channels, out_channels, projections
        )
        self.key_channels = key_channels
        self.projections = projections
        if projections:
            self.query = _query_key_projection(in_channels, key_channels)  # f_query
            self.key = _query_key_projection(in_channels, key_channels)  # f_key
            self.value = nn.Conv2d(in_channels, value_channels, 1, bias=False)  # f_value
            self.out_proj = conv_bn_relu(value_channels, out_channels, kernel_size=1)  # W
        else:
            self.query = self.key = self.value = self.out_proj = nn.Identity()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (G, C, h, w) groups -> (out (G, C_out, h, w), attention (G, h·w, h·w))."""
        check_feature_map("x", x, channels=self.in_channels, channels_from="in_channels")
        out, attention = group_attention(
            self.query(x), self.key(x), self.value(x), self.key_channels**-0.5
        )
        return self.out_proj(out), attention


class InterlacedSparseSelfAttention(nn.Module):
    """Interlaced sparse self-attention: a long-range step, then a short-range step.

    The authors' ``ISA_Block``: centred zero padding to multiples of the
    block, the long-range permutation, one :class:`SelfAttentionBlock`, the
    short-range permutation, a second :class:`SelfAttentionBlock` (its own
    weights, input ``out_channels``), back to the grid, crop.

    Args:
        in_channels: C of the input.
        block_size: ``(P_h, P_w)`` (the paper's and the code's default 8 x 8).
        key_channels: query/key channels (default ``C // 2``, at least 1, as
            ISANet's 512 -> 256).
        value_channels: value channels (default C).
        out_channels: output channels (default C).
        projections: ``False`` makes every projection the identity (then the
            three channel arguments must be left ``None`` or equal C), which
            reproduces :func:`interlaced_sparse_attention` exactly.
    """

    def __init__(
        self,
        in_channels: int,
        block_size: BlockSize = (8, 8),
        key_channels: int | None = None,
        value_channels: int | None = None,
        out_channels: int | None = None,
        projections: bool = True,
    ) -> None:
        super().__init__()
        _check_issa_args(in_channels, key_channels, value_channels, out_channels, projections)
        self.block_size = check_positive_pair("block_size", block_size)
        self.in_channels = in_channels
        if projections:
            key_channels = max(in_channels // 2, 1) if key_channels is None else key_channels
            value_channels = in_channels if value_channels is None else value_channels
            out_channels = in_channels if out_channels is None else out_channels
        else:
            key_channels = value_channels = out_channels = in_channels
        self.out_channels = out_channels
        self.long_range = SelfAttentionBlock(
            in_channels, key_channels, value_channels, out_channels, projections
        )
        self.short_range = SelfAttentionBlock(
            out_channels, key_channels, value_channels, out_channels, projections
        )

    def forward(
        self, x: torch.Tensor, return_attention: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """x: (B, C, H, W) -> y (B, C_out, H, W) [, (long_attention, short_attention)].

        The attentions have the shapes documented in :func:`interlaced_sparse_attention`.
        """
        check_feature_map("x", x, channels=self.in_channels, channels_from="in_channels")
        check_bool("return_attention", return_attention)
        y, attention = _interlaced_steps(x, self.block_size, self.long_range, self.short_range)
        return (y, attention) if return_attention else y

    def long_range_step(
        self, x: torch.Tensor, return_attention: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """The long-range step alone: x (B, C, H, W) -> its output (B, C_out, H, W) [, attention].

        Exactly what :meth:`forward` computes before its short-range step
        (pad, group the pixels ``P_h``, ``P_w`` apart, ``self.long_range``,
        ungroup), cropped back to the input's H x W.  The attention has the
        shape (B, P_h·P_w, n, n) of the long step in :meth:`forward`.  Used to
        measure what the first step alone reaches.
        """
        check_feature_map("x", x, channels=self.in_channels, channels_from="in_channels")
        check_bool("return_attention", return_attention)
        feats, padding, attention = _long_range_step(x, self.block_size, self.long_range)
        attention = attention.reshape(x.shape[0], -1, *attention.shape[1:])
        y = unpad(feats, padding)
        return (y, attention) if return_attention else y


class ISAHead(nn.Module):
    """ISANet segmentation head, as the authors' ``ISANet`` (``lib/models/nets/isanet.py``).

    ::

        x (C_in) -> reduce: 3x3 conv (no bias) -> C + BN + ReLU
                 -> issa:   InterlacedSparseSelfAttention(C, key C // 2, value C, out C)
                 -> concat [reduced, issa output]  (2C)
                 -> fuse:   1x1 conv (no bias) -> C + BN + ReLU + Dropout2d
                 -> classifier: 1x1 conv -> num_classes

    ``C`` is ``channels`` (default ``in_channels // 4``, e.g. 2048 -> 512 as in
    ISANet).  The ``issa`` + concat + ``fuse`` part is the authors'
    ``ISA_Module`` with one block size; ISANet adds the ``reduce`` convolution
    before it (``bias=False`` there, as here: the BN that follows would cancel
    a bias) and the classifier after it.  The dropout
    default 0.05 is ISANet's.  ISANet's auxiliary head on the third backbone
    stage is not part of this module.

    Args:
        in_channels: C_in, backbone feature channels (2048 for ResNet-101).
        num_classes: number of output classes.
        channels: C, the reduced width ISSA runs at (default ``in_channels // 4``).
        block_size: ``(P_h, P_w)`` of ISSA.
        dropout: Dropout2d probability after the fusion (ISANet: 0.05).
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        channels: int | None = None,
        block_size: BlockSize = (8, 8),
        dropout: float = 0.05,
    ) -> None:
        super().__init__()
        _check_head_args(in_channels, num_classes, channels, block_size, dropout)
        channels = max(in_channels // 4, 1) if channels is None else channels
        self.in_channels = in_channels
        self.reduce = conv_bn_relu(in_channels, channels, kernel_size=3)
        self.issa = InterlacedSparseSelfAttention(channels, block_size)
        self.fuse = nn.Sequential(
            conv_bn_relu(2 * channels, channels, kernel_size=1), nn.Dropout2d(dropout)
        )
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(
        self, x: torch.Tensor, return_attention: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """x: (B, C_in, H, W) -> logits (B, classes, H, W) [, ISSA attentions]."""
        check_feature_map("x", x, channels=self.in_channels, channels_from="in_channels")
        check_bool("return_attention", return_attention)
        feats = self.reduce(x)  # (B, C, H, W)
        context, attention = self.issa(feats, return_attention=True)  # (B, C, H, W)
        logits = self.classifier(self.fuse(torch.cat([feats, context], dim=1)))
        return (logits, attention) if return_attention else logits
