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

from .._checks import (
    check_bool,
    check_callable,
    check_feature_map,
    check_index,
    check_int,
    check_same_device,
    check_tensor,
)
from ..dense import criss_cross_mask

__all__ = [
    "boolean_matmul",
    "boolean_power",
    "criss_cross_reachability",
    "issa_reachability",
    "axial_reachability",
    "influence_map",
    "conv_stack",
    "linear_stack",
]


# --------------------------------------------------------------------------- argument checks


def _check_bool_matrix(name: str, mask: object) -> torch.Tensor:
    """A non-empty (N, M) tensor of dtype ``torch.bool``."""
    return check_tensor(name, mask, dim=2, kind="bool", layout="(N, M)")


def _check_bool_matrices(a: object, b: object) -> None:
    """Two bool matrices whose product is defined, on one device."""
    _check_bool_matrix("a", a)
    _check_bool_matrix("b", b)
    if a.shape[1] != b.shape[0]:
        raise ValueError(
            f"a and b must chain (a's columns = b's rows), got a {tuple(a.shape)} "
            f"and b {tuple(b.shape)}"
        )
    check_same_device(a=a, b=b)


def _check_power(mask: object, power: object) -> None:
    """A square bool matrix and an int power >= 1."""
    _check_bool_matrix("mask", mask)
    if mask.shape[0] != mask.shape[1]:
        raise ValueError(f"mask must be square (N, N), got {tuple(mask.shape)}")
    check_int("power", power, minimum=1)


def _check_influence_args(module: object, x: object, pixel: object, eval_mode: object) -> None:
    """``module`` callable, ``x`` a (B, C, H, W) float map, ``pixel`` a pixel of it."""
    check_callable("module", module)
    check_feature_map("x", x)
    check_index("pixel", pixel, tuple(x.shape[2:]))
    check_bool("eval_mode", eval_mode)


def _check_conv_stack(
    channels: object, depth: object, kernel_size: object, activation: object
) -> None:
    """Channels and depth >= 1, an odd kernel size (``same`` padding), a bool activation."""
    check_int("channels", channels, minimum=1)
    check_int("depth", depth, minimum=1)
    if check_int("kernel_size", kernel_size, minimum=1) % 2 == 0:
        raise ValueError(
            f"kernel_size must be odd (same padding k // 2 keeps the size), got {kernel_size}"
        )
    check_bool("activation", activation)


def _check_layers(layers: object, channels: object) -> None:
    """A non-empty list of ``(kernel, dilation, stride)`` triples: odd kernel, all >= 1."""
    check_int("channels", channels, minimum=1)
    if not isinstance(layers, (list, tuple)):
        raise TypeError(
            "layers must be a list or tuple of (kernel, dilation, stride) triples, "
            f"got {type(layers).__name__}"
        )
    if len(layers) == 0:
        raise ValueError("layers must not be empty")
    for k, layer in enumerate(layers):
        if not isinstance(layer, (list, tuple)) or len(layer) != 3:
            raise TypeError(
                f"layers[{k}] must be a (kernel, dilation, stride) triple, got {layer!r}"
            )
        kernel, dilation, stride = layer
        if check_int(f"layers[{k}] kernel", kernel, minimum=1) % 2 == 0:
            raise ValueError(f"layers[{k}] kernel must be odd (centred taps), got {kernel}")
        check_int(f"layers[{k}] dilation", dilation, minimum=1)
        check_int(f"layers[{k}] stride", stride, minimum=1)


def _check_inputs(inputs: object) -> None:
    """A non-empty list or tuple of (B, C, H, W) float maps of one spatial size."""
    if not isinstance(inputs, (list, tuple)):
        raise TypeError(
            f"inputs must be a list or tuple of (B, C, H, W) tensors, got {type(inputs).__name__}"
        )
    if len(inputs) == 0:
        raise ValueError("inputs must not be empty")
    for k, x in enumerate(inputs):
        check_feature_map(f"inputs[{k}]", x)
        if x.shape[2:] != inputs[0].shape[2:]:
            raise ValueError(
                f"inputs[{k}] must have the H, W of inputs[0], {tuple(inputs[0].shape[2:])}, "
                f"got {tuple(x.shape[2:])}"
            )


