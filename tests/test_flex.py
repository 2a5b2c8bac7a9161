"""The line formulation on torch's FlexAttention (``ccnet_edu.flex``), on the CPU.

* :func:`merge_halves` on its own: two attentions over disjoint key sets joined by
  their log-sum-exps are one softmax over the union, values and gradients;
* the flex route against the float64 reference: forward (eager FlexAttention on
  the CPU), the attention map, every gradient (through the dense line attentions
  that the CPU uses for training, and through FlexAttention's own backward with
  torch's CPU refusal lifted for the test), odd sizes, batch > 1, H or W = 1;
* ``impl="flex"`` in the functional API, with stderr clean (a shown warning fails).

On a GPU the route runs compiled (Triton); ``tests/test_gpu.py`` checks it there.
"""

from __future__ import annotations

import warnings

import pytest
import torch

from ccnet_edu import flex
from ccnet_edu import functional as Fn

# (B, C', C, H, W): odd and non-square, one row, one column, one pixel, batch > 1.
SHAPES = [(2, 3, 5, 5, 7), (1, 2, 4, 1, 6), (3, 2, 6, 6, 1), (2, 4, 3, 1, 1), (2, 4, 9, 7, 3)]
TOL = {torch.float64: 1e-10, torch.float32: 1e-5}


@pytest.fixture(autouse=True)
def _no_warnings():
    """Nothing is shown on stderr: every warning that would be shown fails the test (the
    ones torch hides itself, such as dynamo's probe of a non-leaf's .grad, stay hidden)."""
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        yield
    assert not shown, [f"{w.category.__name__}: {w.message}" for w in shown]


def _inputs(shape, dtype, seed=0):
    batch, qk, channels, height, width = shape
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, qk, height, width, generator=g, dtype=torch.float64)
    k = torch.randn(batch, qk, height, width, generator=g, dtype=torch.float64)
    v = torch.randn(batch, channels, height, width, generator=g, dtype=torch.float64)
    go = torch.randn(batch, channels, height, width, generator=g, dtype=torch.float64)
    ga = torch.randn(batch, height, width, height + width - 1, generator=g, dtype=torch.float64)
    return [t.to(dtype) for t in (q, k, v)], go, ga


def _close(got, want, dtype, name):
    got = got.double()
    error = (got - want).abs().max().item()
    assert error <= TOL[dtype] * max(1.0, want.abs().max().item()), f"{name}: {error:.3g}"


# ------------------------------------------------------------------ the merge


def _halves(generator, batch=3, n_row=5, n_col=4, channels=6):
    energy = torch.randn(batch, n_row + n_col, generator=generator, dtype=torch.float64) * 4
    values = torch.randn(batch, n_row + n_col, channels, generator=generator, dtype=torch.float64)
    return energy, values


def _half(energy, values):
    """A half on its own: normalised output and log-sum-exp."""
    return torch.einsum("bl,blc->bc", energy.softmax(-1), values), energy.logsumexp(-1)


def test_merge_of_two_halves_is_one_softmax():
    g = torch.Generator().manual_seed(0)
    energy, values = _halves(g)
    out_row, lse_row = _half(energy[:, :5], values[:, :5])
    out_col, lse_col = _half(energy[:, 5:], values[:, 5:])
    out, lse = flex.merge_halves(out_row, lse_row, out_col, lse_col)
    want = torch.einsum("bl,blc->bc", energy.softmax(-1), values)
    assert torch.allclose(out, want, atol=1e-12)
    assert torch.allclose(lse, energy.logsumexp(-1), atol=1e-12)


def test_merge_is_exact_for_far_apart_halves_and_an_empty_half():
    # energies 1000 apart: exp() of either alone overflows, the merge does not
    out_row, out_col = (
        torch.randn(2, 3, dtype=torch.float64),
        torch.randn(2, 3, dtype=torch.float64),
    )
    lse_row = torch.tensor([1000.0, -1000.0], dtype=torch.float64)
    lse_col = torch.tensor([0.0, 0.0], dtype=torch.float64)
    out, lse = flex.merge_halves(out_row, lse_row, out_col, lse_col)
    assert torch.allclose(out, torch.stack([out_row[0], out_col[1]]), atol=1e-12)
    assert torch.allclose(lse, torch.tensor([1000.0, 0.0], dtype=torch.float64))
    # an empty column half (lse -inf, output 0) leaves the row as it is
    empty = torch.full((2,), float("-inf"), dtype=torch.float64)
    out, lse = flex.merge_halves(out_row, lse_col, torch.zeros_like(out_col), empty)
    assert torch.equal(out, out_row) and torch.equal(lse, lse_col)


