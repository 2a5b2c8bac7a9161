"""The library's modules against independent restatements of the authors' published modules.

Each ``Official*`` class below restates one published module from its structure:
the same layers, in the same order, under the attribute names of the published
code (so that a state dict of the original would load into it), and the same
forward computation, written here in our own words.  Nothing is imported from
``ccnet_edu`` to build them.  The published modules are

* CCNet, speedinghzl/CCNet: ``cc_attention/functions.py`` (``CrissCrossAttention``,
  the pure-PyTorch version on ``master``, commit 1fae6c6)
  and ``networks/ccnet.py`` (``RCCAModule``; its norm layer ``InPlaceABNSync``
  is BatchNorm followed by leaky ReLU with slope 0.01);
* mmcv, open-mmlab/mmcv: ``mmcv/ops/cc_attention.py`` (``CrissCrossAttention``,
  the pure-PyTorch ``einsum`` form of mmcv >= 1.3.13);
* ISSA, openseg-group/openseg.pytorch (master at commit aefc755):
  ``lib/models/modules/isa_block.py``
  (``SelfAttentionBlock2D``, ``ISA_Block``, ``ISA_Module``) and
  ``lib/models/nets/isanet.py`` (the head of ``ISANet``), with ``bn_type``
  ``"torchbn"`` (``ModuleHelper.BNReLU`` = BatchNorm2d + ReLU);
* the book's dense comparison block (CCA's projections and residual, the
  dense pattern; the CCNet paper does not describe its non-local baseline's
  projections), and Wang et al.'s
  embedded-Gaussian block with its output projection ``W_z`` (conv + BN).

Every test builds the restatement and our module, gives the restatement
non-trivial weights (BatchNorm running statistics and affine parameters drawn
at random, ``gamma != 0``), copies them into our module *role by role*
(:func:`copy_roles`, which checks that each layer has a counterpart of the
same kind and shape and that no weight of either side is left over), and
compares outputs and the gradients of the input and of every copied weight in
float64 and ``eval()`` mode, at sizes that need padding.  A structural
difference fails with a message that names the layer: at copy time when a
layer is missing or has another shape, at comparison time (forward hooks on
every role) when the layers exist but compute something else.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ccnet_edu import (
    CrissCrossAttention,
    InterlacedSparseSelfAttention,
    ISAHead,
    NonLocal2d,
    RCCAHead,
)

TOL = {"rtol": 1e-10, "atol": 1e-12}  # float64 throughout


# ---------------------------------------------------------------------------
# Restatements of the published modules
# ---------------------------------------------------------------------------


def _column_mask(height: int, batch_columns: int, device: torch.device) -> torch.Tensor:
    """-inf on the diagonal of each column's (H, H) energies: the centre is counted in the row."""
    diagonal = torch.full((height,), float("-inf"), dtype=torch.float64, device=device).diag()
    return diagonal.expand(batch_columns, height, height)  # 0 off the diagonal


