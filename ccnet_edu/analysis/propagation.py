"""How far information travels: exact reachability and measured influence.

Two views of "which input pixels can output pixel ``u`` see?".

**Reachability** is about the attention *pattern* alone.  With ``M`` the
boolean ``N x N`` matrix of allowed pairs (``M[u, p]``: ``u`` attends to
``p``), one attention step moves information along the edges of ``M``, and
``R`` steps along the paths of length ``R``: the boolean power ``M^R``.  For
criss-cross attention ``M^1`` is the cross and ``M^2`` is all ones, the
argument of the CCNet paper for its two loops (Huang et al., ICCV 2019,
Sec. 3.3); for ISSA the short-range step follows the long-range one, so the
pattern is the boolean product ``M_S · M_L`` of their group patterns (Huang,
Yuan et al., arXiv 1907.12273, Sec. 3).  The book's chapter *Recurrent
criss-cross attention* proves both.

**Influence** is measured on a real module with real (random) weights: the
gradient of output pixel ``u`` with respect to the input,
``I(p) = Σ_c |∂(Σ_c' y[c', u]) / ∂x[c, p]|``, the quantity Luo et al. (2016)
call the *effective receptive field*.  Reachability says where the influence
*may* be non-zero; the gradient says where it *is*, and how large.

The influence is measured with the module in ``eval()`` mode: in training
mode a BatchNorm layer normalises with statistics of the whole batch and
map, which makes every output depend on every input whatever the attention
pattern (a 1x1 convolution followed by BatchNorm would "reach" every pixel).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from ..dense import criss_cross_mask

__all__ = [
    "boolean_matmul",
    "boolean_power",
    "criss_cross_reachability",
    "issa_reachability",
    "influence_map",
    "conv_stack",
]


def boolean_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``(a @ b)[u, p] = OR_v a[u, v] AND b[v, p]`` for bool matrices: a path ``u -> v -> p``."""
    if a.dtype != torch.bool or b.dtype != torch.bool:
        raise TypeError(f"a and b must be bool tensors, got {a.dtype} and {b.dtype}")
    # Counting paths in float32 is exact here (at most N <= 2^24 paths per entry).
    return (a.float() @ b.float()) > 0


def boolean_power(mask: torch.Tensor, power: int) -> torch.Tensor:
    """``mask^power`` in boolean arithmetic: who reaches whom in ``power`` steps."""
    if not isinstance(power, int) or power < 1:
        raise ValueError(f"power must be an int >= 1, got {power!r}")
    result = mask
    for _ in range(power - 1):
        result = boolean_matmul(result, mask)
    return result


def criss_cross_reachability(height: int, width: int, recurrence: int = 1) -> torch.Tensor:
    """Bool (N, N), ``N = H W``: can output ``u`` depend on input ``p`` after ``R`` CCA loops?

    The residual ``y = gamma * out + x`` only adds ``u -> u``, which the
    cross already contains, so the answer is exactly ``M^R``.
    """
    return boolean_power(criss_cross_mask(height, width), recurrence)


def issa_reachability(
    height: int, width: int, block_size: int | tuple[int, int] = (8, 8)
) -> torch.Tensor:
    """Bool (N', N') on ISSA's padded grid: the pattern of ``A_S · A_L``.

    The long-range step first (pattern ``M_L``), then the short-range step
    (``M_S``): the product ``M_S · M_L``.  ``u`` reaches ``p`` when some ``v``
    in ``u``'s block shares ``p``'s offset.
    """
    from ..issa import interlaced_masks

    long_mask, short_mask = interlaced_masks(height, width, block_size)
    return boolean_matmul(short_mask, long_mask)


def influence_map(
    module: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    pixel: tuple[int, int],
    *,
    eval_mode: bool = True,
) -> torch.Tensor:
    """Measured influence of every input pixel on output pixel ``pixel``: (H, W) float.

    ``I(p) = Σ_c |∂ s / ∂x[0, c, p]|`` with ``s = Σ_c' y[0, c', u]``, the
    gradient of the channel sum of output pixel ``u = pixel`` of the first
    image (Luo et al., 2016).  Exactly zero where ``y[u]`` does not depend on
    ``x[p]``.  ``module`` may return ``y`` or a tuple starting with ``y``.

    An :class:`~torch.nn.Module` is measured in ``eval()`` mode, and every
    submodule gets its own previous ``training`` flag back afterwards.  In
    training mode BatchNorm normalises with the statistics of the whole batch
    and map, so every output would depend on every input whatever the
    attention pattern.  ``eval_mode=False`` measures the module in the mode it
    is in (to show that effect).  A plain function is called as it is: put the
    modules it uses in ``eval()`` yourself.
    """
    if x.dim() != 4:
        raise ValueError(f"x must have shape (B, C, H, W), got {tuple(x.shape)}")
    i, j = pixel
    height, width = x.shape[2:]
    if not (0 <= i < height and 0 <= j < width):
        raise ValueError(f"pixel must lie inside the {height} x {width} map, got {pixel}")
    # Remember every submodule's own flag: module.train(previous) would not restore a mix.
    modes = [(m, m.training) for m in module.modules()] if isinstance(module, nn.Module) else []
    if eval_mode and isinstance(module, nn.Module):
        module.eval()
    try:
        x = x.detach().requires_grad_(True)
        with torch.enable_grad():
            y = module(x)
            y = y[0] if isinstance(y, (tuple, list)) else y
            (grad,) = torch.autograd.grad(y[0, :, i, j].sum(), x)
    finally:
        for m, training in modes:
            m.training = training
    return grad[0].abs().sum(dim=0).detach()  # (H, W)


def conv_stack(
    channels: int, depth: int, kernel_size: int = 3, activation: bool = True
) -> nn.Sequential:
    """``depth`` same-padded ``k x k`` convolutions (+ ReLU): the local baseline.

    Its theoretical receptive field grows by ``k - 1`` per layer; its
    *effective* one (:func:`influence_map`) is concentrated near the centre
    (Luo et al., 2016).
    """
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers.append(nn.Conv2d(channels, channels, kernel_size, padding=kernel_size // 2))
        if activation:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def reach_fraction(reachability: torch.Tensor) -> float:
    """Fraction of (u, p) pairs that are reachable."""
    return reachability.float().mean().item()


def mean_influence(
    module: Callable[[torch.Tensor], torch.Tensor],
    inputs: Sequence[torch.Tensor],
    pixel: tuple[int, int],
    *,
    eval_mode: bool = True,
) -> torch.Tensor:
    """:func:`influence_map` averaged over several inputs, (H, W) (``eval()`` as there)."""
    maps = [influence_map(module, x, pixel, eval_mode=eval_mode) for x in inputs]
    return torch.stack(maps).mean(0)


__all__ += ["reach_fraction", "mean_influence"]
