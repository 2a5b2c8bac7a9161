"""Category consistent loss: hand-worked examples and an independent loop reference."""

from __future__ import annotations

import math

import pytest
import torch

from ccnet_edu.losses import CategoryConsistentLoss, category_consistent_terms, phi_var


def embedding_from_rows(rows: list[list[float]], height: int, width: int) -> torch.Tensor:
    """(N, D) list of pixel embeddings, row-major -> (1, D, H, W) float64."""
    return torch.tensor(rows, dtype=torch.float64).T.reshape(1, -1, height, width)


def test_hand_example_one_dimension():
    # 1 x 5 image, D = 1, labels [0, 0, 1, 1, 1], h = [0, 2, 2, 2, 5]; δ_v = 0.5, δ_d = 1.5.
    # class 0: μ0 = 1, distances 1, 1 -> φ(1) = (1 - 0.5)^2 = 0.25 each -> mean 0.25
    # class 1: μ1 = 3, distances 1, 1, 2 -> 0.25, 0.25, φ(2) = 2 - 1.5 + 1^2 = 1.5 -> mean 2/3
    # l_var = (0.25 + 2/3) / 2 = 11/24
    # l_dis: ‖μ0 - μ1‖ = 2 < 2δ_d = 3 -> (3 - 2)^2 = 1 for (0,1) and (1,0) -> 2 / (2·1) = 1
    # l_reg = (|1| + |3|) / 2 = 2
    # loss = 11/24 + 1 + 0.001 · 2
    emb = embedding_from_rows([[0.0], [2.0], [2.0], [2.0], [5.0]], 1, 5)
    labels = torch.tensor([[[0, 0, 1, 1, 1]]])
    loss_fn = CategoryConsistentLoss(num_classes=2)
    l_var, l_dis, l_reg = loss_fn.terms(emb, labels)
    assert l_var.item() == pytest.approx(11 / 24)
    assert l_dis.item() == pytest.approx(1.0)
    assert l_reg.item() == pytest.approx(2.0)
    assert loss_fn(emb, labels).item() == pytest.approx(11 / 24 + 1 + 0.002)
    # weights are applied as given
    weighted = CategoryConsistentLoss(2, alpha=2.0, beta=0.5, gamma=0.1)(emb, labels)
    assert weighted.item() == pytest.approx(2 * 11 / 24 + 0.5 + 0.2)


def test_hand_example_ignore_label_and_empty_class():
    # 2 x 2 image, D = 2, labels [[0, 0], [2, 255]]: class 1 has no pixels, one pixel ignored.
    # class 0: h = (0,0), (0,2) -> μ0 = (0,1), distances 1, 1 -> 0.25 each -> 0.25
    # class 2: h = (3,1) -> μ2 = (3,1), distance 0 -> 0
    # l_var = (0.25 + 0) / 2 = 0.125 (|C| = 2: the empty class 1 does not count)
    # l_dis: ‖μ0 - μ2‖ = 3 = 2δ_d -> hinge 0
    # l_reg = (1 + sqrt(10)) / 2
    # The ignored pixel's embedding (100, -100) must change nothing.
    emb = embedding_from_rows([[0.0, 0.0], [0.0, 2.0], [3.0, 1.0], [100.0, -100.0]], 2, 2)
    labels = torch.tensor([[[0, 0], [2, 255]]])
    l_var, l_dis, l_reg = category_consistent_terms(emb, labels, 3)
    assert l_var.item() == pytest.approx(0.125)
    assert l_dis.item() == pytest.approx(0.0)
    assert l_reg.item() == pytest.approx((1 + math.sqrt(10)) / 2)
    # the same with the class relabelled 2 -> 1 (no empty class)
    relabelled = category_consistent_terms(emb, torch.tensor([[[0, 0], [1, 255]]]), 2)
    for a, b in zip((l_var, l_dis, l_reg), relabelled, strict=True):
        assert a.item() == pytest.approx(b.item())


