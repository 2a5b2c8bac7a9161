"""The C++/CUDA criss-cross operator (``ccnet_edu.ops``) against the readable reference.

Every check compares with :func:`ccnet_edu.functional.criss_cross_attention_reference`
evaluated in float64 on the same (rounded) inputs, on random data with odd,
non-square and degenerate sizes and batch > 1. Both CPU code paths are tested:
the fast one (register tiles over rows and columns) and the portable one (the
CUDA build's element bodies, run on the CPU).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path

import pytest
import torch

from ccnet_edu import functional as Fn
from ccnet_edu import ops
from ccnet_edu.ops import baselines

# (B, C', C, H, W): odd, non-square, one row, one column, one pixel, batch > 1, and
# one wide enough for several of the backward's column groups plus a partial one
# (kGroup = 16 in csrc/cca_cpu.cpp: W = 37 is 16 + 16 + 5) and copy()'s square
# vector-width transposes with row and channel tails.
SHAPES = [
    (2, 5, 7, 5, 9),
    (1, 3, 4, 1, 6),
    (3, 2, 33, 7, 1),
    (2, 4, 19, 1, 1),
    (2, 16, 40, 13, 11),
    (2, 8, 21, 19, 37),
]
DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]
# (rtol, atol) against float64: float16/bfloat16 keep 11/8 significant bits in
# their inputs and outputs (the arithmetic itself accumulates in float32).
TOL = {
    torch.float64: (1e-10, 1e-12),
    torch.float32: (1e-4, 1e-5),
    torch.float16: (1e-2, 1e-2),
    torch.bfloat16: (5e-2, 5e-2),
}
FORWARD = {
    "fast": lambda q, k, v: torch.ops.ccnet_edu.criss_cross_attention(q, k, v),
    "portable": lambda q, k, v: torch.ops.ccnet_edu.portable_criss_cross_attention(q, k, v),
}
BACKWARD = {
    "fast": lambda *a: torch.ops.ccnet_edu.criss_cross_attention_backward(*a),
    "portable": lambda *a: torch.ops.ccnet_edu.portable_criss_cross_attention_backward(*a),
}


@pytest.fixture(scope="module", autouse=True)
def _built() -> None:
    """Build (or load from the cache) the CPU operator once; a failure fails every test."""
    ops.load(cuda=False)


def _inputs(shape, dtype, device="cpu"):
    batch, qk, channels, height, width = shape
    query = torch.randn(batch, qk, height, width, device=device).to(dtype)
    key = torch.randn(batch, qk, height, width, device=device).to(dtype)
    value = torch.randn(batch, channels, height, width, device=device).to(dtype)
    return query, key, value


def _reference_with_grads(query, key, value, grad_out, grad_att):
    """Reference in float64 from the same inputs: out, attention and the three gradients."""
    q, k, v = (t.detach().double().cpu().requires_grad_() for t in (query, key, value))
    out, att = Fn.criss_cross_attention_reference(q, k, v)
    loss = (out * grad_out.double().cpu()).sum() + (att * grad_att.double().cpu()).sum()
    return (out, att, *torch.autograd.grad(loss, (q, k, v)))


def _assert_close(actual, expected, dtype, scale=1.0):
    rtol, atol = TOL[dtype]
    torch.testing.assert_close(
        actual.detach().double().cpu(), expected.detach(), rtol=rtol, atol=atol * scale
    )


@pytest.mark.parametrize("path", ["fast", "portable"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_matches_reference(shape, dtype, path):
    """Forward (out, attention) and the gradients wrt query, key, value."""
    query, key, value = _inputs(shape, dtype)
    batch, _, channels, height, width = shape
    grad_out = torch.randn(batch, channels, height, width).to(dtype)
    grad_att = torch.randn(batch, height, width, height + width - 1).to(dtype)
    expected = _reference_with_grads(query, key, value, grad_out, grad_att)

    out, att = FORWARD[path](query, key, value)
    assert out.shape == value.shape and out.dtype == dtype
    assert att.shape == (batch, height, width, height + width - 1) and att.dtype == dtype
    _assert_close(out, expected[0], dtype)
    _assert_close(att, expected[1], dtype)
    grads = BACKWARD[path](grad_out, grad_att, att, query, key, value)
    # Gradients sum up to C and H+W-1 products of rounded numbers: scale atol with the size.
    for grad, want in zip(grads, expected[2:], strict=True):
        assert grad.dtype == dtype
        _assert_close(grad, want, dtype, scale=max(1.0, want.abs().max().item()))


@pytest.mark.parametrize("layout", ["channels_last", "strided"])
def test_any_input_layout(layout):
    """Channels-last and non-contiguous inputs (the backward reads value through its strides)."""
    query, key, value = _inputs((2, 3, 6, 5, 7), torch.float64)
    if layout == "channels_last":
        query, key, value = (
            t.contiguous(memory_format=torch.channels_last) for t in (query, key, value)
        )
    else:
        value = torch.randn(2, 12, 5, 7, dtype=torch.float64)[:, ::2]  # channel stride 2HW
    grad_out = torch.randn(2, 6, 5, 7, dtype=torch.float64)
    grad_att = torch.randn(2, 5, 7, 11, dtype=torch.float64)
    expected = _reference_with_grads(query, key, value, grad_out, grad_att)
    for path in ("fast", "portable"):
        out, att = FORWARD[path](query, key, value)
        grads = BACKWARD[path](grad_out, grad_att, att, query, key, value)
        for got, want in zip((out, att, *grads), expected, strict=True):
            _assert_close(got, want, torch.float64)


@pytest.mark.parametrize("path", ["fast", "portable"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided"])
def test_gradients_come_back_in_the_inputs_layouts(layout, dtype, path):
    """The backward reads grad_out through its strides and writes each gradient in
    the layout of its input (what ``empty_like`` gives, as the fake kernel says),
    so autograd has nothing to copy; values checked against float64."""
    shape = (2, 8, 21, 19, 37)
    query, key, value = _inputs(shape, dtype)
    grad_out = torch.randn(2, 21, 19, 37).to(dtype)
    if layout == "channels_last":
        query, value, grad_out = (
            t.contiguous(memory_format=torch.channels_last) for t in (query, value, grad_out)
        )
    elif layout == "strided":  # every stride odd: a crop of bigger tensors
        value = torch.randn(2, 42, 19, 40).to(dtype)[:, ::2, :, 1:38]
        grad_out = torch.randn(2, 21, 21, 37).to(dtype)[:, :, 1:20]
        key = torch.randn(2, 8, 37, 19).to(dtype).transpose(2, 3)
    grad_att = torch.randn(2, 19, 37, 55).to(dtype)
    expected = _reference_with_grads(query, key, value, grad_out, grad_att)
    _, att = FORWARD[path](query, key, value)
    grads = BACKWARD[path](grad_out, grad_att, att, query, key, value)
    for grad, inp, want in zip(grads, (query, key, value), expected[2:], strict=True):
        assert grad.stride() == torch.empty_like(inp).stride()
        _assert_close(grad, want, dtype, scale=max(1.0, want.abs().max().item()))


def test_same_bits_on_any_number_of_threads():
    """Each output element is computed by the same arithmetic however the lines
    (and the backward's column groups) are split between threads: 1, 2 and 3
    threads give identical bits (and the per-thread scratch is indexed right)."""
    query, key, value = _inputs((2, 8, 21, 19, 37), torch.float32)
    grad_out = torch.randn(2, 21, 19, 37)
    grad_att = torch.randn(2, 19, 37, 55)
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            out, att = FORWARD["fast"](query, key, value)
            grads = BACKWARD["fast"](grad_out, grad_att, att, query, key, value)
            results.append((out, att, *grads))
    finally:
        torch.set_num_threads(threads)
    for other in results[1:]:
        for a, b in zip(results[0], other, strict=True):
            assert torch.equal(a, b)


def test_phase_clocks_count_only_when_switched_on():
    """The per-phase clocks (csrc/cca_cpu_phases.h) stay at zero until switched on, then
    charge each of the operator's phases, forward and backward, and restart at every read."""
    clocks = torch.ops.ccnet_edu.cpu_phase_times
    query, key, value = _inputs((2, 8, 21, 19, 37), torch.float32)
    grad_out = torch.randn(2, 21, 19, 37)

    def run():
        out, att = FORWARD["fast"](query, key, value)
        BACKWARD["fast"](grad_out, None, att, query, key, value)

    clocks(False)
    run()
    times, names = clocks(True)
    assert len(names) == len(times) == len(set(names)) and not times.any()
    run()
    times, names = clocks(False)
    spent = dict(zip(names, times.tolist(), strict=True))
    assert all(t > 0 for t in spent.values()), spent
    for direction in ("forward", "backward"):
        sweeps = spent[f"{direction}: wall time of the sweeps (calling thread)"]
        assert spent[f"{direction}: wall time of the call (calling thread)"] >= sweeps
    assert not clocks(False)[0].any()


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided", "channels_last_crop"])
def test_float32_softmax_and_value_layouts(layout):
    """float32 fast path: the vectorised softmax (8 lanes + a tail of L % 8 energies,
    large energies, exp underflow to ~0) and the value read in place (any value whose
    channels are contiguous, a crop of a channels-last tensor too), transposed row
    by row from NCHW, or through arbitrary strides, all against float64."""
    query, key, value = _inputs((2, 6, 20, 9, 12), torch.float64)  # L = 20: 2 x 8 + 4
    query, key = query * 4, key * 4  # energies of order +-100: many weights underflow
    if layout == "channels_last":
        value = value.contiguous(memory_format=torch.channels_last)
    elif layout == "strided":
        value = torch.randn(2, 40, 12, 9, dtype=torch.float64)[:, ::2].transpose(2, 3)
    q, k, v = (t.float() for t in (query, key, value))
    if layout == "channels_last_crop":  # channel stride 1, pixel strides of a bigger map
        v = torch.randn(2, 11, 14, 23)[:, 1:10, 1:13, :20].permute(0, 3, 1, 2)
        assert v.shape == value.shape and v.stride(1) == 1
    assert v.is_contiguous(memory_format=torch.channels_last) == (layout == "channels_last")
    ref_out, ref_att = Fn.criss_cross_attention_reference(q.double(), k.double(), v.double())
    out, att = torch.ops.ccnet_edu.criss_cross_attention(q, k, v)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert torch.isfinite(att).all() and (att >= 0).all()
    torch.testing.assert_close(att.double(), ref_att, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(out.double(), ref_out, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(att.sum(-1), torch.ones_like(att[..., 0]), rtol=0, atol=1e-5)


def test_autograd_through_registered_formula():
    """``ops.criss_cross_attention`` differentiates through ``register_autograd``."""
    query, key, value = (t.requires_grad_() for t in _inputs((2, 3, 6, 4, 7), torch.float64))
    grad_out = torch.randn_like(value)
    out, att = ops.criss_cross_attention(query, key, value)
    grads = torch.autograd.grad((out * grad_out).sum() + att[..., 0].sum(), (query, key, value))
    ref_out, ref_att = Fn.criss_cross_attention_reference(query, key, value)
    loss = (ref_out * grad_out).sum() + ref_att[..., 0].sum()
    for grad, want in zip(grads, torch.autograd.grad(loss, (query, key, value)), strict=True):
        torch.testing.assert_close(grad, want)


def test_gradcheck_float64():
    """Numerical vs analytical Jacobian of both outputs, in float64."""
    query, key, value = (t.requires_grad_() for t in _inputs((2, 3, 4, 3, 5), torch.float64))
    assert torch.autograd.gradcheck(ops.criss_cross_attention, (query, key, value))


@pytest.mark.parametrize("output", [0, 1], ids=["out only", "attention only"])
def test_gradcheck_one_output_unused(output):
    """The unused output's gradient reaches the backward as None, not as zeros
    (``set_materialize_grads(False)``): both cases still differentiate right."""
    query, key, value = (t.requires_grad_() for t in _inputs((2, 3, 4, 3, 5), torch.float64))
    assert torch.autograd.gradcheck(
        lambda q, k, v: ops.criss_cross_attention(q, k, v)[output], (query, key, value)
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_opcheck(dtype):
    """Schema, fake kernel, autograd registration, AOT dispatch (torch.library.opcheck)."""
    for shape in [(2, 3, 5, 4, 6), (1, 2, 3, 1, 5)]:
        query, key, value = (t.requires_grad_() for t in _inputs(shape, dtype))
        torch.library.opcheck(
            torch.ops.ccnet_edu.criss_cross_attention.default, (query, key, value)
        )


@pytest.mark.parametrize("path", ["fast", "portable"])
def test_every_output_element_is_written(path):
    """Uninitialised memory is filled with NaN (deterministic mode): no NaN may survive."""
    torch.use_deterministic_algorithms(True)
    try:
        assert torch.empty(8).isnan().all(), "poisoning is not active: the test would prove nothing"
        shape = (2, 3, 21, 5, 7)  # C = 21: a full register tile of 16 channels plus a tail
        query, key, value = _inputs(shape, torch.float32)
        out, att = FORWARD[path](query, key, value)
        grad_out = torch.randn_like(value)
        grads = BACKWARD[path](grad_out, None, att, query, key, value)
    finally:
        torch.use_deterministic_algorithms(False)
    for tensor in (out, att, *grads):
        assert torch.isfinite(tensor).all()


def test_torch_compile_matches_eager():
    """The op inside ``torch.compile`` (fake kernel + autograd), forward and backward."""

    def block(query, key, value, gamma):
        out, att = ops.criss_cross_attention(query, key, value)
        return gamma * out + value, att.amax(dim=-1)

    inputs = [t.requires_grad_() for t in _inputs((2, 4, 6, 5, 7), torch.float32)]
    gamma = torch.tensor(0.7, requires_grad=True)
    compiled = torch.compile(block, backend="aot_eager", fullgraph=True)
    results = []
    for fn in (block, compiled):
        y, peak = fn(*inputs, gamma)
        grads = torch.autograd.grad((y * y).sum() + peak.sum(), (*inputs, gamma))
        results.append((y, peak, *grads))
    for eager, comp in zip(*results, strict=True):
        torch.testing.assert_close(comp, eager)


def test_meta_device_shapes():
    query, key, value = _inputs((2, 3, 8, 5, 6), torch.float32, device="meta")
    out, att = ops.criss_cross_attention(query, key, value)
    assert out.device.type == "meta" and out.shape == (2, 8, 5, 6)
    assert att.shape == (2, 5, 6, 10)


@pytest.mark.parametrize("baseline", [baselines.einsum_criss_cross, baselines.bmm_criss_cross])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_baselines_match_reference(baseline, shape):
    """mmcv's einsum and CCNet's bmm formulations compute the same attention."""
    query, key, value = _inputs(shape, torch.float64)
    out, padded = baseline(query, key, value)
    ref_out, ref_att = Fn.criss_cross_attention_reference(query, key, value)
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(Fn.attention_from_padded(padded), ref_att)


def test_einsum_baseline_adds_the_row_half_in_place_as_mmcv():
    """mmcv (a8073c7, ``cc_attention.py``) writes ``out += einsum(...)``: no third (B, C, H, W)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Ops(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.names = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.names.append(func.__name__)
            return func(*args, **(kwargs or {}))

    query, key, value = _inputs((1, 2, 3, 5, 4), torch.float32)
    with Ops() as log:
        baselines.einsum_criss_cross(query, key, value)
    adds = [name for name in log.names if name.startswith("add")]
    assert adds.count("add_.Tensor") == 1, adds  # the row half onto the column half
    assert "add.Tensor" in adds  # the -inf diagonal onto the column energies, out of place


def test_functional_impl_selection():
    query, key, value = _inputs((2, 3, 5, 4, 6), torch.float64)
    want, want_att = Fn.criss_cross_attention(query, key, value, return_attention=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # CPU operator available: "auto" must not warn
        for impl in ("fused", "auto"):
            got, got_att = Fn.criss_cross_attention(
                query, key, value, return_attention=True, impl=impl
            )
            torch.testing.assert_close(got, want)
            torch.testing.assert_close(got_att, want_att)


def test_fallback_warns_once_and_fused_raises(monkeypatch):
    """No operator: "auto" warns once and uses the reference, "fused" raises."""
    monkeypatch.setitem(ops._state, "cpu", ops.BuildError("no C++ compiler found"))
    monkeypatch.setattr(ops, "_warned", set())
    query, key, value = _inputs((1, 2, 3, 4, 5), torch.float64)
    with pytest.warns(RuntimeWarning, match="no C\\+\\+ compiler found"):
        out = Fn.criss_cross_attention(query, key, value, impl="auto")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the second time: silent
        Fn.criss_cross_attention(query, key, value, impl="auto")
    torch.testing.assert_close(out, Fn.criss_cross_attention(query, key, value))
    with pytest.raises(RuntimeError, match="not available on cpu: no C\\+\\+ compiler"):
        Fn.criss_cross_attention(query, key, value, impl="fused")


def test_bad_input_is_rejected():
    query, key, value = _inputs((1, 2, 3, 4, 5), torch.float32)
    with pytest.raises(ValueError, match="query and key"):
        ops.criss_cross_attention(query, key[:, :1], value)
    with pytest.raises(TypeError, match="dtype"):
        ops.criss_cross_attention(query, key, value.double())
    with pytest.raises(RuntimeError, match="attention must be"):
        torch.ops.ccnet_edu.criss_cross_attention_backward(
            value, None, torch.zeros(1, 4, 5, 3), query, key, value
        )


def _backward_args(dtype=torch.float32):
    query, key, value = _inputs((2, 2, 3, 4, 5), dtype)
    out, attention = torch.ops.ccnet_edu.criss_cross_attention(query, key, value)
    grad_attention = torch.randn_like(attention)
    return [torch.randn_like(value), grad_attention, attention, query, key, value]


# (what to change in the backward's arguments, the message it must raise)
BAD_BACKWARD = {
    "grad_attention of shape (3,)": (
        lambda a: a.__setitem__(1, torch.zeros(3)),
        "grad_attention must be \\(B, H, W, H\\+W-1\\)",
    ),
    "grad_attention one slot short": (
        lambda a: a.__setitem__(1, a[1][..., :-1]),
        "grad_attention must be",
    ),
    "grad_attention float64": (
        lambda a: a.__setitem__(1, a[1].double()),
        "grad_attention must have the dtype",
    ),
    "grad_attention on meta": (
        lambda a: a.__setitem__(1, a[1].to("meta")),
        "grad_attention must be on the device",
    ),
    "grad_out on meta": (
        lambda a: a.__setitem__(0, a[0].to("meta")),
        "grad_out must be on the device",
    ),
    "attention on meta": (
        lambda a: a.__setitem__(2, a[2].to("meta")),
        "attention must be on the device",
    ),
    "attention float64": (
        lambda a: a.__setitem__(2, a[2].double()),
        "attention must have the dtype",
    ),
    "grad_out float64": (lambda a: a.__setitem__(0, a[0].double()), "grad_out must have the dtype"),
}


@pytest.mark.parametrize("path", ["fast", "portable"])
@pytest.mark.parametrize("case", list(BAD_BACKWARD))
def test_registered_backward_checks_its_inputs(case, path):
    """Direct calls of the registered backward validate every input before reading it
    (a short grad_attention was once read out of bounds; a meta grad_out once returned
    uninitialised gradients)."""
    change, message = BAD_BACKWARD[case]
    args = _backward_args()
    change(args)
    with pytest.raises(RuntimeError, match=message):
        BACKWARD[path](*args)


@pytest.mark.parametrize("path", ["fast", "portable"])
def test_registered_forward_checks_its_inputs(path):
    query, key, value = (t.round().long() for t in _inputs((1, 2, 3, 4, 5), torch.float32))
    with pytest.raises(
        RuntimeError, match="must be float16, bfloat16, float32 or float64, got Long"
    ):
        FORWARD[path](query, key, value)
    empty = torch.zeros(1, 2, 0, 0)
    with pytest.raises(RuntimeError, match="H >= 1 and W >= 1, got H = 0, W = 0"):
        FORWARD[path](empty, empty, torch.zeros(1, 3, 0, 0))
    query, key, value = _inputs((1, 2, 3, 4, 5), torch.float32)
    with pytest.raises(RuntimeError, match="value must be on the device of query"):
        FORWARD[path](query, key, value.to("meta"))


def test_module_with_fused_impl():
    """CrissCrossAttention(impl="fused") == impl="reference" with gamma != 0."""
    from ccnet_edu.cca import CrissCrossAttention

    reference = CrissCrossAttention(16, impl="reference").double()
    with torch.no_grad():
        reference.gamma.fill_(0.8)
    fused = CrissCrossAttention(16, impl="fused").double()
    fused.load_state_dict(reference.state_dict())
    x = torch.randn(2, 16, 5, 7, dtype=torch.float64, requires_grad=True)
    y_ref = reference(x)
    y = fused(x)
    torch.testing.assert_close(y, y_ref)
    (g_ref,) = torch.autograd.grad(y_ref.square().sum(), x)
    (g,) = torch.autograd.grad(y.square().sum(), x)
    torch.testing.assert_close(g, g_ref)


def test_benchmark_checks_before_timing(monkeypatch):
    """The benchmark compares every implementation's out, attention map and gradients with
    the float64 reference before it times anything: a wrong gradient is refused."""
    from ccnet_edu.ops import benchmark

    rows = benchmark.run([benchmark.Case(1, 4, 8, 5, 6)], repeats=1, warmup=0, progress=False)
    assert {row.impl for row in rows} == set(benchmark.IMPLS)
    assert all(row.max_error < 1e-4 for row in rows)

    implementations = benchmark._implementations()
    bmm = implementations["bmm"]

    def wrong_value_gradient(query, key, value):
        out, attention = bmm(query, key, value)
        return out + (value - value.detach()), attention  # right out, grad value off by one

    implementations["bmm"] = wrong_value_gradient
    monkeypatch.setattr(benchmark, "_implementations", lambda: implementations)
    with pytest.raises(AssertionError, match="bmm differs from the reference.*grad value"):
        benchmark.run([benchmark.Case(1, 4, 8, 5, 6)], repeats=1, warmup=0, progress=False)


def test_build_command_prints_library():
    env = dict(os.environ, PYTHONWARNINGS="error")
    result = subprocess.run(
        [sys.executable, "-m", "ccnet_edu.ops", "build", "--no-cuda"],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr
    assert "ccnet_edu_cca_cpu.so" in result.stdout
    assert result.stderr == ""


def test_wheel_install_builds_from_its_own_sources(tmp_path):
    """A wheel (a non-editable install has no <repo>/csrc) carries csrc/ byte for
    byte to share/ccnet_edu/csrc under the install prefix, and the installed
    package's csrc_dir() finds them there."""
    root = Path(__file__).resolve().parents[1]
    source = tmp_path / "src"  # build a copy: setuptools writes build/ and egg-info in place
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "ccnet_edu", "csrc"):
        copy = shutil.copytree if (root / name).is_dir() else shutil.copy
        copy(root / name, source / name)
    pip = [sys.executable, "-m", "pip", "-q"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path), str(source)],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("ccnet_edu-*.whl")
    sources = sorted(p for p in (root / "csrc").iterdir() if p.suffix in (".h", ".cpp", ".cu"))
    assert {p.name for p in sources} >= {"cca_common.h", "cca_cpu.cpp", "cca_cuda.cu"}
    with zipfile.ZipFile(wheel) as archive:
        data = [n for n in archive.namelist() if "/share/ccnet_edu/csrc/" in n]
        assert sorted(n.rsplit("/", 1)[1] for n in data) == [p.name for p in sources]
        for name in data:
            assert archive.read(name) == (root / "csrc" / name.rsplit("/", 1)[1]).read_bytes()

    prefix = tmp_path / "prefix"
    subprocess.run(
        # --ignore-installed: else pip uninstalls this environment's (editable) ccnet-edu first
        [*pip, "install", "--no-deps", "--no-index", "--ignore-installed", "--prefix", str(prefix)]
        + [str(wheel)],
        check=True,
        capture_output=True,
    )
    (site,) = prefix.glob("lib/python*/site-packages")
    found = subprocess.run(
        [sys.executable, "-c", "import ccnet_edu.ops as o; print(o.__file__); print(o.csrc_dir())"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(site)},
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    assert Path(found[0]).is_relative_to(site)  # the installed copy, not this checkout
    assert Path(found[1]) == (prefix / "share" / "ccnet_edu" / "csrc").resolve()
    assert sorted(p.name for p in Path(found[1]).iterdir()) == [p.name for p in sources]
    # and this environment still imports the checkout (the install touched nothing here)
    here = subprocess.run(
        [sys.executable, "-c", "import ccnet_edu; print(ccnet_edu.__file__)"],
        cwd=tmp_path,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    assert Path(here).is_relative_to(root)


@pytest.mark.skipif(ops.find_nvcc() is None, reason="nvcc not found: cannot build the CUDA kernels")
@pytest.mark.skipif(
    ops._build.sanitized(), reason="the sanitizer run builds the CPU library only (no nvcc)"
)
def test_cuda_extension_compiles_and_links():
    """nvcc compiles csrc/cca_cuda.cu and the library links and loads (no GPU needed)."""
    info = ops.load_cuda()
    assert info.library.exists()
    assert torch._C._dispatch_has_kernel_for_dispatch_key(
        "ccnet_edu::criss_cross_attention", "CUDA"
    )
    assert torch._C._dispatch_has_kernel_for_dispatch_key(
        "ccnet_edu::criss_cross_attention_backward", "CUDA"
    )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_gpu_matches_reference(shape, dtype):
    ops.load(cuda=True)
    query, key, value = _inputs(shape, dtype, device="cuda")
    batch, _, channels, height, width = shape
    grad_out = torch.randn(batch, channels, height, width, device="cuda").to(dtype)
    grad_att = torch.randn(batch, height, width, height + width - 1, device="cuda").to(dtype)
    expected = _reference_with_grads(query, key, value, grad_out, grad_att)
    out, att = torch.ops.ccnet_edu.criss_cross_attention(query, key, value)
    _assert_close(out, expected[0], dtype)
    _assert_close(att, expected[1], dtype)
    grads = torch.ops.ccnet_edu.criss_cross_attention_backward(
        grad_out, grad_att, att, query, key, value
    )
    for grad, want in zip(grads, expected[2:], strict=True):
        _assert_close(grad, want, dtype, scale=max(1.0, want.abs().max().item()))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")
def test_gpu_gradcheck_and_opcheck():
    ops.load(cuda=True)
    query, key, value = (
        t.requires_grad_() for t in _inputs((2, 3, 4, 3, 5), torch.float64, device="cuda")
    )
    assert torch.autograd.gradcheck(ops.criss_cross_attention, (query, key, value))
    torch.library.opcheck(torch.ops.ccnet_edu.criss_cross_attention.default, (query, key, value))


def test_auto_uses_only_what_was_measured_faster(monkeypatch):
    """impl="auto" picks the fused operator only on device types where it was measured
    faster than the reference; on CUDA (never timed on a GPU) it quietly uses the reference."""
    from types import SimpleNamespace

    assert "cuda" not in ops.MEASURED_FASTER
    monkeypatch.setattr(ops, "_warned", set())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a choice, not a failure: no warning
        assert not ops.usable_for(SimpleNamespace(device=torch.device("cuda")))
        assert ops.usable_for(torch.zeros(1))


def test_auto_uses_only_cpu_builds_measured_faster(monkeypatch):
    """On the CPU, "auto" picks the fused operator only for a library built for an ISA
    level measured faster than einsum (the x86-64 build was measured slower)."""
    ops.load(cuda=False)
    info = ops._state["cpu"]
    monkeypatch.setattr(ops, "_warned", set())
    monkeypatch.setitem(info.extra, "isa", "x86-64-v3")
    assert ops.usable_for(torch.zeros(1))
    monkeypatch.setitem(info.extra, "isa", "x86-64")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a choice, not a failure: no warning
        assert not ops.usable_for(torch.zeros(1))
    from ccnet_edu import functional as Fn

    query, key, value = torch.randn(1, 2, 3, 4), torch.randn(1, 2, 3, 4), torch.randn(1, 3, 3, 4)
    out, _ = Fn.criss_cross_attention(query, key, value, return_attention=True)  # "auto"
    expected, _ = Fn.criss_cross_attention_reference(query, key, value)
    assert torch.equal(out, expected)
