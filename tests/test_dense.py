"""Tests of ccnet_edu.dense: masks, dense views of attention, query maps."""

from __future__ import annotations

import pytest
import torch
from conftest import SIZES

from ccnet_edu.cca import CrissCrossAttention, RecurrentCrissCrossAttention
from ccnet_edu.dense import (
    attention_query_map,
    attention_to_dense,
    criss_cross_attention_to_dense,
    criss_cross_index,
    criss_cross_mask,
    dense_attention,
    dense_to_criss_cross_attention,
    query_map,
    recurrent_attention_to_dense,
)
from ccnet_edu.functional import criss_cross_attention
from ccnet_edu.nonlocal_block import NonLocal2d


def _explicit_mask(height, width):
    """The criss-cross pattern written out pixel by pixel."""
    n = height * width
    mask = torch.zeros(n, n, dtype=torch.bool)
    for i in range(height):
        for j in range(width):
            for i2 in range(height):
                for j2 in range(width):
                    mask[i * width + j, i2 * width + j2] = i2 == i or j2 == j
    return mask


@pytest.mark.parametrize("height,width", SIZES)
def test_criss_cross_mask(height, width):
    mask = criss_cross_mask(height, width)
    assert mask.dtype == torch.bool and mask.shape == (height * width, height * width)
    assert torch.equal(mask, _explicit_mask(height, width))
    assert (mask.sum(-1) == height + width - 1).all()
    assert torch.equal(mask, mask.T)


def _bool_matmul(a, b):
    return (a.long() @ b.long()) > 0


@pytest.mark.parametrize(
    "height,width", [(1, 1), (1, 7), (6, 1), (2, 2), (3, 5), (7, 4), (8, 8), (5, 11)]
)
def test_two_loops_reach_everything(height, width):
    mask = criss_cross_mask(height, width)
    assert _bool_matmul(mask, mask).all()
    if height >= 2 and width >= 2:
        assert not mask.all()  # one loop sees only the cross
    else:
        assert mask.all()  # a single row or column is its own cross


@pytest.mark.parametrize("height,width", SIZES)
def test_criss_cross_index_matches_mask(height, width):
    index = criss_cross_index(height, width)
    assert index.shape == (height, width, height + width - 1)
    n = height * width
    flat = index.reshape(n, -1)
    # Each pixel's set holds H+W-1 distinct positions ...
    assert all(len(set(row.tolist())) == height + width - 1 for row in flat)
    # ... which are exactly the True entries of the mask.
    scattered = torch.zeros(n, n, dtype=torch.bool).scatter(-1, flat, True)
    assert torch.equal(scattered, criss_cross_mask(height, width))
    # Entry 0 of pixel (i, j) is (i, 0); the row part holds the centre at entry j.
    i, j = height - 1, width - 1
    assert index[i, j, 0] == i * width and index[i, j, j] == i * width + j


@pytest.mark.parametrize("height,width", SIZES)
def test_dense_conversion_round_trip(height, width):
    attention = torch.rand(2, height, width, height + width - 1, dtype=torch.float64)
    dense = criss_cross_attention_to_dense(attention)
    assert dense.shape == (2, height * width, height * width)
    assert (dense[:, ~criss_cross_mask(height, width)] == 0).all()
    torch.testing.assert_close(attention.sum(-1).flatten(1), dense.sum(-1))
    torch.testing.assert_close(dense_to_criss_cross_attention(dense, height, width), attention)


