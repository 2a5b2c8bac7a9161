"""``torch.compile(fullgraph=True)`` of every criss-cross module and impl, in fresh processes.

The operator is built and loaded on its first use. Under ``torch.compile`` that first use
happens while Dynamo traces: the availability check must then run eagerly (Dynamo calls it
and puts its answer into the graph as a constant) instead of being traced, or the build's
own calls stop the trace (``torch.* op returned non-Tensor``). So each process compiles a
fused module *before* anything else has loaded the operator, then the other cases: every
impl; the single module with static and dynamic shapes, the recurrent one with dynamic
shapes and the head (BatchNorm, eval) with static ones; under aot_eager (forward and
backward) and inductor (few cases: it compiles slowly).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ccnet_edu.ops import _build

ROOT = Path(__file__).resolve().parents[1]

CASES = """
    import sys
    import warnings

    import torch

    from ccnet_edu.cca import CrissCrossAttention, RCCAHead, RecurrentCrissCrossAttention

    warnings.simplefilter("error")  # e.g. a graph break reported as a warning
    backend = sys.argv[1]
    first_impl = sys.argv[2]
    torch.manual_seed(0)

    def module(kind, impl):
        if kind == "cca":
            m = CrissCrossAttention(16, impl=impl)
        elif kind == "recurrent":
            m = RecurrentCrissCrossAttention(16, recurrence=2, impl=impl)
        else:
            m = RCCAHead(16, num_classes=3, recurrence=2, out_channels=8, impl=impl)
        m = m.double().eval()
        with torch.no_grad():
            for p in m.parameters():
                p.normal_(0, 0.5)  # gamma != 0, so attention reaches the output
        return m

    def case(kind, impl, dynamic, backward):
        eager = module(kind, impl)
        compiled = torch.compile(eager, fullgraph=True, backend=backend, dynamic=dynamic)
        for shape in [(2, 16, 5, 7), (3, 16, 6, 4)] if dynamic else [(2, 16, 5, 7)]:
            x = torch.randn(shape, dtype=torch.float64)
            xs = [x.clone().requires_grad_(backward) for _ in range(2)]
            outs = [compiled(xs[0]), eager(xs[1])]
            torch.testing.assert_close(outs[0], outs[1], rtol=1e-9, atol=1e-11)
            if backward:
                for out in outs:
                    out.square().sum().backward()
                torch.testing.assert_close(xs[0].grad, xs[1].grad, rtol=1e-9, atol=1e-11)
        print(backend, kind, impl, "dynamic" if dynamic else "static", "ok", flush=True)

    # First: the operator has not been loaded in this process yet.
    case("cca", first_impl, False, backend == "aot_eager")
    if backend == "aot_eager":
        kinds = (("cca", False), ("cca", True), ("recurrent", True), ("head", False))
        for impl in ("fused", "auto", "reference", "flex"):
            for kind, dynamic in kinds:
                case(kind, impl, dynamic, True)
    else:
        case("cca", "fused", True, False)
        case("recurrent", "fused", False, False)
"""


@pytest.mark.skipif(_build.sanitized(), reason="inductor's own compiled code is not sanitized")
@pytest.mark.parametrize("backend, first_impl", [("aot_eager", "fused"), ("inductor", "auto")])
def test_compile_fullgraph_in_a_fresh_process(tmp_path, backend, first_impl):
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor"),
    }
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(CASES), backend, first_impl],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout + result.stderr[-6000:]
    lines = result.stdout.splitlines()
    assert lines[0] == f"{backend} cca {first_impl} static ok"
    assert len(lines) == (17 if backend == "aot_eager" else 3), result.stdout
