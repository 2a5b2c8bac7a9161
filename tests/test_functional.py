"""Tests of ccnet_edu.functional (criss-cross attention and its layouts).

The independent references are dense masked attention in float64 (a plain
softmax over N x N energies, see ccnet_edu.dense) and, for the padded layout,
the pure-PyTorch CCNet formulation re-derived here.
"""

from __future__ import annotations

import pytest
import torch
from conftest import SIZES

from ccnet_edu.dense import criss_cross_attention_to_dense, criss_cross_mask, dense_attention
from ccnet_edu.functional import (
    attention_from_channels_first,
    attention_from_padded,
    attention_to_channels_first,
    attention_to_padded,
    column_index,
    criss_cross_attention,
)


def _qkv(batch, qk, channels, height, width, dtype=torch.float64, requires_grad=False):
    shape = (batch, qk, height, width)
    query = torch.randn(shape, dtype=dtype, requires_grad=requires_grad)
    key = torch.randn(shape, dtype=dtype, requires_grad=requires_grad)
    value = torch.randn(batch, channels, height, width, dtype=dtype, requires_grad=requires_grad)
    return query, key, value


@pytest.mark.parametrize("height,width", SIZES)
@pytest.mark.parametrize("batch", [2, 3])
def test_reference_matches_dense_masked_attention(batch, height, width):
    query, key, value = _qkv(batch, 3, 5, height, width)
    out, attention = criss_cross_attention(query, key, value, return_attention=True)
    mask = criss_cross_mask(height, width)
    out_dense, attention_dense = dense_attention(query, key, value, mask, return_attention=True)

    assert out.shape == (batch, 5, height, width)
    assert attention.shape == (batch, height, width, height + width - 1)
    torch.testing.assert_close(out, out_dense, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(
        criss_cross_attention_to_dense(attention), attention_dense, rtol=1e-10, atol=1e-12
    )


def test_attention_is_a_distribution():
    query, key, value = _qkv(2, 4, 3, 5, 6)
    _, attention = criss_cross_attention(query, key, value, return_attention=True)
    assert (attention > 0).all()
    torch.testing.assert_close(attention.sum(-1), torch.ones(2, 5, 6, dtype=torch.float64))


def test_attention_layout_row_then_column():
    """Entry m of pixel (i, j): the row (i, 0..W-1), then the column (i' != i, j)."""
    height, width = 4, 3
    query, key, value = _qkv(1, 2, 1, height, width)
    _, attention = criss_cross_attention(query, key, value, return_attention=True)
    i, j = 2, 1
    energies = [float(query[0, :, i, j] @ key[0, :, i, jj]) for jj in range(width)]
    energies += [float(query[0, :, i, j] @ key[0, :, ii, j]) for ii in range(height) if ii != i]
    expected = torch.softmax(torch.tensor(energies, dtype=torch.float64), dim=0)
    torch.testing.assert_close(attention[0, i, j], expected)


def _ccnet_pure_pytorch(query, key, value):
    """The pure-PyTorch CCNet formulation: [column (centre -inf) | row], (B, H, W, H+W)."""
    batch, _, height, width = query.shape
    energy_col = torch.einsum("bcij,bckj->bijk", query, key)  # (B, H, W, H)
    centre = torch.eye(height, dtype=torch.bool)[:, None, :].expand(height, width, height)
    energy_col = energy_col.masked_fill(centre, float("-inf"))
    energy_row = torch.einsum("bcij,bcik->bijk", query, key)  # (B, H, W, W)
    affinity = torch.softmax(torch.cat([energy_col, energy_row], dim=-1), dim=-1)
    att_col, att_row = affinity.split([height, width], dim=-1)
    out = torch.einsum("bijk,bckj->bcij", att_col, value) + torch.einsum(
        "bijk,bcik->bcij", att_row, value
    )
    return out, affinity


@pytest.mark.parametrize("height,width", [(3, 5), (6, 2), (2, 2)])
def test_padded_layout_matches_pure_pytorch_ccnet(height, width):
    query, key, value = _qkv(2, 3, 4, height, width)
    out, attention = criss_cross_attention(query, key, value, return_attention=True)
    out_ccnet, padded_ccnet = _ccnet_pure_pytorch(query, key, value)
    torch.testing.assert_close(out, out_ccnet)
    torch.testing.assert_close(attention_to_padded(attention), padded_ccnet)
    torch.testing.assert_close(attention_from_padded(padded_ccnet), attention)


@pytest.mark.parametrize("height,width", SIZES)
def test_layout_round_trips(height, width):
    attention = torch.rand(2, height, width, height + width - 1, dtype=torch.float64)
    channels_first = attention_to_channels_first(attention)
    assert channels_first.shape == (2, height + width - 1, height, width)
    torch.testing.assert_close(attention_from_channels_first(channels_first), attention)
    padded = attention_to_padded(attention)
    assert padded.shape == (2, height, width, height + width)
    torch.testing.assert_close(attention_from_padded(padded), attention)
    # The centre of the column part is the padding: exactly zero.
    centre = padded[..., :height].diagonal(dim1=1, dim2=3)  # (2, W, H): entries [b, i, j, i]
    assert (centre == 0).all()


def test_padded_layout_rejects_wrong_length():
    with pytest.raises(ValueError, match="H\\+W-1"):
        attention_to_padded(torch.zeros(1, 3, 4, 7))
    with pytest.raises(ValueError, match="H\\+W"):
        attention_from_padded(torch.zeros(1, 3, 4, 6))


def test_column_index():
    assert column_index(4)[1].tolist() == [0, 2, 3]
    assert column_index(3).tolist() == [[1, 2], [0, 2], [0, 1]]
    assert column_index(1).shape == (1, 0)
    for height in range(1, 8):
        index = column_index(height)
        for i in range(height):
            assert index[i].tolist() == [r for r in range(height) if r != i]


def test_gradcheck_functional():
    query, key, value = _qkv(2, 1, 2, 2, 3, requires_grad=True)
    assert torch.autograd.gradcheck(criss_cross_attention, (query, key, value))
    query, key, value = _qkv(2, 2, 3, 3, 4, requires_grad=True)
    assert torch.autograd.gradcheck(criss_cross_attention, (query, key, value), fast_mode=True)

    def attention_only(q, k, v):
        return criss_cross_attention(q, k, v, return_attention=True)[1]

    assert torch.autograd.gradcheck(attention_only, (query, key, value), fast_mode=True)


def test_runs_on_meta_device():
    query, key, value = (t.to("meta") for t in _qkv(2, 2, 3, 3, 5))
    out, attention = criss_cross_attention(query, key, value, return_attention=True)
    assert out.device.type == "meta" and out.shape == (2, 3, 3, 5)
    assert attention.shape == (2, 3, 5, 7)


def test_bad_inputs_name_the_argument():
    query, key, value = _qkv(2, 2, 3, 3, 4)
    with pytest.raises(ValueError, match="query"):
        criss_cross_attention(query[0], key, value)
    with pytest.raises(ValueError, match="key"):
        criss_cross_attention(query, key[:, :1], value)
    with pytest.raises(ValueError, match="value"):
        criss_cross_attention(query, key, value[:, :, :2])
    with pytest.raises(TypeError, match="value"):
        criss_cross_attention(query, key, value.long())
    with pytest.raises(TypeError, match="query"):
        criss_cross_attention(query.numpy(), key, value)
    with pytest.raises(TypeError, match="dtype"):
        criss_cross_attention(query, key, value.float())
    with pytest.raises(ValueError, match="value on meta"):
        criss_cross_attention(query, key, value.to("meta"))
    with pytest.raises(ValueError, match="impl"):
        criss_cross_attention(query, key, value, impl="fast")
