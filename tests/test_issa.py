"""Interlaced sparse self-attention against an independent dense computation."""

from __future__ import annotations

import math

import pytest
import torch

from ccnet_edu.issa import (
    InterlacedSparseSelfAttention,
    ISAHead,
    blocks_padding,
    interlaced_attention_to_dense,
    interlaced_masks,
    interlaced_sparse_attention,
    long_range_groups,
    long_range_permute,
    long_range_unpermute,
    pad_to_blocks,
    pixel_groups,
    short_range_groups,
    short_range_permute,
    short_range_unpermute,
    unpad,
)

# (H, W, block): odd, non-square, dividing and not dividing, block larger than the map
SHAPES = [
    (5, 7, (2, 3)),
    (6, 9, (2, 3)),
    (7, 5, (3, 2)),
    (4, 4, (4, 4)),
    (3, 5, (8, 8)),
    (8, 6, (2, 2)),
]


# ---------------------------------------------------------------------------
# Independent dense reference: coordinates and masks from first principles,
# no use of the library's permutation code.
# ---------------------------------------------------------------------------


def reference_pad(x: torch.Tensor, block: tuple[int, int]) -> tuple[torch.Tensor, int, int]:
    """Zero-pad to multiples of the block; extra row/column at the bottom/right."""
    b, c, h, w = x.shape
    h2 = math.ceil(h / block[0]) * block[0]
    w2 = math.ceil(w / block[1]) * block[1]
    top, left = (h2 - h) // 2, (w2 - w) // 2
    out = torch.zeros(b, c, h2, w2, dtype=x.dtype)
    out[:, :, top : top + h, left : left + w] = x
    return out, top, left


