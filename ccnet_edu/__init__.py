"""ccnet_edu: attention for semantic segmentation, readable and fast.

Readable PyTorch implementations of criss-cross attention (CCNet) and its
recurrent form, interlaced sparse self-attention (ISSA), squeeze-and-attention
(SA), axial attention, the non-local block, and the losses that go with them; an accelerated
criss-cross operator in C++/CUDA (:mod:`ccnet_edu.ops`); dense views for
teaching and testing (:mod:`ccnet_edu.dense`); cost and propagation analysis
(:mod:`ccnet_edu.analysis`), with time and peak memory measured by
:mod:`ccnet_edu.measure`; visualisation (:mod:`ccnet_edu.viz`); and a
small segmentation experiment (:mod:`ccnet_edu.data`, :mod:`ccnet_edu.models`,
:mod:`ccnet_edu.checkpoint`, :mod:`ccnet_edu.train`).

Names are imported lazily, so ``import ccnet_edu`` stays cheap and the
optional parts (the compiled operator, plotting) load only when used.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> submodule that defines it
_EXPORTS = {
    "criss_cross_attention": "functional",
    "CrissCrossAttention": "cca",
    "RecurrentCrissCrossAttention": "cca",
    "RCCAHead": "cca",
    "NonLocal2d": "nonlocal_block",
    "InterlacedSparseSelfAttention": "issa",
    "ISAHead": "issa",
    "SqueezeAttention": "sa",
    "SqueezeExcitation": "sa",
    "SANetHead": "sa",
    "SANetLoss": "sa",
    "CategoryConsistentLoss": "losses",
    "AxialAttention": "axial",
}

_SUBMODULES = (
    "functional",
    "cca",
    "nonlocal_block",
    "issa",
    "sa",
    "axial",
    "losses",
    "dense",
    "ops",
    "analysis",
    "measure",
    "viz",
    "data",
    "models",
    "checkpoint",
    "export",
    "train",
)

__all__ = sorted(_EXPORTS) + list(_SUBMODULES)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        module = importlib.import_module(f".{_EXPORTS[name]}", __name__)
        return getattr(module, name)
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'ccnet_edu' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
