"""The CUDA operator and the flex route on a GPU (skipped without one).

``benchmarks/gpu_check.sh`` runs this file with ``CCNET_EDU_CUDA_POISON=1``: the
tiled kernels' outputs and scratch buffers start as NaN, so an element that no
kernel writes fails the check.  Every check compares with the float64 reference on
the same (rounded) inputs, on fresh random data:

* the fused operator (the tiled kernels for float32/float16/bfloat16, the portable
  kernels for float64, and where a pass needs more shared memory than the GPU gives one
  block: float32 at C' = 64 on compute capability 8.6 and 8.9) at odd and non-square
  sizes, H or W = 1, lines longer than a tile, C over one chunk, C' = 128,
  unvectorisable C, CCNet's 97 x 97 at C = 512;
* every input layout (NCHW, channels-last, a crop whose memory is not 16-byte aligned);
* the fused CUDA operator against the portable CPU path, and the portable CUDA kernels
  against the portable CPU path;
* the same bits on every run (no atomics), and whatever L2 the passes are planned for;
* the flex route compiled (Triton), forward and gradients.
"""

from __future__ import annotations

import os

import cca_cases
import pytest
import torch

from ccnet_edu import flex, ops, roofline

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")

# (B, C', C, H, W): the emulation's shapes (see cca_cases.py) and three more.
SHAPES = [
    *cca_cases.SHAPES,
    (2, 160, 24, 7, 6),  # C' > 128: the portable kernels
    (1, 64, 512, 97, 97),
    (1, 64, 136, 130, 257),
]
DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
REL_TOL = cca_cases.REL_TOL  # relative (norm-wise) error against float64, as the emulation's


@pytest.fixture(scope="module", autouse=True)
def _built():
    ops.load(cuda=True)  # builds if needed and self-tests on the GPU


def _case(shape, dtype, seed, device="cuda"):
    """A random case on the GPU; its float64 reference is computed there too (the 97 x 97 and
    130 x 257 maps are slow on a CPU)."""
    return cca_cases.qkv_case(shape, dtype, seed, device)


def _assert_close(name, got, want, tol):
    assert got.shape == want.shape, name
    assert bool(got.isfinite().all()), f"{name}: NaN or inf (an element nothing wrote?)"
    error = (got.double() - want.double()).norm().item()
    scale = want.double().norm().item()
    assert error <= tol * max(scale, 1e-30) or error <= tol, f"{name}: {error / scale:.3g}"


def _forward_backward(q, k, v, go, ga, prefix=""):
    out, att = getattr(torch.ops.ccnet_edu, f"{prefix}criss_cross_attention")(q, k, v)
    grads = getattr(torch.ops.ccnet_edu, f"{prefix}criss_cross_attention_backward")(
        go, ga, att, q, k, v
    )
    return [out, att, *grads]


NAMES = ("out", "attention", "grad_query", "grad_key", "grad_value")


def test_outputs_are_poisoned_in_gpu_check():
    """gpu_check.sh sets the poison; run on its own, the test says so."""
    if os.environ.get("CCNET_EDU_CUDA_POISON", "0") in ("", "0"):
        pytest.skip("CCNET_EDU_CUDA_POISON is not set: outputs are not NaN-poisoned")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_fused_matches_reference(shape, dtype):
    case = _case(shape, dtype, seed=0)
    want = cca_cases.float64_reference(*case)
    for name, got, expected in zip(NAMES, _forward_backward(*case), want, strict=True):
        _assert_close(name, got, expected, REL_TOL[dtype])


def _misaligned_channels_last(t: torch.Tensor) -> torch.Tensor:
    """t, channels-last contiguous, one element past a 16-byte boundary: no 16-byte vectors."""
    batch, channels, height, width = t.shape
    base = torch.empty(t.numel() + 1, dtype=t.dtype, device=t.device)
    out = base[1:].view(batch, height, width, channels).permute(0, 3, 1, 2)
    return out.copy_(t)