class OfficialCrissCrossAttention(nn.Module):
    """CCNet's ``CrissCrossAttention`` (cc_attention/functions.py): bmm over columns and rows.

    ``query_conv``, ``key_conv`` (C -> C // 8) and ``value_conv`` (C -> C), 1x1
    with bias; energies of every column (``B W`` batched (H, H) products, the
    centre set to -inf) and every row (``B H`` batched (W, W) products); one
    softmax over the H + W concatenated energies; ``gamma * (out_col + out_row) + x``.
    """

    def __init__(self, in_dim: int) -> None:
        super().__init__()
        self.query_conv = nn.Conv2d(in_dim, in_dim // 8, kernel_size=1)
        self.key_conv = nn.Conv2d(in_dim, in_dim // 8, kernel_size=1)
        self.value_conv = nn.Conv2d(in_dim, in_dim, kernel_size=1)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        query, key, value = self.query_conv(x), self.key_conv(x), self.value_conv(x)

        def by_column(t: torch.Tensor) -> torch.Tensor:  # (B, c, H, W) -> (B W, c, H)
            return t.permute(0, 3, 1, 2).reshape(b * w, t.shape[1], h)

        def by_row(t: torch.Tensor) -> torch.Tensor:  # (B, c, H, W) -> (B H, c, W)
            return t.permute(0, 2, 1, 3).reshape(b * h, t.shape[1], w)

        # energy_col[bw, i, i'] = q(i, j) . k(i', j); energy_row[bh, j, j'] = q(i, j) . k(i, j')
        energy_col = torch.bmm(by_column(query).transpose(1, 2), by_column(key))
        energy_col = energy_col + _column_mask(h, b * w, x.device).to(x.dtype)
        energy_row = torch.bmm(by_row(query).transpose(1, 2), by_row(key))
        energy = torch.cat(
            [
                energy_col.reshape(b, w, h, h).permute(0, 2, 1, 3),  # (B, H, W, H)
                energy_row.reshape(b, h, w, w),  # (B, H, W, W)
            ],
            dim=3,
        )
        attention = F.softmax(energy, dim=3)
        att_col = attention[..., :h].permute(0, 2, 1, 3).reshape(b * w, h, h)
        att_row = attention[..., h:].reshape(b * h, w, w)
        out_col = torch.bmm(by_column(value), att_col.transpose(1, 2))  # (B W, C, H)
        out_row = torch.bmm(by_row(value), att_row.transpose(1, 2))  # (B H, C, W)
        out_col = out_col.reshape(b, w, -1, h).permute(0, 2, 3, 1)
        out_row = out_row.reshape(b, h, -1, w).permute(0, 2, 1, 3)
        return self.gamma * (out_col + out_row) + x


class Scale(nn.Module):
    """mmcv's ``Scale``: one learnable factor ``scale``."""

    def __init__(self, scale: float = 1.0) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(scale, dtype=torch.float))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


class OfficialMmcvCrissCrossAttention(nn.Module):
    """mmcv's ``CrissCrossAttention`` (mmcv/ops/cc_attention.py, >= 1.3.13): einsum form.

    Energies (B, H, W, H + W) = [column with the centre at -inf | row], one
    softmax, two einsum aggregations, ``gamma(out) + x`` with ``gamma = Scale(0)``.
    """

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.query_conv = nn.Conv2d(in_channels, in_channels // 8, 1)
        self.key_conv = nn.Conv2d(in_channels, in_channels // 8, 1)
        self.value_conv = nn.Conv2d(in_channels, in_channels, 1)
        self.gamma = Scale(0.0)
        self.in_channels = in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.shape[2]
        query, key, value = self.query_conv(x), self.key_conv(x), self.value_conv(x)
        centre = torch.zeros(h, h, dtype=x.dtype, device=x.device)
        centre.fill_diagonal_(float("-inf"))
        # column: e[b, j, i, i'] = sum_c q[b, c, i, j] k[b, c, i', j]
        energy_col = torch.einsum("bcij,bckj->bjik", query, key) + centre
        energy_col = energy_col.transpose(1, 2)  # (B, H, W, H)
        energy_row = torch.einsum("bcij,bcik->bijk", query, key)  # (B, H, W, W)
        attention = F.softmax(torch.cat([energy_col, energy_row], dim=-1), dim=-1)
        out = torch.einsum("bckj,bijk->bcij", value, attention[..., :h])
        out += torch.einsum("bcik,bijk->bcij", value, attention[..., h:])
        return self.gamma(out) + x


class InPlaceABN(nn.BatchNorm2d):
    """InPlace-ABN (CCNet's ``InPlaceABNSync``) at inference: BatchNorm, then leaky ReLU 0.01."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(super().forward(x), 0.01)


class OfficialRCCAModule(nn.Module):
    """CCNet's ``RCCAModule`` (networks/ccnet.py).

    ``conva`` 3x3 conv (no bias) C_in -> C_in // 4 + ABN; the shared
    ``cca`` applied ``recurrence`` times; ``convb`` 3x3 conv + ABN; concatenation
    ``[x, context]``; ``bottleneck``: 3x3 conv -> out + ABN + Dropout2d(0.1) +
    1x1 conv (with bias) -> classes.  (The published code writes the
    classifier's input width as 512, i.e. ``out_channels`` = 512.)
    """

    def __init__(self, in_channels: int, out_channels: int, num_classes: int) -> None:
        super().__init__()
        inter_channels = in_channels // 4
        self.conva = nn.Sequential(
            nn.Conv2d(in_channels, inter_channels, 3, padding=1, bias=False),
            InPlaceABN(inter_channels),
        )
        self.cca = OfficialCrissCrossAttention(inter_channels)
        self.convb = nn.Sequential(
            nn.Conv2d(inter_channels, inter_channels, 3, padding=1, bias=False),
            InPlaceABN(inter_channels),
        )
        self.bottleneck = nn.Sequential(
            nn.Conv2d(in_channels + inter_channels, out_channels, 3, padding=1, bias=False),
            InPlaceABN(out_channels),
            nn.Dropout2d(0.1),
            nn.Conv2d(out_channels, num_classes, kernel_size=1, bias=True),
        )

    def forward(self, x: torch.Tensor, recurrence: int = 1) -> torch.Tensor:
        context = self.conva(x)
        for _ in range(recurrence):
            context = self.cca(context)
        context = self.convb(context)
        return self.bottleneck(torch.cat([x, context], 1))


def bn_relu(channels: int) -> nn.Sequential:
    """openseg's ``ModuleHelper.BNReLU(channels, bn_type="torchbn")``."""
    return nn.Sequential(nn.BatchNorm2d(channels), nn.ReLU())


class OfficialSelfAttentionBlock2D(nn.Module):
    """openseg's ``SelfAttentionBlock2D`` (isa_block.py).

    ``f_key`` and ``f_query``: conv 1x1 (no bias) in -> key, BNReLU, conv 1x1
    key -> key, BNReLU; ``f_value``: conv 1x1 (no bias) in -> value; ``W``:
    conv 1x1 (no bias) value -> out, BNReLU.  Attention over all positions of
    each input map, energies scaled by ``key_channels ** -0.5``.
    """

    def __init__(
        self, in_channels: int, key_channels: int, value_channels: int, out_channels: int
    ) -> None:
        super().__init__()
        self.key_channels, self.value_channels = key_channels, value_channels

        def two_layers() -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(in_channels, key_channels, kernel_size=1, bias=False),
                bn_relu(key_channels),
                nn.Conv2d(key_channels, key_channels, kernel_size=1, bias=False),
                bn_relu(key_channels),
            )

        self.f_key = two_layers()
        self.f_query = two_layers()
        self.f_value = nn.Conv2d(in_channels, value_channels, kernel_size=1, bias=False)
        self.W = nn.Sequential(
            nn.Conv2d(value_channels, out_channels, kernel_size=1, bias=False),
            bn_relu(out_channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        value = self.f_value(x).reshape(n, self.value_channels, h * w).transpose(1, 2)
        query = self.f_query(x).reshape(n, self.key_channels, h * w).transpose(1, 2)
        key = self.f_key(x).reshape(n, self.key_channels, h * w)
        similarity = F.softmax(self.key_channels**-0.5 * (query @ key), dim=-1)
        context = (similarity @ value).transpose(1, 2).reshape(n, self.value_channels, h, w)
        return self.W(context)


class OfficialISABlock(nn.Module):
    """openseg's ``ISA_Block`` (isa_block.py).

    Pad to multiples of ``down_factor`` (``pad // 2`` before, the rest after),
    long-range attention on the (B dh dw, C, out_h, out_w) view, short-range
    attention on the (B out_h out_w, C, dh, dw) view, back, crop.
    """

    def __init__(
        self,
        in_channels: int,
        key_channels: int,
        value_channels: int,
        out_channels: int,
        down_factor: tuple[int, int] = (8, 8),
    ) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.down_factor = down_factor
        self.long_range_sa = OfficialSelfAttentionBlock2D(
            in_channels, key_channels, value_channels, out_channels
        )
        self.short_range_sa = OfficialSelfAttentionBlock2D(
            out_channels, key_channels, value_channels, out_channels
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        dh, dw = self.down_factor
        out_h, out_w = math.ceil(h / dh), math.ceil(w / dw)
        pad_h, pad_w = out_h * dh - h, out_w * dw - w
        feats = F.pad(x, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))
        # long range: one map per offset (a, b) inside the block
        feats = feats.reshape(n, c, out_h, dh, out_w, dw).permute(0, 3, 5, 1, 2, 4)
        feats = self.long_range_sa(feats.reshape(n * dh * dw, c, out_h, out_w))
        c = self.out_channels
        # short range: one map per block (m, n)
        feats = feats.reshape(n, dh, dw, c, out_h, out_w).permute(0, 4, 5, 3, 1, 2)
        feats = self.short_range_sa(feats.reshape(n * out_h * out_w, c, dh, dw))
        feats = feats.reshape(n, out_h, out_w, c, dh, dw).permute(0, 3, 1, 4, 2, 5)
        feats = feats.reshape(n, c, out_h * dh, out_w * dw)
        return feats[:, :, pad_h // 2 : pad_h // 2 + h, pad_w // 2 : pad_w // 2 + w]


class OfficialISAModule(nn.Module):
    """openseg's ``ISA_Module`` (isa_block.py) with one down factor.

    ``stages`` holds one ``ISA_Block``; ``conv_bn``: conv 1x1 (no bias) on
    ``[x, context]`` (in + out channels) -> out, BNReLU, Dropout2d.
    """

    def __init__(
        self,
        in_channels: int,
        key_channels: int,
        value_channels: int,
        out_channels: int,
        down_factor: tuple[int, int] = (8, 8),
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.stages = nn.ModuleList(
            [OfficialISABlock(in_channels, key_channels, value_channels, out_channels, down_factor)]
        )
        self.conv_bn = nn.Sequential(
            nn.Conv2d(in_channels + out_channels, out_channels, kernel_size=1, bias=False),
            bn_relu(out_channels),
            nn.Dropout2d(dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        context = self.stages[0](x)
        return self.conv_bn(torch.cat([x, context], dim=1))


class OfficialISANetHead(nn.Module):
    """The head of openseg's ``ISANet`` (isanet.py), at any width.

    ``isa_head``: conv 3x3 (``bias=False``) C_in -> C, BNReLU, ``ISA_Module(C,
    key C // 2, value C, out C, dropout 0.05)``; ``cls_head``: conv 1x1 (with
    bias) -> classes.  The published code fixes C_in = 2048, C = 512.
    """

    def __init__(
        self, in_channels: int, channels: int, num_classes: int, down_factor: tuple[int, int]
    ) -> None:
        super().__init__()
        self.isa_head = nn.Sequential(
            nn.Conv2d(in_channels, channels, kernel_size=3, stride=1, padding=1, bias=False),
            bn_relu(channels),
            OfficialISAModule(
                channels, channels // 2, channels, channels, down_factor, dropout=0.05
            ),
        )
        self.cls_head = nn.Conv2d(channels, num_classes, kernel_size=1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cls_head(self.isa_head(x))


class OfficialCCNetNonLocal(nn.Module):
    """The book's dense comparison block: CCA's layers, every position (not from the paper).

    ``query_conv``/``key_conv`` (C -> C // 8), ``value_conv`` (C -> C), 1x1 with
    bias; ``softmax_p(q(u) . k(p))`` over all N positions; ``gamma * out + x``.
    """

    def __init__(self, in_dim: int) -> None:
        super().__init__()
        self.query_conv = nn.Conv2d(in_dim, in_dim // 8, kernel_size=1)
        self.key_conv = nn.Conv2d(in_dim, in_dim // 8, kernel_size=1)
        self.value_conv = nn.Conv2d(in_dim, in_dim, kernel_size=1)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        query = self.query_conv(x).reshape(b, -1, h * w)  # (B, C', N)
        key = self.key_conv(x).reshape(b, -1, h * w)
        value = self.value_conv(x).reshape(b, c, h * w)
        attention = F.softmax(query.transpose(1, 2) @ key, dim=-1)  # (B, N, N), rows = queries
        out = (value @ attention.transpose(1, 2)).reshape(b, c, h, w)
        return self.gamma * out + x


class OfficialEmbeddedGaussianNonLocal(nn.Module):
    """Wang et al.'s embedded-Gaussian non-local block (their eq. 1-3 and 6).

    ``theta``, ``phi``, ``g``: 1x1 conv C -> C_i; ``f = softmax(theta^T phi)``;
    ``W_z``: 1x1 conv C_i -> C followed by BatchNorm; ``z = W_z(f g) + x``.
    """

    def __init__(self, in_channels: int, inter_channels: int) -> None:
        super().__init__()
        self.theta = nn.Conv2d(in_channels, inter_channels, 1)
        self.phi = nn.Conv2d(in_channels, inter_channels, 1)
        self.g = nn.Conv2d(in_channels, inter_channels, 1)
        self.W = nn.Sequential(
            nn.Conv2d(inter_channels, in_channels, 1), nn.BatchNorm2d(in_channels)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        theta = self.theta(x).flatten(2).transpose(1, 2)  # (B, N, C_i)
        phi = self.phi(x).flatten(2)  # (B, C_i, N)
        g = self.g(x).flatten(2).transpose(1, 2)  # (B, N, C_i)
        y = F.softmax(theta @ phi, dim=-1) @ g  # (B, N, C_i)
        return self.W(y.transpose(1, 2).reshape(b, -1, h, w)) + x


# ---------------------------------------------------------------------------
# Role-by-role weight copy and comparison
# ---------------------------------------------------------------------------


def _identity(t: torch.Tensor) -> torch.Tensor:
    return t


def _leaky(t: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(t, 0.01)


@dataclass(frozen=True)
class Role:
    """One layer (or one loose parameter) of the official module and its place in ours.

    ``ours_then`` maps our layer's output to what the official layer outputs,
    for the comparison of intermediate outputs: InPlace-ABN is BN and leaky
    ReLU in one layer, ours keeps the activation separate.
    """

    official: str  # dotted path in the restatement
    ours: str  # dotted path in our module
    ours_then: Callable[[torch.Tensor], torch.Tensor] = _identity


def pretty(path: str) -> str:
    """``long_range.query.1.0`` -> ``long_range.query[1][0]``."""
    out = ""
    for part in path.split("."):
        out += f"[{part}]" if part.isdigit() else (f".{part}" if out else part)
    return out


def _resolve(module: nn.Module, path: str) -> nn.Module | nn.Parameter | None:
    target: nn.Module | nn.Parameter = module
    for part in path.split("."):
        if isinstance(target, nn.Module) and part in target._modules:
            target = target._modules[part]
        elif isinstance(target, nn.Module) and part in target._parameters:
            target = target._parameters[part]
        else:
            return None
    return target


def _describe(layer: nn.Module | nn.Parameter) -> str:
    if isinstance(layer, nn.Conv2d):
        k = "x".join(map(str, layer.kernel_size))
        return (
            f"Conv2d({layer.in_channels}->{layer.out_channels}, {k}, bias={layer.bias is not None})"
        )
    if isinstance(layer, nn.BatchNorm2d):
        return f"BatchNorm2d({layer.num_features})"
    if isinstance(layer, nn.Dropout2d):
        return f"Dropout2d(p={layer.p})"
    if isinstance(layer, nn.Parameter):
        return f"parameter of shape {tuple(layer.shape)}"
    return type(layer).__name__


def _check_same_kind(label: str, official: nn.Module | nn.Parameter, ours) -> None:
    def fail(what: str) -> None:
        raise AssertionError(
            f"{label}: {what} (official {_describe(official)}, ours {_describe(ours)})"
        )

    if isinstance(official, nn.Parameter):
        if not isinstance(ours, nn.Parameter) or official.numel() != ours.numel():
            fail("not the same parameter")
        return
    for kind in (nn.Conv2d, nn.BatchNorm2d, nn.Dropout2d):
        if isinstance(official, kind):
            if not isinstance(ours, kind):
                fail(f"ours is not a {kind.__name__}")
            break
    else:
        raise TypeError(f"{label}: no rule to copy a {type(official).__name__}")
    if isinstance(official, nn.Conv2d):
        for attr in (
            "in_channels",
            "out_channels",
            "kernel_size",
            "stride",
            "padding",
            "dilation",
            "groups",
        ):
            if getattr(official, attr) != getattr(ours, attr):
                fail(f"{attr} differs")
        if (official.bias is None) != (ours.bias is None):
            fail("one has a bias, the other not")
    elif isinstance(official, nn.BatchNorm2d):
        for attr in ("num_features", "eps", "affine", "track_running_stats"):
            if getattr(official, attr) != getattr(ours, attr):
                fail(f"{attr} differs")
    elif official.p != ours.p:
        fail("the dropout probability differs")


def _tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer that carries state, by dotted name."""
    named = dict(module.named_parameters())
    named.update(
        (name, buffer)
        for name, buffer in module.named_buffers()
        if not name.endswith("num_batches_tracked")
    )
    return named


def _local(layer: nn.Module | nn.Parameter) -> list[tuple[str, torch.Tensor]]:
    if isinstance(layer, nn.Parameter):
        return [("", layer)]
    tensors = list(layer.named_parameters(recurse=False)) + list(layer.named_buffers(recurse=False))
    return [(n, t) for n, t in tensors if n != "num_batches_tracked"]


def copy_roles(name: str, official: nn.Module, ours: nn.Module, roles: list[Role]) -> None:
    """Copy every role's weights from ``official`` into ``ours``; fail naming the layer.

    Raises ``AssertionError`` when a role has no counterpart in ``ours``, when
    the two layers differ in kind or shape, or when a weight of either module
    belongs to no role (a layer one side has and the other lacks).
    """
    covered_official: set[int] = set()
    covered_ours: set[int] = set()
    for role in roles:
        label = f"{name} {pretty(role.ours)}"
        source = _resolve(official, role.official)
        if source is None:
            raise LookupError(f"the restatement has no {role.official!r} (a bug in this test)")
        target = _resolve(ours, role.ours)
        if target is None:
            raise AssertionError(
                f"{label}: ours has no such layer; the official {pretty(role.official)} is a "
                f"{_describe(source)}"
            )
        _check_same_kind(label, source, target)
        ours_local = dict(_local(target))
        with torch.no_grad():
            for key, tensor in _local(source):
                ours_local[key].copy_(tensor.reshape(ours_local[key].shape))
                covered_official.add(id(tensor))
                covered_ours.add(id(ours_local[key]))
    for side, module, covered in [
        ("official", official, covered_official),
        ("ours", ours, covered_ours),
    ]:
        for key, tensor in _tensors(module).items():
            if id(tensor) not in covered:
                layer = key.rsplit(".", 1)[0] if "." in key else key
                raise AssertionError(
                    f"{name}: {side} {pretty(layer)} ({key}) has no counterpart on the other side"
                )


def randomise(module: nn.Module, seed: int) -> nn.Module:
    """Non-trivial weights: random BN statistics and affine parameters, gamma != 0."""
    generator = torch.Generator().manual_seed(seed)

    def uniform(t: torch.Tensor, low: float, high: float) -> None:
        t.copy_(low + (high - low) * torch.rand(t.shape, generator=generator, dtype=t.dtype))

    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                uniform(m.running_mean, -0.5, 0.5)
                uniform(m.running_var, 0.5, 2.0)
                uniform(m.weight, 0.5, 1.5)
                uniform(m.bias, -0.2, 0.6)  # mostly positive: ReLUs stay partly open
            elif isinstance(m, nn.Conv2d):
                fan_in = m.in_channels * m.kernel_size[0] * m.kernel_size[1]
                uniform(m.weight, -((3 / fan_in) ** 0.5), (3 / fan_in) ** 0.5)
                if m.bias is not None:
                    uniform(m.bias, -0.3, 0.3)
        for key, p in module.named_parameters():
            if key.endswith("gamma") or key.endswith("gamma.scale"):
                p.fill_(0.7)
    return module


def _record(module: nn.Module, roles: list[Role], side: str):
    """Forward hooks on every module role: ``(outputs by role, first-call order, handles)``.

    Outputs are cloned at once: our ReLUs work in place on the BN output.
    """
    outputs: dict[str, list[torch.Tensor]] = {}
    order: list[str] = []
    handles = []
    for role in roles:
        layer = _resolve(module, role.official if side == "official" else role.ours)
        if isinstance(layer, nn.Module):
            then = _identity if side == "official" else role.ours_then

            def hook(_m, _inputs, output, key=role.ours, then=then):
                if key not in outputs:
                    order.append(key)
                outputs.setdefault(key, []).append(then(output.detach().clone()))

            handles.append(layer.register_forward_hook(hook))
    return outputs, order, handles


def check_equivalent(
    name: str,
    official: nn.Module,
    ours: nn.Module,
    roles: list[Role],
    x: torch.Tensor,
    run_official=None,
    run_ours=None,
) -> None:
    """Copy ``official``'s weights into ``ours`` and compare outputs and gradients.

    When the outputs differ, the message names the first role (in the order
    the official forward reached it) whose layer output differs.
    """
    run_official = run_official or (lambda m, t: m(t))
    run_ours = run_ours or (lambda m, t: m(t))
    official, ours = official.double().eval(), ours.double().eval()
    copy_roles(name, official, ours, roles)

    outputs, results = {}, {}
    for side, module, run in [("official", official, run_official), ("ours", ours, run_ours)]:
        recorded, order, handles = _record(module, roles, side)
        inp = x.detach().clone().requires_grad_(True)
        y = run(module, inp)
        for h in handles:
            h.remove()
        outputs[side] = (recorded, order)
        upstream = torch.linspace(-1, 1, y.numel(), dtype=y.dtype).reshape(y.shape)
        (y * upstream).sum().backward()
        results[side] = (y.detach(), inp.grad)

    y_off, g_off = results["official"]
    y_ours, g_ours = results["ours"]
    if y_off.shape != y_ours.shape or not torch.allclose(y_off, y_ours, **TOL):
        recorded_off, order = outputs["official"]
        recorded_ours, _ = outputs["ours"]
        for key in order:
            a, b = recorded_off[key], recorded_ours.get(key, [])
            same = len(a) == len(b) and all(
                s.shape == t.shape and torch.allclose(s, t, **TOL)
                for s, t in zip(a, b, strict=False)
            )
            if not same:
                official_path = next(r.official for r in roles if r.ours == key)
                raise AssertionError(
                    f"{name}: outputs differ; the first layer whose output differs is "
                    f"ours {pretty(key)} (official {pretty(official_path)})"
                )
        raise AssertionError(
            f"{name}: outputs differ, but every copied layer computes the same: the difference "
            "is in what lies between the layers (the attention, padding, permutations)"
        )
    torch.testing.assert_close(y_ours, y_off, **TOL, msg=lambda m: f"{name} output: {m}")
    torch.testing.assert_close(g_ours, g_off, **TOL, msg=lambda m: f"{name} input grad: {m}")
    for role in roles:
        source, target = _resolve(official, role.official), _resolve(ours, role.ours)
        for (key, s), (_, t) in zip(_local(source), _local(target), strict=True):
            if isinstance(s, nn.Parameter):
                torch.testing.assert_close(
                    t.grad.reshape(s.shape),
                    s.grad,
                    **TOL,
                    msg=lambda m, key=key, role=role: (
                        f"{name} {pretty(role.ours)} {key} gradient: {m}"
                    ),
                )


# ---------------------------------------------------------------------------
# Role tables
# ---------------------------------------------------------------------------


def cca_roles(prefix_official: str = "", prefix_ours: str = "", gamma: str = "gamma"):
    po, pu = prefix_official, prefix_ours
    return [
        Role(po + "query_conv", pu + "query"),
        Role(po + "key_conv", pu + "key"),
        Role(po + "value_conv", pu + "value"),
        Role(po + gamma, pu + "gamma"),
    ]


def issa_step_roles(official: str, ours: str) -> list[Role]:
    """One ``SelfAttentionBlock2D`` -> one :class:`~ccnet_edu.issa.SelfAttentionBlock`."""
    roles = []
    for off_proj, our_proj in [("f_query", "query"), ("f_key", "key")]:
        for layer in range(2):  # the two conv + BN + ReLU layers
            roles.append(Role(f"{official}.{off_proj}.{2 * layer}", f"{ours}.{our_proj}.{layer}.0"))
            roles.append(
                Role(f"{official}.{off_proj}.{2 * layer + 1}.0", f"{ours}.{our_proj}.{layer}.1")
            )
    roles.append(Role(f"{official}.f_value", f"{ours}.value"))
    roles.append(Role(f"{official}.W.0", f"{ours}.out_proj.0"))
    roles.append(Role(f"{official}.W.1.0", f"{ours}.out_proj.1"))
    return roles


def issa_block_roles(official: str = "", ours: str = "") -> list[Role]:
    return issa_step_roles(official + "long_range_sa", ours + "long_range") + issa_step_roles(
        official + "short_range_sa", ours + "short_range"
    )


def x_input(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------
# CCNet and mmcv
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(7, 5), (1, 6), (6, 1), (4, 4)])
def test_cca_equals_ccnet_criss_cross_attention(size):
    official = randomise(OfficialCrissCrossAttention(16), seed=1)
    ours = CrissCrossAttention(16)
    check_equivalent("CCA vs CCNet", official, ours, cca_roles(), x_input(2, 16, *size))


@pytest.mark.parametrize("size", [(7, 5), (2, 9), (4, 4)])
def test_cca_equals_mmcv_einsum_criss_cross_attention(size):
    official = randomise(OfficialMmcvCrissCrossAttention(16), seed=2)
    ours = CrissCrossAttention(16)
    roles = cca_roles(gamma="gamma.scale")
    check_equivalent("CCA vs mmcv", official, ours, roles, x_input(2, 16, *size, seed=1))


def rcca_roles() -> list[Role]:
    roles = [Role("conva.0", "conva.0"), Role("conva.1", "conva.1", _leaky)]
    roles += cca_roles("cca.", "rcca.cca.")
    roles += [Role("convb.0", "convb.0"), Role("convb.1", "convb.1", _leaky)]
    roles += [
        Role("bottleneck.0", "bottleneck.0.0"),
        Role("bottleneck.1", "bottleneck.0.1", _leaky),
        Role("bottleneck.2", "bottleneck.1"),
        Role("bottleneck.3", "classifier"),
    ]
    return roles


@pytest.mark.parametrize("recurrence", [1, 2])
def test_rcca_head_equals_ccnet_rcca_module(recurrence):
    official = randomise(OfficialRCCAModule(64, 512, 5), seed=3)
    ours = RCCAHead(64, 5, recurrence=recurrence, activation="leaky_relu")
    check_equivalent(
        f"RCCAHead(R={recurrence}) vs CCNet RCCAModule",
        official,
        ours,
        rcca_roles(),
        x_input(2, 64, 7, 5, seed=2),
        run_official=lambda m, t: m(t, recurrence=recurrence),
    )


# ---------------------------------------------------------------------------
# ISSA
# ---------------------------------------------------------------------------

# (H, W, block): padding odd and even in each direction, no padding, block larger than the map
ISSA_CASES = [(7, 5, (3, 2)), (5, 7, (4, 4)), (6, 4, (3, 2)), (3, 5, (8, 8))]


@pytest.mark.parametrize("height,width,block", ISSA_CASES)
def test_issa_equals_openseg_isa_block(height, width, block):
    official = randomise(OfficialISABlock(6, 3, 5, 4, down_factor=block), seed=4)
    ours = InterlacedSparseSelfAttention(6, block, key_channels=3, value_channels=5, out_channels=4)
    x = x_input(2, 6, height, width, seed=3)
    check_equivalent("ISSA vs ISA_Block", official, ours, issa_block_roles(), x)


@pytest.mark.parametrize("height,width,block", [(7, 5, (3, 2)), (9, 10, (4, 4))])
def test_isa_head_equals_openseg_isanet_head(height, width, block):
    official = randomise(OfficialISANetHead(24, 6, 5, down_factor=block), seed=5)
    ours = ISAHead(24, 5, channels=6, block_size=block)
    roles = [Role("isa_head.0", "reduce.0"), Role("isa_head.1.0", "reduce.1")]
    roles += issa_block_roles("isa_head.2.stages.0.", "issa.")
    roles += [
        Role("isa_head.2.conv_bn.0", "fuse.0.0"),
        Role("isa_head.2.conv_bn.1.0", "fuse.0.1"),
        Role("isa_head.2.conv_bn.2", "fuse.1"),
        Role("cls_head", "classifier"),
    ]
    x = x_input(2, 24, height, width, seed=4)
    check_equivalent("ISAHead vs ISANet head", official, ours, roles, x)


# ---------------------------------------------------------------------------
# Non-local
# ---------------------------------------------------------------------------


def test_nonlocal_equals_ccnet_comparison_block():
    official = randomise(OfficialCCNetNonLocal(16), seed=6)
    ours = NonLocal2d(16)
    check_equivalent(
        "NonLocal2d vs CCNet's non-local", official, ours, cca_roles(), x_input(2, 16, 5, 7, seed=5)
    )


def test_nonlocal_original_equals_embedded_gaussian_block():
    official = randomise(OfficialEmbeddedGaussianNonLocal(8, 4), seed=7)
    ours = NonLocal2d(8, mode="original")
    roles = [
        Role("theta", "theta"),
        Role("phi", "phi"),
        Role("g", "g"),
        Role("W.0", "w_z.0"),
        Role("W.1", "w_z.1"),
    ]
    check_equivalent(
        "NonLocal2d(original) vs Wang et al.", official, ours, roles, x_input(2, 8, 5, 7, seed=6)
    )


# ---------------------------------------------------------------------------
# The checks fail, and say where, when the structure differs
# ---------------------------------------------------------------------------


def test_missing_second_query_layer_is_named():
    """ISSA with one conv + BN + ReLU layer in its query (the structure before this fix)."""
    official = randomise(OfficialISABlock(6, 3, 5, 4, down_factor=(3, 2)), seed=8)
    ours = InterlacedSparseSelfAttention(
        6, (3, 2), key_channels=3, value_channels=5, out_channels=4
    )
    ours.long_range.query = ours.long_range.query[:1]
    with pytest.raises(
        AssertionError,
        match=r"ISSA long_range\.query\[1\]\[0\]: ours has no "
        r"such layer.*Conv2d\(3->3, 1x1, bias=False\)",
    ):
        check_equivalent("ISSA", official, ours, issa_block_roles(), x_input(1, 6, 7, 5))


def test_other_key_width_is_named():
    official = randomise(OfficialISABlock(6, 3, 5, 4, down_factor=(3, 2)), seed=9)
    ours = InterlacedSparseSelfAttention(
        6, (3, 2), key_channels=2, value_channels=5, out_channels=4
    )
    with pytest.raises(
        AssertionError,
        match=r"ISSA long_range\.query\[0\]\[0\]: "
        r"out_channels differs",
    ):
        check_equivalent("ISSA", official, ours, issa_block_roles(), x_input(1, 6, 7, 5))


def test_layer_without_official_counterpart_is_named():
    """A role table that forgets a layer: the uncovered weights are reported by name."""
    official = randomise(OfficialISABlock(6, 3, 5, 4, down_factor=(3, 2)), seed=10)
    ours = InterlacedSparseSelfAttention(
        6, (3, 2), key_channels=3, value_channels=5, out_channels=4
    )
    roles = [r for r in issa_block_roles() if r.ours != "short_range.value"]
    with pytest.raises(AssertionError, match=r"official short_range_sa\.f_value .*no counterpart"):
        copy_roles("ISSA", official.double(), ours.double(), roles)


def test_different_activation_names_the_first_differing_layer():
    """Same weights, ReLU instead of InPlace-ABN's leaky ReLU: the query conv sees other inputs."""
    official = randomise(OfficialRCCAModule(64, 512, 5), seed=11)
    ours = RCCAHead(64, 5, recurrence=2, activation="relu")
    with pytest.raises(
        AssertionError,
        match=r"first layer whose output differs is ours "
        r"rcca\.cca\.query \(official cca\.query_conv\)",
    ):
        check_equivalent(
            "RCCAHead",
            official,
            ours,
            rcca_roles(),
            x_input(2, 64, 7, 5),
            run_official=lambda m, t: m(t, recurrence=2),
        )


def test_other_dropout_is_named():
    official = randomise(OfficialISANetHead(24, 6, 5, down_factor=(3, 2)), seed=12)
    ours = ISAHead(24, 5, channels=6, block_size=(3, 2), dropout=0.1)
    with pytest.raises(AssertionError, match=r"fuse\[1\]: the dropout probability differs"):
        copy_roles("ISAHead", official, ours, [Role("isa_head.2.conv_bn.2", "fuse.1")])
