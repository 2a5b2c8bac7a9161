"""Squeeze-and-excitation and squeeze-and-attention (SANet, Zhong et al., CVPR 2020, Sec. 3).

Zhong et al. (SANet, CVPR 2020) read segmentation as two tasks: *pixel-wise
prediction* and *pixel grouping* (which pixels belong together).  Their SA
module starts from squeeze-and-excitation (Hu et al., CVPR 2018), which
squeezes a map to one vector and re-weights channels:

    SE:  y = x * sigmoid(FC(pool(x)))                    (B, C, 1, 1) weights

and keeps a *spatial* attention map instead of a full squeeze:

    x_res = conv_main(x)                                 main branch
    x_att = upsample(conv_att(avgpool(x)))               attention branch, pooled by 8, not to 1x1
    y     = x_att * x_res + x_att                        = x_att * (x_res + 1)

Design choices of this library (documented because papers and code differ):

* ``conv_main``: 3x3 conv + BN + ReLU to ``out_channels`` (paper: C/4).
* ``conv_att``: 3x3 conv + BN + ReLU, then a 1x1 conv and a *gate*.  The
  default gate is a sigmoid, so ``x_att`` is an attention map in (0, 1) that
  can be looked at.  ``gate="relu"`` replaces the sigmoid by a ReLU (the
  branch then ends in the 1x1 conv + ReLU, no BN after it), so ``x_att >= 0``
  and unbounded.  Neither gate restates published code (the book links
  none and tests against none).
* Pooling: average pooling with kernel = stride = ``pool`` and
  ``ceil_mode=True``, so a size that ``pool`` does not divide keeps a last,
  smaller window (averaged over the pixels it holds).  Upsampling copies each
  pooled value back onto exactly the pixels of its window (nearest with
  factor ``pool``, cropped to ``(H, W)``), so every pixel gets the attention
  computed from its own window.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ._checks import (
    check_bool,
    check_channels,
    check_choice,
    check_feature_map,
    check_float,
    check_int,
    check_positive_pair,
    check_probability,
    check_same_device,
)
from .layers import conv_bn_relu

__all__ = ["SqueezeExcitation", "SqueezeAttention", "SANetHead", "SANetOutput", "SANetLoss"]


class SqueezeExcitation(nn.Module):
    """SE block: ``y = x * sigmoid(W2 relu(W1 avgpool(x)))``, one weight per channel.

    ``W1`` reduces C to ``max(C // reduction, 1)``, ``W2`` restores C.
    """

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        self.channels = check_channels("channels", channels, minimum=1)
        check_int("reduction", reduction, minimum=1)
        hidden = max(channels // reduction, 1)
        self.fc = nn.Sequential(
            nn.Linear(channels, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, channels)
        )

    def forward(
        self, x: torch.Tensor, return_attention: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """x: (B, C, H, W) -> y (B, C, H, W) [, channel weights (B, C, 1, 1)]."""
        check_feature_map("x", x, channels=self.channels, channels_from="channels")
        check_bool("return_attention", return_attention)
        squeezed = x.mean(dim=(2, 3))  # (B, C): squeeze, the whole map to one vector
        weights = torch.sigmoid(self.fc(squeezed))[:, :, None, None]  # (B, C, 1, 1): excitation
        y = x * weights
        return (y, weights) if return_attention else y


class SqueezeAttention(nn.Module):
    """SA module: ``y = x_att * x_res + x_att`` with a pooled spatial attention map.

    Args:
        in_channels: C of the input.
        out_channels: channels of both branches (default ``in_channels // 4``, at least 1).
        pool: pooling (and upsampling) factor, an int or ``(p_h, p_w)`` (paper: 8).
        gate: ``"sigmoid"`` (default, ``x_att`` in (0, 1)) or ``"relu"``
            (``x_att >= 0``, unbounded).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int | None = None,
        pool: int | Sequence[int] = 8,
        gate: Literal["sigmoid", "relu"] = "sigmoid",
    ) -> None:
        super().__init__()
        self.in_channels = check_channels("in_channels", in_channels, minimum=1)
        out_channels = max(in_channels // 4, 1) if out_channels is None else out_channels
        self.out_channels = check_channels("out_channels", out_channels, minimum=1)
        self.pool = check_positive_pair("pool", pool)
        check_choice("gate", gate, ("sigmoid", "relu"))
        self.conv_main = conv_bn_relu(in_channels, out_channels, kernel_size=3)
        self.conv_att = nn.Sequential(
            conv_bn_relu(in_channels, out_channels, kernel_size=3),
            nn.Conv2d(out_channels, out_channels, 1),
            nn.Sigmoid() if gate == "sigmoid" else nn.ReLU(inplace=True),
        )

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """The attention branch alone: (B, C, H, W) -> x_att (B, C_out, H, W)."""
        check_feature_map("x", x, channels=self.in_channels, channels_from="in_channels")
        height, width = x.shape[2:]
        p_h, p_w = self.pool
        # Squeeze, but only down to a (ceil(H/p_h), ceil(W/p_w)) grid: pixel groups keep a place.
        pooled = F.avg_pool2d(x, self.pool, stride=self.pool, ceil_mode=True)
        att = self.conv_att(pooled)  # (B, C_out, ceil(H/p_h), ceil(W/p_w))
        # Each pooled value goes back onto the pixels of its own window.
        att = att.repeat_interleave(p_h, dim=2)[:, :, :height]
        return att.repeat_interleave(p_w, dim=3)[:, :, :, :width]  # (B, C_out, H, W)

    def forward(
        self, x: torch.Tensor, return_attention: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """x: (B, C, H, W) -> y (B, C_out, H, W) [, x_att (B, C_out, H, W)]."""
        check_feature_map("x", x, channels=self.in_channels, channels_from="in_channels")
        check_bool("return_attention", return_attention)
        x_res = self.conv_main(x)  # (B, C_out, H, W): pixel-wise features
        x_att = self.attention(x)  # (B, C_out, H, W): pixel-group attention
        y = x_att * x_res + x_att
        return (y, x_att) if return_attention else y


class SANetOutput(NamedTuple):
    """The three predictions of :class:`SANetHead`, at the first stage's resolution."""

    mask: torch.Tensor  # (B, K, H1, W1) final mask logits
    dense: torch.Tensor  # (B, K, H1, W1) dense logits from the SA attention maps
    category: torch.Tensor  # (B, K) class-presence logits


class SANetHead(nn.Module):
    """SANet head over four backbone stages.

    One :class:`SqueezeAttention` per stage; every SA output ``y_s`` and
    attention map ``x_att_s`` is resized (bilinear) to the first stage's size.

    * ``mask``: concatenated ``y_s`` -> 3x3 conv + BN + ReLU + Dropout2d -> 1x1
      conv: the final per-pixel prediction (``L_mask``).
    * ``dense``: concatenated ``x_att_s`` -> 1x1 conv: the SA heads' own
      prediction, which supervises the attention branches directly with the
      class regions of the label map (``L_den``; our reading of "class-wise
      masks supervised by the categorical regions").
    * ``category``: global average of the concatenated ``y_s`` -> FC: one
      presence logit per class (``L_cat``).

    Args:
        in_channels_list: channels of the four stages, e.g. (256, 512, 1024, 2048).
        num_classes: K.
        channels: channels of every SA module (default: each stage's C // 4).
        mid_channels: channels of the mask fusion conv (default: concat // 4).
        pool: pooling factor of the SA modules.
        dropout: Dropout2d probability before the mask classifier.
    """

    def __init__(
        self,
        in_channels_list: Sequence[int],
        num_classes: int,
        channels: int | None = None,
        mid_channels: int | None = None,
        pool: int | Sequence[int] = 8,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if isinstance(in_channels_list, (str, bytes)) or not isinstance(in_channels_list, Sequence):
            raise TypeError(
                f"in_channels_list must be a list of 4 ints, got {type(in_channels_list).__name__}"
            )
        in_channels_list = list(in_channels_list)
        if len(in_channels_list) != 4:
            raise ValueError(
                f"in_channels_list must give the channels of 4 stages, got {in_channels_list!r}"
            )
        for k, c in enumerate(in_channels_list):
            check_int(f"in_channels_list[{k}]", c, minimum=1)
        check_channels("num_classes", num_classes, minimum=1)
        if channels is not None:
            check_channels("channels", channels, minimum=1)
        if mid_channels is not None:
            check_channels("mid_channels", mid_channels, minimum=1)
        check_positive_pair("pool", pool)
        check_probability("dropout", dropout)
        self.in_channels_list = in_channels_list
        self.sa = nn.ModuleList(SqueezeAttention(c, channels, pool) for c in in_channels_list)
        total = sum(m.out_channels for m in self.sa)
        mid_channels = mid_channels if mid_channels is not None else max(total // 4, 1)
        self.mask_head = nn.Sequential(
            conv_bn_relu(total, mid_channels, kernel_size=3),
            nn.Dropout2d(dropout),
            nn.Conv2d(mid_channels, num_classes, 1),
        )
        self.dense_head = nn.Conv2d(total, num_classes, 1)
        self.category_head = nn.Linear(total, num_classes)

    def _check_features(self, features: object) -> None:
        """Four feature maps with the stages' channels, one batch size, one device."""
        if not isinstance(features, (list, tuple)):
            raise TypeError(
                f"features must be a list or tuple of 4 stage outputs, got "
                f"{type(features).__name__}"
            )
        if len(features) != 4:
            raise ValueError(
                f"features must be a list or tuple of 4 stage outputs, got {len(features)}"
            )
        for s, (x, c) in enumerate(zip(features, self.in_channels_list, strict=True)):
            check_feature_map(f"features[{s}]", x, channels=c, channels_from="in_channels_list")
        batch = features[0].shape[0]
        for s, x in enumerate(features):
            if x.shape[0] != batch:
                raise ValueError(
                    f"features[{s}] must have the batch size of features[0] ({batch}), got "
                    f"shape {tuple(x.shape)}"
                )
        check_same_device(**{f"features[{s}]": x for s, x in enumerate(features)})

    def forward(self, features: Sequence[torch.Tensor]) -> SANetOutput:
        """features: four (B, C_s, H_s, W_s) maps -> :class:`SANetOutput`."""
        self._check_features(features)
        size = features[0].shape[2:]
        outputs, attentions = [], []
        for x, sa in zip(features, self.sa, strict=True):
            y, x_att = sa(x, return_attention=True)
            if y.shape[2:] != size:  # bring every stage to the first stage's size
                y = F.interpolate(y, size=size, mode="bilinear", align_corners=False)
                x_att = F.interpolate(x_att, size=size, mode="bilinear", align_corners=False)
            outputs.append(y)
            attentions.append(x_att)
        merged = torch.cat(outputs, dim=1)  # (B, total, H1, W1)
        return SANetOutput(
            mask=self.mask_head(merged),
            dense=self.dense_head(torch.cat(attentions, dim=1)),
            category=self.category_head(merged.mean(dim=(2, 3))),  # (B, K)
        )


def _check_target(target: object, batch: int | None) -> torch.Tensor:
    if not isinstance(target, torch.Tensor):
        raise TypeError(f"target must be a torch.Tensor, got {type(target).__name__}")
    if target.dtype.is_floating_point or target.dtype == torch.bool or target.is_complex():
        raise TypeError(f"target must have an integer dtype (class indices), got {target.dtype}")
    if target.dim() != 3 or (batch is not None and target.shape[0] != batch):
        with_batch = f" with B={batch}" if batch is not None else ""
        raise ValueError(f"target must have shape (B, H, W){with_batch}, got {tuple(target.shape)}")
    return target.long()


def _resize_labels(labels: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Nearest-neighbour resize of a (B, H, W) label map (labels are never interpolated)."""
    if tuple(labels.shape[1:]) == tuple(size):
        return labels
    resized = F.interpolate(labels[:, None].double(), size=tuple(size), mode="nearest")
    return resized[:, 0].long()


class SANetLoss(nn.Module):
    """``L = L_mask + alpha · L_cat + beta · L_den`` (SANet, alpha = 0.2, beta = 0.8).

    * ``L_mask``, ``L_den``: per-pixel cross-entropy of ``mask`` and ``dense``
      (mean over labelled pixels); the label map is resized with nearest
      neighbour to the logits' size when they differ.
    * ``L_cat``: binary cross-entropy with logits of ``category`` against the
      per-class presence targets of the full-resolution label map (class k
      present iff some pixel has label k; ``ignore_index`` pixels do not count),
      averaged over batch and classes.
    """

    def __init__(self, alpha: float = 0.2, beta: float = 0.8, ignore_index: int = 255) -> None:
        super().__init__()
        self.alpha = check_float("alpha", alpha, minimum=0.0)
        self.beta = check_float("beta", beta, minimum=0.0)
        self.ignore_index = check_int("ignore_index", ignore_index)

    def presence(self, target: torch.Tensor, num_classes: int) -> torch.Tensor:
        """(B, H, W) labels -> (B, K) float presence targets (1 where the class occurs).

        Every label must lie in ``[0, num_classes)`` or be ``ignore_index``.
        """
        num_classes = check_channels("num_classes", num_classes, minimum=1)
        target = self._check_target_values(_check_target(target, None), num_classes)
        valid = target != self.ignore_index
        # Send ignored pixels to an extra column K that is dropped afterwards.
        index = torch.where(valid, target, torch.full_like(target, num_classes)).flatten(1)
        present = torch.zeros(target.shape[0], num_classes + 1, device=target.device)
        present = present.scatter(1, index, 1.0)
        return present[:, :num_classes]

    def _pixel_loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Cross-entropy averaged over the labelled pixels; 0 (not 0/0 = NaN, as
        ``F.cross_entropy``'s mean gives) when a batch has none, e.g. a crop
        that lies entirely in an ignored region."""
        labels = _resize_labels(target, logits.shape[2:])
        total = F.cross_entropy(logits, labels, ignore_index=self.ignore_index, reduction="sum")
        return total / (labels != self.ignore_index).sum().clamp(min=1)

    def _check_target_values(self, target: torch.Tensor, num_classes: int) -> torch.Tensor:
        if target.device.type != "meta":  # value checks need real data
            bad = (target != self.ignore_index) & ((target < 0) | (target >= num_classes))
            if bool(bad.any()):
                raise ValueError(
                    f"target values must be in [0, {num_classes}) or ignore_index="
                    f"{self.ignore_index}, got {sorted(set(target[bad].tolist()))[:5]}"
                )
        return target

    def _check_inputs(self, output: object, target: object) -> torch.Tensor:
        """``output`` a :class:`SANetOutput`; ``target`` (B, H, W) labels in [0, K) or ignored."""
        if not isinstance(output, SANetOutput):
            raise TypeError(f"output must be a SANetOutput, got {type(output).__name__}")
        check_feature_map("output.mask", output.mask)
        check_feature_map(
            "output.dense", output.dense, channels=output.mask.shape[1], channels_from="output.mask"
        )
        target = _check_target(target, output.mask.shape[0])
        check_same_device(output=output.mask, target=target)
        return self._check_target_values(target, output.mask.shape[1])

    def terms(self, output: SANetOutput, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """The three losses separately: ``{"mask", "category", "dense"}``."""
        target = self._check_inputs(output, target)
        num_classes = output.mask.shape[1]
        mask = self._pixel_loss(output.mask, target)
        dense = self._pixel_loss(output.dense, target)
        presence = self.presence(target, num_classes).to(output.category.dtype)
        category = F.binary_cross_entropy_with_logits(output.category, presence)
        return {"mask": mask, "category": category, "dense": dense}

    def forward(self, output: SANetOutput, target: torch.Tensor) -> torch.Tensor:
        """output: :class:`SANetOutput`; target: (B, H, W) long -> scalar loss."""
        terms = self.terms(output, target)
        return terms["mask"] + self.alpha * terms["category"] + self.beta * terms["dense"]