def test_merge_gradients():
    g = torch.Generator().manual_seed(1)
    args = [
        torch.randn(3, 4, generator=g, dtype=torch.float64, requires_grad=True),
        torch.randn(3, generator=g, dtype=torch.float64, requires_grad=True),
        torch.randn(3, 4, generator=g, dtype=torch.float64, requires_grad=True),
        torch.randn(3, generator=g, dtype=torch.float64, requires_grad=True),
    ]
    assert torch.autograd.gradcheck(flex.merge_halves, args)


def test_merged_halves_give_the_gradients_of_one_softmax():
    g = torch.Generator().manual_seed(2)
    energy, values = _halves(g)
    energy.requires_grad_()
    values.requires_grad_()
    grad = torch.randn(3, 6, generator=g, dtype=torch.float64)
    halves = [_half(energy[:, :5], values[:, :5]), _half(energy[:, 5:], values[:, 5:])]
    out, _ = flex.merge_halves(*halves[0], *halves[1])
    got = torch.autograd.grad(out, (energy, values), grad)
    want_out = torch.einsum("bl,blc->bc", energy.softmax(-1), values)
    want = torch.autograd.grad(want_out, (energy, values), grad)
    for a, b in zip(got, want, strict=True):
        assert torch.allclose(a, b, atol=1e-12)


# --------------------------------------------------------------- the flex route


