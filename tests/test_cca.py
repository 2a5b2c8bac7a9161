"""Tests of the criss-cross attention modules and heads (ccnet_edu.cca).

The reference is dense masked attention (ccnet_edu.dense) in float64, with
gamma set non-zero: at gamma = 0 every block is the identity and proves nothing.
"""

from __future__ import annotations

import pytest
import torch
from conftest import SIZES

from ccnet_edu.cca import CrissCrossAttention, FCNHead, RCCAHead, RecurrentCrissCrossAttention
from ccnet_edu.dense import criss_cross_mask, dense_attention
from ccnet_edu.nonlocal_block import NonLocal2d


def _cca(channels=8, qk=None, gamma=0.7):
    module = CrissCrossAttention(channels, qk_channels=qk).double()
    with torch.no_grad():
        module.gamma.fill_(gamma)
    return module


def test_structure_and_defaults():
    module = CrissCrossAttention(64)
    assert module.qk_channels == 8
    assert module.query.out_channels == module.key.out_channels == 8
    assert module.value.in_channels == module.value.out_channels == 64
    assert isinstance(module.gamma, torch.nn.Parameter) and module.gamma.item() == 0.0
    assert CrissCrossAttention(4).qk_channels == 1  # C // 8 would be 0
    assert CrissCrossAttention(4, qk_channels=3).key.out_channels == 3


@pytest.mark.parametrize("height,width", SIZES)
@pytest.mark.parametrize("batch", [2, 3])
def test_module_matches_dense_masked_attention(batch, height, width):
    module = _cca(8, qk=3, gamma=0.7)
    x = torch.randn(batch, 8, height, width, dtype=torch.float64)
    y, attention = module(x, return_attention=True)
    out = dense_attention(
        module.query(x), module.key(x), module.value(x), criss_cross_mask(height, width)
    )
    torch.testing.assert_close(y, 0.7 * out + x, rtol=1e-10, atol=1e-12)
    assert attention.shape == (batch, height, width, height + width - 1)
    torch.testing.assert_close(module(x), y)


def test_gamma_zero_is_identity_and_gamma_scales_the_output():
    module = _cca(gamma=0.0)
    x = torch.randn(2, 8, 3, 4, dtype=torch.float64)
    torch.testing.assert_close(module(x), x)
    with torch.no_grad():
        module.gamma.fill_(1.0)
    out = module(x) - x
    with torch.no_grad():
        module.gamma.fill_(-2.5)
    torch.testing.assert_close(module(x) - x, -2.5 * out)
    assert out.abs().max() > 1e-3


