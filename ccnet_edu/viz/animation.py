"""An offline animation that steps through query pixels, for the rendered book.

In the static book no kernel runs, so the widget explorer cannot redraw.
:func:`attention_animation_html` renders one frame per query pixel into a
self-contained HTML/JS player (frames as base64 PNG, player inline);
:func:`offline_jshtml` removes what matplotlib's player would fetch from the
network (a CDN stylesheet and its icon font).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import matplotlib
import torch
from matplotlib import pyplot as plt

from .._checks import check_float, check_int, check_str
from ._args import check_grid, check_image, check_queries
from .figures import overlay
from .maps import Maps, check_maps, query_map_array

__all__ = ["attention_animation", "attention_animation_html", "offline_jshtml"]


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

    check_image(image)
    grid = check_grid(grid)
    flat = check_maps(maps, grid)
    queries = check_queries(queries, grid)
    interval = check_int("interval", interval, minimum=1)
    panel_size = check_float("panel_size", panel_size, minimum=0.0, exclusive_minimum=True)
    height, width = image.shape[-2:]
    fig, axes = plt.subplots(
        1,
        len(flat),
        figsize=(panel_size * len(flat), panel_size * height / width + 0.4),
        squeeze=False,
    )

    def draw(frame: int) -> list:
        for ax, (title, matrix) in zip(axes[0], flat.items(), strict=True):
            ax.clear()
            overlay(ax, image, query_map_array(matrix, queries[frame], grid), queries[frame], title)
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
