"""Category consistent loss (CCL): CCNet, TPAMI version (Huang et al., 2020), Sec. 3.4.

CCNet's TPAMI version adds a loss on a small per-pixel embedding ``h`` (the
RCCA features reduced to, e.g., 16 channels) that pulls the pixels of one
class towards their class mean and pushes the means of different classes
apart, the discriminative loss of De Brabandere et al. applied to classes.

With ``𝒞`` the set of classes present in an image, ``N_c`` pixels of class c and
``μ_c`` their mean embedding (the notation page of the book writes the set as a
script C, so that ``C`` stays the channels of a feature map)::

    l_var = 1/|𝒞| Σ_c 1/N_c Σ_{i∈c} φ_var(‖μ_c − h_i‖)
    φ_var(d) = 0                       d ≤ δ_v
               (d − δ_v)²              δ_v < d ≤ δ_d
               d − δ_d + (δ_d − δ_v)²  d > δ_d          (continuous at δ_d)
    l_dis = 1/(|𝒞|(|𝒞|−1)) Σ_{a≠b} max(0, 2δ_d − ‖μ_a − μ_b‖)²     (ordered pairs)
    l_reg = 1/|𝒞| Σ_c ‖μ_c‖

Pixels labelled ``ignore_index`` take no part; a class with no pixels takes
no part; with a single class ``l_dis = 0``.  The terms are computed **per
image** and then **averaged over the images of the batch that have at least
one labelled pixel** (an image with none contributes nothing; a batch with
none gives 0).

The number of classes K is an argument, never read off the labels: memory
is (B, N, K) for the memberships and (B, K, K) for the pairs, so one stray
label of 200000 must be an error, not a 640 GB allocation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._checks import (
    check_channels,
    check_feature_map,
    check_float,
    check_int,
    check_same_device,
    check_tensor,
)

__all__ = ["phi_var", "category_consistent_terms", "CategoryConsistentLoss"]


def phi_var(distance: torch.Tensor, delta_v: float = 0.5, delta_d: float = 1.5) -> torch.Tensor:
    """The piecewise pull penalty φ_var(d): zero inside δ_v, quadratic to δ_d, then linear."""
    check_tensor("distance", distance, kind="float", nonempty=False)
    delta_v, delta_d = _check_deltas(delta_v, delta_d)
    quadratic = (distance - delta_v).clamp(min=0) ** 2
    # Beyond δ_d the penalty grows linearly (bounded gradient for far outliers),
    # shifted by (δ_d − δ_v)² so that both pieces meet at d = δ_d.
    linear = distance - delta_d + (delta_d - delta_v) ** 2
    return torch.where(distance > delta_d, linear, quadratic)


def _check_deltas(delta_v: object, delta_d: object) -> tuple[float, float]:
    delta_v = check_float("delta_v", delta_v, minimum=0.0)
    delta_d = check_float("delta_d", delta_d, minimum=0.0)
    if not delta_v < delta_d:
        raise ValueError(
            f"delta_v and delta_d must satisfy 0 <= delta_v < delta_d, got "
            f"delta_v={delta_v}, delta_d={delta_d}"
        )
    return delta_v, delta_d


def _check_classes(num_classes: object, ignore_index: object) -> tuple[int, int]:
    num_classes = check_channels("num_classes", num_classes, minimum=1)
    ignore_index = check_int("ignore_index", ignore_index)
    if 0 <= ignore_index < num_classes:
        raise ValueError(
            f"ignore_index must not be a class index in [0, num_classes={num_classes}), "
            f"got {ignore_index}"
        )
    return num_classes, ignore_index


def _check_labels(labels: object, embedding: torch.Tensor) -> torch.Tensor:
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"labels must be a torch.Tensor, got {type(labels).__name__}")
    if labels.dtype.is_floating_point or labels.dtype == torch.bool or labels.is_complex():
        raise TypeError(f"labels must have an integer dtype (class indices), got {labels.dtype}")
    check_same_device(embedding=embedding, labels=labels)
    if labels.dim() != 3 or labels.shape[0] != embedding.shape[0]:
        raise ValueError(
            f"labels must have shape (B, H, W) with B={embedding.shape[0]} (the embedding's "
            f"batch size), got {tuple(labels.shape)}"
        )
    labels = labels.long()
    if labels.shape[1:] != embedding.shape[2:]:  # labels are resized, never interpolated
        labels = F.interpolate(labels[:, None].double(), size=embedding.shape[2:], mode="nearest")
        labels = labels[:, 0].long()
    return labels


def category_consistent_terms(
    embedding: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    delta_v: float = 0.5,
    delta_d: float = 1.5,
    ignore_index: int = 255,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The three CCL terms ``(l_var, l_dis, l_reg)``, each averaged over the batch.

    Args:
        embedding: (B, C_h, H, W) floating tensor, the per-pixel embedding ``h``.
        labels: (B, H, W) integer class indices in ``[0, num_classes)`` or
            ``ignore_index`` (resized with nearest neighbour to (H, W) if their
            size differs).
        num_classes: K, the number of classes (any other label is an error).
        delta_v, delta_d: the margins δ_v < δ_d of φ_var and of the push term.
        ignore_index: the label of pixels that take no part (not a class index).
    """
    check_feature_map("embedding", embedding)
    labels = _check_labels(labels, embedding)
    num_classes, ignore_index = _check_classes(num_classes, ignore_index)
    delta_v, delta_d = _check_deltas(delta_v, delta_d)
    valid = labels != ignore_index  # (B, H, W)
    if labels.device.type != "meta":  # value checks need real data
        bad = valid & ((labels < 0) | (labels >= num_classes))
        if bool(bad.any()):
            raise ValueError(
                f"labels must be in [0, num_classes={num_classes}) or ignore_index="
                f"{ignore_index}, got {sorted(set(labels[bad].tolist()))[:5]}"
            )

    h = embedding.flatten(2).transpose(1, 2)  # (B, N, C_h): h_i
    # One-hot membership; ignored pixels belong to no class (all-zero row).
    index = torch.where(valid, labels, torch.zeros_like(labels)).flatten(1)  # (B, N)
    onehot = F.one_hot(index, num_classes).to(embedding.dtype)  # (B, N, K)
    onehot = onehot * valid.flatten(1)[:, :, None].to(embedding.dtype)

    counts = onehot.sum(dim=1)  # (B, K): N_c
    present = counts > 0  # (B, K): classes that take part
    n_classes = present.sum(dim=1).to(embedding.dtype)  # (B,): |𝒞|
    mean = onehot.transpose(1, 2) @ h / counts.clamp(min=1)[:, :, None]  # (B, K, C_h): μ_c

    # l_var: each pixel against the mean of its own class.
    own_mean = onehot @ mean  # (B, N, C_h): μ_{c(i)} (zero for ignored pixels)
    pull = phi_var(torch.linalg.vector_norm(own_mean - h, dim=-1), delta_v, delta_d)  # (B, N)
    pull_per_class = (onehot * pull[:, :, None]).sum(dim=1) / counts.clamp(min=1)  # (B, K)
    l_var = pull_per_class.sum(dim=1) / n_classes.clamp(min=1)  # (B,)

    # l_dis: every ordered pair (a, b), a != b, of present classes.
    gap = torch.linalg.vector_norm(mean[:, :, None] - mean[:, None, :], dim=-1)  # (B, K, K)
    push = (2 * delta_d - gap).clamp(min=0) ** 2
    eye = torch.eye(num_classes, dtype=torch.bool, device=embedding.device)
    pairs = present[:, :, None] & present[:, None, :] & ~eye  # (B, K, K)
    push = torch.where(pairs, push, torch.zeros_like(push))
    l_dis = push.sum(dim=(1, 2)) / (n_classes * (n_classes - 1)).clamp(min=1)  # (B,)

    # l_reg: keep the means near the origin.
    norms = torch.linalg.vector_norm(mean, dim=-1)  # (B, K)
    l_reg = torch.where(present, norms, torch.zeros_like(norms)).sum(dim=1) / n_classes.clamp(min=1)

    # Per image, then the mean over images with at least one labelled pixel.
    labelled = (n_classes > 0).to(embedding.dtype)  # (B,)
    denominator = labelled.sum().clamp(min=1)
    return tuple((term * labelled).sum() / denominator for term in (l_var, l_dis, l_reg))  # type: ignore[return-value]


