"""Criss-cross attention from torch's own attention kernels: the line formulation.

A pixel ``u = (i, j)`` attends over its row ``i`` and its column ``j`` (CCNet,
Huang et al., ICCV 2019, Sec. 3.2).  Every row is an ordinary attention over its
``W`` pixels, every column one over its ``H`` pixels with the centre masked (the
row already holds ``u``), and the softmax of Eq. (1) spans both halves.  Each half
``h`` gives its normalised output and its log-sum-exp,

    out_h(u) = sum_{l in h} exp(e_l - lse_h) v_l,    lse_h(u) = log sum_{l in h} exp(e_l),

and the two join exactly, as FlashAttention joins the splits of a split-KV pass:

    lse = log(exp(lse_row) + exp(lse_col)),
    out = exp(lse_row - lse) out_row + exp(lse_col - lse) out_col.

:func:`merge_halves` is that join; :func:`criss_cross_attention_flex` runs the two
halves on :func:`torch.nn.attention.flex_attention` (scale 1, the column's centre
masked by a ``score_mod``, ``lse`` returned): compiled on a GPU, where it is
torch's Triton kernels, forward and backward; eager elsewhere.

Torch's eager FlexAttention has no backward on the CPU (it refuses inputs that
require grad there), so on the CPU, when a gradient is needed, the same two line
attentions run as dense PyTorch products instead (:func:`dense_line_attention`):
the same formulation and merge, differentiable on every device.  Under
``torch.no_grad()`` or ``torch.inference_mode()`` no gradient is recorded, so inputs
that require grad go to FlexAttention detached; on the ``meta`` device (shapes only,
which FlexAttention refuses) the dense products run too.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable

import torch
from torch import Tensor

from ._checks import check_bool, check_int

__all__ = [
    "criss_cross_attention_flex",
    "dense_line_attention",
    "flex_line_attention",
    "merge_halves",
]

# Device types on which torch's FlexAttention has no backward (it raises).
_NO_FLEX_BACKWARD = ("cpu", "mps")
# Device types FlexAttention runs on (its device check, not its error message, which
# leaves out XPU); it refuses the others (the meta device, for one), and the dense line
# attentions serve them.
_FLEX_DEVICES = ("cuda", "cpu", "xpu", "hpu", "mps")
# Value channels per FlexAttention call on a GPU: its kernels keep a block of queries'
# output (BLOCK_M x value channels) in registers and are tuned for head sizes up to 128.
GPU_VALUE_CHUNK = 128


def merge_halves(
    out_row: Tensor, lse_row: Tensor, out_col: Tensor, lse_col: Tensor
) -> tuple[Tensor, Tensor]:
    """Join two attentions over disjoint key sets through their log-sum-exps.

    Args:
        out_row, out_col: (..., C) normalised outputs of each half.
        lse_row, lse_col: (...) their log-sum-exps of the energies; ``-inf`` (with an
            output of 0) for an empty half.

    Returns:
        ``(out, lse)`` of one softmax over both halves: (..., C) and (...).
    """
    lse = torch.logaddexp(lse_row, lse_col)  # (...)
    weight_row = torch.exp(lse_row - lse).unsqueeze(-1)  # (..., 1): the row's share
    weight_col = torch.exp(lse_col - lse).unsqueeze(-1)
    return weight_row * out_row + weight_col * out_col, lse


def dense_line_attention(
    query: Tensor, key: Tensor, value: Tensor, *, mask_centre: bool
) -> tuple[Tensor, Tensor]:
    """Attention along each line as dense PyTorch products: ``(out, lse)``.

    query, key: (B, n, P, C') -- ``n`` lines of ``P`` positions; value: (B, n, P, C).
    ``mask_centre`` leaves out key ``p`` for query ``p`` (the column half).
    Returns out (B, n, P, C) in the inputs' dtype and lse (B, n, P) (float32 for 16-bit
    inputs, whose scores are computed in float32).  The scale is 1, as in CCNet.
    """
    dtype = query.dtype
    if dtype in (torch.float16, torch.bfloat16):  # scores and weights in float32, as FlexAttention
        query, key, value = query.float(), key.float(), value.float()
    energy = query @ key.transpose(-1, -2)  # (B, n, P, P)
    if mask_centre:
        eye = torch.eye(energy.shape[-1], dtype=torch.bool, device=energy.device)
        energy = energy.masked_fill(eye, float("-inf"))
    lse = torch.logsumexp(energy, dim=-1)  # (B, n, P)
    return (torch.softmax(energy, dim=-1) @ value).to(dtype), lse


def _centre_masked(score: Tensor, batch: Tensor, head: Tensor, q_idx: Tensor, kv_idx: Tensor):
    # FlexAttention's score_mod: -inf on the diagonal of each line's energies.
    return torch.where(q_idx == kv_idx, float("-inf"), score)


@functools.cache
def _flex() -> Callable:
    from torch.nn.attention.flex_attention import flex_attention

    return flex_attention


@functools.cache
def _compiled_flex() -> Callable:
    # torch.compile's default: static shapes first, a dynamic kernel once a second shape comes.
    return torch.compile(_flex())


def _flex_with_lse(fn: Callable, query: Tensor, key: Tensor, value: Tensor, score_mod):
    """``fn(...)`` asked for its log-sum-exp: the AuxRequest API, or return_lse before it."""
    try:
        from torch.nn.attention.flex_attention import AuxRequest
    except ImportError:  # torch < 2.9
        return fn(query, key, value, score_mod=score_mod, scale=1.0, return_lse=True)
    out, aux = fn(
        query, key, value, score_mod=score_mod, scale=1.0, return_aux=AuxRequest(lse=True)
    )
    return out, aux.lse


def flex_line_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    *,
    mask_centre: bool,
    compiled: bool = False,
    value_chunk: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Attention along each line on FlexAttention: ``(out, lse)``, as :func:`dense_line_attention`.

    ``value_chunk`` value channels go to each call (all of them when ``None``); every
    call scores the same queries and keys, so the log-sum-exp of the first serves all.
    ``compiled`` runs ``torch.compile(flex_attention)`` (Triton kernels on a GPU).
    """
    channels = value.shape[-1]
    chunk = channels if value_chunk is None else min(value_chunk, channels)
    fn = _compiled_flex() if compiled else _flex()
    score_mod = _centre_masked if mask_centre else None
    outs, lse = [], None
    with warnings.catch_warnings():
        # Eager FlexAttention says it is not the fused kernel: here that is the choice.
        warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
        for start in range(0, channels, chunk):
            part = value[..., start : start + chunk]
            out, part_lse = _flex_with_lse(fn, query, key, part, score_mod)
            outs.append(out)
            lse = part_lse if lse is None else lse
    return (outs[0] if len(outs) == 1 else torch.cat(outs, dim=-1)), lse


