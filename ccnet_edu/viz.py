"""Attention maps, drawn: static figures, an interactive explorer, and an offline animation.

Every attention mechanism of the library can be written as a dense ``N x N``
matrix ``A`` over the ``N = H W`` positions of a feature grid
(:mod:`ccnet_edu.dense`): row ``u`` of ``A`` says how much query pixel ``u``
takes from each pixel ``p``.  Reshaped to ``(H, W)`` and laid over the
image, that row is the *attention map* of ``u``.  This module

* computes such maps for a real photograph **without training**
  (:func:`photo_attention_maps`) and for the trained models of
  :mod:`ccnet_edu.models` (:func:`model_attention_maps`);
* draws them (:func:`plot_query_maps`), together with the patterns behind
  them: the criss-cross mask (:func:`plot_criss_cross_mask`), ISSA's groups
  (:func:`plot_issa_groups`) and what a pixel can reach after each loop
  (:func:`plot_reachability`);
* offers an ipywidgets explorer for JupyterLab (:func:`explorer`) and, for
  the rendered book where no kernel runs, a self-contained HTML/JS animation
  stepping through query pixels (:func:`attention_animation_html`).

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

SA has no pairwise attention: its attention branch average-pools the
features over windows and runs a 3x3 convolution on the pooled grid, so what
a pixel's attention value depends on is its own window and the neighbouring
windows.  Its "map" here is that support, uniformly weighted.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import matplotlib
import numpy as np
import torch
from matplotlib import pyplot as plt
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure

from ._checks import (
    check_bool,
    check_float,
    check_index,
    check_int,
    check_positive_pair,
    check_str,
    check_tensor,
)
from .dense import (
    criss_cross_attention_to_dense,
    criss_cross_mask,
    dense_attention,
    interlaced_masks,
    issa_attention_to_dense,
    recurrent_attention_to_dense,
)
from .functional import criss_cross_attention

__all__ = [
    "PHOTOS",
    "load_photo",
    "colour_position_features",
    "photo_attention_maps",
    "model_attention_maps",
    "squeeze_support",
    "flatten_maps",
    "query_map",
    "plot_query_maps",
    "plot_criss_cross_mask",
    "plot_issa_groups",
    "plot_reachability",
    "plot_segmentation",
    "attention_animation",
    "attention_animation_html",
    "offline_jshtml",
    "explorer",
    "figure_to_png",
]

# Sample images that ship inside the scikit-image wheel (no download).
PHOTOS = ("chelsea", "astronaut", "coffee")

Maps = dict[str, dict[str, torch.Tensor]]


# --------------------------------------------------------------------------- argument checks


def _check_image(image: object, name: str = "image") -> torch.Tensor:
    """An RGB image (3, H, W), floating point."""
    check_tensor(name, image, dim=3, kind="float", layout="(3, H, W)")
    assert isinstance(image, torch.Tensor)
    if image.shape[0] != 3:
        raise ValueError(f"{name} must have 3 channels (RGB) first, got shape {tuple(image.shape)}")
    return image


def _check_grid(grid: object, name: str = "grid") -> tuple[int, int]:
    """A grid size ``(h, w)``: a pair (not one int) of ints >= 1."""
    if not isinstance(grid, (tuple, list, torch.Size)):
        raise TypeError(f"{name} must be a pair (h, w) of ints, got {type(grid).__name__}")
    return check_positive_pair(name, grid)


def _flat_maps(maps: object, grid: tuple[int, int] | None = None) -> dict[str, torch.Tensor]:
    """``maps`` (nested or flat) as a flat ``{title: (N, N)}`` dict, each matrix checked."""
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


def _check_queries(queries: object, grid: tuple[int, int]) -> list[tuple[int, int]]:
    if isinstance(queries, (str, bytes)) or not isinstance(queries, Sequence):
        raise TypeError(f"queries must be a list of (i, j) pairs, got {type(queries).__name__}")
    if len(queries) == 0:
        raise ValueError("queries must not be empty")
    return [check_index(f"queries[{k}]", q, grid) for k, q in enumerate(queries)]


# --------------------------------------------------------------------------- the photograph


def load_photo(name: str = "chelsea", size: tuple[int, int] = (192, 288)) -> torch.Tensor:
    """A scikit-image sample photograph as a (3, H, W) float tensor in [0, 1].

    Only images bundled in the scikit-image package are offered (``PHOTOS``),
    so nothing is fetched from the network.  The photo is resized
    (antialiased bilinear) to ``size``.
    """
    check_str("name", name)
    if name not in PHOTOS:
        raise ValueError(f"name must be one of {PHOTOS} (bundled with scikit-image), got {name!r}")
    size = _check_grid(size, "size")
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

    _check_image(image)
    h, w = _check_grid(grid)
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


def squeeze_support(grid: tuple[int, int], pool: int | tuple[int, int]) -> torch.Tensor:
    """(N, N) float: uniform weights over the pixels SA's attention branch pools for each pixel.

    Pixel ``u`` lies in one ``pool`` window; the 3x3 convolution on the pooled
    near ones, rows sum to one.
    """
    h, w = _check_grid(grid)
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
    _check_image(image)
    h, w = _check_grid(grid)
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


@torch.no_grad()
def model_attention_maps(
    model: torch.nn.Module, image: torch.Tensor
) -> tuple[Maps, tuple[int, int]]:
    """The attention maps of a trained :class:`~ccnet_edu.models.SegmentationModel` on ``image``.

    image: (3, H, W).  Returns ``({module: {step: (N, N)}}, (h, w))`` on the
    feature grid (stride 8).  The FCN head has no attention: ``{}``.
    """
    from .models import SegmentationModel

    if not isinstance(model, SegmentationModel):
        raise TypeError(f"model must be a SegmentationModel, got {type(model).__name__}")
    _check_image(image)
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


def query_map(matrix: torch.Tensor, query: tuple[int, int], grid: tuple[int, int]) -> np.ndarray:
    """Row ``u = i W + j`` of a dense (N, N) attention as an (h, w) numpy array."""
    check_tensor("matrix", matrix, dim=2, layout="(N, N)")
    h, w = _check_grid(grid)
    i, j = check_index("query", query, (h, w))
    if matrix.shape[-2:] != (h * w, h * w):
        raise ValueError(f"matrix must be (N, N) with N = {h * w}, got {tuple(matrix.shape)}")
    return matrix[i * w + j].reshape(h, w).double().numpy()


# --------------------------------------------------------------------------- static figures


def _gray(image: torch.Tensor) -> np.ndarray:
    return (0.3 * image[0] + 0.59 * image[1] + 0.11 * image[2]).numpy()


def _overlay(
    ax: plt.Axes, image: torch.Tensor, amap: np.ndarray, query: tuple[int, int], title: str
) -> None:
    """Grey image, the map on top (scaled to its own maximum), the query cell outlined."""
    height, width = image.shape[-2:]
    h, w = amap.shape
    ax.imshow(_gray(image), cmap="gray", vmin=0, vmax=1)
    peak = amap.max() if amap.max() > 0 else 1.0
    ax.imshow(
        amap / peak, cmap="inferno", alpha=0.65, vmin=0, vmax=1,
        extent=(-0.5, width - 0.5, height - 0.5, -0.5), interpolation="nearest",
    )
    cell_h, cell_w = height / h, width / w
    i, j = query
    ax.add_patch(
        plt.Rectangle(
            (j * cell_w - 0.5, i * cell_h - 0.5), cell_w, cell_h,
            fill=False, edgecolor="cyan", linewidth=1.5,
        )
    )
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])


def plot_query_maps(
    image: torch.Tensor,
    maps: Maps | dict[str, torch.Tensor],
    grid: tuple[int, int],
    queries: Sequence[tuple[int, int]],
    *,
    panel_size: float = 2.2,
) -> Figure:
    """One row per query pixel (cell of ``grid``), one column per map, over ``image``.

    ``maps`` is nested ``{module: {step: (N, N)}}`` or flat ``{title: (N, N)}``.
    Each panel is scaled to its own maximum (a dense map spreads its weight over
    N pixels, a criss-cross map over H + W - 1: absolute colours would hide one).
    """
    _check_image(image)
    grid = _check_grid(grid)
    flat = _flat_maps(maps, grid)
    queries = _check_queries(queries, grid)
    panel_size = check_float("panel_size", panel_size, minimum=0.0, exclusive_minimum=True)
    rows, cols = len(queries), len(flat) + 1
    height, width = image.shape[-2:]
    aspect = height / width
    fig, axes = plt.subplots(
        rows, cols, figsize=(panel_size * cols, panel_size * aspect * rows + 0.3), squeeze=False
    )
    for r, query in enumerate(queries):
        ax = axes[r, 0]
        ax.imshow(image.permute(1, 2, 0).numpy())
        h, w = grid
        ax.plot((query[1] + 0.5) * width / w - 0.5, (query[0] + 0.5) * height / h - 0.5,
                marker="+", color="cyan", markersize=12, markeredgewidth=2)
        ax.set_title(f"query {query}", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        for c, (title, matrix) in enumerate(flat.items(), start=1):
            _overlay(axes[r, c], image, query_map(matrix, query, grid), query, title)
    fig.tight_layout()
    return fig


def plot_criss_cross_mask(height: int, width: int, query: tuple[int, int]) -> Figure:
    """The criss-cross set of ``query`` on the grid, and the whole (N, N) mask."""
    height = check_int("height", height, minimum=1)
    width = check_int("width", width, minimum=1)
    i, j = check_index("query", query, (height, width))
    mask = criss_cross_mask(height, width)  # (N, N) bool
    fig, (left, right) = plt.subplots(1, 2, figsize=(8, 4))
    left.imshow(mask[i * width + j].reshape(height, width).numpy(), cmap="Blues", vmin=0, vmax=1.3)
    left.plot(j, i, "r*", markersize=12)
    left.set_title(f"criss-cross set of {query}: H+W-1 = {height + width - 1} pixels", fontsize=9)
    left.set_xticks(range(width))
    left.set_yticks(range(height))
    left.tick_params(labelsize=6)
    right.imshow(mask.numpy(), cmap="Blues", interpolation="nearest")
    right.set_title(f"mask M (N x N, N = {height * width}): row u = query u", fontsize=9)
    right.set_xlabel("key position p")
    right.set_ylabel("query position u")
    fig.tight_layout()
    return fig


def plot_issa_groups(height: int, width: int, block_size: tuple[int, int]) -> Figure:
    """ISSA's groups on the grid: long-range (same offset in the block) and short-range (blocks).

    Each group gets its own colour; numbers give the group index.  The grid must
    be a multiple of the block size (the book's figures avoid padding).
    """
    height = check_int("height", height, minimum=1)
    width = check_int("width", width, minimum=1)
    p_h, p_w = block_size = check_positive_pair("block_size", block_size)
    if height % p_h or width % p_w:
        raise ValueError(f"grid ({height}, {width}) must be a multiple of block_size {block_size}")
    ys = torch.arange(height)[:, None].expand(height, width)
    xs = torch.arange(width)[None, :].expand(height, width)
    long_id = (ys % p_h) * p_w + (xs % p_w)  # offset inside the block
    short_id = (ys // p_h) * (width // p_w) + (xs // p_w)  # which block
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.2))
    for ax, ids, title in (
        (axes[0], long_id, f"long-range step: {p_h * p_w} groups, pixels {block_size} apart"),
        (axes[1], short_id, f"short-range step: {int(short_id.max()) + 1} blocks of {block_size}"),
    ):
        n = int(ids.max()) + 1
        colours = plt.get_cmap("tab20")(np.arange(n) % 20)
        ax.imshow(ids.numpy(), cmap=ListedColormap(colours), vmin=-0.5, vmax=n - 0.5)
        if height * width <= 400:
            for (y, x), g in np.ndenumerate(ids.numpy()):
                ax.text(x, y, str(g), ha="center", va="center", fontsize=6)
        ax.set_title(title, fontsize=9)
        ax.set_xticks(np.arange(-0.5, width, p_w))
        ax.set_yticks(np.arange(-0.5, height, p_h))
        ax.set_xticklabels([])
        ax.set_yticklabels([])
        ax.grid(color="k", linewidth=1.2)
    fig.tight_layout()
    return fig


def plot_reachability(
    height: int,
    width: int,
    query: tuple[int, int],
    *,
    loops: int = 2,
    block_size: tuple[int, int] | None = None,
) -> Figure:
    """Which pixels can influence ``query`` after each CCA loop (boolean powers of the mask).

    Row ``u`` of ``M^r`` (M = criss-cross mask) is the set reached after ``r``
    loops; with ``block_size`` a second row shows ISSA after its long and its
    short step (``L`` then ``S L``).
    """
    height = check_int("height", height, minimum=1)
    width = check_int("width", width, minimum=1)
    query = check_index("query", query, (height, width))
    loops = check_int("loops", loops, minimum=1)
    if block_size is not None:
        block_size = check_positive_pair("block_size", block_size)
        if height % block_size[0] or width % block_size[1]:
            raise ValueError(
                f"grid ({height}, {width}) must be a multiple of block_size {block_size}"
            )
    mask = criss_cross_mask(height, width).double()
    u = query[0] * width + query[1]
    rows = [[(f"CCA after loop {r}", None) for r in range(1, loops + 1)]]
    reach = torch.eye(height * width, dtype=torch.float64)
    cca_maps = []
    for _ in range(loops):
        reach = (mask @ reach).clamp(max=1)
        cca_maps.append(reach[u].reshape(height, width))
    issa_maps = []
    if block_size is not None:
        long_mask, short_mask = (m.double() for m in interlaced_masks(height, width, block_size))
        if long_mask.shape[0] != height * width:
            raise ValueError(f"grid ({height}, {width}) must be a multiple of block_size")
        both = (short_mask @ long_mask).clamp(max=1)  # S L: long step first
        issa_maps = [
            ("ISSA after the long step", long_mask[u].reshape(height, width)),
            ("ISSA after long + short", both[u].reshape(height, width)),
        ]
    ncols = max(loops, len(issa_maps))
    nrows = 2 if issa_maps else 1
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.8 * ncols, 2.8 * nrows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    panels = [[(t, m) for (t, _), m in zip(rows[0], cca_maps, strict=True)], issa_maps]
    for r, row in enumerate(panels[:nrows]):
        for c, (title, m) in enumerate(row):
            ax = axes[r, c]
            ax.axis("on")
            ax.imshow(m.numpy(), cmap="Greens", vmin=0, vmax=1.2)
            ax.plot(query[1], query[0], "r*", markersize=10)
            reached = int(m.sum())
            ax.set_title(f"{title}\n{reached}/{height * width} pixels", fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
    fig.tight_layout()
    return fig


def plot_segmentation(
    images: torch.Tensor, labels: torch.Tensor, predictions: dict[str, torch.Tensor] | None = None
) -> Figure:
    """Images (B, 3, S, S), their labels (B, S, S) and optionally each model's prediction."""
    from .data import CLASS_NAMES, PALETTE

    check_tensor("images", images, dim=4, kind="float", layout="(B, 3, S, S)")
    check_tensor("labels", labels, dim=3, kind="int", layout="(B, S, S)")
    if images.shape[1] != 3 or labels.shape != images.shape[:1] + images.shape[2:]:
        raise ValueError(
            f"images must be (B, 3, S, S) and labels (B, S, S) of the same B and size, got "
            f"{tuple(images.shape)} and {tuple(labels.shape)}"
        )
    predictions = {} if predictions is None else predictions
    if not isinstance(predictions, dict):
        raise TypeError(f"predictions must be a dict or None, got {type(predictions).__name__}")
    for name, labelled in [("labels", labels)] + [
        (f"predictions[{k!r}]", p) for k, p in predictions.items()
    ]:
        check_tensor(name, labelled, kind="int")
        if labelled.shape != labels.shape:
            raise ValueError(f"{name} must have shape {tuple(labels.shape)}, got "
                             f"{tuple(labelled.shape)}")
        if int(labelled.min()) < 0 or int(labelled.max()) >= len(PALETTE):
            raise ValueError(f"{name} must hold classes in [0, {len(PALETTE)})")
    palette = np.array(PALETTE)
    cols = 2 + len(predictions)
    rows = images.shape[0]
    fig, axes = plt.subplots(rows, cols, figsize=(1.9 * cols, 1.9 * rows + 0.4), squeeze=False)
    for r in range(rows):
        panels = [("image", images[r].permute(1, 2, 0).numpy()), ("label", palette[labels[r]])]
        panels += [(name, palette[p[r]]) for name, p in predictions.items()]
        for c, (title, picture) in enumerate(panels):
            axes[r, c].imshow(picture, interpolation="nearest")
            axes[r, c].set_xticks([])
            axes[r, c].set_yticks([])
            if r == 0:
                axes[r, c].set_title(title, fontsize=9)
    handles = [plt.Rectangle((0, 0), 1, 1, color=palette[k]) for k in range(len(CLASS_NAMES))]
    fig.legend(handles, CLASS_NAMES, loc="lower center", ncol=len(CLASS_NAMES), fontsize=8)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    return fig


# --------------------------------------------------------------------------- offline animation


def attention_animation(
    image: torch.Tensor,
    maps: Maps | dict[str, torch.Tensor],
    grid: tuple[int, int],
    queries: Sequence[tuple[int, int]],
    *,
    interval: int = 700,
    panel_size: float = 2.2,
) -> matplotlib.animation.FuncAnimation:
    """An animation with one frame per query pixel, one panel per map."""
    from matplotlib import animation

    _check_image(image)
    grid = _check_grid(grid)
    flat = _flat_maps(maps, grid)
    queries = _check_queries(queries, grid)
    interval = check_int("interval", interval, minimum=1)
    panel_size = check_float("panel_size", panel_size, minimum=0.0, exclusive_minimum=True)
    height, width = image.shape[-2:]
    fig, axes = plt.subplots(
        1, len(flat), figsize=(panel_size * len(flat), panel_size * height / width + 0.4),
        squeeze=False,
    )

    def draw(frame: int) -> list:
        for ax, (title, matrix) in zip(axes[0], flat.items(), strict=True):
            ax.clear()
            _overlay(ax, image, query_map(matrix, queries[frame], grid), queries[frame], title)
        fig.suptitle(f"query pixel {queries[frame]} (grid {grid[0]}x{grid[1]})", fontsize=10)
        return []

    fig.tight_layout()
    anim = animation.FuncAnimation(fig, draw, frames=len(queries), interval=interval, blit=False)
    plt.close(fig)  # the animation keeps the figure; do not also show it as a still
    return anim


def attention_animation_html(
    image: torch.Tensor,
    maps: Maps | dict[str, torch.Tensor],
    grid: tuple[int, int],
    queries: Sequence[tuple[int, int]],
    *,
    dpi: int = 60,
    **kwargs: Any,
) -> str:
    """Self-contained HTML/JS (frames as base64 PNG, player inline) stepping through ``queries``.

    Works in a static web page: no kernel, no network, no external script.
    """
    dpi = check_int("dpi", dpi, minimum=1)
    anim = attention_animation(image, maps, grid, queries, **kwargs)
    anim._fig.set_dpi(dpi)
    return offline_jshtml(anim.to_jshtml(fps=None, embed_frames=True, default_mode="once"))


# matplotlib's player draws its buttons with Font Awesome icons loaded from a
# CDN; the book must work offline, so the icons become plain Unicode symbols.
_ICONS = {
    "fa fa-play fa-flip-horizontal": "\u25c0",  # play backwards
    "fa fa-minus": "\u2212",
    "fa fa-plus": "+",
    "fa fa-fast-backward": "\u23ee",
    "fa fa-step-backward": "\u25c2|",
    "fa fa-pause": "\u275a\u275a",
    "fa fa-play": "\u25b6",
    "fa fa-step-forward": "|\u25b8",
    "fa fa-fast-forward": "\u23ed",
}


def offline_jshtml(html: str) -> str:
    """Make ``FuncAnimation.to_jshtml`` output self-contained: drop the CDN stylesheet link
    and replace the Font Awesome icons by Unicode symbols.  Raises if a URL remains."""
    import re

    check_str("html", html)
    html = re.sub(r"<link[^>]*font-awesome[^>]*>", "", html)
    for css_class, symbol in _ICONS.items():
        html = html.replace(f'<i class="{css_class}"></i>', symbol)
    if re.search(r"https?://", html):
        raise RuntimeError("the animation HTML still references the network")
    return html


# --------------------------------------------------------------------------- interactive explorer


def explorer(
    image: torch.Tensor,
    maps: Maps,
    grid: tuple[int, int],
    *,
    start: tuple[int, int] | None = None,
    buttons: bool = True,
) -> Any:
    """An ipywidgets explorer: pick a query pixel (sliders, or click a cell), a module and a step.

    ``maps`` is nested ``{module: {step: (N, N)}}`` (e.g. from
    :func:`photo_attention_maps` or :func:`model_attention_maps`).  With
    ``buttons`` a clickable grid of cells (one button per grid cell) sets the
    query.  Returns the widget (display it as the last expression of a cell).
    """
    import ipywidgets as widgets
    from IPython.display import display

    _check_image(image)
    if isinstance(maps, dict) and not maps:
        raise ValueError("maps is empty: this model has no attention to explore")
    h, w = grid = _check_grid(grid)
    _flat_maps(flatten_maps(maps), grid)  # nested, every matrix (N, N) for the grid
    i0, j0 = check_index("start", start, grid) if start is not None else (h // 2, w // 2)
    check_bool("buttons", buttons)
    row = widgets.IntSlider(value=i0, min=0, max=h - 1, description="row i")
    col = widgets.IntSlider(value=j0, min=0, max=w - 1, description="column j")
    module = widgets.Dropdown(options=list(maps), description="module")
    step = widgets.Dropdown(options=list(maps[module.value]), description="loop/step")
    output = widgets.Output()
    shown: dict[str, Any] = {}  # what the figure shows now (read by the tests)

    def redraw(*_: Any) -> None:
        if step.value not in maps[module.value]:
            return
        shown.update(module=module.value, step=step.value, query=(row.value, col.value))
        with output:
            output.clear_output(wait=True)
            fig = plot_query_maps(
                image, {f"{module.value} · {step.value}": maps[module.value][step.value]},
                grid, [(row.value, col.value)], panel_size=3.5,
            )
            display(fig)
            plt.close(fig)

    def on_module(change: dict) -> None:
        step.options = list(maps[change["new"]])
        step.value = step.options[0]
        redraw()

    module.observe(on_module, names="value")
    for control in (row, col, step):
        control.observe(redraw, names="value")
    controls = [widgets.HBox([row, col]), widgets.HBox([module, step])]
    if buttons:
        def pick(i: int, j: int) -> Callable[[Any], None]:
            def click(_: Any) -> None:
                with row.hold_trait_notifications(), col.hold_trait_notifications():
                    row.value, col.value = i, j

            return click

        # One layout and one style shared by every cell: a widget model each would triple
        # the widget state a notebook stores (and the book embeds).
        cell_layout = widgets.Layout(width="14px", height="14px", padding="0")
        cell_style = widgets.ButtonStyle()
        cells = []
        for i in range(h):
            for j in range(w):
                b = widgets.Button(layout=cell_layout, style=cell_style, tooltip=f"({i}, {j})")
                b.on_click(pick(i, j))
                cells.append(b)
        grid_box = widgets.GridBox(
            cells,
            layout=widgets.Layout(grid_template_columns=f"repeat({w}, 14px)", grid_gap="1px"),
        )
        controls.append(widgets.HBox([widgets.Label("click a cell:"), grid_box]))
    redraw()
    box = widgets.VBox([*controls, output])
    box.shown = shown
    return box


def figure_to_png(fig: Figure, dpi: int = 80) -> bytes:
    """Render ``fig`` to PNG bytes (works with the Agg backend; used by the tests)."""
    import io

    if not isinstance(fig, Figure):
        raise TypeError(f"fig must be a matplotlib Figure, got {type(fig).__name__}")
    dpi = check_int("dpi", dpi, minimum=1)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()
