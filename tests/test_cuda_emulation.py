"""The tiled GPU kernels' arithmetic, run on the CPU.

``csrc/cca_lines.h`` holds the bodies of the tiled CUDA kernels, written against
an executor; ``csrc/cca_lines_host.h`` is a CPU executor that runs the same bodies
phase by phase (threads and warps in turn, tensor-core products in float
arithmetic on the same operands, float32 split into TF32 parts as the GPU splits
it).  ``csrc/cca_lines_emulate.cpp`` is compiled here with the C++ compiler alone
(no torch headers, no CUDA) and called through ctypes, and every output and
gradient is compared with the float64 reference.  Outputs start as NaN, scratch
buffers and shared memory too: an element nothing wrote, or a read of anything
nothing wrote, shows as NaN.

What this cannot check is what only a GPU does: the tensor cores' own rounding,
the WMMA fragment layouts, races between threads; ``tests/test_gpu.py`` and
``benchmarks/gpu_check.sh`` do, on a GPU.
"""

from __future__ import annotations

import ctypes
import itertools
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from ccnet_edu import functional as Fn
from ccnet_edu.ops import csrc_dir

DTYPE_CODE = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
# Relative (norm-wise) error against float64 that each dtype must stay under.  float32
# runs as 3xTF32 (about 2^-21 per product); float16/bfloat16 keep 11/8 significant bits
# in their inputs, in the weights rounded for the tensor cores, and in the outputs.
REL_TOL = {torch.float32: 1e-5, torch.float16: 3e-3, torch.bfloat16: 2e-2}

# (B, C', C, H, W): odd and non-square; one row, one column, one pixel; lines longer
# than a 64-position tile and block (several of each, the last partial); C' not a
# multiple of 16, the widest C' (128); C not a multiple of 8 (no 16-byte vectors) and
# C over one 128-channel chunk with a partial last chunk.
SHAPES = [
    (2, 5, 7, 5, 9),
    (1, 3, 4, 1, 6),
    (3, 2, 33, 7, 1),
    (2, 4, 19, 1, 1),
    (1, 16, 136, 9, 70),
    (2, 8, 24, 67, 3),
    (1, 128, 16, 6, 5),
]

PASSES = {"stats": 0, "agg": 1, "bwd_da": 2, "bwd_grads": 3}


