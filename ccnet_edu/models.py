"""A small segmentation network with interchangeable context heads.

The network is ``backbone -> head -> upsample``:

* :class:`Backbone` -- five 3x3 conv + BN + ReLU layers, three of them with
  stride 2, so the features come out at **output stride 8** (a 96x96 image
  gives a 12x12 map).  Its theoretical receptive field is 35 pixels: by
  construction it cannot connect a pixel to something 40 pixels away.
* :class:`ContextHead` -- the layout of the CCNet head (Huang et al.,
  ICCV 2019, Sec. 3.1): reduce, *context module*, transform, concatenate
  with the backbone features, fuse, classify.  Every convolution of the head is 1x1, so the only way
  information travels between positions in the head is the context module.
  That turns the comparison into a controlled experiment: the ``"fcn"`` head
  is the same head with no context module (identity), the others differ from
  it by one module of the library:

  ============  ===============================================================
  ``fcn``       no context (identity) -- a plain FCN head
  ``rcca1``     :class:`~ccnet_edu.cca.RecurrentCrissCrossAttention`, R = 1
  ``rcca2``     :class:`~ccnet_edu.cca.RecurrentCrissCrossAttention`, R = 2
  ``nonlocal``  :class:`~ccnet_edu.nonlocal_block.NonLocal2d` (comparison form)
  ``isa``       :class:`~ccnet_edu.issa.InterlacedSparseSelfAttention`, 4x4 blocks
  ``sa``        :class:`~ccnet_edu.sa.SqueezeAttention` (pool 6: a 2x2 grid)
  ``axial``     :class:`~ccnet_edu.axial.AxialAttention`: height pass, width pass
  ============  ===============================================================

  (CCNet's own head uses 3x3 convolutions around the attention; here they
  would add 48 pixels of receptive field to *every* head, including the
  baseline, and blur what the attention contributes.)

With ``embedding_channels > 0`` the head also returns a per-pixel embedding
of the context features for the category consistent loss (CCNet, TPAMI
2020 version, Sec. 3.4).

Trained weights ship in ``ccnet_edu/checkpoints/``;
:func:`~ccnet_edu.checkpoint.load_pretrained` loads them with their metadata
(the command, seed and metrics that made them).  Saving and loading are
:mod:`ccnet_edu.checkpoint`'s job; their names are importable from here too.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ._checks import (
    check_bool,
    check_channels,
    check_choice,
    check_feature_map,
    check_int,
    check_int_sequence,
    check_probability,
    check_str,
)
from .layers import conv_bn_relu, relu_free_copy

# Saving and loading live in ccnet_edu.checkpoint; they stay importable from here.
_CHECKPOINT_NAMES = (
    "CHECKPOINT_DIR",
    "state_dict_digest",
    "save_checkpoint",
    "load_checkpoint",
    "load_pretrained",
    "pretrained_names",
    "add_digest",
)

__all__ = [
    "HEADS",
    "Backbone",
    "ContextHead",
    "SegmentationModel",
    "make_context",
    "build_model",
    "check_config",
    "receptive_field",
    *_CHECKPOINT_NAMES,
]

HEADS = ("fcn", "rcca1", "rcca2", "nonlocal", "isa", "sa", "axial")


class Backbone(nn.Module):
    """Output stride 8, receptive field 35 px: ``(B, 3, H, W) -> (B, 4w, H/8, W/8)``.

    Receptive field, layer by layer (kernel 3; r grows by 2 x jump):
    3 (s2) -> 7 -> 11 (s2) -> 19 (s2) -> 35.
    """

    def __init__(self, width: int = 16):
        super().__init__()
        width = check_int("width", width, minimum=1)
        self.out_channels = 4 * width
        self.layers = nn.Sequential(
            conv_bn_relu(3, width, kernel_size=3, stride=2),  # stride 2
            conv_bn_relu(width, width, kernel_size=3),
            conv_bn_relu(width, 2 * width, kernel_size=3, stride=2),  # stride 4
            conv_bn_relu(2 * width, 4 * width, kernel_size=3, stride=2),  # stride 8
            conv_bn_relu(4 * width, 4 * width, kernel_size=3),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_feature_map("x", x, channels=3, channels_from="RGB input")
        if x.shape[-2] % 8 or x.shape[-1] % 8:
            raise ValueError(f"x must have H and W divisible by 8, got {tuple(x.shape)}")
        return self.layers(x)


def make_context(head: str, channels: int) -> nn.Module | None:
    """The context module of ``head`` for ``channels`` channels (``None`` for ``"fcn"``).

    The library modules are imported here, not at the top, so that this file
    depends only on the module a head actually uses.
    """
    check_choice("head", head, HEADS)
    channels = check_channels("channels", channels, minimum=1)
    if head == "fcn":
        return None
    if head in ("rcca1", "rcca2"):
        from .cca import RecurrentCrissCrossAttention

        return RecurrentCrissCrossAttention(channels, recurrence=int(head[-1]))
    if head == "nonlocal":
        from .nonlocal_block import NonLocal2d

        return NonLocal2d(channels)
    if head == "isa":
        from .issa import InterlacedSparseSelfAttention

        return InterlacedSparseSelfAttention(channels, block_size=(4, 4))
    if head == "sa":
        from .sa import SqueezeAttention

        return SqueezeAttention(channels, channels, pool=6)
    if head == "axial":
        from .axial import AxialAttention

        return AxialAttention(channels)
    raise ValueError(f"head must be one of {HEADS}, got {head!r}")


class ContextHead(nn.Module):
    """The CCNet head layout with 1x1 convolutions around an interchangeable context module.

    ::

        x (C_in) -> reduce 1x1 -> mid -> context -> transform 1x1 -> mid
                 -> concat [x, .] -> fuse 1x1 -> out -> classifier 1x1 -> classes
                                  \\-> embed 1x1 -> E   (optional, for the CCL)
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        context: nn.Module | None,
        mid_channels: int = 32,
        out_channels: int = 64,
        embedding_channels: int = 0,
        dropout: float = 0.1,
    ):
        super().__init__()
        in_channels = check_channels("in_channels", in_channels, minimum=1)
        num_classes = check_channels("num_classes", num_classes, minimum=1)
        if context is not None and not isinstance(context, nn.Module):
            raise TypeError(f"context must be an nn.Module or None, got {type(context).__name__}")
        mid_channels = check_channels("mid_channels", mid_channels, minimum=1)
        out_channels = check_channels("out_channels", out_channels, minimum=1)
        embedding_channels = check_channels("embedding_channels", embedding_channels, minimum=0)
        dropout = check_probability("dropout", dropout)
        self.in_channels = in_channels
        self.reduce = conv_bn_relu(in_channels, mid_channels, kernel_size=1)
        self.context = context if context is not None else nn.Identity()
        self.transform = conv_bn_relu(mid_channels, mid_channels, kernel_size=1)
        self.fuse = nn.Sequential(
            conv_bn_relu(in_channels + mid_channels, out_channels, kernel_size=1),
            nn.Dropout2d(dropout),
        )
        self.classifier = nn.Conv2d(out_channels, num_classes, kernel_size=1)
        self.embed = (
            nn.Conv2d(mid_channels, embedding_channels, kernel_size=1)
            if embedding_channels > 0
            else None
        )

    def forward(self, x: torch.Tensor, return_attention: bool = False) -> dict[str, Any]:
        """``x`` (B, C_in, h, w) -> dict: ``logits`` (B, K, h, w) [, embedding, attention]."""
        check_feature_map("x", x, channels=self.in_channels, channels_from="in_channels")
        check_bool("return_attention", return_attention)
        features = self.reduce(x)  # (B, mid, h, w)
        attention = None
        if return_attention and not isinstance(self.context, nn.Identity):
            features, attention = self.context(features, return_attention=True)
        else:
            features = self.context(features)
        context = self.transform(features)  # (B, mid, h, w)
        # Local backbone features and the (possibly long-range) context side by side.
        logits = self.classifier(self.fuse(torch.cat([x, context], dim=1)))  # (B, K, h, w)
        out: dict[str, Any] = {"logits": logits}
        if self.embed is not None:
            out["embedding"] = self.embed(context)  # (B, E, h, w)
        if return_attention:
            out["attention"] = attention
        return out


