"""Attention maps as data: ``{module: {step: (N, N)}}`` over the cells of a feature grid.

Row ``u`` of a dense (N, N) attention matrix (:mod:`ccnet_edu.dense`) says
how much query pixel ``u`` takes from each pixel; reshaped to ``(h, w)`` it
is the *attention map* of ``u``.  This module collects the maps of a trained
:class:`~ccnet_edu.models.SegmentationModel` (:func:`model_attention_maps`),
builds the support of SA's pooled attention (:func:`squeeze_support`), and
reads maps for drawing (:func:`flatten_maps`, :func:`query_map_array`).
The maps of the untrained modules on a photograph are in
:mod:`ccnet_edu.viz.photos`.

SA has no pairwise attention: its attention branch average-pools the
features over windows and runs a 3x3 convolution on the pooled grid, so what
a pixel's attention value depends on is its own window and the neighbouring
windows.  Its "map" here is that support, uniformly weighted.
"""

from __future__ import annotations

import numpy as np
import torch

from .._checks import check_index, check_positive_pair, check_tensor
from ..dense import (
    criss_cross_attention_to_dense,
    issa_attention_to_dense,
    query_map,
    recurrent_attention_to_dense,
)
from ._args import check_grid, check_image

__all__ = [
    "squeeze_support",
    "model_attention_maps",
    "flatten_maps",
    "query_map_array",
]

Maps = dict[str, dict[str, torch.Tensor]]


def squeeze_support(grid: tuple[int, int], pool: int | tuple[int, int]) -> torch.Tensor:
    """(N, N) float: uniform weights over the pixels SA's attention branch pools for each pixel.

    Pixel ``u`` lies in one ``pool`` window; the 3x3 convolution on the pooled
    grid mixes that window with its 8 neighbours; rows sum to one.
    """
    h, w = check_grid(grid)
    p_h, p_w = check_positive_pair("pool", pool)
    wy = torch.arange(h) // p_h
    wx = torch.arange(w) // p_w
    win_y = wy[:, None].expand(h, w).reshape(-1)  # (N,) window row of each pixel
    win_x = wx[None, :].expand(h, w).reshape(-1)
    near = ((win_y[:, None] - win_y[None, :]).abs() <= 1) & (
        (win_x[:, None] - win_x[None, :]).abs() <= 1
    )  # (N, N)
    near = near.double()
    return near / near.sum(1, keepdim=True)


def squeeze_reach(grid: tuple[int, int], pool: int | tuple[int, int]) -> torch.Tensor:
    """(H, W) int64: how many pixels SA's attention branch draws on for each pixel.

    The pixel's own ``pool`` window and its (up to) 8 neighbouring windows: the
    support of :func:`squeeze_support`, counted per pixel without building the
    ``(N, N)`` matrix, so it also serves large grids.  Separable: the count is
    the product of the counts along the rows and along the columns.
    """
    h, w = check_grid(grid)
    p_h, p_w = check_positive_pair("pool", pool)

    def along(n: int, p: int) -> torch.Tensor:
        window = torch.arange(n) // p
        return ((window[:, None] - window[None, :]).abs() <= 1).sum(1)  # (n,)

    return along(h, p_h)[:, None] * along(w, p_w)[None, :]


@torch.no_grad()
def model_attention_maps(
    model: torch.nn.Module, image: torch.Tensor
) -> tuple[Maps, tuple[int, int]]:
    """The attention maps of a trained :class:`~ccnet_edu.models.SegmentationModel` on ``image``.

    image: (3, H, W).  Returns ``({module: {step: (N, N)}}, (h, w))`` on the
    feature grid (stride 8).  The FCN head has no attention: ``{}``.
    """
    from ..models import SegmentationModel

    if not isinstance(model, SegmentationModel):
        raise TypeError(f"model must be a SegmentationModel, got {type(model).__name__}")
    check_image(image)
    model.eval()
    out = model(image[None], return_all=True)
    grid = tuple(out["features"].shape[-2:])
    attention = out["attention"]
    head = model.config["head"]
    context = model.head.context
    if head in ("rcca1", "rcca2"):
        loops = {
            f"loop {r + 1}": criss_cross_attention_to_dense(a)[0] for r, a in enumerate(attention)
        }
        if len(attention) > 1:
            loops["loops 1+2"] = recurrent_attention_to_dense(attention)[0]
        return {"CCA": loops}, grid
    if head == "nonlocal":
        return {"non-local": {"dense": attention[0]}}, grid
    if head == "isa":
        block = context.block_size
        steps = {
            name: issa_attention_to_dense(attention, *grid, block, step)[0]
            for name, step in (("long", "long"), ("short", "short"), ("combined", "combined"))
        }
        return {"ISSA": steps}, grid
    if head == "sa":
        return {"SA": {"pooled support": squeeze_support(grid, context.pool)}}, grid
    if head == "axial":
        from ..axial import axial_attention_to_dense

        attention_height, attention_width = attention
        steps = {
            "height pass": axial_attention_to_dense(attention_height)[0],
            "both passes": axial_attention_to_dense(attention_height, attention_width)[0],
        }
        return {"axial": steps}, grid
    return {}, grid


def flatten_maps(maps: Maps) -> dict[str, torch.Tensor]:
    """``{module: {step: A}}`` -> ``{"module · step": A}`` (single-step modules keep their name)."""
    if not isinstance(maps, dict) or not all(isinstance(v, dict) for v in maps.values()):
        raise TypeError("maps must be a nested dict {module: {step: (N, N) tensor}}")
    flat = {}
    for module, steps in maps.items():
        for step, matrix in steps.items():
            flat[module if len(steps) == 1 else f"{module} · {step}"] = matrix
    return flat


def query_map_array(
    matrix: torch.Tensor, query: tuple[int, int], grid: tuple[int, int]
) -> np.ndarray:
    """Row ``u = i W + j`` of one dense (N, N) attention as an (h, w) numpy array, for drawing.

    :func:`ccnet_edu.dense.query_map` on a single matrix (no batch), given the
    query as a pair and the grid as ``(h, w)``.
    """
    check_tensor("matrix", matrix, dim=2, layout="(N, N)")
    h, w = check_grid(grid)
    i, j = check_index("query", query, (h, w))
    if matrix.shape[-2:] != (h * w, h * w):
        raise ValueError(f"matrix must be (N, N) with N = {h * w}, got {tuple(matrix.shape)}")
    return query_map(matrix[None], i, j, h, w)[0].double().numpy()


def check_maps(maps: object, grid: tuple[int, int] | None = None) -> dict[str, torch.Tensor]:
    """``maps`` (nested or flat) as a flat ``{title: (N, N)}`` dict, each matrix checked.

    The argument check of every function that draws maps (not public: not in ``__all__``).
    """
    if not isinstance(maps, dict):
        raise TypeError(f"maps must be a dict, got {type(maps).__name__}")
    if not maps:
        raise ValueError("maps is empty: nothing to draw")
    nested = isinstance(next(iter(maps.values())), dict)
    flat = flatten_maps(maps) if nested else maps
    for title, matrix in flat.items():
        check_tensor(f"maps[{title!r}]", matrix, dim=2, layout="(N, N)")
        if grid is not None and tuple(matrix.shape) != (grid[0] * grid[1],) * 2:
            n = grid[0] * grid[1]
            raise ValueError(
                f"maps[{title!r}] must be (N, N) with N = {n} for grid {grid}, got "
                f"{tuple(matrix.shape)}"
            )
    return flat