@pytest.fixture(scope="module")
def lib(tmp_path_factory) -> ctypes.CDLL:
    """The emulation, compiled from csrc/ alone."""
    compiler = shutil.which(os.environ.get("CXX", "c++"))
    if compiler is None:
        pytest.skip("no C++ compiler")
    out = tmp_path_factory.mktemp("emulation") / "cca_lines_emulate.so"
    source = csrc_dir() / "cca_lines_emulate.cpp"
    subprocess.run(
        [
            compiler,
            "-std=c++17",
            "-O2",
            "-shared",
            "-fPIC",
            "-Wall",
            "-Wextra",
            "-Werror",
            str(source),
            "-o",
            str(out),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    lib = ctypes.CDLL(str(out))
    lib.cca_lines_grid.restype = ctypes.c_int64
    lib.cca_lines_smem_bytes.restype = ctypes.c_int64
    lib.cca_lines_merge_lse.restype = ctypes.c_float
    lib.cca_lines_merge_lse.argtypes = [ctypes.c_float] * 4
    return lib


def _shape(*dims: int):
    return (ctypes.c_int64 * 5)(*dims)


def _ptr(t: torch.Tensor | None) -> ctypes.c_void_p:
    return ctypes.c_void_p(t.data_ptr() if t is not None else None)


def _channels_last(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 2, 3, 1).contiguous()  # (B, H, W, C)


def emulated_forward(lib, query, key, value, reverse=False):
    batch, qk, height, width = query.shape
    channels = value.shape[1]
    q, k, v = (_channels_last(t) for t in (query, key, value))
    out = torch.full((batch, height, width, channels), float("nan"), dtype=query.dtype)
    att = torch.full((batch, height, width, height + width - 1), float("nan"), dtype=query.dtype)
    rc = lib.cca_lines_forward(
        DTYPE_CODE[query.dtype],
        _shape(batch, qk, channels, height, width),
        _ptr(q),
        _ptr(k),
        _ptr(v),
        _ptr(out),
        _ptr(att),
        int(reverse),
    )
    assert rc == 0
    return out.permute(0, 3, 1, 2), att


def emulated_backward(lib, grad_out, grad_att, att, query, key, value, reverse=False):
    batch, qk, height, width = query.shape
    channels = value.shape[1]
    go, q, k, v = (_channels_last(t) for t in (grad_out, query, key, value))
    ga = grad_att.contiguous() if grad_att is not None else None
    grads = [
        torch.full((batch, height, width, c), float("nan"), dtype=query.dtype)
        for c in (qk, qk, channels)
    ]
    rc = lib.cca_lines_backward(
        DTYPE_CODE[query.dtype],
        _shape(batch, qk, channels, height, width),
        _ptr(go),
        _ptr(ga),
        _ptr(att.contiguous()),
        _ptr(q),
        _ptr(k),
        _ptr(v),
        *(_ptr(g) for g in grads),
        int(reverse),
    )
    assert rc == 0
    return [g.permute(0, 3, 1, 2) for g in grads]


def _case(shape, dtype, seed=0):
    batch, qk, channels, height, width = shape
    g = torch.Generator().manual_seed(seed)
    sizes = [(batch, qk, height, width)] * 2 + [(batch, channels, height, width)] * 2
    q, k, v, go = (torch.randn(s, generator=g).to(dtype) for s in sizes)
    ga = torch.randn(batch, height, width, height + width - 1, generator=g).to(dtype)
    return q, k, v, go, ga


def _reference(q, k, v, go, ga):
    """out, attention and the three gradients in float64 from the same (rounded) inputs."""
    qd, kd, vd = (t.double().requires_grad_() for t in (q, k, v))
    out, att = Fn.criss_cross_attention_reference(qd, kd, vd)
    loss = (out * go.double()).sum() + (att * ga.double()).sum()
    return [out.detach(), att.detach(), *torch.autograd.grad(loss, (qd, kd, vd))]


def _assert_close(name, got, want, dtype):
    assert not torch.isnan(got).any(), f"{name}: NaN (an element no pass wrote)"
    got = got.double()
    scale = want.norm().item()
    error = (got - want).norm().item()
    if scale == 0.0:  # e.g. grad query/key of a one-pixel map
        assert error <= REL_TOL[dtype], f"{name}: |error| {error:.3g} where the reference is 0"
    else:
        assert error / scale <= REL_TOL[dtype], f"{name}: relative error {error / scale:.3g}"


@pytest.mark.parametrize("dtype", list(DTYPE_CODE), ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_tiled_kernels_match_reference(lib, shape, dtype):
    q, k, v, go, ga = _case(shape, dtype)
    want = _reference(q, k, v, go, ga)
    out, att = emulated_forward(lib, q, k, v)
    grads = emulated_backward(lib, go, ga, att, q, k, v)
    names = ("out", "attention", "grad_query", "grad_key", "grad_value")
    for name, got, expected in zip(names, [out, att, *grads], want, strict=True):
        _assert_close(name, got, expected, dtype)


def test_float32_is_about_float32_precise(lib):
    """3xTF32 keeps float32's precision: 1xTF32 (10 mantissa bits) would be ~1e-3 off."""
    shape = (2, 64, 96, 23, 29)
    q, k, v, go, ga = _case(shape, torch.float32, seed=3)
    want = _reference(q, k, v, go, ga)
    out, att = emulated_forward(lib, q, k, v)
    rel = ((out.double() - want[0]).norm() / want[0].norm()).item()
    assert rel < 3e-6


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_ctas_in_any_order_give_the_same_bits(lib, dtype):
    """No CTA reads what another CTA of the same launch writes."""
    q, k, v, go, ga = _case((2, 8, 136, 9, 70), dtype, seed=1)
    forward = emulated_forward(lib, q, k, v)
    reverse = emulated_forward(lib, q, k, v, reverse=True)
    for a, b in zip(forward, reverse, strict=True):
        assert torch.equal(a, b)
    grads = emulated_backward(lib, go, ga, forward[1], q, k, v)
    grads_reverse = emulated_backward(lib, go, ga, forward[1], q, k, v, reverse=True)
    for a, b in zip(grads, grads_reverse, strict=True):
        assert torch.equal(a, b)


def test_without_grad_attention_is_grad_attention_zero(lib):
    q, k, v, go, _ = _case((2, 5, 7, 5, 9), torch.float32, seed=2)
    _, att = emulated_forward(lib, q, k, v)
    without = emulated_backward(lib, go, None, att, q, k, v)
    zeros = emulated_backward(lib, go, torch.zeros_like(att), att, q, k, v)
    for a, b in zip(without, zeros, strict=True):
        assert torch.equal(a, b)


def _work(lib, pass_, direction, shape, index):
    out = (ctypes.c_int64 * 5)()
    lib.cca_lines_decode(pass_, direction, _shape(*shape), ctypes.c_int64(index), out)
    return tuple(out)


@pytest.mark.parametrize("shape", [(2, 8, 300, 67, 3), (1, 64, 512, 97, 97), (3, 4, 5, 1, 130)])
def test_every_work_item_is_one_cta(lib, shape):
    """The CTAs of each pass cover every (line, block, chunk) of the map exactly once."""
    batch, _, channels, height, width = shape
    lines = {0: batch * height, 1: batch * width}
    length = {0: width, 1: height}
    blocks = {d: -(-length[d] // 64) for d in (0, 1)}
    chunks = -(-channels // 128)
    directions = [0, 1] if height > 1 else [0]

    both = [
        _work(lib, PASSES["stats"], 0, shape, i)
        for i in range(lib.cca_lines_grid(PASSES["stats"], 0, _shape(*shape)))
    ]
    expected = [(d, n, b) for d in directions for n in range(lines[d]) for b in range(blocks[d])]
    assert sorted(w[:3] for w in both) == expected

    for d in directions:
        grid = lib.cca_lines_grid(PASSES["agg"], d, _shape(*shape))
        agg = [_work(lib, PASSES["agg"], d, shape, i) for i in range(grid)]
        expected = list(itertools.product([d], range(lines[d]), range(blocks[d]), range(chunks)))
        assert sorted(w[:4] for w in agg) == expected

        grid = lib.cca_lines_grid(PASSES["bwd_grads"], d, _shape(*shape))
        items = sorted(
            (w[1], w[4], w[2], w[3] if w[4] == 0 else 0)
            for w in (_work(lib, PASSES["bwd_grads"], d, shape, i) for i in range(grid))
        )
        expected = sorted(
            [(n, 0, b, c) for n in range(lines[d]) for b in range(blocks[d]) for c in range(chunks)]
            + [
                (n, kind, b, 0)
                for n in range(lines[d])
                for kind in (1, 2)
                for b in range(blocks[d])
            ]
        )
        assert items == expected
    if height == 1:  # no column half: no column passes
        assert lib.cca_lines_grid(PASSES["agg"], 1, _shape(*shape)) == 0


def test_shared_memory_fits_two_ctas_per_multiprocessor(lib):
    """At CCNet's C' = 64 every pass fits twice in an H100/H200 multiprocessor's 228 KB
    (the kernels ask for 2 CTAs per multiprocessor), and the widest C' still fits once."""
    for dtype in (0, 1, 2):
        for p in PASSES.values():
            assert lib.cca_lines_smem_bytes(p, _shape(1, 64, 512, 97, 97), dtype) <= 113 * 1024
            assert lib.cca_lines_smem_bytes(p, _shape(1, 128, 512, 97, 97), dtype) <= 227 * 1024


def test_what_the_tiled_kernels_take(lib):
    assert lib.cca_lines_supported(_shape(2, 128, 512, 97, 97), 0) == 1
    assert lib.cca_lines_supported(_shape(2, 129, 512, 97, 97), 0) == 0  # C' > 128: portable
    assert lib.cca_lines_supported(_shape(2, 64, 512, 97, 97), 3) == 0  # float64: portable
    assert lib.cca_lines_supported(_shape(0, 64, 512, 97, 97), 2) == 0  # empty


def test_merge_lse_in_the_kernels(lib):
    """The kernels' log-sum-exp merge of the two halves, against torch.logsumexp."""
    g = torch.Generator().manual_seed(4)
    for _ in range(20):
        row, col = torch.randn(7, generator=g) * 30, torch.randn(4, generator=g) * 30
        m_row, m_col = row.max(), col.max()
        s_row, s_col = (row - m_row).exp().sum(), (col - m_col).exp().sum()
        got = lib.cca_lines_merge_lse(m_row.item(), s_row.item(), m_col.item(), s_col.item())
        want = torch.cat([row, col]).double().logsumexp(0).item()
        assert abs(got - want) <= 1e-5 * max(1.0, abs(want))
    # an empty column half (H == 1): the row's own log-sum-exp
    got = lib.cca_lines_merge_lse(2.0, 3.0, float("-inf"), 0.0)
    assert abs(got - (2.0 + torch.tensor(3.0).log().item())) < 1e-6


def test_emulation_needs_nothing_but_csrc():
    """The emulation is compiled from these files alone: no torch or CUDA header."""
    src = csrc_dir()
    for name in ("cca_tiling.h", "cca_lines.h", "cca_lines_host.h", "cca_lines_emulate.cpp"):
        text = (src / name).read_text()
        includes = [line for line in text.splitlines() if line.startswith("#include")]
        assert not any("torch" in i or "ATen" in i or "c10" in i or "cuda" in i for i in includes)
    assert Path(src / "cca_lines_cuda.h").is_file()