@pytest.mark.parametrize("dtype", list(TOL), ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_flex_forward_matches_reference(shape, dtype):
    (q, k, v), _, _ = _inputs(shape, dtype)
    out, attention = flex.criss_cross_attention_flex(q, k, v, return_attention=True)
    want_out, want_att = Fn.criss_cross_attention_reference(q.double(), k.double(), v.double())
    assert out.dtype == dtype and out.shape == want_out.shape
    assert out.is_contiguous(memory_format=torch.channels_last)
    _close(out, want_out, dtype, "out")
    _close(attention, want_att, dtype, "attention")
    assert flex.criss_cross_attention_flex(q, k, v)[1] is None


def _gradients(fn, inputs, go, ga):
    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    out, attention = fn(*leaves)
    loss = (out * go.to(out.dtype)).sum() + (attention * ga.to(out.dtype)).sum()
    return torch.autograd.grad(loss, leaves)


def _reference_gradients(inputs, go, ga):
    return _gradients(Fn.criss_cross_attention_reference, [t.double() for t in inputs], go, ga)


@pytest.mark.parametrize("dtype", list(TOL), ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_flex_route_gradients_match_reference(shape, dtype):
    """On the CPU a gradient goes through the dense line attentions (FlexAttention has
    no CPU backward): the same halves, merge and attention map."""
    inputs, go, ga = _inputs(shape, dtype, seed=1)
    got = _gradients(
        lambda *t: flex.criss_cross_attention_flex(*t, return_attention=True), inputs, go, ga
    )
    for name, a, b in zip("qkv", got, _reference_gradients(inputs, go, ga), strict=True):
        _close(a, b, dtype, f"grad {name}")


def test_device_lists_follow_torchs_own_check():
    """`_FLEX_DEVICES` and `_NO_FLEX_BACKWARD` are torch's check in `_validate_device`
    (its set of device types and the devices it refuses a backward on), read from the
    pinned torch's source: an allow-list that drifts from it would send a device
    FlexAttention runs on to the dense route, or one it refuses to FlexAttention."""
    import inspect
    import re

    import torch.nn.attention.flex_attention as torch_flex

    if not hasattr(torch_flex, "_validate_device"):
        pytest.skip("this torch has no _validate_device to read")
    source = inspect.getsource(torch_flex._validate_device)
    found = re.search(r"supported_devices = \{([^}]*)\}", source)
    assert found, "torch's _validate_device no longer lists its devices as a set"
    assert set(re.findall(r'"(\w+)"', found.group(1))) == set(flex._FLEX_DEVICES)
    refused = {d.lower() for d in re.findall(r"does not support backward on (\w+)", source)}
    assert refused == set(flex._NO_FLEX_BACKWARD)


@pytest.fixture
def flex_backward_on_cpu(monkeypatch):
    """FlexAttention's own backward on the CPU: torch refuses inputs that require grad
    there (a check in front of the math, not a missing formula); lift the check."""
    import torch.nn.attention.flex_attention as torch_flex

    if not hasattr(torch_flex, "_validate_device"):
        pytest.skip("this torch has no _validate_device to lift")
    monkeypatch.setattr(torch_flex, "_validate_device", lambda *args: None)
    monkeypatch.setattr(flex, "_NO_FLEX_BACKWARD", ())


@pytest.mark.parametrize("shape", [(2, 3, 5, 5, 7), (1, 2, 4, 1, 6), (3, 2, 6, 6, 1)], ids=str)
def test_flex_backward_itself_matches_reference(flex_backward_on_cpu, shape):
    """Gradients through FlexAttention's backward (out and log-sum-exp, the merge)."""
    inputs, go, ga = _inputs(shape, torch.float64, seed=2)
    leaves = [t.clone().requires_grad_() for t in inputs]
    out, _ = flex.criss_cross_attention_flex(*leaves)
    got = torch.autograd.grad((out * go).sum(), leaves)
    ref_leaves = [t.clone().requires_grad_() for t in inputs]
    want_out, _ = Fn.criss_cross_attention_reference(*ref_leaves)
    want = torch.autograd.grad((want_out * go).sum(), ref_leaves)
    for name, a, b in zip("qkv", got, want, strict=True):
        _close(a, b, torch.float64, f"grad {name}")


def test_value_chunks_give_the_same_output():
    (q, k, v), _, _ = _inputs((2, 3, 7, 5, 6), torch.float64, seed=3)
    whole, _ = flex.criss_cross_attention_flex(q, k, v)
    for chunk in (1, 3, 7, 100):
        chunked, _ = flex.criss_cross_attention_flex(q, k, v, value_chunk=chunk)
        assert torch.allclose(chunked, whole, atol=1e-12)


def test_dense_and_flex_line_attention_agree():
    g = torch.Generator().manual_seed(4)
    q, k = (torch.randn(2, 3, 9, 4, generator=g, dtype=torch.float64) for _ in range(2))
    v = torch.randn(2, 3, 9, 6, generator=g, dtype=torch.float64)
    for mask_centre in (False, True):
        dense = flex.dense_line_attention(q, k, v, mask_centre=mask_centre)
        fast = flex.flex_line_attention(q, k, v, mask_centre=mask_centre, value_chunk=4)
        for a, b in zip(dense, fast, strict=True):
            assert torch.allclose(a, b, atol=1e-12)


def test_functional_impl_flex():
    (q, k, v), _, _ = _inputs((2, 3, 5, 5, 7), torch.float32, seed=5)
    out, attention = Fn.criss_cross_attention(q, k, v, impl="flex", return_attention=True)
    want_out, want_att = Fn.criss_cross_attention_reference(q, k, v)
    assert torch.allclose(out, want_out, atol=1e-5)
    assert torch.allclose(attention, want_att, atol=1e-6)
    assert torch.allclose(Fn.criss_cross_attention(q, k, v, impl="flex"), want_out, atol=1e-5)
    assert "flex" in Fn.IMPLS


def test_flex_route_rejects_bad_input():
    (q, k, v), _, _ = _inputs((1, 2, 3, 4, 5), torch.float32)
    with pytest.raises(ValueError, match="value"):
        flex.criss_cross_attention_flex(q, k, v[:, :, :3])
    with pytest.raises(TypeError, match="share one dtype"):
        flex.criss_cross_attention_flex(q, k.double(), v)
    with pytest.raises(ValueError, match="value_chunk"):
        flex.criss_cross_attention_flex(q, k, v, value_chunk=0)
    with pytest.raises(TypeError, match="compiled"):
        flex.criss_cross_attention_flex(q, k, v, compiled="yes")


# ------------------------------------------------------------------ every impl, the hard cases

# Every impl the functional API offers ("auto" is one of the others, but it is a public value).
IMPLS = list(Fn.IMPLS)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("energy", [1e2, 1e4, 1e6])
def test_attention_rows_sum_to_one_at_large_energies(impl, dtype, energy):
    """|energy| up to 1e6: every impl's rows sum to 1 (to rounding) and match the float64
    reference's rows; flex once returned rows off by 4e-3 at 1e4 and 0.28 at 1e6 (float32)."""
    (q, k, v), _, _ = _inputs((2, 3, 4, 5, 7), torch.float64, seed=7)
    q = q / q.norm(dim=1, keepdim=True) * energy**0.5  # |q . k| <= energy, ~energy at the max
    k = k / k.norm(dim=1, keepdim=True) * energy**0.5
    q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    out, attention = Fn.criss_cross_attention(q, k, v, impl=impl, return_attention=True)
    error = (attention.double().sum(-1) - 1).abs().max().item()
    assert error <= 8 * torch.finfo(dtype).eps * (attention.shape[-1]), (impl, error)
    want_out, want_att = Fn.criss_cross_attention_reference(q, k, v)
    # Same energies (the products are exact enough at this size): the same weights.
    assert torch.allclose(attention, want_att, atol=1e-5 if dtype == torch.float32 else 1e-12)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("mode", ["no_grad", "inference_mode"])
def test_every_impl_without_grad_on_inputs_that_require_grad(impl, mode):
    """Under no_grad / inference_mode an input that requires grad is fine for every impl
    (flex once raised FlexAttention's "does not support backward on CPU")."""
    (q, k, v), _, _ = _inputs((2, 3, 4, 5, 6), torch.float32, seed=3)
    want_out, want_att = Fn.criss_cross_attention_reference(q, k, v)
    q.requires_grad_(True)
    context = torch.no_grad() if mode == "no_grad" else torch.inference_mode()
    with context:
        out, attention = Fn.criss_cross_attention(q, k, v, impl=impl, return_attention=True)
    assert not out.requires_grad
    assert torch.allclose(out, want_out, atol=1e-5)
    assert torch.allclose(attention, want_att, atol=1e-6)


@pytest.mark.parametrize("impl", IMPLS)
def test_every_impl_on_the_meta_device(impl):
    """Shapes only: every impl gives (B, C, H, W) and (B, H, W, H+W-1) on "meta" (flex once
    raised FlexAttention's "only supported on CUDA, CPU, HPU, or MPS")."""
    q = torch.empty(2, 3, 5, 7, device="meta")
    v = torch.empty(2, 4, 5, 7, device="meta")
    out, attention = Fn.criss_cross_attention(q, q, v, impl=impl, return_attention=True)
    assert out.device.type == attention.device.type == "meta"
    assert out.shape == (2, 4, 5, 7) and attention.shape == (2, 5, 7, 11)


def test_devices_flex_attention_refuses_take_the_dense_route():
    """FlexAttention runs on CUDA, XPU, the CPU, HPU and MPS only; any other device type (meta,
    or an accelerator it does not support) is served by the dense line attentions."""
    from types import SimpleNamespace

    from ccnet_edu.flex import _needs_dense

    def tensor(device, requires_grad=False):
        return SimpleNamespace(device=SimpleNamespace(type=device), requires_grad=requires_grad)

    for device in ("meta", "privateuseone"):
        assert _needs_dense(tensor(device))
    for device in ("cuda", "xpu", "hpu"):
        assert not _needs_dense(tensor(device, requires_grad=True))
    with torch.enable_grad():
        for device in ("cpu", "mps"):  # no backward there
            assert _needs_dense(tensor(device, requires_grad=True))
            assert not _needs_dense(tensor(device))
