"""Plotting helpers: the analysis functions return tensors and rows, these draw them.

matplotlib is imported inside each function, so the rest of the package
works without it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch

from .._checks import (
    check_bool,
    check_choice,
    check_float,
    check_index,
    check_int,
    check_str,
    check_tensor,
)
from .compare import Row, SweepPoint, _check_rows, fit_exponent

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "plot_reachability",
    "plot_influence",
    "plot_query_attention",
    "plot_scaling",
    "plot_comparison",
    "plot_phase_breakdown",
]


def _axes(ax: Axes | None, figsize: tuple[float, float] = (4, 4)) -> tuple[Figure, Axes]:
    import matplotlib.pyplot as plt
    from matplotlib.axes import Axes as _Axes

    if ax is not None and not isinstance(ax, _Axes):
        raise TypeError(f"ax must be a matplotlib Axes or None, got {type(ax).__name__}")

    if ax is None:
        fig, ax = plt.subplots(figsize=figsize)
    return ax.figure, ax


def plot_reachability(
    reach: torch.Tensor,
    height: int,
    width: int,
    pixel: tuple[int, int] | None = None,
    ax: Axes | None = None,
    title: str = "",
    legend: bool = False,
) -> Axes:
    """Draw a bool (N, N) reachability matrix, or, with ``pixel``, the (H, W) map of one row.

    The per-pixel view is the readable one: which input pixels can output
    ``pixel`` depend on?  The book's one convention for reachability: black =
    reachable, white = not, the pixel a red cross, rows and columns numbered.
    ``legend`` adds a key for the two colours and the cross (per-pixel view).
    """
    height = check_int("height", height, minimum=1)
    width = check_int("width", width, minimum=1)
    n = height * width
    check_tensor("reach", reach, dim=2, kind="bool", layout="(N, N)")
    if tuple(reach.shape) != (n, n):
        raise ValueError(f"reach must be (N, N) with N = H*W = {n}, got {tuple(reach.shape)}")
    if pixel is not None:
        pixel = check_index("pixel", pixel, (height, width))
    check_str("title", title)
    check_bool("legend", legend)
    _, ax = _axes(ax)
    if pixel is None:
        ax.imshow(reach.cpu().float(), cmap="Greys", vmin=0, vmax=1, interpolation="nearest")
        ax.set_xlabel("input position p")
        ax.set_ylabel("output position u")
    else:
        from matplotlib.lines import Line2D
        from matplotlib.patches import Patch

        i, j = pixel
        image = reach[i * width + j].reshape(height, width).cpu().float()
        ax.imshow(image, cmap="Greys", vmin=0, vmax=1, interpolation="nearest")
        ax.plot([j], [i], marker="x", color="tab:red", markersize=8, markeredgewidth=2)
        if max(height, width) <= 16:  # numbered rows and columns while they stay legible
            ax.set_xticks(range(width))
            ax.set_yticks(range(height))
            ax.tick_params(labelsize=8)
        else:
            ax.set_xticks([])
            ax.set_yticks([])
        ax.set_xlabel("column j")
        ax.set_ylabel("row i")
        if legend:
            key = [
                Patch(facecolor="black", edgecolor="black", label="reachable"),
                Patch(facecolor="white", edgecolor="black", label="not reachable"),
                Line2D([], [], marker="x", color="tab:red", linestyle="", label="the pixel"),
            ]
            ax.legend(handles=key, fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    ax.set_title(title)
    return ax


def plot_influence(
    influence: torch.Tensor,
    pixel: tuple[int, int] | None = None,
    ax: Axes | None = None,
    title: str = "",
    log: bool = True,
    vmin: float | None = None,
    vmax: float | None = None,
) -> Axes:
    """Draw an (H, W) influence map (:func:`~ccnet_edu.analysis.propagation.influence_map`).

    ``log=True`` shows ``log10`` of the influence so that weak but non-zero
    paths are visible; exact zeros are drawn white.  ``vmin`` and ``vmax`` fix the
    colour scale, in the units shown (``log10`` influence when ``log``), so that
    several panels share one scale; ``None`` takes the map's own extreme.
    """
    import matplotlib.pyplot as plt

    check_tensor("influence", influence, dim=2, kind="float", layout="(H, W)")
    if pixel is not None:
        pixel = check_index("pixel", pixel, tuple(influence.shape))
    check_str("title", title)
    check_bool("log", log)
    if vmin is not None:
        vmin = check_float("vmin", vmin)
    if vmax is not None:
        vmax = check_float("vmax", vmax)
    if vmin is not None and vmax is not None and not vmin < vmax:
        raise ValueError(f"vmin must be < vmax, got vmin={vmin:g}, vmax={vmax:g}")

    _, ax = _axes(ax)
    values = influence.detach().cpu().double()
    if log:
        shown = torch.where(values > 0, values.clamp_min(1e-300).log10(), torch.nan)
        cmap = plt.get_cmap("viridis").copy()
        cmap.set_bad("white")
        image = ax.imshow(shown, cmap=cmap, interpolation="nearest", vmin=vmin, vmax=vmax)
        label = "log10 influence (white: exactly 0)"
    else:
        image = ax.imshow(values, cmap="viridis", interpolation="nearest", vmin=vmin, vmax=vmax)
        label = "influence"
    ax.figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label=label)
    if pixel is not None:
        ax.plot([pixel[1]], [pixel[0]], marker="x", color="tab:red")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_xlabel("column j")
    ax.set_ylabel("row i")
    ax.set_title(title)
    return ax


def plot_query_attention(
    weights: torch.Tensor,
    pixel: tuple[int, int] | None = None,
    ax: Axes | None = None,
    title: str = "",
    vmax: float | None = None,
    label: str = "attention weight",
) -> Axes:
    """Draw where one query pixel looks: an (H, W) map of its attention weights.

    ``weights`` is one image of :func:`~ccnet_edu.dense.attention_query_map`
    (or :func:`~ccnet_edu.dense.query_map`).  The colour scale runs from 0 to
    ``vmax`` (default: the map's largest weight; pass one ``vmax`` to several
    panels to compare them on one scale).  Weights that are exactly 0, the
    positions the pattern masks out, are drawn white, apart from small
    positive weights; the colour bar says so.  ``pixel`` marks the query.
    """
    import matplotlib.pyplot as plt

    check_tensor("weights", weights, dim=2, kind="float", layout="(H, W)")
    if pixel is not None:
        pixel = check_index("pixel", pixel, tuple(weights.shape))
    check_str("title", title)
    check_str("label", label)
    values = weights.detach().cpu().double()
    if bool((values < 0).any()):
        raise ValueError("weights must be non-negative attention weights")
    if vmax is None:
        vmax = float(values.max())
    vmax = check_float("vmax", vmax, minimum=0.0, exclusive_minimum=True)

    _, ax = _axes(ax)
    shown = torch.where(values > 0, values, torch.nan)
    cmap = plt.get_cmap("viridis").copy()
    cmap.set_bad("white")
    image = ax.imshow(shown, cmap=cmap, interpolation="nearest", vmin=0.0, vmax=vmax)
    ax.figure.colorbar(
        image, ax=ax, fraction=0.046, pad=0.04, label=f"{label}\n(white: exactly 0, masked)"
    )
    if pixel is not None:
        ax.plot([pixel[1]], [pixel[0]], marker="x", color="tab:red", markersize=8)
    height, width = values.shape
    if max(height, width) <= 16:
        ax.set_xticks(range(width))
        ax.set_yticks(range(height))
    ax.set_xlabel("column j")
    ax.set_ylabel("row i")
    ax.set_title(title)
    return ax


_METRICS = {
    "gflops": "forward GFLOPs",
    "saved_mb": "saved for backward (MiB)",
    "peak_mb": "peak memory, forward+backward (MiB)",
    "time_s": "time, forward+backward (s)",
}


# Legend text no smaller than 8 points; the guides start at this fraction of the lowest first point.
LEGEND_FONTSIZE = 8
GUIDE_OFFSET = 0.3


def plot_scaling(
    points: Sequence[SweepPoint],
    metric: str = "gflops",
    ax: Axes | None = None,
    guides: bool = True,
) -> Axes:
    """Log-log plot of a sweep metric against N, one line per model, with fitted slopes.

    Where the models' series cover different sizes (one stopped at a memory limit), each
    legend entry names the sizes its slope was fitted over.

    ``guides`` adds grey ``N^2`` (dotted) and ``N^1.5`` (dashed) lines, the two
    growth laws of dense and criss-cross attention, starting at the smallest N
    at ``GUIDE_OFFSET`` times the lowest first value of any model: below every
    series, so that a guide never lies on a series that grows at its rate.
    Each model is drawn in its colour of :func:`ccnet_edu.viz.model_colour`
    (the same in every chapter).
    """
    from ..viz.colours import model_colour

    check_choice("metric", metric, tuple(_METRICS))
    _check_rows(points, SweepPoint)
    check_bool("guides", guides)
    _, ax = _axes(ax, (5, 4))
    models = list(dict.fromkeys(p.model for p in points))
    measured = {
        model: [p for p in points if p.model == model and getattr(p, metric) is not None]
        for model in models
    }
    # slopes fitted over different sizes (a series stopped at a limit) are not
    # comparable as they stand: each label then names the sizes its slope covers
    spans = {(m[0].size, m[-1].size) for m in measured.values() if m}
    first: tuple[float, float] | None = None
    for model in models:
        mine = measured[model]
        if not mine:
            continue
        ns = [p.n for p in mine]
        values = [getattr(p, metric) for p in mine]
        slope = fit_exponent(ns, values) if len(mine) > 1 else float("nan")
        span = f", {mine[0].size}²–{mine[-1].size}²" if len(spans) > 1 else ""
        style = "s--" if "[reference]" in model else "o-"
        try:
            colour: str | None = model_colour(model)
        except ValueError:  # a model without a book colour: matplotlib's cycle
            colour = None
        ax.loglog(ns, values, style, color=colour, label=f"{model} (slope {slope:.2f}{span})")
        first = (
            (ns[0], values[0])
            if first is None
            else (min(first[0], ns[0]), min(first[1], values[0]))
        )
    if guides and first is not None:
        n0, v0 = first[0], first[1] * GUIDE_OFFSET
        n_max = max(p.n for p in points)
        for power, style in [(2.0, ":"), (1.5, "--")]:
            ax.loglog(
                [n0, n_max],
                [v0, v0 * (n_max / n0) ** power],
                style,
                color="grey",
                label=f"N^{power:g}",
            )
    ax.set_xlabel("N = H W (positions)")
    ax.set_ylabel(_METRICS[metric])
    ax.legend(fontsize=LEGEND_FONTSIZE)
    return ax


def plot_comparison(rows: Sequence[Row], metrics: Sequence[str] = ("gflops", "peak_mb")) -> Any:
    """Bar charts (log scale) of comparison rows, one panel per metric; returns the figure."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    _check_rows(rows, Row)
    if isinstance(metrics, (str, bytes)) or not isinstance(metrics, Sequence) or not metrics:
        raise TypeError(f"metrics must be a non-empty list of names from {tuple(_METRICS)}")
    for metric in metrics:
        check_choice("metrics entries", metric, tuple(_METRICS))

    fig, axes = plt.subplots(
        1, len(metrics), figsize=(3.5 * len(metrics) + 2, 3.5), squeeze=False, sharey=True
    )
    for ax, metric in zip(axes[0], metrics, strict=True):
        shown = [r for r in rows if getattr(r, metric) is not None]
        ax.barh([r.model for r in shown], [getattr(r, metric) for r in shown])
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())  # minor labels overlap on short axes
        ax.set_xlabel(_METRICS[metric])
    axes[0][0].invert_yaxis()  # shared y: inverting once puts the first row on top
    fig.tight_layout()
    return fig