def test_dense_conversion_gradcheck():
    attention = torch.rand(2, 3, 4, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(criss_cross_attention_to_dense, (attention,))


def test_dense_attention_without_mask_is_softmax_of_qk():
    query = torch.randn(2, 3, 2, 5, dtype=torch.float64)
    key = torch.randn(2, 3, 2, 5, dtype=torch.float64)
    value = torch.randn(2, 4, 2, 5, dtype=torch.float64)
    out, attention = dense_attention(query, key, value, return_attention=True)
    for b in range(2):
        q = query[b].reshape(3, -1).T  # (N, C')
        k = key[b].reshape(3, -1)  # (C', N)
        a = torch.softmax(q @ k, dim=1)
        torch.testing.assert_close(attention[b], a)
        torch.testing.assert_close(out[b].reshape(4, -1), value[b].reshape(4, -1) @ a.T)


def test_dense_attention_bad_mask():
    query = torch.randn(1, 2, 3, 3)
    with pytest.raises(ValueError, match="mask"):
        dense_attention(query, query, query, criss_cross_mask(3, 4))
    with pytest.raises(TypeError, match="mask"):
        dense_attention(query, query, query, criss_cross_mask(3, 3).float())
    with pytest.raises(ValueError, match="value"):
        dense_attention(query, query, query[:, :, :2])
    with pytest.raises(ValueError, match="key"):
        dense_attention(query, query[:, :1], query)


def test_mask_sizes_must_be_positive_ints():
    with pytest.raises(ValueError, match="height"):
        criss_cross_mask(0, 3)
    with pytest.raises(TypeError, match="width"):
        criss_cross_mask(3, 2.0)


def test_recurrent_product():
    cca = CrissCrossAttention(8, qk_channels=2).double()
    with torch.no_grad():
        cca.gamma.fill_(0.7)
    rcca = RecurrentCrissCrossAttention(8, recurrence=2, qk_channels=2).double()
    rcca.cca = cca
    x = torch.randn(2, 8, 4, 5, dtype=torch.float64)
    _, attentions = rcca(x, return_attention=True)
    first, second = (criss_cross_attention_to_dense(a) for a in attentions)
    effective = recurrent_attention_to_dense(attentions)
    torch.testing.assert_close(effective, second @ first)
    # One loop: zero off the cross; two loops: every pixel reaches every pixel.
    assert (first[:, ~criss_cross_mask(4, 5)] == 0).all()
    assert (effective > 0).all()
    torch.testing.assert_close(effective.sum(-1), torch.ones(2, 20, dtype=torch.float64))


def test_query_maps():
    height, width = 3, 4
    query = torch.randn(2, 2, height, width, dtype=torch.float64)
    value = torch.randn(2, 3, height, width, dtype=torch.float64)
    _, attention = criss_cross_attention(query, query, value, return_attention=True)
    i, j = 1, 2
    qmap = attention_query_map(attention, i, j)
    assert qmap.shape == (2, height, width)
    # Non-zero exactly on row i and column j, summing to one.
    cross = torch.zeros(height, width, dtype=torch.bool)
    cross[i, :] = True
    cross[:, j] = True
    assert torch.equal(qmap[0] != 0, cross)
    torch.testing.assert_close(qmap.sum((1, 2)), torch.ones(2, dtype=torch.float64))
    # Row part of the attention layout lands on row i in order.
    torch.testing.assert_close(qmap[:, i, :], attention[:, i, j, :width])

    dense = attention_to_dense(attention)
    torch.testing.assert_close(query_map(dense, i, j, height, width), qmap)
    torch.testing.assert_close(
        attention_query_map(dense, i, j, kind="dense", height=height, width=width), qmap
    )
    with pytest.raises(ValueError, match="i must be"):
        query_map(dense, height, 0, height, width)
    with pytest.raises(ValueError, match="j must be"):
        query_map(dense, 0, -1, height, width)
    with pytest.raises(ValueError, match="height and width"):
        attention_query_map(dense, i, j, kind="dense")
    with pytest.raises(ValueError, match="kind"):
        attention_to_dense(attention, kind="sparse")


def test_query_maps_of_modules():
    x = torch.randn(1, 8, 4, 6, dtype=torch.float64)
    rcca = RecurrentCrissCrossAttention(8, recurrence=2).double()
    with torch.no_grad():
        rcca.cca.gamma.fill_(0.5)
    _, attentions = rcca(x, return_attention=True)
    assert (attention_query_map(attentions, 2, 3, kind="recurrent") > 0).all()
    one_loop = attention_query_map(attentions[:1], 2, 3, kind="recurrent")
    torch.testing.assert_close(one_loop, attention_query_map(attentions[0], 2, 3))

    nonlocal_block = NonLocal2d(8).double()
    _, dense = nonlocal_block(x, return_attention=True)
    qmap = attention_query_map(dense, 2, 3, kind="dense", height=4, width=6)
    assert qmap.shape == (1, 4, 6) and (qmap > 0).all()


def test_runs_on_meta_device():
    mask = criss_cross_mask(3, 4, device="meta")
    assert mask.device.type == "meta"
    query = torch.randn(2, 2, 3, 4, device="meta")
    out, attention = dense_attention(query, query, query, mask, return_attention=True)
    assert out.shape == (2, 2, 3, 4) and attention.shape == (2, 12, 12)
    dense = criss_cross_attention_to_dense(torch.randn(2, 3, 4, 6, device="meta"))
    assert dense.device.type == "meta" and dense.shape == (2, 12, 12)


def test_interlaced_masks_reexport():
    from ccnet_edu import dense, issa

    assert dense.interlaced_masks is issa.interlaced_masks  # one definition, two addresses
    long_mask, short_mask = dense.interlaced_masks(6, 5, (2, 2))
    expected_long, expected_short = issa.interlaced_masks(6, 5, (2, 2))
    assert torch.equal(long_mask, expected_long) and torch.equal(short_mask, expected_short)
    assert long_mask.dtype == torch.bool and long_mask.shape == short_mask.shape
    # ISSA (arXiv 1907.12273, Sec. 3): after the long then the short step every position has
    # reached every other.
    assert _bool_matmul(short_mask, long_mask).all()


@pytest.mark.parametrize("height,width", [(4, 6), (5, 7)])
def test_issa_query_maps(height, width):
    from ccnet_edu.issa import interlaced_sparse_attention

    x = torch.randn(2, 3, height, width, dtype=torch.float64)
    _, pair = interlaced_sparse_attention(x, (2, 2), return_attention=True)
    long_dense = attention_to_dense(
        pair, "issa", height=height, width=width, block_size=2, step="long"
    )
    short_dense = attention_to_dense(
        pair, "issa", height=height, width=width, block_size=2, step="short"
    )
    combined = attention_to_dense(pair, "issa", height=height, width=width, block_size=2)
    torch.testing.assert_close(combined, short_dense @ long_dense)
    assert (combined > 0).all()  # two sparse steps reach every position
    qmap = attention_query_map(pair, 1, 2, "issa", height=height, width=width, block_size=2)
    assert qmap.shape == (2, height, width)
    if height % 2 == 0 and width % 2 == 0:  # no padding: the map is the full row
        torch.testing.assert_close(qmap.flatten(1), combined[:, 1 * width + 2])
    else:  # padding takes some weight, which the cropped map drops
        assert (qmap.sum((1, 2)) < 1).all()
    with pytest.raises(ValueError, match="block_size"):
        attention_query_map(pair, 1, 2, "issa", height=height, width=width)
    with pytest.raises(ValueError, match="step"):
        attention_to_dense(pair, "issa", height=height, width=width, block_size=2, step="both")


def test_same_values_absolute_tolerance_and_shape():
    from ccnet_edu.dense import same_values

    a = torch.tensor([1.0, 2.0], dtype=torch.float64)
    assert same_values(a, a + 1e-13)  # round-off
    assert not same_values(a, a + 1e-9)  # a real difference, whatever the magnitude of a
    assert not same_values(1e6 * a, 1e6 * a + 1e-9)  # no relative tolerance
    assert same_values(a, a + 1e-9, atol=1e-8)
    assert not same_values(a, a[:1])  # another shape is never the same
