"""Attention maps, drawn: static figures, an interactive explorer, and an offline animation.

Every attention mechanism of the library can be written as a dense ``N x N``
matrix ``A`` over the ``N = H W`` positions of a feature grid
(:mod:`ccnet_edu.dense`): row ``u`` of ``A`` says how much query pixel ``u``
takes from each pixel ``p``.  Reshaped to ``(H, W)`` and laid over the
image, that row is the *attention map* of ``u``.  This package, one job a
module:

* :mod:`~ccnet_edu.viz.photos` computes such maps for a real photograph
  **without training** (:func:`photo_attention_maps`);
* :mod:`~ccnet_edu.viz.maps` collects them from the trained models of
  :mod:`ccnet_edu.models` (:func:`model_attention_maps`) and reads them for
  drawing (:func:`flatten_maps`, :func:`query_map_array`);
* :mod:`~ccnet_edu.viz.figures` draws them (:func:`plot_query_maps`),
  together with the patterns behind them: the criss-cross mask
  (:func:`plot_criss_cross_mask`), ISSA's groups (:func:`plot_issa_groups`)
  and what a pixel can reach after each loop (:func:`plot_reachability`);
* :mod:`~ccnet_edu.viz.colours` gives every model one colour, the same in
  every chapter (:data:`MODEL_COLOURS`, :func:`model_colour`);
* :mod:`~ccnet_edu.viz.interactive` offers an ipywidgets explorer for
  JupyterLab (:func:`explorer`), and :mod:`~ccnet_edu.viz.animation`, for
  the rendered book where no kernel runs, a self-contained HTML/JS
  animation stepping through query pixels (:func:`attention_animation_html`).

Every public name is re-exported here: ``viz.plot_query_maps`` and
``viz.figures.plot_query_maps`` are one function.
"""

from __future__ import annotations

from .animation import attention_animation, attention_animation_html, offline_jshtml
from .colours import MODEL_COLOURS, model_colour
from .figures import (
    figure_to_png,
    plot_criss_cross_mask,
    plot_issa_groups,
    plot_query_maps,
    plot_reachability,
    plot_segmentation,
)
from .interactive import explorer
from .maps import (
    flatten_maps,
    model_attention_maps,
    query_map_array,
    squeeze_reach,
    squeeze_support,
)
from .photos import PHOTOS, colour_position_features, load_photo, photo_attention_maps
from .photos import _gaussian_qk as _gaussian_qk  # shown and called in the attention-maps chapter

__all__ = [
    "PHOTOS",
    "load_photo",
    "colour_position_features",
    "photo_attention_maps",
    "model_attention_maps",
    "squeeze_support",
    "squeeze_reach",
    "MODEL_COLOURS",
    "model_colour",
    "flatten_maps",
    "query_map_array",
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
