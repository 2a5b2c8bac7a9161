"""The CPU operator on aarch64, checked from an x86-64 machine.

On a CPU other than x86-64 the library builds its ``portable`` level: the kernels of
``csrc/cca_cpu_kernels.h`` over the 16-byte GCC vector types of ``csrc/cca_simd.h``
(NEON on aarch64). Without an aarch64 machine two things can still be checked:

* the operator's C++ source compiles for aarch64 against this torch's headers
  (``aarch64-linux-gnu-g++``, the flags of the ``portable`` level);
* the kernels, which need no torch, cross-compiled and run under ``qemu-aarch64``
  against plain double-precision loops (``tests/native/kernels_check.cpp``).

Linking and running the registered operator needs an aarch64 torch and is not checked
here. Each test is skipped, naming what is missing, where the cross compiler or qemu
is not installed (``.ci/run`` installs both).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import torch.utils.cpp_extension as cpp_extension

from ccnet_edu.ops import _build

ROOT = Path(__file__).resolve().parents[1]
CXX = "aarch64-linux-gnu-g++"
QEMU = "qemu-aarch64"


def _need(*tools: str) -> None:
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        debian = "g++-aarch64-linux-gnu, qemu-user"
        pytest.skip(f"not installed: {', '.join(missing)} (Debian packages: {debian})")


def test_operator_source_compiles_for_aarch64(tmp_path):
    _need(CXX)
    includes = [f"-I{path}" for path in cpp_extension.include_paths()]
    cflags, _ = _build.cpu_flags("portable")
    source = _build.csrc_dir() / "cca_cpu.cpp"
    command = [CXX, "-std=c++20", "-fPIC", *cflags, *includes, f"-I{_build.csrc_dir()}",
               "-c", str(source), "-o", str(tmp_path / "cca_cpu.o")]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]


def test_kernels_match_double_loops_on_aarch64(tmp_path):
    _need(CXX, QEMU)
    binary = tmp_path / "kernels_check"
    build = [CXX, "-std=c++20", "-O2", "-static", f"-I{_build.csrc_dir()}",
             str(ROOT / "tests" / "native" / "kernels_check.cpp"), "-o", str(binary)]  # fmt: skip
    result = subprocess.run(build, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    run = subprocess.run([QEMU, str(binary)], capture_output=True, text=True, timeout=600)
    lines = run.stdout.splitlines()
    assert lines[0] == "instructions: portable C++", lines[:1]
    failed = [line for line in lines if line.startswith("FAIL")]
    assert run.returncode == 0 and not failed, "\n".join(failed or lines[-5:])
    assert sum(line.startswith("ok") for line in lines) == 182  # every check ran
