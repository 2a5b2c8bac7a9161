"""Building blocks shared by the models: one home for the conv + BN + ReLU layer.

The segmentation heads of CCNet, ISANet and SANet, and the small backbone of
:mod:`ccnet_edu.models`, stack the same three layers again and again: a
convolution with "same" padding, a batch norm and a ReLU.  Every caller says
its kernel size: the papers use 1x1 and 3x3 convolutions side by side, and a
default would hide which one a layer is.
"""

from __future__ import annotations

from torch import nn

from ._checks import check_bool, check_channels, check_int

__all__ = ["conv_bn_relu", "relu_free_copy"]


def conv_bn_relu(
    in_channels: int, out_channels: int, kernel_size: int, *, stride: int = 1, bias: bool = False
) -> nn.Sequential:
    """``Conv2d`` (padding ``kernel_size // 2``) + ``BatchNorm2d`` + ``ReLU``, indexed 0, 1, 2.

    No conv bias by default: the batch norm that follows subtracts the mean
    and would cancel it.  ``bias=True`` is there for code that restates an
    original which keeps one.  The children are numbered ``0, 1, 2`` (an
    ``nn.Sequential``), so the parameter names in a state dict are
    ``<name>.0.weight``, ``<name>.1.weight``, ``<name>.1.bias``, ...
    """
    check_channels("in_channels", in_channels, minimum=1)
    check_channels("out_channels", out_channels, minimum=1)
    check_int("kernel_size", kernel_size, minimum=1)
    check_int("stride", stride, minimum=1)
    check_bool("bias", bias)
    return nn.Sequential(
        nn.Conv2d(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=kernel_size // 2,
            bias=bias,
        ),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def relu_free_copy(module: nn.Module) -> nn.Module:
    """A deep copy of ``module`` with every ``nn.ReLU`` replaced by ``nn.Identity``.

    For measuring which inputs an output can read through the layers (a receptive field, a
    reach) from a gradient: a ReLU that is off for the input measured zeroes the gradient of
    every path through it although the output does read those pixels, and a pixel whose
    paths all pass such ReLUs would be missed.  Without them a network of convolutions,
    batch norms (in eval mode: in training mode a batch norm links every pixel of the batch
    through its statistics) and ReLUs is linear, and with random weights and input a gradient that
    cancels to zero has probability zero.  A network with other nonlinearities (an
    attention's softmax) keeps them, and a branch scaled by a weight that is zero (CCNet's
    ``gamma`` as initialised) still adds nothing to the gradient.  ``module`` itself is not
    changed; a bare ``nn.ReLU`` gives an ``nn.Identity``.
    """
    import copy

    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be an nn.Module, got {type(module).__name__}")
    if isinstance(module, nn.ReLU):
        return nn.Identity()
    clone = copy.deepcopy(module)
    for parent in clone.modules():
        for name, child in parent.named_children():
            if isinstance(child, nn.ReLU):
                setattr(parent, name, nn.Identity())
    return clone
