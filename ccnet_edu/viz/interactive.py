"""An ipywidgets explorer of attention maps, for JupyterLab (a kernel must run)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from matplotlib import pyplot as plt

from .._checks import check_bool, check_index
from ._args import check_grid, check_image
from .figures import plot_query_maps
from .maps import Maps, check_maps, flatten_maps

__all__ = ["explorer"]


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

    check_image(image)
    if isinstance(maps, dict) and not maps:
        raise ValueError("maps is empty: this model has no attention to explore")
    h, w = grid = check_grid(grid)
    check_maps(flatten_maps(maps), grid)  # nested, every matrix (N, N) for the grid
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
                image,
                {f"{module.value} · {step.value}": maps[module.value][step.value]},
                grid,
                [(row.value, col.value)],
                panel_size=3.5,
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
