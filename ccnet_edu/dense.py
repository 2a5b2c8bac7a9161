"""Dense views of sparse attention, for teaching and testing.

Every attention in this library is, mathematically, an ``N x N`` matrix over
the ``N = H * W`` pixels, flattened row-major (pixel ``(i, j)`` is position
``p = i * W + j``).  Criss-cross attention only keeps the entries allowed by
a boolean *mask*; the non-local block keeps them all.  This module builds
those masks and matrices so that

* :func:`dense_attention` under :func:`criss_cross_mask` is an *independent*
  reference for criss-cross attention (a plain masked softmax, no gathers);
* every module that can return its attention (CCA, RCCA, NonLocal2d, ISSA)
  can be turned into an ``(H, W)`` map of "where does pixel (i, j) look",
  with :func:`attention_query_map`.

Dense matrices have ``N^2`` entries: fine for the small maps of a book,
hopeless at the 97 x 97 maps of CCNet (88.5 million entries per image).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F

from ._checks import (
    check_bool,
    check_choice,
    check_device,
    check_float,
    check_int,
    check_memory,
    check_same_device,
    check_tensor,
)
from .functional import check_qkv, column_index

# ISSA's masks live with ISSA; ``interlaced_masks`` is re-exported here, next to
# :func:`criss_cross_mask`: the (long-range, short-range) bool masks on the padded grid.
from .issa import blocks_padding, interlaced_attention_to_dense, interlaced_masks

__all__ = [
    "dense_attention",
    "criss_cross_mask",
    "criss_cross_index",
    "criss_cross_attention_to_dense",
    "dense_to_criss_cross_attention",
    "recurrent_attention_to_dense",
    "issa_attention_to_dense",
    "interlaced_masks",
    "attention_to_dense",
    "query_map",
    "attention_query_map",
    "same_values",
]

Kind = Literal["criss_cross", "recurrent", "dense", "issa"]


_STEPS = ("long", "short", "combined")
_KINDS = ("criss_cross", "recurrent", "dense", "issa")


def dense_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    mask: torch.Tensor | None = None,
    return_attention: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Masked dense (non-local) attention over all ``N = H * W`` positions.

    ``energy = Q K^T`` (no ``1/sqrt(C')`` scale, as in CCNet and the non-local
    block), disallowed pairs set to ``-inf``, softmax over the keys, then
    ``out = A V``.

    Args:
        query, key: (B, C', H, W).
        value: (B, C, H, W).
        mask: optional bool (N, N), ``mask[u, p]`` True when query ``u`` may
            attend to key ``p``.  Every row needs at least one True.
        return_attention: also return the attention (B, N, N).

    Returns:
        ``out`` (B, C, H, W), or ``(out, attention)``.
    """
    check_qkv(query, key, value)  # shapes, dtypes and devices, with named errors
    check_bool("return_attention", return_attention)
    batch, channels, height, width = value.shape
    n = height * width

    q = query.flatten(2).transpose(1, 2)  # (B, N, C')
    k = key.flatten(2)  # (B, C', N)
    v = value.flatten(2).transpose(1, 2)  # (B, N, C)
    energy = q @ k  # (B, N, N)
    if mask is not None:
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
            raise TypeError(f"mask must be a bool tensor, got {getattr(mask, 'dtype', mask)!r}")
        if mask.shape != (n, n):
            raise ValueError(
                f"mask must have shape (N, N) = ({n}, {n}) for H={height}, W={width}, "
                f"got {tuple(mask.shape)}"
            )
        check_same_device(query=query, mask=mask)
        energy = energy.masked_fill(~mask, float("-inf"))
    attention = F.softmax(energy, dim=-1)  # (B, N, N), rows sum to one
    out = (attention @ v).transpose(1, 2).reshape(batch, channels, height, width)
    return (out, attention) if return_attention else out


