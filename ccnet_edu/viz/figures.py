"""Static figures: attention maps over an image, and the patterns behind them.

:func:`plot_query_maps` lays the maps of chosen query pixels over the image;
:func:`plot_criss_cross_mask`, :func:`plot_issa_groups` and
:func:`plot_reachability` draw the sparsity patterns themselves (the
criss-cross mask, ISSA's groups, what a pixel can reach after each loop or
step); :func:`plot_segmentation` shows images, labels and predictions.
Every function returns a matplotlib ``Figure``; :func:`figure_to_png`
renders one to bytes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from matplotlib import pyplot as plt
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle

from .._checks import check_float, check_index, check_int, check_positive_pair, check_tensor
from ..analysis.plots import plot_reachability as plot_reachability_map
from ..dense import criss_cross_mask, interlaced_masks
from ..issa import blocks_padding, pixel_groups
from ._args import check_grid, check_image, check_queries
from .maps import Maps, check_maps, query_map_array

__all__ = [
    "plot_query_maps",
    "plot_criss_cross_mask",
    "plot_issa_groups",
    "plot_reachability",
    "plot_segmentation",
    "figure_to_png",
]


def _gray(image: torch.Tensor) -> np.ndarray:
    return (0.3 * image[0] + 0.59 * image[1] + 0.11 * image[2]).numpy()


def overlay(
    ax: plt.Axes,
    image: torch.Tensor,
    amap: np.ndarray,
    query: tuple[int, int],
    title: str,
    show_peak: bool = False,
) -> None:
    """Grey image, the map on top (scaled to its own maximum), the query cell outlined.

    One panel of :func:`plot_query_maps` and of each frame of
    :func:`ccnet_edu.viz.animation.attention_animation`.  With ``show_peak`` the
    title also gives the panel's maximum weight, the value its brightest colour stands for.
    """
    height, width = image.shape[-2:]
    h, w = amap.shape
    ax.imshow(_gray(image), cmap="gray", vmin=0, vmax=1)
    peak = amap.max() if amap.max() > 0 else 1.0
    ax.imshow(
        amap / peak,
        cmap="inferno",
        alpha=0.65,
        vmin=0,
        vmax=1,
        extent=(-0.5, width - 0.5, height - 0.5, -0.5),
        interpolation="nearest",
    )
    cell_h, cell_w = height / h, width / w
    i, j = query
    ax.add_patch(
        plt.Rectangle(
            (j * cell_w - 0.5, i * cell_h - 0.5),
            cell_w,
            cell_h,
            fill=False,
            edgecolor="cyan",
            linewidth=1.5,
        )
    )
    ax.set_title(f"{title}\nmax {float(amap.max()):.3g}" if show_peak else title, fontsize=9)
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
    N pixels, a criss-cross map over H + W - 1: absolute colours would hide one);
    the maximum is in the panel's title and one colour bar gives the scale as a
    fraction of it.
    """
    check_image(image)
    grid = check_grid(grid)
    flat = check_maps(maps, grid)
    queries = check_queries(queries, grid)
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
        ax.plot(
            (query[1] + 0.5) * width / w - 0.5,
            (query[0] + 0.5) * height / h - 0.5,
            marker="+",
            color="cyan",
            markersize=12,
            markeredgewidth=2,
        )
        ax.set_title(f"query {query}", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        for c, (title, matrix) in enumerate(flat.items(), start=1):
            overlay(axes[r, c], image, query_map_array(matrix, query, grid), query, title, True)
    fig.tight_layout()
    scale = plt.cm.ScalarMappable(cmap="inferno", norm=plt.Normalize(0, 1))
    fig.colorbar(scale, ax=axes[:, 1:], fraction=0.02, pad=0.01, label="weight / panel max")
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
    left.tick_params(labelsize=8)
    left.set_xlabel("column j")
    left.set_ylabel("row i")
    right.imshow(mask.numpy(), cmap="Blues", interpolation="nearest")
    right.set_title(f"mask M (N x N, N = {height * width}): row u = query u", fontsize=9)
    right.set_xlabel("key position p")
    right.set_ylabel("query position u")
    fig.tight_layout()
    return fig


def plot_issa_groups(
    height: int, width: int, block_size: tuple[int, int], *, pad: bool = False
) -> Figure:
    """ISSA's groups on the grid: long-range (same offset in the block) and short-range (blocks).

    Each group gets its own colour; numbers give the group index, as
    :func:`ccnet_edu.issa.pixel_groups` assigns it.  Without ``pad`` the grid
    must be a multiple of the block size; with ``pad=True`` any grid is drawn
    on the padded grid the module works on (:func:`ccnet_edu.issa.blocks_padding`:
    the extra row at the bottom, the extra column on the right), the padding
    cells hatched and keeping their group's colour.
    """
    height = check_int("height", height, minimum=1)
    width = check_int("width", width, minimum=1)
    p_h, p_w = block_size = check_positive_pair("block_size", block_size)
    if not isinstance(pad, bool):
        raise TypeError(f"pad must be a bool, got {type(pad).__name__}")
    if not pad and (height % p_h or width % p_w):
        raise ValueError(
            f"grid ({height}, {width}) must be a multiple of block_size {block_size}"
            " (or pass pad=True)"
        )
    top, bottom, left, right = blocks_padding(height, width, block_size)
    grid_h, grid_w = height + top + bottom, width + left + right
    long_id, short_id = pixel_groups(grid_h, grid_w, block_size)  # the padded grid is whole blocks
    is_pad = torch.ones(grid_h, grid_w, dtype=torch.bool)
    is_pad[top : top + height, left : left + width] = False
    fig, axes = plt.subplots(1, 2, figsize=(11, 5.4))
    for ax, ids, title in (
        (axes[0], long_id, f"long-range step: {p_h * p_w} groups, pixels {block_size} apart"),
        (axes[1], short_id, f"short-range step: {int(short_id.max()) + 1} blocks of {block_size}"),
    ):
        n = int(ids.max()) + 1
        colours = plt.get_cmap("tab20")(np.arange(n) % 20)
        ax.imshow(ids.numpy(), cmap=ListedColormap(colours), vmin=-0.5, vmax=n - 0.5)
        if grid_h * grid_w <= 400:
            for (y, x), g in np.ndenumerate(ids.numpy()):
                ax.text(x, y, str(g), ha="center", va="center", fontsize=8)
        for y, x in is_pad.nonzero().tolist():  # hatched, keeping the group's colour
            ax.add_patch(
                Rectangle(
                    (x - 0.5, y - 0.5), 1, 1, fill=False, hatch="///", edgecolor="dimgray", lw=0
                )
            )
        ax.set_title(title, fontsize=9)
        # the grid lines mark the blocks; the labelled ticks number the columns and rows
        ax.set_xticks(np.arange(-0.5, grid_w, p_w), minor=True)
        ax.set_yticks(np.arange(-0.5, grid_h, p_h), minor=True)
        ax.set_xticks(range(grid_w))
        ax.set_yticks(range(grid_h))
        ax.tick_params(labelsize=8)
        ax.tick_params(which="minor", length=0)
        ax.grid(which="minor", color="k", linewidth=1.2)
        padded = " of the padded grid" if bool(is_pad.any()) else ""
        ax.set_xlabel("column j" + padded)
        ax.set_ylabel("row i" + padded)
    if bool(is_pad.any()):
        axes[1].legend(
            handles=[Patch(facecolor="white", edgecolor="dimgray", hatch="///", label="padding")],
            loc="upper left",
            bbox_to_anchor=(1.01, 1),
            fontsize=9,
        )
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
    short step (``L`` then ``S L``).  Each panel is drawn by
    :func:`ccnet_edu.analysis.plots.plot_reachability` (black = reachable, the
    query a red cross), the convention of every reachability figure of the book.
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
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.2 * ncols, 3.2 * nrows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    panels = [[(t, m) for (t, _), m in zip(rows[0], cca_maps, strict=True)], issa_maps]
    for r, row in enumerate(panels[:nrows]):
        for c, (title, m) in enumerate(row):
            ax = axes[r, c]
            ax.axis("on")
            # One (N, N) matrix whose row u is this panel's map: drawn by the book's one
            # reachability plotter, so every chapter shows reachability the same way.
            matrix = torch.zeros(height * width, height * width, dtype=torch.bool)
            matrix[u] = m.flatten() > 0
            reached = int(m.sum())
            plot_reachability_map(
                matrix,
                height,
                width,
                pixel=query,
                ax=ax,
                title=f"{title}\n{reached}/{height * width} pixels",
                legend=(r, c) == (0, ncols - 1),
            )
            ax.title.set_fontsize(9)
    fig.tight_layout()
    return fig


def plot_segmentation(
    images: torch.Tensor, labels: torch.Tensor, predictions: dict[str, torch.Tensor] | None = None
) -> Figure:
    """Images (B, 3, S, S), their labels (B, S, S) and optionally each model's prediction."""
    from ..data import CLASS_NAMES, PALETTE

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
            raise ValueError(
                f"{name} must have shape {tuple(labels.shape)}, got {tuple(labelled.shape)}"
            )
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


def figure_to_png(fig: Figure, dpi: int = 80) -> bytes:
    """Render ``fig`` to PNG bytes (works with the Agg backend; used by the tests)."""
    import io

    if not isinstance(fig, Figure):
        raise TypeError(f"fig must be a matplotlib Figure, got {type(fig).__name__}")
    dpi = check_int("dpi", dpi, minimum=1)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()