def test_single_class_has_no_push_term():
    torch.manual_seed(0)
    emb = torch.randn(1, 3, 4, 5, dtype=torch.float64)
    labels = torch.full((1, 4, 5), 2)
    labels[0, 0, 0] = 255
    l_var, l_dis, l_reg = category_consistent_terms(emb, labels, 3)
    assert l_dis.item() == 0.0
    assert l_var.item() > 0 and l_reg.item() > 0


def test_phi_var_pieces_and_continuity():
    d = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0], dtype=torch.float64)
    expected = [0.0, 0.0, 0.25, 1.0, 1.5, 2.5]
    torch.testing.assert_close(phi_var(d), torch.tensor(expected, dtype=torch.float64))
    eps = 1e-9
    left = phi_var(torch.tensor(1.5 - eps, dtype=torch.float64))
    right = phi_var(torch.tensor(1.5 + eps, dtype=torch.float64))
    assert abs(left.item() - right.item()) < 1e-8
    # continuity holds for other margins as well: value (δ_d - δ_v)^2 from both sides
    for delta_v, delta_d in [(0.2, 0.7), (1.0, 3.0)]:
        lo = phi_var(torch.tensor(delta_d - eps, dtype=torch.float64), delta_v, delta_d)
        hi = phi_var(torch.tensor(delta_d + eps, dtype=torch.float64), delta_v, delta_d)
        assert lo.item() == pytest.approx((delta_d - delta_v) ** 2, abs=1e-8)
        assert hi.item() == pytest.approx((delta_d - delta_v) ** 2, abs=1e-8)


def reference_terms(emb, labels, delta_v=0.5, delta_d=1.5, ignore=255):
    """Loops over images and classes, straight from the formulas."""
    results = []
    for b in range(emb.shape[0]):
        h = emb[b].flatten(1).T  # (N, D)
        lab = labels[b].flatten()
        classes = sorted(set(lab.tolist()) - {ignore})
        if not classes:
            continue
        means = {c: h[lab == c].mean(0) for c in classes}
        var = 0.0
        for c in classes:
            d = (h[lab == c] - means[c]).norm(dim=1)
            phi = torch.where(
                d <= delta_v,
                torch.zeros_like(d),
                torch.where(
                    d <= delta_d, (d - delta_v) ** 2, d - delta_d + (delta_d - delta_v) ** 2
                ),
            )
            var = var + phi.mean()
        var = var / len(classes)
        dis = 0.0
        for a in classes:
            for c in classes:
                if a != c:
                    dis = dis + (2 * delta_d - (means[a] - means[c]).norm()).clamp(min=0) ** 2
        dis = dis / (len(classes) * (len(classes) - 1)) if len(classes) > 1 else torch.tensor(0.0)
        reg = sum(means[c].norm() for c in classes) / len(classes)
        results.append(torch.stack([torch.as_tensor(t, dtype=emb.dtype) for t in (var, dis, reg)]))
    return torch.stack(results).mean(0)


def test_matches_loop_reference_on_random_batch():
    torch.manual_seed(1)
    emb = torch.randn(3, 4, 5, 7, dtype=torch.float64) * 1.5
    labels = torch.randint(0, 5, (3, 5, 7))
    labels[0, :2] = 255
    labels[1] = torch.where(labels[1] == 3, torch.full_like(labels[1], 1), labels[1])
    labels[2] = 255  # an image without labelled pixels takes no part in the batch mean
    terms = torch.stack(category_consistent_terms(emb, labels, 5))
    torch.testing.assert_close(terms, reference_terms(emb, labels))
    # batch mean = mean of the labelled images computed one by one
    one_by_one = torch.stack(
        [
            torch.stack(category_consistent_terms(emb[i : i + 1], labels[i : i + 1], 5))
            for i in (0, 1)
        ]
    ).mean(0)
    torch.testing.assert_close(terms, one_by_one)


