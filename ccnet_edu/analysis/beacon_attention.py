"""Where trained models attend on the beacon task, over many far queries at once.

One query pixel on one image is an anecdote.  This module takes every
*far query* of many validation images -- a feature cell lying entirely inside
a shape, all of its pixels more than :data:`ccnet_edu.train.FAR` pixels from
the beacon -- and measures, for each,

* ``share``: the weight its effective attention puts on the cells that can
  see the beacon (the cells whose receptive field overlaps it, see
  :func:`cells_seeing_beacon`);
* ``correct``: whether the head labels the cell with the beacon's class
  (argmax of the logits at feature resolution);
* ``off_cross``: whether no beacon-seeing cell lies in the query's row or
  column.  For such a query a single criss-cross loop has *no* path to the
  beacon, and with two loops the only attention path is the two-hop product
  ``A_2 A_1`` (the direct terms ``A_1(u, p)`` and ``A_2(u, p)`` vanish off the
  cross).

The effective attention is the library's dense form of each module
(:mod:`ccnet_edu.dense`): ``A_2 A_1`` for RCCA with two loops, ``A_1`` with
one, the dense map of the non-local block, ``A_S A_L`` for ISSA.  It is the
attention-only path: it leaves out the value and output projections and the
``gamma``-scaled residual, so it says where a query *can* read from and how
much weight it gives there, not how much of the prediction comes from there.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .._checks import check_index, check_int, check_tensor
from ..data import make_sample
from ..dense import issa_attention_to_dense, recurrent_attention_to_dense

__all__ = [
    "STRIDE",
    "RECEPTIVE_HALF",
    "cells_seeing_beacon",
    "cells_holding_beacon",
    "far_query_cells",
    "off_cross",
    "farthest_off_cross_query",
    "shares_on",
    "share_on",
    "effective_attention",
    "OffCrossSummary",
    "FarQueries",
    "far_query_attention",
]

STRIDE = 8  # the backbone's output stride: one feature cell per 8 x 8 pixels
# The backbone's receptive field: feature cell (i, j) depends on input pixel (r, c) exactly when
# |r - 8i| <= 17 and |c - 8j| <= 17 (35 x 35 pixels, cut at the border; the gradient test in
# tests/test_beacon_attention.py checks it).
RECEPTIVE_HALF = 17


def _grid_of(sample: dict) -> tuple[int, int]:
    size = sample["label"].shape[-1]
    if size % STRIDE:
        raise ValueError(f"the sample's size must be a multiple of {STRIDE}, got {size}")
    return size // STRIDE, size // STRIDE


def cells_seeing_beacon(sample: dict) -> torch.Tensor:
    """(h, w) bool: the feature cells whose receptive field overlaps the beacon."""
    if not isinstance(sample, dict) or "beacon_corner" not in sample:
        raise TypeError("sample must be a dict from ccnet_edu.data.make_sample")
    h, w = _grid_of(sample)
    br, bc = sample["beacon_corner"]
    size = int(sample["beacon_size"])
    centres_r = STRIDE * torch.arange(h)  # the pixel each cell's receptive field is centred on
    centres_c = STRIDE * torch.arange(w)
    # interval [centre - 17, centre + 17] overlaps [b, b + size - 1]
    rows = (centres_r + RECEPTIVE_HALF >= br) & (centres_r - RECEPTIVE_HALF <= br + size - 1)
    cols = (centres_c + RECEPTIVE_HALF >= bc) & (centres_c - RECEPTIVE_HALF <= bc + size - 1)
    return rows[:, None] & cols[None, :]


def cells_holding_beacon(sample: dict) -> torch.Tensor:
    """(h, w) bool: the feature cells whose own ``STRIDE x STRIDE`` pixels hold part of the beacon.

    A subset of :func:`cells_seeing_beacon`: these cells hold the beacon, the
    others of that set only see it through their receptive field.
    """
    if not isinstance(sample, dict) or "beacon_corner" not in sample:
        raise TypeError("sample must be a dict from ccnet_edu.data.make_sample")
    h, w = _grid_of(sample)
    br, bc = sample["beacon_corner"]
    size = int(sample["beacon_size"])
    held = torch.zeros(h, w, dtype=torch.bool)
    held[
        br // STRIDE : (br + size - 1) // STRIDE + 1, bc // STRIDE : (bc + size - 1) // STRIDE + 1
    ] = True
    return held


def far_query_cells(sample: dict, far: int | None = None) -> torch.Tensor:
    """(h, w) bool: cells entirely inside a shape with every pixel more than ``far`` px away.

    ``far`` defaults to :data:`ccnet_edu.train.FAR` (the evaluation's "far").
    """
    from ..data import distance_to_beacon
    from ..train import FAR

    far = FAR if far is None else check_int("far", far, minimum=0)
    h, w = _grid_of(sample)
    inside = sample["shape_mask"].reshape(h, STRIDE, w, STRIDE).all(3).all(1)
    distant = (distance_to_beacon(sample) > far).reshape(h, STRIDE, w, STRIDE).all(3).all(1)
    return inside & distant


def off_cross(seeing: torch.Tensor) -> torch.Tensor:
    """(h, w) bool: cells with no ``seeing`` cell in their row or their column."""
    if not isinstance(seeing, torch.Tensor) or seeing.dim() != 2 or seeing.dtype != torch.bool:
        raise TypeError("seeing must be an (h, w) bool tensor")
    return ~seeing.any(1)[:, None] & ~seeing.any(0)[None, :]


def farthest_off_cross_query(
    length: int = 200, val_seed: int = 10_000
) -> tuple[int, dict, tuple[int, int]] | None:
    """The first validation image with a far query off the cross, and its farthest such cell.

    Returns ``(index, sample, (row, column))`` (the off-cross far query whose pixel
    ``(STRIDE * row, STRIDE * column)`` -- the cell's top-left pixel, the centre of its
    receptive field -- is farthest, in Chebyshev distance, from the beacon's corner), or
    ``None`` when none of the ``length`` images of ``val_seed`` has one.
    """
    length = check_int("length", length, minimum=1, maximum=100_000)
    val_seed = check_int("val_seed", val_seed, minimum=0)
    for index in range(length):
        sample = make_sample(val_seed, index)
        off = far_query_cells(sample) & off_cross(cells_seeing_beacon(sample))
        if off.any():
            h, w = off.shape
            br, bc = sample["beacon_corner"]
            rows = (STRIDE * torch.arange(h) - br).abs()[:, None]  # (h, 1)
            cols = (STRIDE * torch.arange(w) - bc).abs()[None, :]  # (1, w)
            distance = torch.maximum(rows, cols) * off  # (h, w), 0 where not an off-cross query
            return index, sample, divmod(int(distance.argmax()), w)
    return None


def shares_on(attention: torch.Tensor, queries: torch.Tensor, cells: torch.Tensor) -> torch.Tensor:
    """(q,) float64: the share of each query cell's attention that falls on ``cells``.

    ``attention`` is an ``(N, N)`` attention matrix of an ``(h, w)`` grid (row ``u``
    holds the weights of query ``u``, positions in row-major order, ``N = h * w``);
    ``queries`` a ``(q, 2)`` integer tensor of ``(row, column)`` query cells; ``cells``
    an ``(h, w)`` bool mask.  Each share is the sum, in float64, of the query's weights
    on the cells of the mask: for a row-stochastic matrix a number in ``[0, 1]``.
    """
    check_tensor("attention", attention, dim=2, kind="float", layout="(N, N)")
    check_tensor("queries", queries, dim=2, kind="int", nonempty=False, layout="(q, 2)")
    check_tensor("cells", cells, dim=2, kind="bool", layout="(h, w)")
    h, w = cells.shape
    if attention.shape != (h * w, h * w):
        raise ValueError(
            f"attention must be (N, N) with N = h * w = {h * w} for cells of shape {(h, w)}, "
            f"got {tuple(attention.shape)}"
        )
    if queries.shape[1] != 2:
        raise ValueError(f"queries must have shape (q, 2), got {tuple(queries.shape)}")
    queries = queries.cpu()
    inside = (queries[:, 0] >= 0) & (queries[:, 0] < h) & (queries[:, 1] >= 0) & (queries[:, 1] < w)
    if not bool(inside.all()):
        raise ValueError(f"queries must lie in the grid of size {(h, w)}")
    rows = attention.detach().cpu()[queries[:, 0] * w + queries[:, 1]].double()  # (q, N)
    return rows[:, cells.cpu().reshape(-1)].sum(1)


def share_on(attention: torch.Tensor, query: tuple[int, int], cells: torch.Tensor) -> float:
    """The share of query cell ``query = (row, column)``'s attention on ``cells``.

    One query of :func:`shares_on`: ``attention`` ``(N, N)``, ``cells`` an ``(h, w)``
    bool mask with ``h * w = N``.
    """
    check_tensor("cells", cells, dim=2, kind="bool", layout="(h, w)")
    i, j = check_index("query", query, tuple(cells.shape))
    return float(shares_on(attention, torch.tensor([[i, j]]), cells)[0])


def effective_attention(model: nn.Module, out: dict) -> torch.Tensor | None:
    """The (B, N, N) effective attention of ``model`` from its ``return_all`` output.

    ``None`` for heads without a pairwise attention (``fcn``, ``sa``).
    """
    head = model.config["head"]
    attention = out.get("attention")
    if head in ("rcca1", "rcca2"):
        return recurrent_attention_to_dense(list(attention))  # A_R ... A_1
    if head == "nonlocal":
        return attention
    if head == "isa":
        h, w = out["features"].shape[-2:]
        return issa_attention_to_dense(attention, h, w, model.head.context.block_size, "combined")
    if head == "axial":
        from ..axial import axial_attention_to_dense

        return axial_attention_to_dense(*attention)  # A_width @ A_height
    return None


@dataclass(frozen=True)
class OffCrossSummary:
    """One model's far queries split by the cross: how many, median share, accuracy."""

    off_count: int  # far queries off the query's cross of the beacon
    off_median_share: float  # median attention share on beacon-seeing cells (nan: no attention)
    off_accuracy: float  # share of those queries labelled with the beacon's class
    on_count: int  # far queries on the cross
    on_accuracy: float


@dataclass
class FarQueries:
    """Every far query of the evaluated images (one entry per query, as 1-d tensors)."""

    image: torch.Tensor  # (Q,) int: index of the validation sample
    cell: torch.Tensor  # (Q, 2) int: (row, column) of the query cell
    off_cross: torch.Tensor  # (Q,) bool
    share: torch.Tensor  # (Q,) float: attention weight on beacon-seeing cells (nan: no attention)
    correct: torch.Tensor  # (Q,) bool: the cell is labelled with the beacon's class

    def __len__(self) -> int:
        return len(self.image)

    def select(self, mask: torch.Tensor) -> FarQueries:
        return FarQueries(
            self.image[mask],
            self.cell[mask],
            self.off_cross[mask],
            self.share[mask],
            self.correct[mask],
        )

    def off_cross_summary(self) -> OffCrossSummary:
        """The per-model statistics that chapters 5 (second part) and 7 print for far queries.

        Off the cross: count, median of ``share`` and accuracy; on the cross: count and
        accuracy. An empty group gives ``nan`` for its median and accuracy.
        """

        def accuracy(group: FarQueries) -> float:
            return float(group.correct.double().mean()) if len(group) else float("nan")

        off, on = self.select(self.off_cross), self.select(~self.off_cross)
        median = float(off.share.median()) if len(off) else float("nan")
        return OffCrossSummary(len(off), median, accuracy(off), len(on), accuracy(on))


@torch.no_grad()
def far_query_attention(
    model: nn.Module,
    *,
    length: int = 100,
    val_seed: int = 10_000,
    batch_size: int = 50,
) -> FarQueries:
    """Share of attention on the beacon and correctness for every far query of ``length`` images.

    The model runs in ``eval()`` mode (batch statistics would couple the
    images of a batch); it is put back in its former mode afterwards.
    """
    if not isinstance(model, nn.Module) or not hasattr(model, "config"):
        raise TypeError("model must be a ccnet_edu SegmentationModel")
    length = check_int("length", length, minimum=1)
    check_int("val_seed", val_seed, minimum=0)
    batch_size = check_int("batch_size", batch_size, minimum=1)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    parts: dict[str, list[torch.Tensor]] = {k: [] for k in ("image", "cell", "off", "share", "ok")}
    for start in range(0, length, batch_size):
        indices = range(start, min(start + batch_size, length))
        samples = [make_sample(val_seed, i) for i in indices]
        images = torch.stack([s["image"] for s in samples]).to(device)
        out = model(images, return_all=True)
        pred = out["logits_small"].argmax(1).cpu()  # (B, h, w)
        attention = effective_attention(model, out)
        for b, (index, s) in enumerate(zip(indices, samples, strict=True)):
            queries = far_query_cells(s)
            if not queries.any():
                continue
            seeing = cells_seeing_beacon(s)
            cells = queries.nonzero()  # (q, 2)
            if attention is None:
                share = torch.full((len(cells),), float("nan"))
            else:
                share = shares_on(attention[b], cells, seeing)
            parts["image"].append(torch.full((len(cells),), index))
            parts["cell"].append(cells)
            parts["off"].append(off_cross(seeing)[cells[:, 0], cells[:, 1]])
            parts["share"].append(share.double())
            parts["ok"].append(pred[b][cells[:, 0], cells[:, 1]] == s["beacon_class"])
    model.train(was_training)
    if not parts["image"]:
        empty = torch.zeros(0)
        return FarQueries(
            empty.long(), torch.zeros(0, 2).long(), empty.bool(), empty.double(), empty.bool()
        )
    return FarQueries(
        torch.cat(parts["image"]),
        torch.cat(parts["cell"]),
        torch.cat(parts["off"]),
        torch.cat(parts["share"]),
        torch.cat(parts["ok"]),
    )