class SegmentationModel(nn.Module):
    """Backbone (output stride 8) + :class:`ContextHead`, logits upsampled to the input size.

    Args:
        head: one of :data:`HEADS`.
        num_classes: output classes (4 for :mod:`ccnet_edu.data`).
        width: backbone width w (features have 4w channels).
        mid_channels: channels around the context module.
        embedding_channels: > 0 adds an embedding for the category consistent loss.
        dropout: Dropout2d probability before the classifier.
    """

    def __init__(
        self,
        head: str = "rcca2",
        num_classes: int = 4,
        width: int = 16,
        mid_channels: int = 32,
        embedding_channels: int = 0,
        dropout: float = 0.1,
    ):
        super().__init__()
        self.config = check_config(
            dict(
                head=head,
                num_classes=num_classes,
                width=width,
                mid_channels=mid_channels,
                embedding_channels=embedding_channels,
                dropout=dropout,
            )
        )
        self.backbone = Backbone(width)
        self.head = ContextHead(
            self.backbone.out_channels,
            num_classes,
            make_context(head, mid_channels),
            mid_channels=mid_channels,
            out_channels=2 * mid_channels,
            embedding_channels=embedding_channels,
            dropout=dropout,
        )

    @property
    def head_name(self) -> str:
        return self.config["head"]

    def forward(self, x: torch.Tensor, return_all: bool = False) -> torch.Tensor | dict[str, Any]:
        """``x`` (B, 3, H, W) -> logits (B, K, H, W).

        With ``return_all`` a dict: ``logits`` (full size), ``logits_small``
        (B, K, H/8, W/8), ``features`` (backbone), ``embedding`` (if any) and
        ``attention`` (what the context module returns with ``return_attention``).
        """
        check_bool("return_all", return_all)
        features = self.backbone(x)  # (B, 4w, H/8, W/8)
        out = self.head(features, return_attention=return_all)
        logits = F.interpolate(
            out["logits"], size=x.shape[-2:], mode="bilinear", align_corners=False
        )  # (B, K, H, W)
        if not return_all:
            return logits
        out["logits_small"] = out["logits"]
        out["logits"] = logits
        out["features"] = features
        return out