def test_labels_resized_with_nearest():
    torch.manual_seed(2)
    emb = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    big = torch.randint(0, 4, (2, 8, 10))
    small = big[:, ::2, ::2]  # nearest with factor 2 picks pixel (2i, 2j)
    torch.testing.assert_close(
        torch.stack(category_consistent_terms(emb, big, 4)),
        torch.stack(category_consistent_terms(emb, small, 4)),
    )


def test_gradcheck_and_meta():
    torch.manual_seed(3)
    emb = (torch.randn(2, 2, 3, 4, dtype=torch.float64) * 2).requires_grad_()
    labels = torch.randint(0, 3, (2, 3, 4))
    labels[0, 0, 0] = 255
    loss_fn = CategoryConsistentLoss(3, gamma=0.5)
    assert torch.autograd.gradcheck(lambda e: loss_fn(e, labels), (emb,))
    loss = CategoryConsistentLoss(num_classes=4)(
        torch.randn(2, 16, 5, 6, device="meta"),
        torch.zeros(2, 5, 6, dtype=torch.long, device="meta"),
    )
    assert loss.shape == () and loss.device.type == "meta"


def test_all_ignored_gives_zero():
    emb = torch.randn(2, 3, 2, 2, dtype=torch.float64, requires_grad=True)
    loss = CategoryConsistentLoss(num_classes=4)(emb, torch.full((2, 2, 2), 255))
    assert loss.item() == 0.0
    loss.backward()
    assert bool(torch.isfinite(emb.grad).all())


def test_bad_inputs():
    emb = torch.randn(1, 3, 4, 4)
    labels = torch.zeros(1, 4, 4, dtype=torch.long)
    loss_fn = CategoryConsistentLoss(num_classes=4)
    with pytest.raises(ValueError, match="embedding must have 4 dimensions"):
        loss_fn(torch.randn(3, 4, 4), labels)
    with pytest.raises(TypeError, match="embedding must have a floating-point dtype"):
        loss_fn(torch.ones(1, 3, 4, 4, dtype=torch.long), labels)
    with pytest.raises(TypeError, match="labels must have an integer dtype"):
        loss_fn(emb, labels.float())
    with pytest.raises(ValueError, match="labels must have shape"):
        loss_fn(emb, labels[0])
    with pytest.raises(ValueError, match="labels must be in"):
        CategoryConsistentLoss(num_classes=2)(emb, torch.full((1, 4, 4), 3))
    with pytest.raises(ValueError, match="delta_v and delta_d"):
        CategoryConsistentLoss(4, delta_v=2.0, delta_d=1.0)
    with pytest.raises(TypeError, match="labels must be a torch.Tensor"):
        loss_fn(emb, [[0]])


def test_the_class_count_is_an_argument_not_read_off_the_labels():
    """One stray label far beyond K is an error, not a (B, N, 200000) allocation."""
    emb = torch.randn(2, 16, 12, 12)
    labels = torch.randint(0, 4, (2, 12, 12))
    labels[1, 5, 7] = 200_000
    with pytest.raises(ValueError, match=r"labels must be in \[0, num_classes=4\).*200000"):
        CategoryConsistentLoss(num_classes=4)(emb, labels)
    with pytest.raises(ValueError, match="labels must be in"):
        category_consistent_terms(emb, labels.clamp(max=4) - 5, 4)  # negative labels
    with pytest.raises(TypeError, match="missing 1 required positional argument: 'num_classes'"):
        CategoryConsistentLoss()
    with pytest.raises(TypeError, match="num_classes must be an int, got float"):
        CategoryConsistentLoss(0.5, 1.5)  # the old positional delta_v, delta_d
    with pytest.raises(ValueError, match="ignore_index must not be a class index"):
        CategoryConsistentLoss(4, ignore_index=2)
    with pytest.raises(ValueError, match="gamma must be >= 0"):
        CategoryConsistentLoss(4, gamma=-1.0)
    with pytest.raises(ValueError, match="delta_d must be finite"):
        CategoryConsistentLoss(4, delta_d=float("nan"))
