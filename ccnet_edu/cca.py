"""Criss-cross attention modules and the CCNet segmentation head (CCNet, Sec. 3.1-3.3).

[CCNet](https://arxiv.org/abs/1811.11721) (Huang et al., ICCV 2019 / TPAMI 2020)
gives every pixel a view of its whole row and column.  Applied twice with the
same weights (*recurrent* criss-cross attention, RCCA) every pixel sees the
whole image, at a cost of ``N (H + W - 1)`` attention weights per loop instead
of the ``N^2`` of a non-local block.

* :class:`CrissCrossAttention` -- one CCA block: ``y = gamma * out + x``.
* :class:`RecurrentCrissCrossAttention` -- one shared CCA block applied ``R`` times.
* :class:`RCCAHead` -- the CCNet segmentation head built around RCCA.
* :class:`FCNHead` -- the plain auxiliary head (loss weight 0.4 in CCNet).

The attention itself lives in :func:`ccnet_edu.functional.criss_cross_attention`;
these modules add the learned 1x1 projections and the residual.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ._checks import (
    check_bool,
    check_channels,
    check_choice,
    check_feature_map,
    check_int,
    check_probability,
    check_same_device,
)
from .functional import IMPLS, Impl, criss_cross_attention

__all__ = [
    "CrissCrossAttention",
    "RecurrentCrissCrossAttention",
    "RCCAHead",
    "FCNHead",
]

# A normalisation layer is either a name or a factory ``channels -> nn.Module``.
Norm = str | Callable[[int], nn.Module] | None


def _check_impl(impl: object) -> str:
    return check_choice("impl", impl, IMPLS)


class CrissCrossAttention(nn.Module):
    """One criss-cross attention block (CCNet, Huang et al., ICCV 2019, Sec. 3.2, Eqs. (1)-(2)).

    For each pixel ``u`` the ``query`` of ``u`` is compared (dot product, the
    *energy*) with the ``key`` of the ``H + W - 1`` pixels of its row and
    column; a softmax over those energies gives the *affinity*; the output is
    the affinity-weighted sum of their ``value``\\ s, added to the input with
    a learned scale::

        y = gamma * out + x          gamma initialised to 0 -> identity at start

    Args:
        in_channels: C, channels of the input (and of the output).
        qk_channels: C', channels of query and key; default ``C // 8`` (at least 1), the
            reduction of the authors' official code (the paper only asks for ``C' < C``).
        impl: which criss-cross attention to run: ``"reference"`` (readable
            PyTorch), ``"fused"`` (C++/CUDA operator) or ``"auto"``.
    """

    def __init__(self, in_channels: int, qk_channels: int | None = None, impl: Impl = "reference"):
        super().__init__()
        self.in_channels = check_channels("in_channels", in_channels, minimum=1)
        if qk_channels is None:
            qk_channels = max(self.in_channels // 8, 1)
        self.qk_channels = check_channels("qk_channels", qk_channels, minimum=1)
        self.impl = _check_impl(impl)

        # 1x1 convolutions: a per-pixel linear map, i.e. a learned projection.
        self.query = nn.Conv2d(in_channels, qk_channels, kernel_size=1)
        self.key = nn.Conv2d(in_channels, qk_channels, kernel_size=1)
        self.value = nn.Conv2d(in_channels, in_channels, kernel_size=1)
        # Zero so that a freshly inserted block does not disturb a pretrained backbone.
        self.gamma = nn.Parameter(torch.zeros(()))

    def forward(
        self, x: torch.Tensor, return_attention: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """``x`` (B, C, H, W) -> ``y`` (B, C, H, W) [, attention (B, H, W, H+W-1)]."""
        check_feature_map("x", x, channels=self.in_channels, channels_from="in_channels")
        check_same_device(x=x, gamma=self.gamma)
        check_bool("return_attention", return_attention)
        query = self.query(x)  # (B, C', H, W)
        key = self.key(x)  # (B, C', H, W)
        value = self.value(x)  # (B, C, H, W)
        out, attention = criss_cross_attention(
            query, key, value, return_attention=True, impl=self.impl
        )  # (B, C, H, W), (B, H, W, H+W-1)
        y = self.gamma * out + x
        return (y, attention) if return_attention else y

    def extra_repr(self) -> str:
        return f"in_channels={self.in_channels}, qk_channels={self.qk_channels}, impl={self.impl!r}"


class RecurrentCrissCrossAttention(nn.Module):
    """Recurrent criss-cross attention: ONE :class:`CrissCrossAttention` applied ``R`` times.

    After one loop pixel ``u`` has seen its row and column; after two loops it
    has seen every pixel ``p``, through the pixels ``(row(u), col(p))`` and
    ``(row(p), col(u))`` (CCNet, Sec. 3.3).  The weights are shared, so ``R`` adds
    compute but no parameters.

    Args:
        in_channels: C.
        recurrence: R >= 1, the number of loops (CCNet uses 2).
        qk_channels: C' of the shared block (default ``C // 8``, at least 1, as in the
            official code).
        impl: passed to :class:`CrissCrossAttention`.
    """

    def __init__(
        self,
        in_channels: int,
        recurrence: int = 2,
        qk_channels: int | None = None,
        impl: Impl = "reference",
    ):
        super().__init__()
        self.recurrence = check_int("recurrence", recurrence, minimum=1)
        self.cca = CrissCrossAttention(in_channels, qk_channels=qk_channels, impl=impl)

    def forward(
        self, x: torch.Tensor, return_attention: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """``x`` (B, C, H, W) -> ``y`` [, list of ``R`` attentions (B, H, W, H+W-1)]."""
        check_feature_map("x", x, channels=self.cca.in_channels, channels_from="in_channels")
        check_bool("return_attention", return_attention)
        attentions = []
        for _ in range(self.recurrence):
            x, attention = self.cca(x, return_attention=True)  # same weights every loop
            attentions.append(attention)
        return (x, attentions) if return_attention else x

    def extra_repr(self) -> str:
        return f"recurrence={self.recurrence}"


def _mid_channels(in_channels: int, mid_channels: int | None) -> int:
    """The heads' reduced width: ``mid_channels``, or ``in_channels // 4`` (at least 1)."""
    if mid_channels is None:
        mid_channels = max(in_channels // 4, 1)
    return check_channels("mid_channels", mid_channels, minimum=1)


def _check_norm_activation(norm: object, activation: object) -> None:
    """Check the norm and activation choices before any layer is built."""
    if not callable(norm) and not (norm is None or norm in ("bn", "none")):
        raise ValueError(
            f"norm must be 'bn', 'none' or a callable channels -> module, got {norm!r}"
        )
    check_choice("activation", activation, ("relu", "leaky_relu", "none"))


def _norm(norm: Norm, channels: int) -> nn.Module:
    """``"bn"`` -> BatchNorm2d, ``"none"``/``None`` -> Identity, or call a factory."""
    if callable(norm):
        return norm(channels)
    if norm == "bn":
        return nn.BatchNorm2d(channels)
    if norm is None or norm == "none":
        return nn.Identity()
    raise ValueError(f"norm must be 'bn', 'none' or a callable channels -> module, got {norm!r}")


def _activation(activation: str) -> nn.Module:
    """``"relu"``, or ``"leaky_relu"`` with slope 0.01 as in InPlace-ABN (CCNet's norm layer)."""
    if activation == "relu":
        return nn.ReLU()
    if activation == "leaky_relu":
        return nn.LeakyReLU(0.01)
    if activation == "none":
        return nn.Identity()
    raise ValueError(f"activation must be 'relu', 'leaky_relu' or 'none', got {activation!r}")


def _conv_norm_act(
    in_channels: int, out_channels: int, norm: Norm, activation: str, kernel_size: int = 3
) -> nn.Sequential:
    # No conv bias: the normalisation that follows would cancel it.
    bias = norm is None or norm == "none"
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=bias),
        _norm(norm, out_channels),
        _activation(activation),
    )


