"""Every ISA variant of the CPU operator this machine can run, against the reference and
against each other.

The library is built for one ISA level per process (``ccnet_edu.ops._build.ISA_LEVELS``:
x86-64-v4 = AVX-512, x86-64-v3 = AVX2, x86-64, portable), so each variant other than the
one this process loaded runs in a subprocess with ``CCNET_EDU_CPU_ISA`` set and its own
build directory (one per test session, so each variant is built once), on inputs this
process wrote.  The variants are

* checked against the float64 reference on the shape/dtype matrix of ``test_ops.py``,
  plus layouts and sizes that give both vector widths full and partial tiles;
* compared with each other bit for bit where they promise it: x86-64-v3 and x86-64-v4
  compute every output with the same chain of fused multiply-adds and the softmax in the
  same order (the book's stored outputs are checked on AVX2 and on AVX-512 machines).

A level this CPU cannot run is skipped, with the levels it does run as the reason.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from test_ops import DTYPES, SHAPES, TOL, _reference_with_grads

from ccnet_edu import ops
from ccnet_edu.ops import _build

ROOT = Path(__file__).resolve().parents[1]
NAMES = ("out", "attention", "grad_query", "grad_key", "grad_value")
# Pairs of levels whose results must be identical bit for bit.
IDENTICAL = [("x86-64-v4", "x86-64-v3")]

pytestmark = pytest.mark.skipif(
    _build.sanitized(), reason="builds its own libraries; run once, in the plain unit run"
)


def _cases() -> list[tuple[str, list[torch.Tensor | None]]]:
    """(name, [query, key, value, grad_out, grad_attention]) for every case, seeded."""
    generator = torch.Generator().manual_seed(0)

    def randn(*size, dtype=torch.float32):
        return torch.randn(*size, generator=generator).to(dtype)

    cases = []
    # test_ops' matrix, and sizes where a line has several 6-row tiles plus a rest, C
    # spans several column blocks of either width plus a partial vector, and L = H + W - 1
    # ends in a partial group of 16 softmax lanes; and maps of H * W = 2304 pixels, where a
    # row of the NCHW dO has its channels a multiple of 1 KiB apart and the row's
    # dA = dO V^T spans more than eight column blocks of AVX2 (W = 144) or of both widths
    # (W = 576), so line_product first copies that dO row into dense rows.
    shapes = [
        *SHAPES, (2, 16, 70, 23, 45), (1, 8, 130, 13, 40), (1, 4, 9, 16, 144), (1, 2, 5, 4, 576)
    ]  # fmt: skip
    for batch, qk, channels, height, width in shapes:
        for dtype in DTYPES:
            tensors = [
                randn(batch, qk, height, width, dtype=dtype),
                randn(batch, qk, height, width, dtype=dtype),
                randn(batch, channels, height, width, dtype=dtype),
                randn(batch, channels, height, width, dtype=dtype),
                randn(batch, height, width, height + width - 1, dtype=dtype),
            ]
            cases.append((f"{(batch, qk, channels, height, width)} {dtype}", tensors))
    # Layouts (test_ops' layout tests): channels-last, crops with odd strides, no
    # grad_attention.
    for dtype in (torch.float32, torch.float64):
        q, k, v, g = (randn(2, c, 19, 37, dtype=dtype) for c in (8, 8, 21, 21))
        cl = [t.contiguous(memory_format=torch.channels_last) for t in (q, k, v, g)]
        cases.append((f"channels_last {dtype}", [*cl, randn(2, 19, 37, 55, dtype=dtype)]))
        strided = [
            q,
            randn(2, 8, 37, 19, dtype=dtype).transpose(2, 3),
            randn(2, 42, 19, 40, dtype=dtype)[:, ::2, :, 1:38],
            randn(2, 21, 21, 37, dtype=dtype)[:, :, 1:20],
        ]
        cases.append((f"strided {dtype}", [*strided, None]))
        # channel stride 1, the pixel strides of a bigger map
        crop = randn(2, 21, 39, 23, dtype=dtype)[:, 1:20, 1:38, 1:22].permute(0, 3, 1, 2)
        cases.append((f"channels-last crop {dtype}", [q, k, crop, g, None]))
    return cases


CASES = _cases()

# Run in a subprocess per level: the operator on every case, forward and backward,
# saved for the parent to compare.
RUN = """
    import sys
    import torch
    from ccnet_edu import ops

    (info,) = ops.load(cuda=False)
    results = []
    for name, (query, key, value, grad_out, grad_attention) in torch.load(sys.argv[1]):
        out, attention = torch.ops.ccnet_edu.criss_cross_attention(query, key, value)
        grads = torch.ops.ccnet_edu.criss_cross_attention_backward(
            grad_out, grad_attention, attention, query, key, value
        )
        results.append([out, attention, *grads])
    torch.save({"isa": info.extra["isa"], "results": results}, sys.argv[2])
