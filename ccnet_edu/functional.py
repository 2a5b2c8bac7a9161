"""Criss-cross attention as plain tensor operations (CCNet, Huang et al., ICCV 2019, Sec. 3.2).

For a pixel ``u = (i, j)`` the *criss-cross set* is its row ``i`` and its
column ``j``: ``H + W - 1`` positions, ``u`` itself counted once.  Each pixel
scores every position of its set (``energy``), normalises the scores with a
softmax (``affinity``, also called attention) and averages the values of the
set with those weights.

Attention layout exposed by this library, channels-last ``(B, H, W, H+W-1)``::

    attention[b, i, j, :W]  -> the row:    positions (i, 0), ..., (i, W-1)  (centre included)
    attention[b, i, j, W:]  -> the column: positions (i', j) for i' = 0..H-1, i' != i, in order

This is the channel order of the original CCNet CUDA kernels, moved to the
last dimension.  :func:`attention_to_channels_first` gives their
``(B, H+W-1, H, W)`` tensor and :func:`attention_to_padded` the
``(B, H, W, H+W)`` ``[column | row]`` layout of the pure-PyTorch CCNet code.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from ._checks import (
    check_bool,
    check_choice,
    check_device,
    check_feature_map,
    check_int,
    check_qkv_agree,
    check_tensor,
)

__all__ = [
    "criss_cross_attention",
    "criss_cross_attention_reference",
    "column_index",
    "attention_to_channels_first",
    "attention_from_channels_first",
    "attention_to_padded",
    "attention_from_padded",
]

Impl = Literal["reference", "fused", "flex", "auto"]
#: The values of ``impl``.
IMPLS = ("reference", "fused", "flex", "auto")


def column_index(height: int, device: torch.device | str | None = None) -> torch.Tensor:
    """For each row ``i``, the column positions ``i' != i`` in order: (H, H-1) long.

    ``column_index(4)[1] == [0, 2, 3]``: the centre is skipped because the row
    part of the criss-cross set already holds it.
    """
    height = check_int("height", height, minimum=1)
    device = check_device("device", device, optional=True)
    others = torch.arange(height - 1, device=device)  # (H-1,)
    rows = torch.arange(height, device=device)[:, None]  # (H, 1)
    return others[None, :] + (others[None, :] >= rows).long()  # (H, H-1)


def check_qkv(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> None:
    """Validate the three inputs of criss-cross attention (shared by every impl)."""
    check_feature_map("query", query)
    check_feature_map("key", key)
    check_feature_map("value", value)
    check_qkv_agree(query, key, value, layout="(B, C', H, W)", shared="batch size and spatial size")


def criss_cross_attention_reference(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The readable implementation: returns ``(out, attention)``.

    query, key: (B, C', H, W); value: (B, C, H, W).
    out: (B, C, H, W); attention: (B, H, W, H+W-1) in the layout of this module.
    """
    check_qkv(query, key, value)
    batch, _, height, width = query.shape
    others = column_index(height, query.device)  # (H, H-1)
    index = others[None, :, None, :].expand(batch, height, width, height - 1)  # (B, H, W, H-1)

    # Energies along the row of each pixel: e[b, i, j, j'] = q(i, j) . k(i, j')
    energy_row = torch.einsum("bcij,bcik->bijk", query, key)  # (B, H, W, W)
    # ... and along its column, without the centre: e[b, i, j, n] = q(i, j) . k(i'_n, j)
    energy_col = torch.einsum("bcij,bckj->bijk", query, key)  # (B, H, W, H)
    energy_col = energy_col.gather(-1, index)  # (B, H, W, H-1)

    # One softmax over the whole criss-cross set of H + W - 1 positions.
    energy = torch.cat([energy_row, energy_col], dim=-1)  # (B, H, W, H+W-1)
    affinity = F.softmax(energy, dim=-1)
    affinity_row, affinity_col = affinity.split([width, height - 1], dim=-1)

    # Aggregate: out(i, j) = sum_j' A_row v(i, j') + sum_i' A_col v(i', j).
    # The column weights go back onto all H rows, 0 on the centre (the row holds it):
    # gathering the values instead would copy v H-1 times, (B, C, H, H-1, W), and
    # autograd would keep that copy for backward.
    affinity_col = affinity.new_zeros(batch, height, width, height).scatter(-1, index, affinity_col)
    # (B, H, W, H)
    out_row = torch.einsum("bijk,bcik->bcij", affinity_row, value)  # (B, C, H, W)
    out_col = torch.einsum("bijk,bckj->bcij", affinity_col, value)  # (B, C, H, W)
    return out_row + out_col, affinity