class CategoryConsistentLoss(nn.Module):
    """``α l_var + β l_dis + η l_reg`` (the segmentation loss is added by the caller).

    ``num_classes`` K is required: labels must lie in ``[0, K)`` or be
    ``ignore_index``.  Defaults (from the discriminative loss): δ_v = 0.5,
    δ_d = 1.5, α = β = 1, η = 0.001.  The weight η of ``l_reg`` is the one the
    paper writes γ; the book keeps γ for the residual scale of criss-cross
    attention, and the argument keeps the paper's name, ``gamma``.
    ``forward(embedding (B, C_h, H, W), labels (B, H, W))`` returns a scalar;
    :meth:`terms` returns ``(l_var, l_dis, l_reg)``.
    """

    def __init__(
        self,
        num_classes: int,
        delta_v: float = 0.5,
        delta_d: float = 1.5,
        alpha: float = 1.0,
        beta: float = 1.0,
        gamma: float = 0.001,
        ignore_index: int = 255,
    ) -> None:
        super().__init__()
        self.num_classes, self.ignore_index = _check_classes(num_classes, ignore_index)
        self.delta_v, self.delta_d = _check_deltas(delta_v, delta_d)
        self.alpha = check_float("alpha", alpha, minimum=0.0)
        self.beta = check_float("beta", beta, minimum=0.0)
        self.gamma = check_float("gamma", gamma, minimum=0.0)

    def terms(
        self, embedding: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(l_var, l_dis, l_reg)``, each a scalar averaged over the batch."""
        return category_consistent_terms(
            embedding, labels, self.num_classes, self.delta_v, self.delta_d, self.ignore_index
        )

    def forward(self, embedding: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """embedding (B, C_h, H, W), labels (B, H, W) -> scalar loss."""
        l_var, l_dis, l_reg = self.terms(embedding, labels)
        return self.alpha * l_var + self.beta * l_dis + self.gamma * l_reg