@pytest.mark.parametrize("layout", ["nchw", "channels_last", "misaligned"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_any_input_layout(layout, dtype):
    q, k, v, go, ga = _case((2, 16, 40, 13, 11), dtype, seed=1)
    if layout == "channels_last":
        q, k, v, go = (t.contiguous(memory_format=torch.channels_last) for t in (q, k, v, go))
    elif layout == "misaligned":
        q, k, v, go = (_misaligned_channels_last(t) for t in (q, k, v, go))
        assert q.is_contiguous(memory_format=torch.channels_last) and q.data_ptr() % 16 != 0
    want = cca_cases.float64_reference(q, k, v, go, ga)
    got = _forward_backward(q, k, v, go, ga)
    for name, a, b in zip(NAMES, got, want, strict=True):
        _assert_close(name, a, b, REL_TOL[dtype])
    for grad, like in zip(got[2:], (q, k, v), strict=True):
        assert grad.stride() == like.stride()


@pytest.mark.parametrize("shape", [(2, 5, 7, 5, 9), (1, 16, 136, 9, 70)], ids=str)
def test_fused_cuda_against_portable_cpu(shape):
    case = _case(shape, torch.float32, seed=2)
    gpu = _forward_backward(*case)
    cpu = _forward_backward(*(t.cpu() for t in case), prefix="portable_")
    portable_gpu = _forward_backward(*case, prefix="portable_")
    for name, a, b, c in zip(NAMES, gpu, cpu, portable_gpu, strict=True):
        _assert_close(f"fused cuda vs portable cpu: {name}", a.cpu(), b, 1e-5)
        _assert_close(f"portable cuda vs portable cpu: {name}", c.cpu(), b, 1e-6)


def _size(dtype):
    return 4 if dtype == torch.float32 else 2


@pytest.mark.parametrize("sliced", [False, True], ids=["device-plan", "da-slices"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_same_bits_on_every_run(dtype, sliced, monkeypatch):
    """No atomics: the same bits on every run, with the device's plan (one slice at this
    size) and with the backward's dA accumulated over four slices (64, 64, 64, 8)."""
    shape = (2, 64, 200, 33, 70)
    if sliced:
        l2 = 2 * roofline.v4_kept_bytes(shape, _size(dtype), 64)
        assert roofline.v4_backward_plan(shape, _size(dtype), l2)[:3] == (4, 64, True)
        monkeypatch.setenv("CCNET_EDU_CUDA_L2_BYTES", str(l2))
    case = _case(shape, dtype, seed=3)
    first = _forward_backward(*case)
    for _ in range(2):
        again = _forward_backward(*case)
        for name, a, b in zip(NAMES, first, again, strict=True):
            assert torch.equal(a, b), name


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_the_plans_give_the_bits_of_one_pass(dtype, monkeypatch):
    """At 97 x 97, C = 512, planned for an H100's 50 MiB L2 (set, whatever the device's):
    the backward accumulates dA over slices (8 of 64 channels in float32, 2 of 256 in 16-bit),
    each slice's CTAs loading the float accumulators the previous one stored; for 30 MiB,
    v2's order over slices (7 of 80, or 2 of 256) and the forward over 4 or 2; for 0, one
    pass over both maps.  All give the same bits."""
    shape, size = (2, 64, 512, 97, 97), _size(dtype)
    plans = (roofline.L2_BYTES, 30 * 2**20, 0)
    assert [roofline.v4_backward_plan(shape, size, l2)[2] for l2 in plans] == [True, False, False]
    case = _case(shape, dtype, seed=4)
    results = []
    for l2 in plans:
        monkeypatch.setenv("CCNET_EDU_CUDA_L2_BYTES", str(l2))
        results.append(_forward_backward(*case))
    for l2, other in zip(plans[1:], results[1:], strict=True):
        for name, a, b in zip(NAMES, results[0], other, strict=True):
            assert torch.equal(a, b), f"{name}: L2 {l2}"
    monkeypatch.setenv("CCNET_EDU_CUDA_L2_BYTES", "lots")
    with pytest.raises(RuntimeError, match="CCNET_EDU_CUDA_L2_BYTES"):
        _forward_backward(*case)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_opcheck_on_the_tiled_kernels(dtype):
    """Schema, fake kernel (layouts and strides), autograd formula, on the tiled path."""
    q, k, v, _, _ = _case((2, 16, 24, 5, 7), dtype, seed=6)
    leaves = [t.requires_grad_() for t in (q, k, v)]
    torch.library.opcheck(torch.ops.ccnet_edu.criss_cross_attention.default, leaves)


def test_autograd_through_the_fused_operator():
    q, k, v, go, _ = _case((2, 8, 24, 9, 70), torch.float32, seed=4)
    leaves = [t.requires_grad_() for t in (q, k, v)]
    out, _ = ops.criss_cross_attention(*leaves)
    got = torch.autograd.grad(out, leaves, go)
    want = cca_cases.float64_reference(q, k, v, go, torch.zeros(2, 9, 70, 78, device="cuda"))[2:]
    for name, a, b in zip(NAMES[2:], got, want, strict=True):
        _assert_close(name, a, b, REL_TOL[torch.float32])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", [(1, 64, 256, 33, 47)], ids=str)
def test_flex_compiled_matches_reference(shape, dtype):
    """Two value chunks of 128, odd line lengths (one compilation per dtype)."""
    q, k, v, go, _ = _case(shape, dtype, seed=5)
    leaves = [t.requires_grad_() for t in (q, k, v)]
    out, _ = flex.criss_cross_attention_flex(*leaves)
    grads = torch.autograd.grad(out, leaves, go)
    batch, _, _, height, width = shape
    want = cca_cases.float64_reference(
        q, k, v, go, torch.zeros(batch, height, width, height + width - 1, device="cuda")
    )
    # float32: Triton's dot may run as TF32 (about 3e-4)
    tol = {torch.float32: 1e-3, torch.bfloat16: 3e-2}[dtype]
    _assert_close("out", out, want[0], tol)
    for name, a, b in zip(NAMES[2:], grads, want[2:], strict=True):
        _assert_close(name, a, b, tol)
