"""A photograph and the attention maps of every module on it, without training.

The photographs ship inside the scikit-image wheel (:data:`PHOTOS`), so
nothing is downloaded.  :func:`photo_attention_maps` returns the maps of the
non-local block, CCA (one and two loops), ISSA (long, short, combined) and
SA on one of them, in the ``{module: {step: (N, N)}}`` layout of
:mod:`ccnet_edu.viz.maps`.

Maps on a photograph without training
-------------------------------------
An untrained module has random projections, so its maps are noise.  To get
maps that mean something we choose the query and key features by hand: each
grid cell gets ``f = (L*, a*, b*) / 100`` (its CIELAB colour; Lab distances
roughly follow perceived colour differences) plus its position ``(y, x)``
scaled by ``position_weight``, and the energy between ``u`` and ``p`` is

.. math:: e(u, p) = -\\lVert f_u - f_p \\rVert^2 / \\tau .

This is still dot-product attention: with ``q_u = (2 f_u, -1) / \\tau`` and
``k_p = (f_p, \\lVert f_p \\rVert^2)`` we get ``q_u \\cdot k_p = e(u, p) +
\\lVert f_u \\rVert^2/\\tau``, and the last term is the same for every key of
``u`` so the softmax ignores it.  These ``q, k`` go through the library's own
functions (:func:`ccnet_edu.functional.criss_cross_attention`,
:func:`ccnet_edu.dense.dense_attention`), so a pixel attends to pixels of
similar colour, nearby ones a little more: the kind of affinity a trained
segmentation network learns.  Between loops (CCA) and steps (ISSA) the
features are kept the same, as if ``gamma = 0``: the maps show the pattern
of each module with content-dependent weights.
"""

from __future__ import annotations

import numpy as np
import torch

from .._checks import check_float, check_positive_pair, check_str
from ..dense import (
    criss_cross_attention_to_dense,
    dense_attention,
    interlaced_masks,
    recurrent_attention_to_dense,
)
from ..functional import criss_cross_attention
from ._args import check_grid, check_image
from .maps import Maps, squeeze_support

__all__ = ["PHOTOS", "load_photo", "colour_position_features", "photo_attention_maps"]

# Sample images that ship inside the scikit-image wheel (no download).
PHOTOS = ("chelsea", "astronaut", "coffee")


def load_photo(name: str = "chelsea", size: tuple[int, int] = (192, 288)) -> torch.Tensor:
    """A scikit-image sample photograph as a (3, H, W) float tensor in [0, 1].

    Only images bundled in the scikit-image package are offered (``PHOTOS``),
    so nothing is fetched from the network.  The photo is resized
    (antialiased bilinear) to ``size``.
    """
    check_str("name", name)
    if name not in PHOTOS:
        raise ValueError(f"name must be one of {PHOTOS} (bundled with scikit-image), got {name!r}")
    size = check_grid(size, "size")
    import skimage.data

    array = getattr(skimage.data, name)()  # (H0, W0, 3) uint8
    image = torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1).float() / 255
    image = torch.nn.functional.interpolate(
        image[None], size=size, mode="bilinear", antialias=True, align_corners=False
    )[0]
    return image.clamp(0, 1)


def colour_position_features(
    image: torch.Tensor, grid: tuple[int, int], position_weight: float = 0.5
) -> torch.Tensor:
    """Hand-made features of each grid cell: CIELAB colour / 100 and weighted (y, x).

    image: (3, H, W) in [0, 1]; returns (1, 5, h, w) float64 for ``grid = (h, w)``.
    Positions run over [0, 1] along the longer side, so distances are isotropic.
    """
    from skimage.color import rgb2lab

    check_image(image)
    h, w = check_grid(grid)
    position_weight = check_float("position_weight", position_weight, minimum=0.0)
    small = torch.nn.functional.adaptive_avg_pool2d(image[None].double(), (h, w))[0]  # (3, h, w)
    lab = torch.from_numpy(rgb2lab(small.permute(1, 2, 0).numpy())).permute(2, 0, 1) / 100
    side = max(h, w)
    ys = torch.arange(h, dtype=torch.float64)[:, None].expand(h, w) / side
    xs = torch.arange(w, dtype=torch.float64)[None, :].expand(h, w) / side
    pos = torch.stack([ys, xs]) * position_weight
    return torch.cat([lab, pos])[None]  # (1, 5, h, w)


def _gaussian_qk(features: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """q, k with ``q_u . k_p = -|f_u - f_p|^2 / tau`` + a per-query constant (see module doc)."""
    squared = (features * features).sum(1, keepdim=True)  # (B, 1, h, w)
    query = torch.cat([2 * features, -torch.ones_like(squared)], 1) / temperature
    key = torch.cat([features, squared], 1)
    return query, key  # (B, C+1, h, w) each


def photo_attention_maps(
    image: torch.Tensor,
    grid: tuple[int, int] = (24, 36),
    *,
    temperature: float = 0.02,
    position_weight: float = 0.5,
    block_size: tuple[int, int] = (6, 6),
    pool: int = 6,
) -> Maps:
    """Untrained but meaningful attention maps of every module on ``image`` (see module doc).

    Returns ``{module: {step: (N, N) float64}}`` on the ``grid`` (h, w), N = h w:
    ``"non-local"``: dense; ``"CCA"``: ``"loop 1"``, ``"loops 1+2"``;
    ``"ISSA"``: ``"long"``, ``"short"``, ``"combined"``; ``"SA"``: ``"pooled support"``.
    ``grid`` must be a multiple of ``block_size`` (no padding, so every row sums to one).
    """
    check_image(image)
    h, w = check_grid(grid)
    temperature = check_float("temperature", temperature, minimum=0.0, exclusive_minimum=True)
    position_weight = check_float("position_weight", position_weight, minimum=0.0)
    block_size = check_positive_pair("block_size", block_size)
    check_positive_pair("pool", pool)
    if h % block_size[0] or w % block_size[1]:
        raise ValueError(f"grid {grid} must be a multiple of block_size {block_size}")
    features = colour_position_features(image, grid, position_weight)  # (1, 5, h, w)
    query, key = _gaussian_qk(features, temperature)
    value = features  # any value: only the attention is used

    _, dense = dense_attention(query, key, value, return_attention=True)  # (1, N, N)
    _, cross = criss_cross_attention(query, key, value, return_attention=True)  # (1, h, w, h+w-1)
    # ISSA's two steps are dense attention restricted to their groups (ISSA, Sec. 3).
    long_mask, short_mask = interlaced_masks(h, w, block_size)
    _, long_step = dense_attention(query, key, value, mask=long_mask, return_attention=True)
    _, short_step = dense_attention(query, key, value, mask=short_mask, return_attention=True)
    return {
        "non-local": {"dense": dense[0]},
        "CCA": {
            "loop 1": criss_cross_attention_to_dense(cross)[0],
            "loops 1+2": recurrent_attention_to_dense([cross, cross])[0],
        },
        "ISSA": {
            "long": long_step[0],
            "short": short_step[0],
            "combined": (short_step @ long_step)[0],
        },
        "SA": {"pooled support": squeeze_support(grid, pool)},
    }
