"""Two published pure-PyTorch formulations of criss-cross attention, for comparison.

Both are transcribed as functions of ``(query, key, value)`` (the 1x1
convolutions, ``gamma`` and the residual stay outside, as in
:func:`ccnet_edu.functional.criss_cross_attention`) and return
``(out, attention)`` with the attention in *their* layout, (B, H, W, H+W)
``[column (H entries, centre masked with -inf) | row (W entries)]``;
:func:`ccnet_edu.functional.attention_from_padded` converts it.

* :func:`einsum_criss_cross` -- mmcv's ``CrissCrossAttention`` (``mmcv/ops/cc_attention.py``)
  after mmcv deleted its CUDA kernels because this ``einsum`` form was faster.
* :func:`bmm_criss_cross` -- the pure-PyTorch version of the original CCNet code
  (``cc_attention/functions.py`` on its ``master`` branch since its PR #99, read at
  commit 1fae6c6; the CUDA kernels are on its ``pytorch-1.1`` and ``pytorch-1.5`` branches),
  batched matrix products over reshaped rows and columns.

Both originals build their ``-inf`` diagonal with ``.cuda()`` (CCNet) or on
``query.device`` (mmcv); here it is created with ``device=query.device,
dtype=query.dtype`` so the functions run on any device, and that is the only change.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["einsum_criss_cross", "bmm_criss_cross"]


def _neg_inf_diagonal(n: int, like: torch.Tensor) -> torch.Tensor:
    # (n, n) with -inf on the diagonal: the centre is already in the row part, so
    # the column part must not count it again. (CCNet: ``torch.tensor(inf).cuda()``.)
    return torch.diag(torch.full((n,), float("-inf"), device=like.device, dtype=like.dtype))


def einsum_criss_cross(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """mmcv's einsum formulation: ``(out, attention)``, attention (B, H, W, H+W) ``[col | row]``."""
    height = query.shape[2]
    # energy_H[b, h, w, i] = q(h, w) . k(i, w): the column, centre masked
    energy_h = torch.einsum("bchw,bciw->bwhi", query, key) + _neg_inf_diagonal(height, query)
    energy_h = energy_h.transpose(1, 2)  # (B, H, W, H)
    # energy_W[b, h, w, j] = q(h, w) . k(h, j): the row
    energy_w = torch.einsum("bchw,bchj->bhwj", query, key)  # (B, H, W, W)
    attention = F.softmax(torch.cat([energy_h, energy_w], dim=-1), dim=-1)  # (B, H, W, H+W)
    out = torch.einsum("bciw,bhwi->bchw", value, attention[..., :height])
    out += torch.einsum("bchj,bhwj->bchw", value, attention[..., height:])  # in place, as mmcv
    return out, attention


def bmm_criss_cross(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The original CCNet pure-PyTorch formulation with ``bmm``: ``(out, attention)``."""
    batch, _, height, width = query.shape
    # Columns as a batch of B*W sequences of length H, rows as B*H sequences of length W.
    query_h = (
        query.permute(0, 3, 1, 2).contiguous().view(batch * width, -1, height).permute(0, 2, 1)
    )
    query_w = (
        query.permute(0, 2, 1, 3).contiguous().view(batch * height, -1, width).permute(0, 2, 1)
    )
    key_h = key.permute(0, 3, 1, 2).contiguous().view(batch * width, -1, height)
    key_w = key.permute(0, 2, 1, 3).contiguous().view(batch * height, -1, width)
    value_h = value.permute(0, 3, 1, 2).contiguous().view(batch * width, -1, height)
    value_w = value.permute(0, 2, 1, 3).contiguous().view(batch * height, -1, width)
    inf = _neg_inf_diagonal(height, query).unsqueeze(0).repeat(batch * width, 1, 1)
    energy_h = (
        (torch.bmm(query_h, key_h) + inf).view(batch, width, height, height).permute(0, 2, 1, 3)
    )  # (B, H, W, H)
    energy_w = torch.bmm(query_w, key_w).view(batch, height, width, width)  # (B, H, W, W)
    attention = F.softmax(torch.cat([energy_h, energy_w], 3), dim=3)  # (B, H, W, H+W)
    att_h = (
        attention[:, :, :, 0:height]
        .permute(0, 2, 1, 3)
        .contiguous()
        .view(batch * width, height, height)
    )
    att_w = (
        attention[:, :, :, height : height + width].contiguous().view(batch * height, width, width)
    )
    out_h = (
        torch.bmm(value_h, att_h.permute(0, 2, 1))
        .view(batch, width, -1, height)
        .permute(0, 2, 3, 1)
    )
    out_w = (
        torch.bmm(value_w, att_w.permute(0, 2, 1))
        .view(batch, height, -1, width)
        .permute(0, 2, 1, 3)
    )
    return out_h + out_w, attention
