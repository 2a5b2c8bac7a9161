"""The issue's command-line examples, end to end: refused up front, one line, exit code 2.

* ``python -m ccnet_edu.train`` with sizes that would not fit in memory (a batch of 1e12
  images, a backbone 1e12 wide), a seed torch cannot take, 1e12 threads, a device that is
  not a CPU or an NVIDIA GPU: each a usage error before anything is built (the other
  options' cases, ``--device mps`` among them, run in-process in the table);
* ``ops bench --csv /dev/full`` and ``benchmarks/line_products.py --out <a directory>``
  fail before the benchmark (or the compiler) runs, not after.

The bad-input table (``tests/test_bad_input.py``) holds a case for every option; these
run the real commands in a subprocess, where a traceback would show.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ccnet_edu.ops import __main__ as ops_cli
from ccnet_edu.ops import benchmark

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "argv,names",
    [
        (["--head", "fcn", "--steps", "1", "--batch-size", "1000000000000"], "--batch-size"),
        (["--width", "1000000000000"], "--width"),
        (["--seed", "1000000000000"], "--seed"),
        (["--threads", "1000000000000"], "--threads"),
        (["--device", "meta"], "--device"),
    ],
)
def test_train_refuses_work_it_cannot_do_in_one_line(tmp_path, argv, names):
    result = subprocess.run(
        [sys.executable, "-m", "ccnet_edu.train", *argv, "--save", str(tmp_path / "m.pt")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=300,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.count("\n") == 1 and names in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "m.pt").exists()


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_ops_bench_csv_to_a_device_fails_before_the_benchmark(monkeypatch, capsys):
    def never(*args, **kwargs):
        raise AssertionError("the benchmark ran before the output path was checked")

    monkeypatch.setattr(benchmark, "run", never)
    monkeypatch.setattr(benchmark, "matmul_gflops", never)
    with pytest.raises(SystemExit) as info:
        ops_cli.main(["bench", "--quick", "--csv", "/dev/full"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "--csv '/dev/full' is not a regular file" in err and err.count("\n") == 1, err


def test_line_products_out_a_directory_fails_before_compiling(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "line_products.py"), "--quick",
         "--out", str(tmp_path)],
        capture_output=True, text=True, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr[-2000:]
    # torch's cpp_extension may warn on import (no CUDA runtime); the error is one line
    last = result.stderr.strip().splitlines()[-1]
    assert "--out" in last and "is a directory" in last, result.stderr
    assert "Traceback" not in result.stderr