def boolean_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``(a @ b)[u, p] = OR_m a[u, m] AND b[m, p]`` for bool matrices: a path ``u -> m -> p``."""
    _check_bool_matrices(a, b)
    # Counting paths in float32 is exact here (at most N <= 2^24 paths per entry).
    return (a.float() @ b.float()) > 0


def boolean_power(mask: torch.Tensor, power: int) -> torch.Tensor:
    """``mask^power`` in boolean arithmetic: who reaches whom in ``power`` steps."""
    _check_power(mask, power)
    result = mask
    for _ in range(power - 1):
        result = boolean_matmul(result, mask)
    return result


def criss_cross_reachability(height: int, width: int, recurrence: int = 1) -> torch.Tensor:
    """Bool (N, N), ``N = H W``: can output ``u`` depend on input ``p`` after ``R`` CCA loops?

    The residual ``y = gamma * out + x`` only adds ``u -> u``, which the
    cross already contains, so the answer is exactly ``M^R``.
    """
    check_int("recurrence", recurrence, minimum=1)
    return boolean_power(criss_cross_mask(height, width), recurrence)


def axial_reachability(height: int, width: int) -> torch.Tensor:
    """Bool (N, N), ``N = H W``: can output ``u`` depend on input ``p`` after one axial layer?

    The height pass first (pattern ``M_h``: same column), then the width pass
    (``M_w``: same row): the product ``M_w · M_h``, every entry True -- ``u``
    reaches ``p`` through the pixel in ``u``'s row and ``p``'s column.
    """
    from ..axial import axial_mask

    return boolean_matmul(axial_mask(height, width, "width"), axial_mask(height, width, "height"))


def issa_reachability(
    height: int, width: int, block_size: int | tuple[int, int] = (8, 8)
) -> torch.Tensor:
    """Bool (N', N') on ISSA's padded grid: the pattern of ``A_S · A_L``.

    The long-range step first (pattern ``M_L``), then the short-range step
    (``M_S``): the product ``M_S · M_L``.  ``u`` reaches ``p`` when some ``m``
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
    _check_influence_args(module, x, pixel, eval_mode)
    i, j = pixel
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
    _check_conv_stack(channels, depth, kernel_size, activation)
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers.append(nn.Conv2d(channels, channels, kernel_size, padding=kernel_size // 2))
        if activation:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def linear_stack(layers: Sequence[tuple[int, int, int]], channels: int = 4) -> nn.Sequential:
    """Convolutions without activations, one per ``(kernel, dilation, stride)`` triple.

    Layer ``l`` is a ``k x k`` convolution with dilation ``d`` and stride ``s``,
    padded by ``d * (k // 2)`` so that its taps are centred.  All three fields are
    used: its receptive field is the recursion ``r_l = r_(l-1) + (k - 1) d J_(l-1)``,
    ``J_l = J_(l-1) s`` (``J`` the jump, in input pixels), which
    :func:`influence_map` measures on its output pixels.
    """
    _check_layers(layers, channels)
    return nn.Sequential(
        *[
            nn.Conv2d(channels, channels, k, stride=s, dilation=d, padding=d * (k // 2))
            for k, d, s in layers
        ]
    )


def reach_fraction(reachability: torch.Tensor) -> float:
    """Fraction of (u, p) pairs that are reachable."""
    _check_bool_matrix("reachability", reachability)
    return reachability.float().mean().item()


def mean_influence(
    module: Callable[[torch.Tensor], torch.Tensor],
    inputs: Sequence[torch.Tensor],
    pixel: tuple[int, int],
    *,
    eval_mode: bool = True,
) -> torch.Tensor:
    """:func:`influence_map` averaged over several inputs, (H, W) (``eval()`` as there)."""
    _check_inputs(inputs)
    maps = [influence_map(module, x, pixel, eval_mode=eval_mode) for x in inputs]
    return torch.stack(maps).mean(0)


def erf_width(influence: torch.Tensor, centre: int | None = None) -> float:
    """Width ``sigma_ERF`` of an (H, W) influence map: RMS distance from the output pixel's row.

    The map is normalised to sum to one and summed over its columns, which
    gives the share of the influence in each row ``i``; the width is
    ``sqrt(Σ_i share_i · (i - centre)^2)``, in pixels: the root mean square
    distance of the row marginal from the output pixel's row (the book's
    ``sigma_ERF``, after Luo et al., 2016), taken about that row, not about the
    marginal's mean, so it is a standard deviation only for a map centred
    there.  ``centre`` is the row of the measured output pixel (default
    ``H // 2``, the centre of an odd map).
    """
    check_tensor("influence", influence, dim=2, kind="float", layout="(H, W)")
    height = influence.shape[0]
    centre = height // 2 if centre is None else check_int("centre", centre, minimum=0)
    if centre >= height:
        raise ValueError(f"centre must be a row of the map, in [0, {height}), got {centre}")
    values = influence.detach().double()
    if bool((values < 0).any()) or not bool(torch.isfinite(values).all()):
        raise ValueError("influence must be finite and non-negative (an influence_map)")
    total = values.sum()
    if not total > 0:
        raise ValueError("influence must not be all zero")
    offsets = torch.arange(height, dtype=torch.float64, device=values.device) - centre
    share = values.sum(1) / total  # (H,): share of the influence in each row
    return float(torch.sqrt((share * offsets**2).sum()))


__all__ += ["reach_fraction", "mean_influence", "erf_width"]


# --------------------------------------------------------------------------- a model's logit reach


MAX_REACH_SIZE = 512


def logit_reach(
    model: nn.Module, *, period: int = 8, size: int = 96, seed: int = 0
) -> torch.Tensor:
    """How far a segmentation model's output pixel reads its input, per position in its cell.

    Returns a ``(period, 4)`` int64 tensor: row ``k`` gives, for an output
    pixel ``(r, c)`` with ``r % period == c % period == k``, how many input
    pixels up, down, left and right its logits can draw on: the extent of the
    non-zero gradient of their channel sum (:func:`influence_map`), measured
    in float64 on a copy of ``model`` in ``eval()`` mode with its ReLUs made
    identities (:func:`ccnet_edu.layers.relu_free_copy`: a ReLU that is off for
    the input measured would hide the paths through it), on one random
    ``(1, 3, size, size)`` input of ``seed``.  With an output stride of
    ``period`` and bilinear upsampling the reach is not symmetric and depends
    on where the pixel lies in its cell, which is why it is given per offset
    and per direction.  The pixels measured lie in the middle of the image;
    a :class:`ValueError` says so if their support touches the border (then
    the reach is cut off by the image: use a larger ``size``).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    period = check_int("period", period, minimum=1, maximum=MAX_REACH_SIZE)
    size = check_int("size", size, minimum=2 * period, maximum=MAX_REACH_SIZE)
    seed = check_int("seed", seed, minimum=0)
    from ..layers import relu_free_copy

    net = relu_free_copy(model).double().eval()
    device = next((p.device for p in net.parameters()), torch.device("cpu"))
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(1, 3, size, size, dtype=torch.float64, generator=gen).to(device)
    base = (size // 2) // period * period
    reach = torch.zeros(period, 4, dtype=torch.int64)
    for k in range(period):
        r = base + k
        support = influence_map(net, x, (r, r)).cpu() > 0
        rows = support.any(1).nonzero().flatten()
        cols = support.any(0).nonzero().flatten()
        if len(rows) == 0:
            raise ValueError(f"the output pixel ({r}, {r}) does not depend on the input")
        edges = (int(rows.min()), int(rows.max()), int(cols.min()), int(cols.max()))
        if edges[0] == 0 or edges[2] == 0 or edges[1] == size - 1 or edges[3] == size - 1:
            raise ValueError(
                f"size={size} is too small: the support of pixel ({r}, {r}) reaches the border"
            )
        reach[k] = torch.tensor([r - edges[0], edges[1] - r, r - edges[2], edges[3] - r])
    return reach


def _check_reach(reach: object) -> torch.Tensor:
    check_tensor("reach", reach, dim=2, kind="int", layout="(period, 4)")
    if reach.shape[1] != 4 or reach.shape[0] < 1:
        raise ValueError(f"reach must be (period, 4), got {tuple(reach.shape)}")
    if bool((reach < 0).any()):
        raise ValueError("reach must not be negative")
    return reach


def support_meets_beacon(sample: dict, reach: torch.Tensor) -> torch.Tensor:
    """Pixels of a beacon sample whose logits can draw on a beacon pixel: (S, S) bool.

    ``sample`` comes from :func:`ccnet_edu.data.make_sample`, ``reach`` from
    :func:`logit_reach`.  Pixel ``(r, c)`` reads the input rectangle of rows
    ``r - up .. r + down`` and columns ``c - left .. c + right`` (the reach of
    its offset ``(r % period, c % period)``); the result is True where that
    rectangle meets the beacon square.
    """
    if not isinstance(sample, dict) or not {"label", "beacon_corner", "beacon_size"} <= set(sample):
        raise TypeError("sample must be a dict from make_sample (label, beacon_corner, ...)")
    reach = _check_reach(reach)
    period = reach.shape[0]
    size = sample["label"].shape[-1]
    br, bc = sample["beacon_corner"]
    last = int(sample["beacon_size"]) - 1
    index = torch.arange(size)
    up, down, left, right = reach[index % period].unbind(1)
    rows = (index - up <= br + last) & (index + down >= br)  # (S,): rows reading a beacon row
    cols = (index - left <= bc + last) & (index + right >= bc)
    return rows[:, None] & cols[None, :]


__all__ += ["logit_reach", "support_meets_beacon"]
