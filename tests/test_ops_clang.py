"""The operator built by a second compiler: Debian's clang, which has no OpenMP.

It stands in for Apple's clang (no libomp either): the build must find that ``-fopenmp``
does not work, build without it (``at::parallel_for`` then runs inline, on one thread),
pass its self-test and agree with the readable reference. The build goes into its own
cache directory, in a subprocess, so it never touches the session's library.

``.ci/run`` installs clang (without libomp) and sets ``CCNET_EDU_CLANG_REQUIRED=1``; there,
and wherever ``CI`` is ``true``, a missing ``clang++`` is a failure instead of a skip.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ccnet_edu.ops import _build

ROOT = Path(__file__).resolve().parents[1]
REQUIRED = os.environ.get("CCNET_EDU_CLANG_REQUIRED", "") not in ("", "0") or os.environ.get(
    "CI", ""
).lower() in ("true", "1")

# Fused against the reference, forward and backward (both outputs, with an attention
# gradient), float32 and float64, odd non-square shapes, batch 2.
CLANG_BUILD = """
    import torch
    from ccnet_edu import ops
    from ccnet_edu.functional import criss_cross_attention_reference as reference

    (info,) = ops.load(cuda=False)
    ops.self_test("cpu")
    print("openmp:", info.openmp)
    print("threading:", info.threading)
    print("build seconds:", round(info.seconds, 1))
    generator = torch.Generator().manual_seed(0)
    for batch, qk, channels, height, width in ((2, 3, 5, 7, 5), (2, 4, 6, 9, 4)):
        sizes = [(batch, qk, height, width)] * 2 + [(batch, channels, height, width)] * 2
        sizes.append((batch, height, width, height + width - 1))
        tensors = [torch.randn(s, dtype=torch.float64, generator=generator) for s in sizes]
        results = {}
        for name, fn, dtype in (
            ("expected", reference, torch.float64),
            ("float64", torch.ops.ccnet_edu.criss_cross_attention, torch.float64),
            ("float32", torch.ops.ccnet_edu.criss_cross_attention, torch.float32),
        ):
            q, k, v, grad_out, grad_att = (t.to(dtype) for t in tensors)
            leaves = [t.clone().requires_grad_() for t in (q, k, v)]
            out, attention = fn(*leaves)
            torch.autograd.backward((out, attention), (grad_out, grad_att))
            results[name] = [t.detach().double() for t in (out, attention)]
            results[name] += [t.grad.double() for t in leaves]
        for dtype, (rtol, atol) in (("float64", (1e-10, 1e-12)), ("float32", (1e-4, 1e-5))):
            torch.testing.assert_close(results[dtype], results["expected"], rtol=rtol, atol=atol)
        print("matches the reference:", sizes[0], sizes[2])
"""


@pytest.mark.skipif(_build.sanitized(), reason="the sanitizer run builds with the default compiler")
def test_the_operator_builds_and_agrees_with_clang_without_openmp(tmp_path):
    if shutil.which("clang++") is None:
        reason = "clang++ not installed (Debian package: clang)"
        if REQUIRED:
            pytest.fail(f"{reason}; CI requires it (CCNET_EDU_CLANG_REQUIRED or CI is set)")
        pytest.skip(reason)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CCNET_EDU_EXTRA_")}
    env.update(CXX="clang++", CCNET_EDU_BUILD_DIR=str(tmp_path / "cache"), PYTHONPATH=str(ROOT))
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(CLANG_BUILD)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout + result.stderr[-4000:]
    print(result.stdout)
    assert result.stdout.count("matches the reference:") == 2
    has_openmp = _build.compiler_has_openmp("clang++")
    assert f"openmp: {has_openmp}" in result.stdout
    if REQUIRED:  # CI installs clang without libomp: this is the build without OpenMP
        assert not has_openmp, "CI's clang++ has OpenMP: install it without libomp"
        assert "runs its loop inline, on one thread" in result.stdout
