"""The GPU check (``benchmarks/gpu_check.sh``) on a machine without a GPU.

The check gets one call on a GPU machine that has no network, so whatever can go wrong
without a GPU must show here: the script's syntax and arguments, a dry run of the steps
that need no GPU (environment, the sanitizer's workload, the tests collected, the timing
at tiny sizes, the report and the packing into at most 8 files), the completeness check
of the carried wheels, the per-test time limit of the test runner, and the parallel
notebook runner.  The builds and the real notebooks are left to ``--dry-run`` by hand
(minutes on two cores; ``benchmarks/gpu_notes.md``).
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import re
import subprocess
import sys
import tarfile
import textwrap
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"


def _load_gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


gpu_check = _load_gpu_check()


def test_script_parses():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


@pytest.mark.parametrize("args", [["--bogus"], ["--steps", "env,nope"], ["--steps"]])
def test_bad_arguments_exit_2(args):
    result = subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True)
    assert result.returncode == 2
    assert "usage" in result.stderr + result.stdout


def test_dry_run_of_the_fast_steps(tmp_path):
    """env, tests (collected; they skip without a GPU), sanitize and bench at tiny sizes on
    the CPU, then the report and the pack: at most 8 files, every step in the summary."""
    from ccnet_edu.ops import _build

    out, work = tmp_path / "out", tmp_path / "work"
    environment = {
        **os.environ,
        "PYTHON": sys.executable,
        "OUT": str(out),
        "GPU_CHECK_WORK": str(work),
        "GPU_CHECK_BUDGET": "400",
        # the library `make ops` built, not a fresh build (the build step is not run)
        "GPU_CHECK_BUILD_DIR": str(_build.build_dir()),
    }
    result = subprocess.run(
        ["bash", str(SCRIPT), "--dry-run", "--steps", "env,tests,sanitize,bench"],
        capture_output=True,
        text=True,
        env=environment,
        cwd=tmp_path,
        timeout=400,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    files = sorted(p for p in out.rglob("*") if p.is_file())
    assert len(files) <= 8, files
    assert all(re.fullmatch(r"[A-Za-z0-9._-]+", p.name) for p in files), files
    assert {p.name for p in files} >= {"summary.md", "gpu_check.md", "gpu_check.csv", "env.json"}
    summary = (out / "summary.md").read_text()
    for step in ("env", "tests", "memcheck", "racecheck", "bench"):
        assert re.search(rf"^\| {step} \| 0 \| [0-9.]+ \|", summary, re.M), step
    for step in ("wheels", "build", "notebooks"):
        assert re.search(rf"^\| {step} \| - \| 0 \| - \| not selected", summary, re.M), step
    assert result.stdout.rstrip().endswith(summary.rstrip())  # the summary is printed last
    with open(out / "gpu_check.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    shapes, dtypes = len(gpu_check.DRY_SHAPES), len(gpu_check.DTYPE_NAMES)
    assert len(rows) == len(gpu_check.IMPLS) * shapes * dtypes
    assert [r["impl"] for r in rows[:: shapes * dtypes]] == list(gpu_check.IMPLS)  # einsum first
    assert all(r["status"] == "ok" and float(r["rel_error"]) < 1e-2 for r in rows), rows
    env = json.loads((out / "env.json").read_text())
    assert env["ceilings"]["copy_TBps"] > 0
    with tarfile.open(out / "logs.tar.gz") as archive:
        names = archive.getnames()
    assert "logs/steps.tsv" in names and "logs/tests_summary.json" in names
    tests = json.loads((work / "logs" / "tests_summary.json").read_text())
    assert tests["collected"] > 0 and set(tests["counts"]) == {"skipped"}


# ------------------------------------------------------------------ the wheels


def _wheel(directory: Path, name: str, version: str, requires=(), tag="py3-none-any") -> Path:
    path = directory / f"{name}-{version}-{tag}.whl"
    metadata = "\n".join(
        ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}"]
        + [f"Requires-Dist: {r}" for r in requires]
    )
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(f"{name}-{version}.dist-info/METADATA", metadata + "\n")
    return path


def _complete_set(directory: Path) -> None:
    _wheel(directory, "nbval", "0.11.0", ["pytest>=7", "jupyter_client", "ipykernel"])
    _wheel(
        directory, "ipykernel", "7.0.0", ["jupyter-client>=8", 'appnope; sys_platform == "darwin"']
    )
    _wheel(directory, "ipywidgets", "8.1.0", ["comm>=0.1.3", "sphinx; extra == 'docs'"])
    _wheel(directory, "jupyter_client", "8.1.0", ["pyzmq>=25"], tag="py3-none-any")
    _wheel(directory, "pyzmq", "27.0.0", [], tag="cp312-abi3-manylinux_2_28_x86_64")
    _wheel(directory, "comm", "0.2.3")


def test_a_complete_wheel_set_passes(tmp_path):
    _complete_set(tmp_path)
    assert gpu_check.check_wheels(tmp_path) == []


@pytest.mark.parametrize(
    "change, expected",
    [
        (lambda d: (d / "comm-0.2.3-py3-none-any.whl").unlink(), "comm>=0.1.3"),
        (lambda d: _wheel(d, "comm", "0.1.0"), "two versions of comm"),
        (lambda d: _wheel(d, "unused", "1.0"), "is not needed"),
        (lambda d: _wheel(d, "numpy", "2.0"), "the image has numpy"),
        (
            lambda d: (
                (d / "jupyter_client-8.1.0-py3-none-any.whl").unlink()
                or _wheel(d, "jupyter_client", "7.0.0", ["pyzmq>=25"])
            ),
            "the wheel is 7.0.0",
        ),
        (
            lambda d: (
                (d / "pyzmq-27.0.0-cp312-abi3-manylinux_2_28_x86_64.whl").unlink()
                or _wheel(d, "pyzmq", "27.0.0", tag="cp313-cp313-manylinux_2_28_x86_64")
            ),
            "does not install on CPython 3.12",
        ),
    ],
    ids=["missing", "two-versions", "unneeded", "in-image", "too-old", "wrong-python"],
)
def test_a_broken_wheel_set_is_reported(tmp_path, change, expected):
    _complete_set(tmp_path)
    change(tmp_path)
    problems = gpu_check.check_wheels(tmp_path)
    assert any(expected in p for p in problems), problems


def test_no_wheels_says_how_to_get_them(tmp_path):
    assert "make gpu-wheels" in gpu_check.check_wheels(tmp_path / "none")[0]


def test_wheels_over_the_limit_are_reported(tmp_path):
    _complete_set(tmp_path)
    problems = gpu_check.check_wheels(tmp_path, limit_mib=1e-4)
    assert any("over" in p for p in problems), problems


# ------------------------------------------------------------------ the runners


def test_a_hung_test_times_out_and_the_rest_run(tmp_path):
    (tmp_path / "test_sample.py").write_text(
        textwrap.dedent(
            """
            import time

            def test_first():
                pass

            def test_hangs():
                time.sleep(60)

            def test_after_the_hang():
                pass

            def test_fails():
                assert 1 == 2
            """
        )
    )
    rc = gpu_check.run_tests([str(tmp_path / "test_sample.py")], 4.0, 120.0, tmp_path / "logs")
    assert rc == 1
    summary = json.loads((tmp_path / "logs" / "tests_summary.json").read_text())
    outcome = {p["id"].split("::")[1]: p["outcome"] for p in summary["problems"]}
    assert outcome == {"test_hangs": "timeout", "test_fails": "failed"}
    assert summary["counts"] == {"passed": 2, "timeout": 1, "failed": 1}
    assert summary["workers"] == 2


def _notebook(path: Path, cells: list[tuple[str, str]]) -> Path:
    """A notebook whose code cells have ``(source, stored stdout)``."""
    notebook = {
        "cells": [
            {
                "cell_type": "code",
                "execution_count": i + 1,
                "id": f"cell{i}",
                "metadata": {},
                "outputs": [{"name": "stdout", "output_type": "stream", "text": [out]}],
                "source": [source],
            }
            for i, (source, out) in enumerate(cells)
        ],
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3"}},
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    path.write_text(json.dumps(notebook))
    return path


def test_notebooks_run_in_parallel_with_reports(tmp_path):
    good = _notebook(tmp_path / "good.ipynb", [("print(6 * 7)", "42\n")])
    bad = _notebook(tmp_path / "bad.ipynb", [("print(1)", "1\n"), ("print(2)", "3\n")])
    rc = gpu_check.run_notebooks([good, bad], 2, 240.0, tmp_path / "logs", 1)
    assert rc == 1
    summary = json.loads((tmp_path / "logs" / "notebooks_summary.json").read_text())
    assert summary["good.ipynb"]["rc"] == 0 and summary["good.ipynb"]["tests"] == 1
    assert summary["bad.ipynb"]["failures"] == 1 and summary["bad.ipynb"]["tests"] == 2
    merged = (tmp_path / "logs" / "notebooks.xml").read_text()
    assert merged.count("<testsuite ") == 2


# ------------------------------------------------------------------ the report


def _row(impl, shape, dtype, forward, fwd_bwd):
    return {
        "impl": impl,
        "shape": shape,
        "dtype": dtype,
        "forward_ms": forward,
        "fwd_bwd_ms": fwd_bwd,
    }


def test_the_verdict_needs_every_pair_faster():
    rows = [
        _row("einsum", "1x64x512x97x97", "float32", "2.0", "6.0"),
        _row("fused", "1x64x512x97x97", "float32", "1.0", "3.0"),
    ]
    assert gpu_check.verdict(rows).endswith("MEASURED_FASTER`: yes")
    rows[1]["fwd_bwd_ms"] = "7.0"
    assert gpu_check.verdict(rows).endswith("MEASURED_FASTER`: no")
    rows[1]["fwd_bwd_ms"] = ""
    assert "1 not measured" in gpu_check.verdict(rows)
    assert "say nothing" in gpu_check.verdict(rows, "none")
