"""Squeeze-and-excitation, squeeze-and-attention, the SANet head and its loss."""

from __future__ import annotations

import math

import pytest
import torch

from ccnet_edu.sa import SANetHead, SANetLoss, SANetOutput, SqueezeAttention, SqueezeExcitation


def _randomise_batchnorm(module: torch.nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)


# ---------------------------------------------------------------------------
# SE
# ---------------------------------------------------------------------------


def test_squeeze_excitation_matches_manual():
    torch.manual_seed(0)
    se = SqueezeExcitation(8, reduction=4).double()
    x = torch.randn(2, 8, 5, 3, dtype=torch.float64)
    y, weights = se(x, return_attention=True)
    fc1, fc2 = se.fc[0], se.fc[2]
    assert fc1.out_features == 2
    pooled = x.sum(dim=(2, 3)) / 15
    manual = torch.sigmoid(fc2(torch.relu(fc1(pooled))))
    torch.testing.assert_close(weights[:, :, 0, 0], manual)
    torch.testing.assert_close(y, x * manual[:, :, None, None])
    assert y.shape == x.shape


# ---------------------------------------------------------------------------
# SA
# ---------------------------------------------------------------------------


def manual_window_mean(x: torch.Tensor, p_h: int, p_w: int) -> torch.Tensor:
    """Average over each p_h x p_w window, the last windows cut at the border."""
    b, c, h, w = x.shape
    out = torch.empty(b, c, math.ceil(h / p_h), math.ceil(w / p_w), dtype=x.dtype)
    for i in range(out.shape[2]):
        for j in range(out.shape[3]):
            out[:, :, i, j] = x[:, :, i * p_h : (i + 1) * p_h, j * p_w : (j + 1) * p_w].mean((2, 3))
    return out