def criss_cross_mask(
    height: int, width: int, device: torch.device | str | None = None
) -> torch.Tensor:
    """The criss-cross pattern as a bool (N, N) matrix, ``N = H * W`` (row-major).

    ``mask[u, p]`` is True when ``p`` lies in the row or the column of ``u``
    (CCNet, Sec. 3.2); each row has exactly ``H + W - 1`` True entries.
    """
    check_int("height", height, minimum=1)
    check_int("width", width, minimum=1)
    device = check_device("device", device, optional=True)
    n = height * width
    # the (N, N) result and the two (N, N) comparisons it is made of, one byte each
    check_memory(
        f"the ({n}, {n}) mask of height {height} and width {width}", 3 * n * n, device or "cpu"
    )
    position = torch.arange(height * width, device=device)
    row, col = position // width, position % width  # (N,), (N,)
    return (row[:, None] == row[None, :]) | (col[:, None] == col[None, :])


def criss_cross_index(
    height: int, width: int, device: torch.device | str | None = None
) -> torch.Tensor:
    """Flat positions of the criss-cross set, in the attention layout: (H, W, H+W-1) long.

    ``index[i, j, m]`` is the position ``p`` that entry ``m`` of the
    attention of pixel ``(i, j)`` refers to: first the row ``(i, 0..W-1)``,
    then the column ``(i', j)`` for ``i' != i`` (see :mod:`ccnet_edu.functional`).
    """
    check_int("height", height, minimum=1)
    check_int("width", width, minimum=1)
    device = check_device("device", device, optional=True)
    i = torch.arange(height, device=device)[:, None, None]  # (H, 1, 1)
    j = torch.arange(width, device=device)[None, :, None]  # (1, W, 1)
    row = i * width + torch.arange(width, device=device)[None, None, :]  # (H, 1, W)
    others = column_index(height, device)[:, None, :]  # (H, 1, H-1)
    col = others * width + j  # (H, W, H-1)
    return torch.cat([row.expand(height, width, width), col], dim=-1)  # (H, W, H+W-1)


def _check_criss_cross(attention: object, name: str = "attention") -> torch.Tensor:
    check_tensor(name, attention, dim=4, kind="float", layout="(B, H, W, H+W-1)")
    assert isinstance(attention, torch.Tensor)
    _, height, width, length = attention.shape
    if length != height + width - 1:
        raise ValueError(
            f"{name} must have H+W-1 = {height + width - 1} entries in its last "
            f"dimension, got shape {tuple(attention.shape)}"
        )
    return attention


def criss_cross_attention_to_dense(attention: torch.Tensor) -> torch.Tensor:
    """Scatter a criss-cross attention (B, H, W, H+W-1) into its dense (B, N, N) matrix.

    Entries outside the criss-cross set are 0.  Differentiable.
    """
    _check_criss_cross(attention)
    batch, height, width, length = attention.shape
    n = height * width
    index = criss_cross_index(height, width, attention.device).reshape(1, n, length)
    dense = attention.new_zeros(batch, n, n)
    return dense.scatter(-1, index.expand(batch, -1, -1), attention.reshape(batch, n, length))