def _needs_dense(*tensors: Tensor) -> bool:
    device = tensors[0].device.type
    return device not in _FLEX_DEVICES or (
        device in _NO_FLEX_BACKWARD
        and torch.is_grad_enabled()
        and any(t.requires_grad for t in tensors)
    )


def criss_cross_attention_flex(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    *,
    return_attention: bool = False,
    compiled: bool | None = None,
    value_chunk: int | None = None,
) -> tuple[Tensor, Tensor | None]:
    """Criss-cross attention as a row attention and a column attention: ``(out, attention)``.

    Args:
        query, key: (B, C', H, W); value: (B, C, H, W); one floating dtype and device.
        return_attention: also compute the attention (B, H, W, H+W-1) in the layout
            of :mod:`ccnet_edu.functional`, the softmax of the materialised energies
            over the criss-cross set; else ``None``.
        compiled: ``torch.compile`` FlexAttention; default: on CUDA only.
        value_chunk: value channels per FlexAttention call; default: 128 on CUDA, all
            elsewhere.

    Returns:
        ``out`` (B, C, H, W) with channels-last strides, and the attention or ``None``.
    """
    from .functional import check_qkv, column_index

    check_qkv(query, key, value)
    check_bool("return_attention", return_attention)
    on_gpu = query.device.type == "cuda"
    compiled = on_gpu if compiled is None else check_bool("compiled", compiled)
    if value_chunk is None:
        value_chunk = GPU_VALUE_CHUNK if on_gpu else None
    else:
        value_chunk = check_int("value_chunk", value_chunk, minimum=1)
    batch, _, height, width = query.shape

    def attend(q: Tensor, k: Tensor, v: Tensor, mask_centre: bool) -> tuple[Tensor, Tensor]:
        if _needs_dense(q, k, v):
            return dense_line_attention(q, k, v, mask_centre=mask_centre)
        if q.device.type in _NO_FLEX_BACKWARD and not torch.is_grad_enabled():
            # no_grad / inference_mode records no graph: FlexAttention's CPU refusal of
            # inputs that require grad does not apply, the detached inputs are the same.
            q, k, v = q.detach(), k.detach(), v.detach()
        if compiled:  # the Triton kernels read the channels of a position contiguously
            q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        return flex_line_attention(
            q, k, v, mask_centre=mask_centre, compiled=compiled, value_chunk=value_chunk
        )

    # Rows: B maps of H lines ("heads") of W positions.
    rows = [t.permute(0, 2, 3, 1) for t in (query, key, value)]  # (B, H, W, C)
    out, lse = attend(*rows, mask_centre=False)  # (B, H, W, C), (B, H, W)
    if height > 1:  # a one-pixel column holds only its (masked) centre: no column half
        # Columns: B maps of W lines of H positions, the centre left out.
        cols = [t.permute(0, 3, 2, 1) for t in (query, key, value)]  # (B, W, H, C)
        out_col, lse_col = attend(*cols, mask_centre=True)  # (B, W, H, C), (B, W, H)
        out, lse = merge_halves(out, lse, out_col.transpose(1, 2), lse_col.transpose(1, 2))
    out = out.permute(0, 3, 1, 2).to(query.dtype)  # (B, C, H, W), channels-last strides
    if not return_attention:
        return out, None
    # The attention itself: the softmax over the criss-cross set, in its layout.  Not
    # exp(energy - lse) with FlexAttention's lse: that lse is rounded from energies computed
    # by another kernel, and at |energy| ~ 1e4 one float32 ulp of difference (~1e-3) is
    # already a 1e-3 error in every weight, so rows would not sum to 1.
    others = column_index(height, query.device)  # (H, H-1)
    index = others[None, :, None, :].expand(batch, height, width, height - 1)
    energy_row = torch.einsum("bcij,bcik->bijk", query, key)  # (B, H, W, W)
    energy_col = torch.einsum("bcij,bckj->bijk", query, key).gather(-1, index)  # (B, H, W, H-1)
    energy = torch.cat([energy_row, energy_col], dim=-1)  # (B, H, W, H+W-1)
    return out, torch.softmax(energy, dim=-1)