@pytest.mark.parametrize("height,width,pool", [(16, 8, 8), (13, 7, 4), (5, 9, (2, 3)), (3, 3, 8)])
def test_squeeze_attention_matches_manual(height, width, pool):
    torch.manual_seed(1)
    sa = SqueezeAttention(8, pool=pool).double()
    _randomise_batchnorm(sa)
    sa.eval()
    p_h, p_w = (pool, pool) if isinstance(pool, int) else pool
    x = torch.randn(2, 8, height, width, dtype=torch.float64)
    with torch.no_grad():
        y, x_att = sa(x, return_attention=True)
        x_res = sa.conv_main(x)
        att_small = sa.conv_att(manual_window_mean(x, p_h, p_w))
    # each pixel takes the attention of its own window
    upsampled = torch.empty_like(x_res)
    for i in range(height):
        for j in range(width):
            upsampled[:, :, i, j] = att_small[:, :, i // p_h, j // p_w]
    torch.testing.assert_close(x_att, upsampled)
    torch.testing.assert_close(y, upsampled * x_res + upsampled)
    assert y.shape == (2, 2, height, width)  # default out_channels = in_channels // 4
    assert bool(((x_att > 0) & (x_att < 1)).all())  # sigmoid gate


def test_squeeze_attention_relu_gate_and_gradcheck():
    torch.manual_seed(2)
    sa = SqueezeAttention(4, out_channels=3, pool=2, gate="relu").double().eval()
    x = torch.randn(2, 4, 5, 3, dtype=torch.float64, requires_grad=True)
    y, x_att = sa(x, return_attention=True)
    assert y.shape == (2, 3, 5, 3)
    assert bool((x_att >= 0).all())
    assert torch.autograd.gradcheck(sa, (x,), fast_mode=True)


def test_attention_is_constant_on_each_window():
    # Every pixel of a pooling window shares one attention value, and changing
    # the input inside a window changes the attention there.
    torch.manual_seed(3)
    sa = SqueezeAttention(4, pool=4).double().eval()
    x = torch.randn(1, 4, 8, 8, dtype=torch.float64)
    x2 = x.clone()
    x2[:, :, :4, :4] += 1.0
    with torch.no_grad():
        a, b = sa.attention(x), sa.attention(x2)
    changed = (a - b).abs().amax(dim=1)[0] > 0
    for i in range(0, 8, 4):
        for j in range(0, 8, 4):
            block = a[0, :, i : i + 4, j : j + 4]
            assert torch.equal(block, block[:, :1, :1].expand_as(block))
    assert bool(changed[:4, :4].all())


# ---------------------------------------------------------------------------
# SANet head and loss
# ---------------------------------------------------------------------------

CHANNELS = [8, 12, 16, 20]
SIZES = [(17, 15), (9, 8), (5, 4), (5, 4)]


def _features(dtype=torch.float64, device="cpu"):
    return [
        torch.randn(2, c, h, w, dtype=dtype, device=device)
        for c, (h, w) in zip(CHANNELS, SIZES, strict=True)
    ]


def test_sanet_head_shapes_and_composition():
    torch.manual_seed(4)
    head = SANetHead(CHANNELS, num_classes=5, channels=4).double()
    _randomise_batchnorm(head)
    head.eval()
    feats = _features()
    with torch.no_grad():
        out = head(feats)
        assert isinstance(out, SANetOutput)
        assert out.mask.shape == (2, 5, 17, 15)
        assert out.dense.shape == (2, 5, 17, 15)
        assert out.category.shape == (2, 5)
        # recompose from the head's own submodules
        ys, atts = [], []
        for x, sa in zip(feats, head.sa, strict=True):
            y, a = sa(x, return_attention=True)
            resize = lambda t: torch.nn.functional.interpolate(  # noqa: E731
                t, size=(17, 15), mode="bilinear", align_corners=False
            )
            ys.append(resize(y))
            atts.append(resize(a))
        merged = torch.cat(ys, 1)
        torch.testing.assert_close(out.mask, head.mask_head(merged))
        torch.testing.assert_close(out.dense, head.dense_head(torch.cat(atts, 1)))
        torch.testing.assert_close(out.category, head.category_head(merged.mean((2, 3))))


def manual_cross_entropy(logits, target, ignore):
    """Mean of -log softmax at the true class over labelled pixels, by loops."""
    total, count = 0.0, 0
    log_p = torch.log_softmax(logits, dim=1)
    for b in range(target.shape[0]):
        for i in range(target.shape[1]):
            for j in range(target.shape[2]):
                t = int(target[b, i, j])
                if t != ignore:
                    total = total - log_p[b, t, i, j]
                    count += 1
    return total / count


def test_sanet_loss_equals_hand_composition():
    torch.manual_seed(5)
    k = 4
    out = SANetOutput(
        mask=torch.randn(2, k, 3, 4, dtype=torch.float64),
        dense=torch.randn(2, k, 3, 4, dtype=torch.float64),
        category=torch.randn(2, k, dtype=torch.float64),
    )
    # labels at twice the logits' resolution: nearest resize keeps pixels (2i, 2j)
    target = torch.randint(0, 3, (2, 6, 8))
    target[0, 0, 0] = 255
    target[1] = torch.where(target[1] == 2, torch.full_like(target[1], 3), target[1])
    small = target[:, ::2, ::2]

    presence = torch.zeros(2, k, dtype=torch.float64)
    for b in range(2):
        for c in set(target[b].flatten().tolist()) - {255}:
            presence[b, c] = 1.0
    p = torch.sigmoid(out.category)
    bce = -(presence * torch.log(p) + (1 - presence) * torch.log(1 - p)).mean()

    loss_fn = SANetLoss(alpha=0.2, beta=0.8)
    terms = loss_fn.terms(out, target)
    torch.testing.assert_close(terms["mask"], manual_cross_entropy(out.mask, small, 255))
    torch.testing.assert_close(terms["dense"], manual_cross_entropy(out.dense, small, 255))
    torch.testing.assert_close(terms["category"], bce)
    expected = terms["mask"] + 0.2 * terms["category"] + 0.8 * terms["dense"]
    torch.testing.assert_close(loss_fn(out, target), expected)
    torch.testing.assert_close(loss_fn.presence(target, k), presence.float())


def test_sanet_loss_with_every_pixel_ignored_is_finite():
    """A batch whose labels are all ignore_index: the pixel terms are 0 with zero
    gradient (F.cross_entropy's mean would be 0/0 = NaN and poison training);
    the category term still trains towards "no class present"."""
    torch.manual_seed(7)
    logits = [torch.randn(2, 4, 3, 4, dtype=torch.float64, requires_grad=True) for _ in range(3)]
    out = SANetOutput(mask=logits[0], dense=logits[1], category=logits[2][:, :, 0, 0])
    target = torch.full((2, 6, 8), 255)
    loss_fn = SANetLoss()
    terms = loss_fn.terms(out, target)
    assert terms["mask"].item() == 0.0 and terms["dense"].item() == 0.0
    loss = loss_fn(out, target)
    assert torch.isfinite(loss)
    loss.backward()
    assert logits[0].grad.abs().max() == 0 and logits[1].grad.abs().max() == 0
    assert torch.isfinite(logits[2].grad).all() and logits[2].grad.abs().max() > 0


def test_sanet_loss_backward_through_head():
    torch.manual_seed(6)
    head = SANetHead(CHANNELS, num_classes=3, channels=4)
    out = head(_features(torch.float32))
    loss = SANetLoss()(out, torch.randint(0, 3, (2, 17, 15)))
    loss.backward()
    assert all(p.grad is not None for p in head.parameters())


def test_meta_device():
    x = torch.randn(2, 8, 13, 7, device="meta")
    assert SqueezeExcitation(8).to("meta")(x).shape == (2, 8, 13, 7)
    y, a = SqueezeAttention(8, pool=4).to("meta")(x, return_attention=True)
    assert y.shape == a.shape == (2, 2, 13, 7) and y.device.type == "meta"
    head = SANetHead(CHANNELS, num_classes=3, channels=4).to("meta")
    out = head(_features(torch.float32, "meta"))
    assert out.mask.shape == (2, 3, 17, 15) and out.category.shape == (2, 3)
    loss = SANetLoss()(out, torch.zeros(2, 17, 15, dtype=torch.long, device="meta"))
    assert loss.shape == () and loss.device.type == "meta"


def test_bad_inputs():
    x = torch.randn(1, 8, 6, 6)
    with pytest.raises(ValueError, match="x must have 4 dimensions"):
        SqueezeAttention(8)(torch.randn(8, 6, 6))
    with pytest.raises(ValueError, match="x must have 8 channels"):
        SqueezeAttention(8)(torch.randn(1, 4, 6, 6))
    with pytest.raises(TypeError, match="x must have a floating-point dtype"):
        SqueezeExcitation(8)(torch.ones(1, 8, 6, 6, dtype=torch.long))
    with pytest.raises(ValueError, match="x must have 4 channels"):
        SqueezeExcitation(4)(x)
    with pytest.raises(ValueError, match="pool must be >= 1"):
        SqueezeAttention(8, pool=0)
    with pytest.raises(ValueError, match="gate"):
        SqueezeAttention(8, gate="tanh")
    with pytest.raises(ValueError, match="in_channels must be >= 1"):
        SqueezeAttention(0)
    with pytest.raises(TypeError, match="in_channels must be an int, got float"):
        SqueezeAttention(8.0)
    with pytest.raises(ValueError, match="in_channels_list must give the channels of 4"):
        SANetHead([8, 16, 32], 3)
    head = SANetHead(CHANNELS, 3, channels=4)
    with pytest.raises(ValueError, match="features must be a list or tuple of 4"):
        head(_features(torch.float32)[:3])
    with pytest.raises(ValueError, match=r"features\[1\] must have 12 channels"):
        feats = _features(torch.float32)
        feats[1] = torch.randn(2, 5, 9, 8)
        head(feats)
    out = head(_features(torch.float32))
    with pytest.raises(TypeError, match="target must have an integer dtype"):
        SANetLoss()(out, torch.zeros(2, 17, 15))
    with pytest.raises(ValueError, match="target must have shape"):
        SANetLoss()(out, torch.zeros(17, 15, dtype=torch.long))
    with pytest.raises(ValueError, match="target values must be in"):
        SANetLoss()(out, torch.full((2, 17, 15), 7))
