"""A small segmentation network with interchangeable context heads.

The network is ``backbone -> head -> upsample``:

* :class:`Backbone` -- five 3x3 conv + BN + ReLU layers, three of them with
  stride 2, so the features come out at **output stride 8** (a 96x96 image
  gives a 12x12 map).  Its theoretical receptive field is 35 pixels: by
  construction it cannot connect a pixel to something 40 pixels away.
* :class:`ContextHead` -- the layout of the CCNet head (SPEC §2): reduce,
  *context module*, transform, concatenate with the backbone features, fuse,
  classify.  Every convolution of the head is 1x1, so the only way
  information travels between positions in the head is the context module.
  That turns the comparison into a controlled experiment: the ``"fcn"`` head
  is the same head with no context module (identity), the others differ from
  it by one module of the library:

  ============  ===============================================================
  ``fcn``       no context (identity) -- a plain FCN head
  ``rcca1``     :class:`~ccnet_edu.cca.RecurrentCrissCrossAttention`, R = 1
  ``rcca2``     :class:`~ccnet_edu.cca.RecurrentCrissCrossAttention`, R = 2
  ``nonlocal``  :class:`~ccnet_edu.nonlocal_block.NonLocal2d` (CCNet form)
  ``isa``       :class:`~ccnet_edu.issa.InterlacedSparseSelfAttention`, 4x4 blocks
  ``sa``        :class:`~ccnet_edu.sa.SqueezeAttention` (pool 6: a 2x2 grid)
  ============  ===============================================================

  (CCNet's own head uses 3x3 convolutions around the attention; here they
  would add 48 pixels of receptive field to *every* head, including the
  baseline, and blur what the attention contributes.)

With ``embedding_channels > 0`` the head also returns a per-pixel embedding
of the context features for the category consistent loss (SPEC §3).

Trained weights ship in ``ccnet_edu/checkpoints/``; :func:`load_pretrained`
loads them with their metadata (the command, seed and metrics that made them).
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ._checks import check_feature_map

__all__ = [
    "HEADS",
    "CHECKPOINT_DIR",
    "Backbone",
    "ContextHead",
    "SegmentationModel",
    "build_model",
    "save_checkpoint",
    "load_checkpoint",
    "load_pretrained",
    "pretrained_names",
]

HEADS = ("fcn", "rcca1", "rcca2", "nonlocal", "isa", "sa")
CHECKPOINT_DIR = Path(__file__).resolve().parent / "checkpoints"
_FORMAT = "ccnet_edu.checkpoint/1"


def _conv_bn_relu(cin: int, cout: int, kernel: int = 3, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class Backbone(nn.Module):
    """Output stride 8, receptive field 35 px: ``(B, 3, H, W) -> (B, 4w, H/8, W/8)``.

    Receptive field, layer by layer (kernel 3; r grows by 2 x jump):
    3 (s2) -> 7 -> 11 (s2) -> 19 (s2) -> 35.
    """

    def __init__(self, width: int = 16):
        super().__init__()
        self.out_channels = 4 * width
        self.layers = nn.Sequential(
            _conv_bn_relu(3, width, stride=2),  # stride 2
            _conv_bn_relu(width, width),
            _conv_bn_relu(width, 2 * width, stride=2),  # stride 4
            _conv_bn_relu(2 * width, 4 * width, stride=2),  # stride 8
            _conv_bn_relu(4 * width, 4 * width),
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
        self.reduce = _conv_bn_relu(in_channels, mid_channels, kernel=1)
        self.context = context if context is not None else nn.Identity()
        self.transform = _conv_bn_relu(mid_channels, mid_channels, kernel=1)
        self.fuse = nn.Sequential(
            _conv_bn_relu(in_channels + mid_channels, out_channels, kernel=1),
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
        if head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {head!r}")
        self.config = dict(
            head=head,
            num_classes=num_classes,
            width=width,
            mid_channels=mid_channels,
            embedding_channels=embedding_channels,
            dropout=dropout,
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

    def forward(
        self, x: torch.Tensor, return_all: bool = False
    ) -> torch.Tensor | dict[str, Any]:
        """``x`` (B, 3, H, W) -> logits (B, K, H, W).

        With ``return_all`` a dict: ``logits`` (full size), ``logits_small``
        (B, K, H/8, W/8), ``features`` (backbone), ``embedding`` (if any) and
        ``attention`` (what the context module returns with ``return_attention``).
        """
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


def build_model(head: str, **config: Any) -> SegmentationModel:
    """``SegmentationModel(head, **config)``; see :class:`SegmentationModel`."""
    return SegmentationModel(head, **config)


# --------------------------------------------------------------------------- checkpoints


def state_dict_digest(model: nn.Module) -> str:
    """SHA-256 of all parameters and buffers (names, shapes, bytes): equal weights, equal digest."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return h.hexdigest()


def save_checkpoint(path: str | Path, model: SegmentationModel, meta: dict[str, Any]) -> Path:
    """Save weights + config + ``meta`` (command, seed, metrics, ...) to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = getattr(model, "module", model)  # unwrap DistributedDataParallel
    payload = {
        "format": _FORMAT,
        "config": dict(model.config),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "meta": dict(meta),
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    # Refuse metadata that a safe (weights_only) load could not read back.
    buffer.seek(0)
    try:
        torch.load(buffer, weights_only=True)
    except Exception as err:
        raise TypeError(
            f"meta must hold only plain Python values (str, int, float, list, dict): {err}"
        ) from err
    path.write_bytes(buffer.getvalue())  # one write: no half-written file on the usual errors
    return path


def load_checkpoint(
    path: str | Path, map_location: str | torch.device = "cpu"
) -> SegmentationModel:
    """Load a checkpoint written by :func:`save_checkpoint`; metadata in ``model.meta``.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is not a readable ccnet_edu checkpoint (truncated, corrupt,
            or something else).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises many types for a damaged zip/pickle
        raise ValueError(
            f"checkpoint {path} is corrupt or not a torch file ({type(err).__name__}: {err})"
        ) from err
    if not isinstance(payload, dict) or payload.get("format") != _FORMAT:
        raise ValueError(f"checkpoint {path} is not a ccnet_edu checkpoint (format {_FORMAT!r})")
    model = SegmentationModel(**payload["config"])
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as err:
        raise ValueError(f"checkpoint {path} does not match its config: {err}") from err
    model.meta = payload["meta"]
    model.eval()
    return model.to(map_location)


def pretrained_names() -> list[str]:
    """Names of the checkpoints shipped in ``ccnet_edu/checkpoints``."""
    return sorted(p.stem for p in CHECKPOINT_DIR.glob("*.pt"))


def load_pretrained(name: str, map_location: str | torch.device = "cpu") -> SegmentationModel:
    """Load the shipped checkpoint ``name`` (e.g. ``"rcca2"``), in eval mode.

    The metadata (``model.meta``) records the exact command and seed that
    produced it and its validation metrics.
    """
    path = CHECKPOINT_DIR / f"{name}.pt"
    if not path.is_file():
        raise FileNotFoundError(
            f"no shipped checkpoint {name!r}: {path} does not exist (available: "
            f"{pretrained_names() or 'none'}). The shipped models are made by "
            f"`python -m ccnet_edu.train --all --seed 0` (and `--seed 1` for the *_seed1 "
            f"ones); one model by `python -m ccnet_edu.train --head HEAD --save {path}`."
        )
    return load_checkpoint(path, map_location=map_location)