# The groups of :func:`plot_phase_breakdown`, in the order they are stacked: the line products
# first, so that the bar's first stretch is the share that the register tile works.
PHASE_GROUPS = (
    ("line products", "tab:blue"),
    ("softmax and its backward", "tab:orange"),
    ("forward layout copies", "tab:pink"),
    ("backward layout copies", "tab:red"),
    ("rest of the sweeps (thread start-up, hand-out, waiting)", "tab:purple"),
    ("outside the sweeps (allocation, conversion)", "tab:brown"),
    ("autograd and Python around the calls", "tab:gray"),
)


def _phase_group(row: Mapping[str, Any]) -> str:
    kind, phase = row["kind"], row["phase"]
    if kind == "product":
        return PHASE_GROUPS[0][0]
    if kind == "softmax":
        return PHASE_GROUPS[1][0]
    if "layout copies" in phase:
        return PHASE_GROUPS[2 if phase.startswith("forward") else 3][0]
    for marker, group in (
        ("waiting", 4),
        ("outside the sweeps", 5),
        ("autograd", 6),
    ):
        if marker in phase:
            return PHASE_GROUPS[group][0]
    raise ValueError(f"rows: phase {phase!r} of kind {kind!r} belongs to no group")


def plot_phase_breakdown(rows: Sequence[Mapping[str, Any]], ax: Axes | None = None) -> Axes:
    """Stacked bars of where the fused CPU operator's forward + backward spends its time.

    ``rows`` are the rows of ``benchmarks/cpu_phases.py``'s CSV (``isa``, ``case``, ``phase``,
    ``kind``, ``ms``): one bar per ISA level and case, each phase's share of the phases' sum,
    stacked by :data:`PHASE_GROUPS`. The dashed line at two thirds marks where the line products
    must reach for the time outside them to be below a third. A bar is labelled with the fused
    op's time with the clocks off where the case's ``total`` row gives it
    (``fused_ms_clocks_off``), else with the phases' sum.
    """
    if isinstance(rows, (str, bytes)) or not isinstance(rows, Sequence) or not rows:
        raise TypeError("rows must be a non-empty list of the phase rows (mappings)")
    bars: dict[tuple[str, str], dict[str, float]] = {}
    clocks_off: dict[tuple[str, str], float] = {}
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping) or not {"isa", "case", "phase", "kind", "ms"} <= set(row):
            raise TypeError(f"rows[{i}] must be a mapping with isa, case, phase, kind and ms")
        if row["kind"] == "total":
            if row.get("fused_ms_clocks_off") not in (None, ""):
                clocks_off[row["isa"], row["case"]] = float(row["fused_ms_clocks_off"])
            continue
        ms = float(row["ms"])
        if not ms >= 0:
            raise ValueError(f"rows[{i}]: ms must be a non-negative number, got {row['ms']!r}")
        groups = bars.setdefault((row["isa"], row["case"]), {g: 0.0 for g, _ in PHASE_GROUPS})
        groups[_phase_group(row)] += ms
    if not bars:
        raise ValueError("rows hold no phase (only totals)")
    _, ax = _axes(ax, (8, 0.6 * len(bars) + 1.8))
    labels = []
    for y, ((isa, case), groups) in enumerate(bars.items()):
        total = sum(groups.values())
        if total <= 0:
            raise ValueError(f"rows: the phases of {isa}, {case} sum to zero")
        left = 0.0
        for group, colour in PHASE_GROUPS:
            width = 100.0 * groups[group] / total
            ax.barh(y, width, left=left, color=colour, label=group if y == 0 else None)
            left += width
        off = clocks_off.get((isa, case))
        timing = f"{total:.0f} ms" if off is None else f"{off:.0f} ms, clocks off"
        labels.append(f"{isa}\n{case.split()[-1]}: {timing}")
    ax.axvline(200 / 3, color="black", linestyle="--", linewidth=1, label="two thirds")
    ax.set_yticks(range(len(bars)), labels)
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.set_xlabel("share of the fused forward + backward time (%), run with the phase clocks on")
    ax.legend(fontsize=LEGEND_FONTSIZE, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=3)
    return ax
