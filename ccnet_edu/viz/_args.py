"""Argument checks shared by the drawing modules of :mod:`ccnet_edu.viz`."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .._checks import check_index, check_positive_pair, check_tensor


def check_image(image: object, name: str = "image") -> torch.Tensor:
    """An RGB image (3, H, W), floating point."""
    check_tensor(name, image, dim=3, kind="float", layout="(3, H, W)")
    assert isinstance(image, torch.Tensor)
    if image.shape[0] != 3:
        raise ValueError(f"{name} must have 3 channels (RGB) first, got shape {tuple(image.shape)}")
    return image


def check_grid(grid: object, name: str = "grid") -> tuple[int, int]:
    """A grid size ``(h, w)``: a pair (not one int) of ints >= 1."""
    if not isinstance(grid, (tuple, list, torch.Size)):
        raise TypeError(f"{name} must be a pair (h, w) of ints, got {type(grid).__name__}")
    return check_positive_pair(name, grid)


def check_queries(queries: object, grid: tuple[int, int]) -> list[tuple[int, int]]:
    """A non-empty list of query pixels ``(i, j)``, each inside ``grid``."""
    if isinstance(queries, (str, bytes)) or not isinstance(queries, Sequence):
        raise TypeError(f"queries must be a list of (i, j) pairs, got {type(queries).__name__}")
    if len(queries) == 0:
        raise ValueError("queries must not be empty")
    return [check_index(f"queries[{k}]", q, grid) for k, q in enumerate(queries)]