class RCCAHead(nn.Module):
    """The CCNet segmentation head (CCNet, Huang et al., ICCV 2019, Sec. 3.1).

    ::

        x (C_in) -> conva: 3x3 conv -> mid + norm + act
                 -> rcca:  R x criss-cross attention (shared weights)
                 -> convb: 3x3 conv mid -> mid + norm + act
                 -> concat [x, .]  (C_in + mid)
                 -> bottleneck: 3x3 conv -> out_channels + norm + act + Dropout2d
                 -> classifier: 1x1 conv -> num_classes

    The original uses synchronized InPlace-ABN with leaky ReLU (slope 0.01);
    here the norm and activation are configurable (``norm="bn"``,
    ``activation="relu"`` by default; ``activation="leaky_relu"`` matches the
    original's slope).

    Args:
        in_channels: C_in, backbone feature channels (2048 for ResNet-101).
        num_classes: number of output classes.
        recurrence: R, loops of the shared criss-cross attention.
        mid_channels: channels around the attention; default ``C_in // 4`` (at least 1).
        out_channels: channels of the bottleneck before the classifier (512 in CCNet).
        dropout: Dropout2d probability before the classifier.
        norm: ``"bn"``, ``"none"`` or a factory ``channels -> nn.Module``.
        activation: ``"relu"``, ``"leaky_relu"`` or ``"none"``.
        qk_channels: C' of the attention (default ``mid // 8``, at least 1, as in the
            official code).
        impl: criss-cross implementation, see :class:`CrissCrossAttention`.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        recurrence: int = 2,
        mid_channels: int | None = None,
        out_channels: int = 512,
        dropout: float = 0.1,
        norm: Norm = "bn",
        activation: str = "relu",
        qk_channels: int | None = None,
        impl: Impl = "reference",
    ):
        super().__init__()
        self.in_channels = check_channels("in_channels", in_channels, minimum=1)
        check_channels("num_classes", num_classes, minimum=1)
        mid_channels = _mid_channels(in_channels, mid_channels)
        check_channels("out_channels", out_channels, minimum=1)
        check_int("recurrence", recurrence, minimum=1)
        if qk_channels is not None:
            check_channels("qk_channels", qk_channels, minimum=1)
        _check_impl(impl)
        check_probability("dropout", dropout)
        _check_norm_activation(norm, activation)

        self.conva = _conv_norm_act(in_channels, mid_channels, norm, activation)
        self.rcca = RecurrentCrissCrossAttention(
            mid_channels, recurrence=recurrence, qk_channels=qk_channels, impl=impl
        )
        self.convb = _conv_norm_act(mid_channels, mid_channels, norm, activation)
        self.bottleneck = nn.Sequential(
            _conv_norm_act(in_channels + mid_channels, out_channels, norm, activation),
            nn.Dropout2d(dropout),
        )
        self.classifier = nn.Conv2d(out_channels, num_classes, kernel_size=1)

    def context(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The RCCA features after ``convb``, (B, mid, H, W), and the per-loop attentions.

        Exposed separately because the category consistent loss (CCNet, TPAMI
        version, Sec. 3.4) works on these features.
        """
        check_feature_map("x", x, channels=self.in_channels, channels_from="in_channels")
        features = self.conva(x)  # (B, mid, H, W)
        features, attentions = self.rcca(features, return_attention=True)
        return self.convb(features), attentions

    def forward(
        self, x: torch.Tensor, return_attention: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """``x`` (B, C_in, H, W) -> logits (B, num_classes, H, W) [, per-loop attentions]."""
        check_bool("return_attention", return_attention)
        context, attentions = self.context(x)
        # The head sees both the local backbone features and the long-range context.
        fused = self.bottleneck(torch.cat([x, context], dim=1))  # (B, out_channels, H, W)
        logits = self.classifier(fused)
        return (logits, attentions) if return_attention else logits


class FCNHead(nn.Module):
    """A plain FCN head: 3x3 conv + norm + act + Dropout2d + 1x1 conv.

    CCNet attaches one to the third backbone stage as an auxiliary
    classifier, weighted 0.4 in the loss (CCNet's official code, as in PSPNet).

    Args:
        in_channels: input channels.
        num_classes: number of output classes.
        mid_channels: hidden channels; default ``in_channels // 4`` (at least 1).
        dropout: Dropout2d probability before the classifier.
        norm: ``"bn"``, ``"none"`` or a factory ``channels -> nn.Module``.
        activation: ``"relu"``, ``"leaky_relu"`` or ``"none"``.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        mid_channels: int | None = None,
        dropout: float = 0.1,
        norm: Norm = "bn",
        activation: str = "relu",
    ):
        super().__init__()
        self.in_channels = check_channels("in_channels", in_channels, minimum=1)
        check_channels("num_classes", num_classes, minimum=1)
        mid_channels = _mid_channels(in_channels, mid_channels)
        check_probability("dropout", dropout)
        _check_norm_activation(norm, activation)
        self.conv = _conv_norm_act(in_channels, mid_channels, norm, activation)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(mid_channels, num_classes, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (B, C_in, H, W) -> logits (B, num_classes, H, W)."""
        check_feature_map("x", x, channels=self.in_channels, channels_from="in_channels")
        return self.classifier(self.dropout(self.conv(x)))