def criss_cross_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    *,
    return_attention: bool = False,
    impl: Impl = "reference",
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Criss-cross attention (no gamma, no residual).

    Args:
        query: (B, C', H, W) floating tensor.
        key: (B, C', H, W), same shape, dtype and device as ``query``.
        value: (B, C, H, W), same B, H, W as ``query``.
        return_attention: also return the attention, (B, H, W, H+W-1), rows
            summing to one, in the layout described in the module docstring.
        impl: ``"reference"`` (readable PyTorch, any device), ``"fused"`` (the
            C++/CUDA operator of :mod:`ccnet_edu.ops`; raises if it cannot be
            built), ``"flex"`` (a row attention and a column attention on torch's
            FlexAttention, joined by their log-sum-exps: :mod:`ccnet_edu.flex`) or
            ``"auto"`` (fused when available, otherwise reference
            with a one-time warning saying why).

    Returns:
        ``out`` (B, C, H, W), or ``(out, attention)`` with ``return_attention``.
    """
    check_qkv(query, key, value)
    check_bool("return_attention", return_attention)
    check_choice("impl", impl, IMPLS)
    if impl == "reference":
        out, attention = criss_cross_attention_reference(query, key, value)
    elif impl == "flex":
        from .flex import criss_cross_attention_flex

        out, attention = criss_cross_attention_flex(
            query, key, value, return_attention=return_attention
        )
    else:  # "fused" or "auto"
        from . import ops  # imported lazily: building the operator is optional

        if impl == "fused" or ops.usable_for(query):
            out, attention = ops.criss_cross_attention(query, key, value)
        else:
            out, attention = criss_cross_attention_reference(query, key, value)
    return (out, attention) if return_attention else out


def _check_attention(attention: object, layout: str) -> torch.Tensor:
    return check_tensor("attention", attention, dim=4, kind="float", layout=layout)


def attention_to_channels_first(attention: torch.Tensor) -> torch.Tensor:
    """(B, H, W, H+W-1) -> (B, H+W-1, H, W), the original CCNet CUDA kernels' layout."""
    _check_attention(attention, "(B, H, W, H+W-1)")
    _, height, width, length = attention.shape
    if length != height + width - 1:
        raise ValueError(
            f"attention must have H+W-1 = {height + width - 1} entries in its last "
            f"dimension, got shape {tuple(attention.shape)}"
        )
    return attention.permute(0, 3, 1, 2)


def attention_from_channels_first(attention: torch.Tensor) -> torch.Tensor:
    """(B, H+W-1, H, W) -> (B, H, W, H+W-1), the inverse of :func:`attention_to_channels_first`."""
    _check_attention(attention, "(B, H+W-1, H, W)")
    _, length, height, width = attention.shape
    if length != height + width - 1:
        raise ValueError(
            f"attention must have H+W-1 = {height + width - 1} channels (dimension 1), "
            f"got shape {tuple(attention.shape)}"
        )
    return attention.permute(0, 2, 3, 1)


def attention_to_padded(attention: torch.Tensor) -> torch.Tensor:
    """(B, H, W, H+W-1) -> (B, H, W, H+W): ``[column (H entries, centre 0) | row (W)]``.

    This is the layout of the pure-PyTorch CCNet code, whose column energies
    carry the centre masked with ``-inf`` (so a weight of exactly 0 here).
    """
    _check_attention(attention, "(B, H, W, H+W-1)")
    batch, height, width, length = attention.shape
    if length != height + width - 1:
        raise ValueError(
            f"attention must have H+W-1 = {height + width - 1} entries in its last "
            f"dimension, got {length}"
        )
    row, col = attention.split([width, height - 1], dim=-1)
    padded_col = attention.new_zeros(batch, height, width, height)
    others = column_index(height, attention.device)[None, :, None, :].expand_as(col)
    padded_col = padded_col.scatter(-1, others, col)
    return torch.cat([padded_col, row], dim=-1)


def attention_from_padded(attention: torch.Tensor) -> torch.Tensor:
    """(B, H, W, H+W) ``[column | row]`` -> (B, H, W, H+W-1) (drops the centre of the column)."""
    _check_attention(attention, "(B, H, W, H+W)")
    batch, height, width, length = attention.shape
    if length != height + width:
        raise ValueError(
            f"attention must have H+W = {height + width} entries in its last dimension, "
            f"got {length}"
        )
    col, row = attention.split([height, width], dim=-1)
    others = column_index(height, attention.device)[None, :, None, :].expand(
        batch, height, width, height - 1
    )
    return torch.cat([row, col.gather(-1, others)], dim=-1)
