"""The non-local block (Wang et al., CVPR 2018, Sec. 3): dense baseline of criss-cross attention.

[Non-local neural networks](https://arxiv.org/abs/1711.07971) (Wang et al.,
CVPR 2018) let every position attend to every other position: an ``N x N``
attention over the ``N = H * W`` pixels.  Two forms are offered:

* ``mode="ccnet"`` (default): the book's comparison block, built exactly like
  :class:`~ccnet_edu.CrissCrossAttention` -- the same ``query``/``key``
  (C' = C/8) and ``value`` (C) 1x1 convolutions, the same ``gamma``-scaled
  residual, no output projection -- so that "dense vs criss-cross" differs in
  the attention pattern alone (the CCNet paper compares with a non-local block
  but does not describe that block's projections);
* ``mode="original"``: Wang et al.'s embedded-Gaussian block: ``theta``,
  ``phi``, ``g`` 1x1 convolutions to ``C/2`` channels, softmax of
  ``theta^T phi``, and an output projection ``W_z`` (1x1 conv + BatchNorm
  whose scale starts at 0, so the block starts as the identity):
  ``z = W_z(A g(x)) + x``.  The optional max-pool subsampling of ``phi`` and
  ``g`` from that paper is left out.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from ._checks import (
    check_bool,
    check_channels,
    check_choice,
    check_feature_map,
    check_same_device,
)
from .dense import dense_attention

__all__ = ["NonLocal2d"]

Mode = Literal["ccnet", "original"]


class NonLocal2d(nn.Module):
    """Dense self-attention over all pixels with a residual connection.

    Args:
        in_channels: C, channels of the input and output.
        qk_channels: channels of the attention embeddings: C' of
            ``query``/``key`` in ``"ccnet"`` mode (default ``C // 8``), the
            inter channels of ``theta``/``phi``/``g`` in ``"original"`` mode
            (default ``C // 2``); at least 1.
        mode: ``"ccnet"`` or ``"original"`` (see the module docstring).
    """

    def __init__(self, in_channels: int, qk_channels: int | None = None, mode: Mode = "ccnet"):
        super().__init__()
        self.in_channels = check_channels("in_channels", in_channels, minimum=1)
        self.mode = check_choice("mode", mode, ("ccnet", "original"))
        if qk_channels is None:
            qk_channels = max(in_channels // (8 if mode == "ccnet" else 2), 1)
        self.qk_channels = check_channels("qk_channels", qk_channels, minimum=1)

        if mode == "ccnet":
            self.query = nn.Conv2d(in_channels, qk_channels, kernel_size=1)
            self.key = nn.Conv2d(in_channels, qk_channels, kernel_size=1)
            self.value = nn.Conv2d(in_channels, in_channels, kernel_size=1)
            self.gamma = nn.Parameter(torch.zeros(()))  # identity at initialisation
        else:
            self.theta = nn.Conv2d(in_channels, qk_channels, kernel_size=1)
            self.phi = nn.Conv2d(in_channels, qk_channels, kernel_size=1)
            self.g = nn.Conv2d(in_channels, qk_channels, kernel_size=1)
            self.w_z = nn.Sequential(
                nn.Conv2d(qk_channels, in_channels, kernel_size=1),
                nn.BatchNorm2d(in_channels),
            )
            # Wang et al. zero the BN scale so the block starts as the identity.
            nn.init.zeros_(self.w_z[1].weight)

    def forward(
        self, x: torch.Tensor, return_attention: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """``x`` (B, C, H, W) -> ``y`` (B, C, H, W) [, attention (B, N, N), N = H*W]."""
        check_feature_map("x", x, channels=self.in_channels, channels_from="in_channels")
        check_same_device(x=x, weights=next(self.parameters()))
        check_bool("return_attention", return_attention)
        if self.mode == "ccnet":
            # Same projections as criss-cross attention, every position allowed.
            out, attention = dense_attention(
                self.query(x), self.key(x), self.value(x), return_attention=True
            )  # (B, C, H, W), (B, N, N)
            y = self.gamma * out + x
        else:
            # Embedded Gaussian: softmax(theta^T phi) is the N x N attention.
            out, attention = dense_attention(
                self.theta(x), self.phi(x), self.g(x), return_attention=True
            )  # (B, C/2, H, W), (B, N, N)
            y = self.w_z(out) + x
        return (y, attention) if return_attention else y

    def extra_repr(self) -> str:
        return f"in_channels={self.in_channels}, qk_channels={self.qk_channels}, mode={self.mode!r}"
