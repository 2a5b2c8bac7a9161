"""One colour per model, the same in every chapter's plots.

The keys are the shipped model names of :mod:`ccnet_edu.train`; the rows of
:mod:`ccnet_edu.analysis.compare` ("non-local", "RCCA R=2 [fused]", "ISSA 8x8",
...) map to the model they stand for through :func:`model_colour`.  Grey and
black are kept for reference lines (guessing, guides, medians), so no model
uses them.
"""

from __future__ import annotations

__all__ = ["MODEL_COLOURS", "model_colour"]

MODEL_COLOURS: dict[str, str] = {
    "nonlocal": "tab:blue",
    "rcca1": "tab:orange",
    "rcca2": "tab:green",
    "isa": "tab:red",
    "sa": "tab:purple",
    "axial": "tab:brown",
    "fcn": "tab:pink",
    "rcca2_ccl": "tab:olive",
    "rcca2_ccl0.1": "tab:cyan",
    "rcca3": "#1a3d6d",
}

# Comparison-row prefixes (ccnet_edu.analysis.compare) -> shipped model name; longest first.
_ROW_PREFIXES: tuple[tuple[str, str], ...] = (
    ("RCCA R=2 + CCL, weight 0.1", "rcca2_ccl0.1"),
    ("RCCA R=2 + CCL, weight 1", "rcca2_ccl"),
    ("RCCA R=1", "rcca1"),
    ("RCCA R=2", "rcca2"),
    ("RCCA R=3", "rcca3"),
    ("non-local", "nonlocal"),
    ("ISSA", "isa"),
    ("SA ", "sa"),
    ("axial", "axial"),
    ("FCN", "fcn"),
)


def model_colour(name: str) -> str:
    """The matplotlib colour of a model, by shipped name or comparison-row name.

    ``model_colour("isa") == model_colour("ISSA 8x8")``.  The fused and the
    reference rows of one RCCA setting share a colour (tell them apart by
    marker or line style).  An unknown name raises ``ValueError``.
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")
    if name in MODEL_COLOURS:
        return MODEL_COLOURS[name]
    for prefix, model in _ROW_PREFIXES:
        if name.startswith(prefix):
            return MODEL_COLOURS[model]
    raise ValueError(f"name {name!r} names no model with a colour; known: {sorted(MODEL_COLOURS)}")