def test_gradcheck_module():
    module = _cca(4, qk=2, gamma=0.7)
    x = torch.randn(2, 4, 3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(module, (x,), fast_mode=True)
    # gamma and every projection receive a gradient.
    module(x).square().sum().backward()
    for name, parameter in module.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def test_recurrent_is_cca_applied_twice_with_shared_weights():
    rcca = RecurrentCrissCrossAttention(8, recurrence=2).double()
    with torch.no_grad():
        rcca.cca.gamma.fill_(0.7)
    x = torch.randn(2, 8, 5, 3, dtype=torch.float64)
    y, attentions = rcca(x, return_attention=True)
    h1, a1 = rcca.cca(x, return_attention=True)
    h2, a2 = rcca.cca(h1, return_attention=True)
    torch.testing.assert_close(y, h2)
    assert len(attentions) == 2
    torch.testing.assert_close(attentions[0], a1)
    torch.testing.assert_close(attentions[1], a2)
    # Sharing: R does not change the parameters.
    single = sum(p.numel() for p in CrissCrossAttention(8).parameters())
    assert sum(p.numel() for p in rcca.parameters()) == single
    one = RecurrentCrissCrossAttention(8, recurrence=1).double()
    one.cca = rcca.cca
    torch.testing.assert_close(one(x), h1)


@pytest.mark.parametrize("recurrence", [1, 2, 3])
def test_recurrence_reachability_by_gradient(recurrence):
    """Output pixel (i, j) depends on input p iff p is reachable in R loops (CCNet, Sec. 3.3)."""
    height, width, i, j = 4, 5, 1, 3
    rcca = RecurrentCrissCrossAttention(4, recurrence=recurrence, qk_channels=2).double()
    with torch.no_grad():
        rcca.cca.gamma.fill_(0.7)
    x = torch.randn(1, 4, height, width, dtype=torch.float64, requires_grad=True)
    rcca(x)[0, :, i, j].sum().backward()
    reached = x.grad[0].abs().sum(0) > 0  # (H, W)
    if recurrence == 1:
        cross = torch.zeros(height, width, dtype=torch.bool)
        cross[i, :] = True
        cross[:, j] = True
        assert torch.equal(reached, cross)
    else:
        assert reached.all()


def test_recurrence_must_be_positive():
    with pytest.raises(ValueError, match="recurrence"):
        RecurrentCrissCrossAttention(8, recurrence=0)
    with pytest.raises(TypeError, match="recurrence"):
        RecurrentCrissCrossAttention(8, recurrence=2.0)


@pytest.mark.parametrize("recurrence", [1, 2])
def test_rcca_head_shapes(recurrence):
    head = RCCAHead(16, num_classes=5, recurrence=recurrence, out_channels=8).eval()
    assert head.rcca.cca.in_channels == 4  # mid = in // 4
    assert head.bottleneck[0][0].in_channels == 16 + 4  # concat [x, context]
    x = torch.randn(2, 16, 7, 5)
    logits, attentions = head(x, return_attention=True)
    assert logits.shape == (2, 5, 7, 5)
    assert len(attentions) == recurrence and attentions[0].shape == (2, 7, 5, 11)
    context, _ = head.context(x)
    assert context.shape == (2, 4, 7, 5)
    torch.testing.assert_close(head(x), logits)  # eval mode: deterministic


def test_rcca_head_options():
    head = RCCAHead(
        6, 3, mid_channels=3, out_channels=4, norm="none", activation="leaky_relu", qk_channels=2
    )
    assert isinstance(head.conva[1], torch.nn.Identity)
    assert isinstance(head.conva[2], torch.nn.LeakyReLU) and head.conva[2].negative_slope == 0.01
    assert head.conva[0].bias is not None  # no norm -> the conv keeps its bias
    assert head(torch.randn(1, 6, 3, 3)).shape == (1, 3, 3, 3)
    group_norm = RCCAHead(8, 2, out_channels=4, norm=lambda c: torch.nn.GroupNorm(1, c))
    assert isinstance(group_norm.convb[1], torch.nn.GroupNorm)
    with pytest.raises(ValueError, match="norm"):
        RCCAHead(8, 2, norm="ln")
    with pytest.raises(ValueError, match="activation"):
        RCCAHead(8, 2, activation="gelu")
    with pytest.raises(ValueError, match="num_classes"):
        RCCAHead(8, 0)


def test_rcca_head_learns_a_gradient_through_gamma():
    head = RCCAHead(8, 3, out_channels=4)
    with torch.no_grad():
        head.rcca.cca.gamma.fill_(0.5)
    head(torch.randn(2, 8, 4, 4)).sum().backward()
    assert head.rcca.cca.gamma.grad.abs() > 0
    assert head.rcca.cca.query.weight.grad.abs().sum() > 0


def test_fcn_head():
    head = FCNHead(16, 4, dropout=0.1).eval()
    assert head.conv[0].out_channels == 4
    x = torch.randn(2, 16, 5, 6)
    assert head(x).shape == (2, 4, 5, 6)
    with pytest.raises(ValueError, match="in_channels"):
        head(torch.randn(2, 15, 5, 6))


@pytest.mark.parametrize(
    "make",
    [
        lambda: CrissCrossAttention(16),
        lambda: RecurrentCrissCrossAttention(16, recurrence=2),
        lambda: RCCAHead(16, 3, out_channels=8),
        lambda: FCNHead(16, 3),
        lambda: NonLocal2d(16),
        lambda: NonLocal2d(16, mode="original"),
    ],
)
def test_modules_run_on_meta(make):
    module = make().to("meta")
    x = torch.randn(2, 16, 5, 7, device="meta")
    y = module(x)
    assert y.device.type == "meta" and y.shape[0] == 2 and y.shape[2:] == (5, 7)
    if not isinstance(module, FCNHead):
        _, attention = module(x, return_attention=True)
        first = attention[0] if isinstance(attention, list) else attention
        assert first.device.type == "meta"


def test_bad_inputs_name_the_argument():
    module = CrissCrossAttention(8)
    with pytest.raises(ValueError, match="x must have 4 dimensions"):
        module(torch.randn(8, 3, 4))
    with pytest.raises(ValueError, match="in_channels=8"):
        module(torch.randn(1, 7, 3, 4))
    with pytest.raises(TypeError, match="x must have a floating-point dtype"):
        module(torch.ones(1, 8, 3, 4, dtype=torch.long))
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        module([[1.0]])
    with pytest.raises(ValueError, match="x on meta"):
        module(torch.randn(1, 8, 3, 4, device="meta"))
    with pytest.raises(ValueError, match="in_channels"):
        CrissCrossAttention(0)
    with pytest.raises(ValueError, match="qk_channels"):
        CrissCrossAttention(8, qk_channels=0)
    with pytest.raises(TypeError, match="in_channels"):
        CrissCrossAttention(8.0)
    with pytest.raises(ValueError, match="impl"):
        CrissCrossAttention(8, impl="cuda")
    with pytest.raises(ValueError, match="in_channels=16"):
        RCCAHead(16, 3, out_channels=4)(torch.randn(1, 8, 3, 3))