def reference_masks(h2: int, w2: int, block: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    rows = torch.arange(h2).repeat_interleave(w2)  # row of every flat position
    cols = torch.arange(w2).repeat(h2)
    p_h, p_w = block
    same_offset = (rows[:, None] % p_h == rows[None, :] % p_h) & (
        cols[:, None] % p_w == cols[None, :] % p_w
    )
    same_block = (rows[:, None] // p_h == rows[None, :] // p_h) & (
        cols[:, None] // p_w == cols[None, :] // p_w
    )
    return same_offset, same_block


def masked_softmax_attention(
    q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor, scale: float
) -> torch.Tensor:
    """Dense (B, N, N) attention with the softmax restricted to ``mask``."""
    energy = scale * q @ k.transpose(1, 2)
    energy = energy.masked_fill(~mask, float("-inf"))
    return torch.softmax(energy, dim=-1)


def reference_issa(x: torch.Tensor, block: tuple[int, int]):
    """Dense ISSA without projections: returns y, A_L, A_S on the padded grid."""
    b, c, h, w = x.shape
    xp, top, left = reference_pad(x, block)
    h2, w2 = xp.shape[2:]
    long_mask, short_mask = reference_masks(h2, w2, block)
    feats = xp.flatten(2).transpose(1, 2)  # (B, N', C)
    a_long = masked_softmax_attention(feats, feats, long_mask, c**-0.5)
    feats = a_long @ feats
    a_short = masked_softmax_attention(feats, feats, short_mask, c**-0.5)
    feats = a_short @ feats
    y = feats.transpose(1, 2).reshape(b, c, h2, w2)[:, :, top : top + h, left : left + w]
    return y, a_long, a_short


# ---------------------------------------------------------------------------
# Functional form
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("height,width,block", SHAPES)
def test_functional_matches_dense_reference(height, width, block):
    torch.manual_seed(0)
    x = torch.randn(2, 3, height, width, dtype=torch.float64)
    y, (long_att, short_att) = interlaced_sparse_attention(x, block, return_attention=True)
    y_ref, a_long_ref, a_short_ref = reference_issa(x, block)
    torch.testing.assert_close(y, y_ref)

    a_long, a_short = interlaced_attention_to_dense(long_att, short_att, height, width, block)
    torch.testing.assert_close(a_long, a_long_ref)
    torch.testing.assert_close(a_short, a_short_ref)


@pytest.mark.parametrize("height,width,block", SHAPES)
def test_output_is_product_of_dense_factors(height, width, block):
    torch.manual_seed(1)
    x = torch.randn(2, 4, height, width, dtype=torch.float64)
    y, (long_att, short_att) = interlaced_sparse_attention(x, block, return_attention=True)
    a_long, a_short = interlaced_attention_to_dense(long_att, short_att, height, width, block)
    xp, padding = pad_to_blocks(x, block)
    feats = xp.flatten(2).transpose(1, 2)  # (B, N', C)
    product = (a_short @ (a_long @ feats)).transpose(1, 2).reshape(xp.shape)
    torch.testing.assert_close(unpad(product, padding), y)
    # Rows of both factors are probability distributions ...
    torch.testing.assert_close(a_long.sum(-1), torch.ones_like(a_long.sum(-1)))
    torch.testing.assert_close(a_short.sum(-1), torch.ones_like(a_short.sum(-1)))
    # ... and their product is dense: every position reaches every position.
    assert bool(((a_short @ a_long) > 0).all())


def test_attention_shapes():
    x = torch.randn(2, 3, 5, 7, dtype=torch.float64)
    _, (long_att, short_att) = interlaced_sparse_attention(x, (2, 3), return_attention=True)
    # padded 6 x 9: Q = (3, 3), P = (2, 3)
    assert long_att.shape == (2, 6, 9, 9)
    assert short_att.shape == (2, 9, 6, 6)


def test_gradcheck_functional():
    torch.manual_seed(2)
    x = torch.randn(2, 2, 3, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: interlaced_sparse_attention(t, (2, 2)), (x,))


# ---------------------------------------------------------------------------
# Padding, permutations, groups and masks
# ---------------------------------------------------------------------------


def test_padding_is_centred_extra_at_bottom_right():
    assert blocks_padding(5, 7, (4, 4)) == (1, 2, 0, 1)
    assert blocks_padding(8, 8, (4, 4)) == (0, 0, 0, 0)
    assert blocks_padding(3, 5, 8) == (2, 3, 1, 2)


@pytest.mark.parametrize("height,width,block", SHAPES)
def test_pad_and_permute_round_trips(height, width, block):
    torch.manual_seed(3)
    x = torch.randn(2, 3, height, width, dtype=torch.float64)
    xp, padding = pad_to_blocks(x, block)
    assert xp.shape[2] % block[0] == 0 and xp.shape[3] % block[1] == 0
    assert torch.equal(unpad(xp, padding), x)
    ref, _, _ = reference_pad(x, block)
    assert torch.equal(xp, ref)
    h2, w2 = xp.shape[2:]
    assert torch.equal(long_range_unpermute(long_range_permute(xp, block), 2, h2, w2, block), xp)
    assert torch.equal(short_range_unpermute(short_range_permute(xp, block), 2, h2, w2, block), xp)


def test_long_range_group_holds_pixels_block_apart():
    # 4 x 6 map, block (2, 3): group (a, b) = (1, 2) holds rows 1, 3 and columns 2, 5.
    groups = long_range_groups(4, 6, (2, 3))
    assert groups.shape == (6, 4)
    assert groups[1 * 3 + 2].tolist() == [1 * 6 + 2, 1 * 6 + 5, 3 * 6 + 2, 3 * 6 + 5]
    blocks = short_range_groups(4, 6, (2, 3))
    assert blocks.shape == (4, 6)
    assert blocks[1].tolist() == [3, 4, 5, 9, 10, 11]  # top-right block


@pytest.mark.parametrize("height,width,block", SHAPES)
def test_masks_match_reference_and_cover_everything(height, width, block):
    long_mask, short_mask = interlaced_masks(height, width, block)
    h2 = math.ceil(height / block[0]) * block[0]
    w2 = math.ceil(width / block[1]) * block[1]
    long_ref, short_ref = reference_masks(h2, w2, block)
    assert torch.equal(long_mask, long_ref)
    assert torch.equal(short_mask, short_ref)
    # long then short reaches every position
    assert bool(((long_mask.double() @ short_mask.double()) > 0).all())
    q_h, q_w = h2 // block[0], w2 // block[1]
    for mask, size in [(long_mask, q_h * q_w), (short_mask, block[0] * block[1])]:
        m = mask.double()
        assert bool(mask.diagonal().all())  # reflexive
        assert torch.equal(mask, mask.T)  # symmetric
        assert torch.equal((m @ m) > 0, mask)  # transitive
        assert bool((m.sum(1) == size).all())  # group sizes


# ---------------------------------------------------------------------------
# Module
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("height,width,block", SHAPES)
def test_pixel_groups_match_the_group_lists(height, width, block):
    # pixel (i, j) sits in row offset[i, j] of long_range_groups and row block[i, j] of
    # short_range_groups (flat indices of the padded grid)
    offset, block_of = pixel_groups(height, width, block)
    top, _, left, right = blocks_padding(height, width, block)
    w_pad = width + left + right
    padded = (torch.arange(height)[:, None] + top) * w_pad + torch.arange(width)[None, :] + left
    long_groups = long_range_groups(height, width, block)
    short_groups = short_range_groups(height, width, block)
    for i in range(height):
        for j in range(width):
            assert int(padded[i, j]) in long_groups[offset[i, j]].tolist()
            assert int(padded[i, j]) in short_groups[block_of[i, j]].tolist()


@pytest.mark.parametrize("height,width,block", [(5, 7, (2, 3)), (7, 5, (3, 2))])
def test_long_range_step_is_the_first_step_of_forward(height, width, block):
    # pad, permute, long-range block, unpermute, crop, by hand with the public pieces
    torch.manual_seed(0)
    module = InterlacedSparseSelfAttention(4, block, key_channels=2).double().eval()
    x = torch.randn(2, 4, height, width, dtype=torch.float64)
    y, attention = module.long_range_step(x, return_attention=True)
    feats, padding = pad_to_blocks(x, block)
    out, by_hand = module.long_range(long_range_permute(feats, block))
    expected = unpad(long_range_unpermute(out, 2, *feats.shape[2:], block), padding)
    torch.testing.assert_close(y, expected, rtol=0, atol=0)
    _, (long_attention, _) = module(x, return_attention=True)
    torch.testing.assert_close(attention, long_attention, rtol=0, atol=0)
    assert attention.shape == (2, block[0] * block[1], *by_hand.shape[1:])


def test_module_without_projections_equals_functional():
    torch.manual_seed(4)
    x = torch.randn(2, 3, 5, 7, dtype=torch.float64)
    module = InterlacedSparseSelfAttention(3, (2, 3), projections=False)
    y, attentions = module(x, return_attention=True)
    y_ref, attentions_ref = interlaced_sparse_attention(x, (2, 3), return_attention=True)
    torch.testing.assert_close(y, y_ref)
    for a, b in zip(attentions, attentions_ref, strict=True):
        torch.testing.assert_close(a, b)


def _randomise_batchnorm(module: torch.nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)


@pytest.mark.parametrize("height,width,block", [(5, 7, (2, 3)), (6, 4, (3, 2))])
def test_module_matches_dense_reference_with_projections(height, width, block):
    torch.manual_seed(5)
    module = InterlacedSparseSelfAttention(6, block, key_channels=4, value_channels=5)
    module = module.double()
    _randomise_batchnorm(module)
    module.eval()
    x = torch.randn(2, 6, height, width, dtype=torch.float64)

    xp, top, left = reference_pad(x, block)
    h2, w2 = xp.shape[2:]
    long_mask, short_mask = reference_masks(h2, w2, block)

    def dense_step(step, feats, mask):
        flat = lambda t: t.flatten(2).transpose(1, 2)  # noqa: E731  (B, N', C)
        att = masked_softmax_attention(
            flat(step.query(feats)), flat(step.key(feats)), mask, 4**-0.5
        )
        out = (att @ flat(step.value(feats))).transpose(1, 2).reshape(2, -1, h2, w2)
        return step.out_proj(out)

    with torch.no_grad():
        feats = dense_step(module.long_range, xp, long_mask)
        feats = dense_step(module.short_range, feats, short_mask)
        y = module(x)
    torch.testing.assert_close(y, feats[:, :, top : top + height, left : left + width])
    assert y.shape == (2, 6, height, width)


def test_module_defaults_and_gradcheck():
    module = InterlacedSparseSelfAttention(8)
    assert module.long_range.key_channels == 4
    assert module.block_size == (8, 8)
    torch.manual_seed(6)
    small = InterlacedSparseSelfAttention(3, (2, 2), key_channels=2).double().eval()
    x = torch.randn(2, 3, 3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(small, (x,), fast_mode=True)


def test_query_and_key_are_two_conv_bn_relu_layers_as_in_the_authors_code():
    # openseg.pytorch isa_block.py: f_query = f_key = conv(in->k) BN ReLU conv(k->k) BN ReLU,
    # f_value a bare conv, W = conv BN ReLU; every conv without bias.
    step = InterlacedSparseSelfAttention(
        6, (2, 3), key_channels=3, value_channels=5, out_channels=4
    ).long_range
    for projection in (step.query, step.key):
        assert len(projection) == 2
        for layer, (c_in, c_out) in zip(projection, [(6, 3), (3, 3)], strict=True):
            conv, bn, relu = layer
            assert isinstance(conv, torch.nn.Conv2d) and conv.kernel_size == (1, 1)
            assert (conv.in_channels, conv.out_channels) == (c_in, c_out)
            assert conv.bias is None
            assert isinstance(bn, torch.nn.BatchNorm2d) and bn.num_features == c_out
            assert isinstance(relu, torch.nn.ReLU)
    assert isinstance(step.value, torch.nn.Conv2d) and step.value.bias is None
    assert (step.value.in_channels, step.value.out_channels) == (6, 5)
    assert [type(m) for m in step.out_proj] == [
        torch.nn.Conv2d,
        torch.nn.BatchNorm2d,
        torch.nn.ReLU,
    ]
    # weights per step: 2 (C C' + C'^2 + 2·2 C') + C C_v + C_v C_out + 2 C_out
    expected = 2 * (6 * 3 + 3 * 3 + 4 * 3) + 6 * 5 + 5 * 4 + 2 * 4
    assert sum(p.numel() for p in step.parameters()) == expected


def test_isa_head_follows_isanet():
    head = ISAHead(16, num_classes=5)
    assert head.reduce[0].kernel_size == (3, 3) and head.reduce[0].bias is None
    assert head.fuse[0][0].bias is None and head.fuse[1].p == 0.05
    assert head.issa.long_range.key_channels == 2  # channels // 2, as ISANet's 512 -> 256


def test_isa_head_shapes():
    torch.manual_seed(7)
    head = ISAHead(16, num_classes=5, block_size=(3, 2)).eval()
    logits, (long_att, short_att) = head(torch.randn(2, 16, 7, 5), return_attention=True)
    assert logits.shape == (2, 5, 7, 5)
    assert long_att.shape == (2, 6, 9, 9) and short_att.shape == (2, 9, 6, 6)
    assert head.issa.in_channels == 4  # default channels = in_channels // 4


def test_meta_device():
    x = torch.randn(2, 8, 5, 7, device="meta")
    y, (la, sa) = InterlacedSparseSelfAttention(8, (2, 3)).to("meta")(x, return_attention=True)
    assert y.shape == (2, 8, 5, 7) and y.device.type == "meta"
    assert la.shape == (2, 6, 9, 9) and sa.shape == (2, 9, 6, 6)
    assert ISAHead(8, 3, block_size=2).to("meta")(x).shape == (2, 3, 5, 7)
    assert interlaced_sparse_attention(x, (2, 3)).shape == (2, 8, 5, 7)


# ---------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------


def test_bad_inputs():
    x = torch.randn(1, 3, 4, 4)
    with pytest.raises(ValueError, match="x must have 4 dimensions"):
        interlaced_sparse_attention(torch.randn(3, 4, 4))
    with pytest.raises(TypeError, match="x must have a floating-point dtype"):
        interlaced_sparse_attention(torch.ones(1, 3, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="block_size must be >= 1"):
        interlaced_sparse_attention(x, (0, 2))
    with pytest.raises(TypeError, match="block_size must be an int or a pair"):
        interlaced_sparse_attention(x, (2.0, 2))
    with pytest.raises(ValueError, match="x must have 5 channels"):
        InterlacedSparseSelfAttention(5, 2)(x)
    with pytest.raises(ValueError, match="in_channels"):
        InterlacedSparseSelfAttention(0)
    with pytest.raises(ValueError, match="key_channels"):
        InterlacedSparseSelfAttention(3, 2, key_channels=2, projections=False)
    with pytest.raises(ValueError, match="num_classes"):
        ISAHead(8, 0)
    with pytest.raises(ValueError, match="long_attention must have shape"):
        interlaced_attention_to_dense(torch.ones(1, 2, 2, 2), torch.ones(1, 4, 4, 4), 4, 4, 2)
    with pytest.raises(ValueError, match="height must be >= 1"):
        interlaced_masks(0, 4, 2)
    with pytest.raises(TypeError, match="width must be an int"):
        long_range_groups(4, 2.5, 2)
    with pytest.raises(ValueError, match="use pad_to_blocks"):
        long_range_permute(torch.randn(1, 1, 5, 4), 2)


def test_dense_factors_have_the_interlaced_sparsity():
    torch.manual_seed(8)
    x = torch.randn(1, 2, 5, 7, dtype=torch.float64)
    _, (la, sa) = interlaced_sparse_attention(x, (2, 3), return_attention=True)
    a_long, a_short = interlaced_attention_to_dense(la, sa, 5, 7, (2, 3))
    long_mask, short_mask = interlaced_masks(5, 7, (2, 3))
    assert torch.equal(a_long[0] > 0, long_mask)
    assert torch.equal(a_short[0] > 0, short_mask)
    # nonzeros: N'·Q_h·Q_w + N'·P_h·P_w instead of N'^2
    assert int(long_mask.sum() + short_mask.sum()) == 54 * 9 + 54 * 6