"""


@pytest.fixture(scope="session")
def variants(tmp_path_factory) -> dict[str, list[list[torch.Tensor]] | str]:
    """ISA level -> the results of every case, or the reason it was not run.

    One subprocess per level, all at the same time (each build is one compiler
    process).  The level this process loaded uses its build directory (already built);
    the others share one directory for the session."""
    directory = tmp_path_factory.mktemp("isa")
    inputs = directory / "inputs.pt"
    torch.save(CASES, inputs)
    here = ops.load(cuda=False)[0].extra["isa"]
    supported = _build.supported_isas()
    found: dict[str, list[list[torch.Tensor]] | str] = {}
    running = {}
    for isa in _build.ISA_LEVELS:
        if isa not in supported:
            found[isa] = f"this CPU ({_build.platform.machine()}) runs only {supported}"
            continue
        env = {**os.environ, "PYTHONPATH": str(ROOT), "CCNET_EDU_CPU_ISA": isa}
        if isa != here:
            env["CCNET_EDU_BUILD_DIR"] = str(directory / "cache")
        output = directory / f"{isa}.pt"
        process = subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(RUN), str(inputs), str(output)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        running[isa] = (process, output)
    for isa, (process, output) in running.items():
        _, stderr = process.communicate(timeout=900)
        if process.returncode != 0:
            pytest.fail(f"the {isa} build or its run failed:\n{stderr[-3000:]}")
        found[isa] = _load(output, isa)
    return found


def _load(path: Path, isa: str) -> list[list[torch.Tensor]]:
    saved = torch.load(path)
    assert saved["isa"] == isa, f"asked for {isa}, the subprocess loaded {saved['isa']}"
    return saved["results"]


def _results(variants, isa: str) -> list[list[torch.Tensor]]:
    result = variants[isa]
    if isinstance(result, str):
        pytest.skip(f"{isa}: {result}")
    return result


@pytest.fixture(scope="session")
def expected() -> list[tuple[torch.Tensor, ...]]:
    """The float64 reference's outputs and gradients for every case."""
    results = []
    for _, (query, key, value, grad_out, grad_attention) in CASES:
        batch, _, height, width = query.shape
        if grad_attention is None:
            grad_attention = torch.zeros(batch, height, width, height + width - 1)
        results.append(_reference_with_grads(query, key, value, grad_out, grad_attention))
    return results


@pytest.mark.parametrize("isa", list(_build.ISA_LEVELS))
def test_variant_matches_reference(variants, expected, isa):
    """Outputs and gradients of one level against the float64 reference, every case."""
    results = _results(variants, isa)
    for (name, (query, *_)), got, want in zip(CASES, results, expected, strict=True):
        dtype = query.dtype
        rtol, atol = TOL[dtype]
        for label, g, e in zip(NAMES, got, want, strict=True):
            assert g.dtype == dtype and g.shape == e.shape, (isa, name, label)
            scale = max(1.0, e.abs().max().item()) if label.startswith("grad") else 1.0
            torch.testing.assert_close(
                g.double(), e.detach(), rtol=rtol, atol=atol * scale, msg=f"{isa} {name} {label}"
            )


@pytest.mark.parametrize("pair", IDENTICAL, ids="=".join)
def test_vector_widths_give_identical_bits(variants, pair):
    """AVX-512 and AVX2 builds: every output and gradient equal bit for bit, every case
    (float32, float64, and float16/bfloat16, which compute in float)."""
    first, second = (_results(variants, isa) for isa in pair)
    for (name, _), a, b in zip(CASES, first, second, strict=True):
        for label, x, y in zip(NAMES, a, b, strict=True):
            assert x.dtype == y.dtype and x.shape == y.shape
            if not torch.equal(x, y):
                difference = (x.double() - y.double()).abs().max().item()
                pytest.fail(f"{pair} differ in {label} of {name}: up to {difference:.3g}")
