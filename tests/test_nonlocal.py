"""Tests of the non-local block (ccnet_edu.nonlocal_block) against explicit N x N computations."""

from __future__ import annotations

import pytest
import torch

from ccnet_edu.cca import CrissCrossAttention
from ccnet_edu.nonlocal_block import NonLocal2d


def _conv1x1(conv, x):
    """A 1x1 convolution written as a matrix product: (B, C_in, N) -> (B, C_out, N)."""
    return torch.einsum("oc,bcn->bon", conv.weight[:, :, 0, 0], x) + conv.bias[None, :, None]


def _explicit_attention(query, key):
    """Softmax of q(u) . k(p), one query row at a time: (B, N, N)."""
    batch, _, n = query.shape
    rows = torch.empty(batch, n, n, dtype=query.dtype)
    for b in range(batch):
        for u in range(n):
            energies = torch.stack([query[b, :, u] @ key[b, :, p] for p in range(n)])
            rows[b, u] = (
                torch.exp(energies - energies.max()) / torch.exp(energies - energies.max()).sum()
            )
    return rows


def test_defaults():
    assert NonLocal2d(64).qk_channels == 8
    assert NonLocal2d(64, mode="original").qk_channels == 32
    assert NonLocal2d(4).qk_channels == 1
    block = NonLocal2d(16)
    assert block.gamma.item() == 0.0 and not hasattr(block, "w_z")


@pytest.mark.parametrize("height,width", [(3, 5), (4, 1), (2, 2)])
def test_ccnet_mode_matches_explicit_dense_softmax(height, width):
    block = NonLocal2d(8, qk_channels=3).double()
    with torch.no_grad():
        block.gamma.fill_(0.7)
    x = torch.randn(2, 8, height, width, dtype=torch.float64)
    y, attention = block(x, return_attention=True)

    flat = x.flatten(2)  # (B, C, N)
    expected = _explicit_attention(_conv1x1(block.query, flat), _conv1x1(block.key, flat))
    out = torch.einsum("bup,bcp->bcu", expected, _conv1x1(block.value, flat))
    torch.testing.assert_close(attention, expected)
    torch.testing.assert_close(y, (0.7 * out + flat).reshape_as(x))


def test_ccnet_mode_equals_cca_on_a_single_row_or_column():
    """On one row (or column) the criss-cross set is the whole image."""
    block = NonLocal2d(8).double()
    cca = CrissCrossAttention(8).double()
    cca.load_state_dict(block.state_dict())
    with torch.no_grad():
        block.gamma.fill_(0.6)
        cca.gamma.fill_(0.6)
    for shape in [(2, 8, 1, 7), (2, 8, 6, 1)]:
        x = torch.randn(shape, dtype=torch.float64)
        torch.testing.assert_close(block(x), cca(x))
    x = torch.randn(2, 8, 3, 4, dtype=torch.float64)
    assert (block(x) - cca(x)).abs().max() > 1e-6  # a real 2-D map: the patterns differ


def test_original_mode_is_identity_at_init():
    block = NonLocal2d(8, mode="original").double()
    x = torch.randn(2, 8, 3, 4, dtype=torch.float64)
    torch.testing.assert_close(block(x), x)  # train mode
    torch.testing.assert_close(block.eval()(x), x)


def test_original_mode_matches_explicit_computation():
    block = NonLocal2d(6, mode="original").double().eval()
    conv, bn = block.w_z
    with torch.no_grad():  # non-trivial BN: scale != 0, running statistics
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
    x = torch.randn(2, 6, 3, 5, dtype=torch.float64)
    z, attention = block(x, return_attention=True)

    flat = x.flatten(2)
    theta, phi, g = (_conv1x1(m, flat) for m in (block.theta, block.phi, block.g))  # (B, 3, N)
    expected = _explicit_attention(theta, phi)
    y = torch.einsum("bup,bcp->bcu", expected, g)  # (B, C/2, N)
    wy = _conv1x1(conv, y)
    normalised = (wy - bn.running_mean[None, :, None]) / torch.sqrt(
        bn.running_var[None, :, None] + bn.eps
    )
    wy = normalised * bn.weight[None, :, None] + bn.bias[None, :, None]
    torch.testing.assert_close(attention, expected)
    torch.testing.assert_close(z, (wy + flat).reshape_as(x))


def test_gradcheck_ccnet_mode():
    block = NonLocal2d(4, qk_channels=2).double()
    with torch.no_grad():
        block.gamma.fill_(0.7)
    x = torch.randn(2, 4, 2, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(block, (x,), fast_mode=True)


def test_bad_inputs():
    with pytest.raises(ValueError, match="mode"):
        NonLocal2d(8, mode="gaussian")
    with pytest.raises(ValueError, match="in_channels=8"):
        NonLocal2d(8)(torch.randn(1, 4, 3, 3))
    with pytest.raises(TypeError, match="x must have a floating-point dtype"):
        NonLocal2d(8)(torch.ones(1, 8, 3, 3, dtype=torch.int32))
    with pytest.raises(ValueError, match="x on meta"):
        NonLocal2d(8)(torch.randn(1, 8, 3, 3, device="meta"))