def check_config(config: object) -> dict[str, Any]:
    """Validate a :class:`SegmentationModel` configuration; returns it complete (with defaults).

    The bounds are the constructor's: ``head`` one of :data:`HEADS`,
    ``num_classes``, ``width``, ``mid_channels`` ints >= 1,
    ``embedding_channels`` an int >= 0, ``dropout`` a probability.  Unknown
    keys are refused.  Raises ``TypeError`` / ``ValueError`` naming the key.
    """
    if not isinstance(config, Mapping):
        raise TypeError(f"config must be a dict, got {type(config).__name__}")
    unknown = sorted(str(k) for k in config if k not in _CONFIG_DEFAULTS)
    if unknown:
        raise ValueError(f"config has unknown keys {unknown}; known: {sorted(_CONFIG_DEFAULTS)}")
    full = {**_CONFIG_DEFAULTS, **config}
    check_str("head", full["head"])
    check_choice("head", full["head"], HEADS)
    for key in ("num_classes", "width", "mid_channels"):
        check_int(key, full[key], minimum=1)
    check_channels("embedding_channels", full["embedding_channels"], minimum=0)
    full["dropout"] = check_probability("dropout", full["dropout"])
    return full


_CONFIG_DEFAULTS: dict[str, Any] = dict(
    head="rcca2", num_classes=4, width=16, mid_channels=32, embedding_channels=0, dropout=0.1
)


#: The largest input side :func:`receptive_field` measures on (a float64 image and its
#: gradient: 3 x 1024^2 x 8 bytes each).
MAX_FIELD_INPUT = 1024


def receptive_field(
    backbone: Backbone,
    cell: tuple[int, int],
    size: int = 96,
    generator: torch.Generator | None = None,
) -> tuple[range, range]:
    """The input rows and columns that reach one cell of the backbone's output grid.

    Measured, not derived from the layers: a float64 copy of ``backbone`` in eval mode with
    its ReLUs made identities (:func:`ccnet_edu.layers.relu_free_copy`: a ReLU that is off
    would hide the paths through it; ``backbone`` itself is not changed) reads a random
    ``(1, 3, size, size)`` image drawn from ``generator`` (torch's global one when
    ``None``), and the gradient of the cell's features, summed, is non-zero exactly at the
    pixels the layers connect to the cell (the image and the weights are random, so a
    gradient that cancels to zero has probability zero).

    Returns:
        ``(rows, columns)``: the ranges from the first to the last row, and column, that
        reach the cell.
    """
    if not isinstance(backbone, Backbone):
        raise TypeError(f"backbone must be a models.Backbone, got {type(backbone).__name__}")
    size = check_int("size", size, minimum=8, maximum=MAX_FIELD_INPUT)
    if size % 8:
        raise ValueError(f"size must be a multiple of 8 (the backbone's stride), got {size}")
    row, column = check_int_sequence("cell", cell, minimum=0, length=2)
    if max(row, column) >= size // 8:
        raise ValueError(f"cell must lie in the {size // 8} x {size // 8} grid, got {cell}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {generator!r}")
    probe = relu_free_copy(backbone).double().eval()
    image = torch.rand(1, 3, size, size, dtype=torch.float64, generator=generator)
    image.requires_grad_(True)
    probe(image)[0, :, row, column].sum().backward()
    support = image.grad[0].abs().sum(0) > 0  # (size, size)
    if not bool(support.any()):
        raise ValueError(f"no input pixel reaches cell {cell}: are the backbone's weights zero?")
    rows, columns = support.any(1).nonzero()[:, 0], support.any(0).nonzero()[:, 0]
    return range(int(rows.min()), int(rows.max()) + 1), range(
        int(columns.min()), int(columns.max()) + 1
    )


def build_model(head: str, **config: Any) -> SegmentationModel:
    """``SegmentationModel(head, **config)``; see :class:`SegmentationModel`."""
    return SegmentationModel(head, **config)


def __getattr__(name: str) -> Any:
    # The checkpoint functions, re-exported lazily: ccnet_edu.checkpoint imports this module.
    if name in _CHECKPOINT_NAMES:
        from . import checkpoint

        return getattr(checkpoint, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