def dense_to_criss_cross_attention(dense: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Gather the criss-cross entries of a dense (B, N, N) matrix: (B, H, W, H+W-1).

    The inverse of :func:`criss_cross_attention_to_dense` on matrices that
    are zero outside the criss-cross pattern.
    """
    _check_dense(dense, height, width)
    batch = dense.shape[0]
    index = criss_cross_index(height, width, dense.device).reshape(1, height * width, -1)
    gathered = dense.gather(-1, index.expand(batch, -1, -1))  # (B, N, H+W-1)
    return gathered.reshape(batch, height, width, height + width - 1)


def recurrent_attention_to_dense(attentions: Sequence[torch.Tensor]) -> torch.Tensor:
    """The effective attention of ``R`` criss-cross loops: ``A_R ... A_2 A_1``, (B, N, N).

    Loop ``r`` mixes the output of loop ``r - 1``, so information flows
    through the product of the dense matrices.  This is the attention-only
    path, as in the CCNet paper's figures: it leaves out the value
    projections and the ``gamma``-scaled residual.
    """
    if not isinstance(attentions, (list, tuple)):
        raise TypeError(
            f"attentions must be a list of (B, H, W, H+W-1) tensors, got "
            f"{type(attentions).__name__}"
        )
    if len(attentions) == 0:
        raise ValueError("attentions must not be empty (one tensor per loop)")
    for r, attention in enumerate(attentions):
        _check_criss_cross(attention, f"attentions[{r}]")
        if attention.shape != attentions[0].shape:
            raise ValueError(
                f"attentions[{r}] must have the shape of attentions[0] "
                f"{tuple(attentions[0].shape)}, got {tuple(attention.shape)}"
            )
    check_same_device(**{f"attentions[{r}]": a for r, a in enumerate(attentions)})
    effective = None
    for attention in attentions:
        dense = criss_cross_attention_to_dense(attention)  # (B, N, N)
        effective = dense if effective is None else dense @ effective
    return effective


def _check_dense(dense: object, height: int, width: int) -> torch.Tensor:
    check_int("height", height, minimum=1)
    check_int("width", width, minimum=1)
    check_tensor("dense attention", dense, kind="float")
    assert isinstance(dense, torch.Tensor)
    n = height * width
    if dense.dim() != 3 or dense.shape[1:] != (n, n):
        raise ValueError(
            f"dense attention must have shape (B, N, N) with N = H*W = {n}, "
            f"got {tuple(dense.shape)}"
        )
    return dense


def issa_attention_to_dense(
    attention: Sequence[torch.Tensor],
    height: int,
    width: int,
    block_size: int | tuple[int, int],
    step: Literal["long", "short", "combined"] = "combined",
) -> torch.Tensor:
    """Dense (B, N', N') matrix of interlaced sparse attention, on the padded grid.

    ``attention`` is the ``(long_attention, short_attention)`` pair returned by
    :class:`~ccnet_edu.InterlacedSparseSelfAttention` or
    :func:`ccnet_edu.issa.interlaced_sparse_attention`; ``height, width`` the
    input size.  ``step`` picks ``A_L``, ``A_S`` or the effective
    ``A_S @ A_L`` (long step first: ISSA, Huang et al., arXiv 1907.12273, Sec. 3).
    """
    if not isinstance(attention, (list, tuple)) or len(attention) != 2:
        raise TypeError("attention must be the pair (long_attention, short_attention)")
    check_tensor("attention[0] (long_attention)", attention[0], dim=4, kind="float")
    check_tensor("attention[1] (short_attention)", attention[1], dim=4, kind="float")
    check_choice("step", step, _STEPS)
    check_int("height", height, minimum=1)
    check_int("width", width, minimum=1)
    long_dense, short_dense = interlaced_attention_to_dense(
        attention[0], attention[1], height, width, block_size
    )
    if step == "long":
        return long_dense
    if step == "short":
        return short_dense
    if step == "combined":
        return short_dense @ long_dense
    raise ValueError(f"step must be 'long', 'short' or 'combined', got {step!r}")


def attention_to_dense(
    attention: torch.Tensor | Sequence[torch.Tensor],
    kind: Kind = "criss_cross",
    *,
    height: int | None = None,
    width: int | None = None,
    block_size: int | tuple[int, int] | None = None,
    step: Literal["long", "short", "combined"] = "combined",
) -> torch.Tensor:
    """Turn what a module returned with ``return_attention=True`` into a dense (B, N, N).

    ``kind``:

    * ``"criss_cross"``: a (B, H, W, H+W-1) tensor from :class:`~ccnet_edu.CrissCrossAttention`
      (or one loop of RCCA);
    * ``"recurrent"``: the list from :class:`~ccnet_edu.RecurrentCrissCrossAttention`,
      combined as ``A_R ... A_1`` (:func:`recurrent_attention_to_dense`);
    * ``"dense"``: already (B, N, N), e.g. from :class:`~ccnet_edu.NonLocal2d`;
      returned as is (checked against ``height, width`` if given);
    * ``"issa"``: the ``(long, short)`` pair from
      :class:`~ccnet_edu.InterlacedSparseSelfAttention`; needs ``height``,
      ``width``, ``block_size``; ``step`` picks long, short or combined
      (:func:`issa_attention_to_dense`).  The result lives on the *padded*
      grid of ``N' = H' W'`` positions.
    """
    check_choice("kind", kind, _KINDS)
    check_choice("step", step, _STEPS)
    if kind == "criss_cross":
        return criss_cross_attention_to_dense(attention)  # type: ignore[arg-type]
    if kind == "recurrent":
        return recurrent_attention_to_dense(attention)  # type: ignore[arg-type]
    if kind == "dense":
        if height is not None and width is not None:
            return _check_dense(attention, height, width)
        check_tensor("attention", attention, dim=3, kind="float", layout="(B, N, N)")
        if attention.shape[1] != attention.shape[2]:  # type: ignore[union-attr]
            raise ValueError(
                f"attention must be a dense (B, N, N) tensor for kind='dense', got shape "
                f"{tuple(attention.shape)}"  # type: ignore[union-attr]
            )
        return attention
    if kind == "issa":
        if height is None or width is None or block_size is None:
            raise ValueError("height, width and block_size are required for kind='issa'")
        return issa_attention_to_dense(attention, height, width, block_size, step)  # type: ignore[arg-type]
    raise ValueError(f"kind must be 'criss_cross', 'recurrent', 'dense' or 'issa', got {kind!r}")


def query_map(dense: torch.Tensor, i: int, j: int, height: int, width: int) -> torch.Tensor:
    """Row ``i * W + j`` of a dense (B, N, N) attention, as a (B, H, W) map.

    ``query_map(A, i, j, H, W)[b, i', j']`` is how much query pixel ``(i, j)``
    takes from pixel ``(i', j')``.
    """
    _check_dense(dense, height, width)
    i = check_int("i", i)
    j = check_int("j", j)
    if not (0 <= i < height):
        raise ValueError(f"i must be in [0, height={height}), got {i}")
    if not (0 <= j < width):
        raise ValueError(f"j must be in [0, width={width}), got {j}")
    return dense[:, i * width + j, :].reshape(dense.shape[0], height, width)


def attention_query_map(
    attention: torch.Tensor | Sequence[torch.Tensor],
    i: int,
    j: int,
    kind: Kind = "criss_cross",
    *,
    height: int | None = None,
    width: int | None = None,
    block_size: int | tuple[int, int] | None = None,
    step: Literal["long", "short", "combined"] = "combined",
) -> torch.Tensor:
    """Where query pixel ``(i, j)`` looks: a (B, H, W) map from any module's attention.

    ``attention``, ``kind``, ``block_size`` and ``step`` as in
    :func:`attention_to_dense`.  For ``"criss_cross"`` and ``"recurrent"`` the
    size is read from the tensors; for ``"dense"`` and ``"issa"`` pass
    ``height`` and ``width`` (the input size).  For ``"issa"`` the map is
    computed on the padded grid and cropped back to (H, W): weight given to
    the zero padding is dropped, so the map may sum to less than one.
    """
    check_choice("kind", kind, _KINDS)
    i = check_int("i", i)
    j = check_int("j", j)
    if kind == "recurrent" and (not isinstance(attention, (list, tuple)) or not attention):
        raise TypeError("attention must be a non-empty list of loops for kind='recurrent'")
    if kind in ("criss_cross", "recurrent"):
        first = attention if kind == "criss_cross" else attention[0]  # type: ignore[index]
        _check_criss_cross(first)
        height, width = first.shape[1], first.shape[2]  # type: ignore[union-attr]
    elif height is None or width is None:
        raise ValueError(f"height and width are required for kind={kind!r}")
    dense = attention_to_dense(
        attention, kind, height=height, width=width, block_size=block_size, step=step
    )
    if kind != "issa":
        return query_map(dense, i, j, height, width)

    for name, value, size in (("i", i, height), ("j", j, width)):
        if not (0 <= value < size):
            raise ValueError(f"{name} must be in [0, {size}), got {value}")
    top, bottom, left, right = blocks_padding(height, width, block_size)  # type: ignore[arg-type]
    h_pad, w_pad = height + top + bottom, width + left + right
    padded = query_map(dense, i + top, j + left, h_pad, w_pad)  # (B, H', W')
    return padded[:, top : top + height, left : left + width]


def same_values(a: torch.Tensor, b: torch.Tensor, atol: float = 1e-12) -> bool:
    """Whether ``a`` and ``b`` have one shape and agree to within ``atol`` everywhere (no rtol).

    The book's check that two float64 computations of the same quantity (a
    hand loop, a masked dense reference, the library) are equal up to
    round-off: ``1e-12`` is far above float64's rounding errors on the small
    maps it compares and far below any real difference.
    """
    check_tensor("a", a, kind="float")
    check_tensor("b", b, kind="float")
    check_float("atol", atol, minimum=0.0)
    if a.shape != b.shape:
        return False
    return torch.allclose(a, b, rtol=0.0, atol=atol)
