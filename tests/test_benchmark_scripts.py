"""The benchmark scripts in benchmarks/ run and write what they promise (quick sizes).

They measure; these tests only check that they still run against the library as it is
(imports, the CSV and table formats they parse), and that the line-product comparison
computes correct products on both sides before it times them (it raises otherwise).
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ccnet_edu.ops import _build

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(
    _build.supported_isas() == ["portable"], reason="the scripts time x86-64 ISA levels"
)


def _run(script: str, *args: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), *args],
        env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_cpu_isa_writes_a_summary_per_level_and_size(tmp_path):
    level = _build.supported_isas()[0]
    out = _run("cpu_isa.py", "--quick", "--repeats", "1", "--isa", level, "--out", str(tmp_path))
    with open(tmp_path / "cpu-isa-summary.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["isa"] for r in rows] == [level]  # one quick size
    assert float(rows[0]["forward_vs_einsum"]) > 0
    assert float(rows[0]["fused_peak_mib"]) > 0
    assert (tmp_path / f"cpu-{level}.md").read_text().startswith("| case |")
    assert f"| {level} |" in out


def test_line_products_checks_and_times_tile_and_blas(tmp_path):
    level = _build.supported_isas()[0]
    table = tmp_path / "lines.md"
    _run("line_products.py", "--quick", "--repeats", "1", "--isa", level, "--out", str(table))
    rows = [line for line in table.read_text().splitlines() if line.startswith("| B=")]
    assert len(rows) == 4  # row and column energies, row and column aggregation
    assert all(line.count("|") == 7 for line in rows)


def test_cpu_phases_breaks_the_time_into_phases(tmp_path):
    level = _build.supported_isas()[0]
    out = _run("cpu_phases.py", "--quick", "--repeats", "1", "--isa", level, "--out", str(tmp_path))
    with open(tmp_path / "cpu-phases.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert {r["isa"] for r in rows} == {level}
    kinds = {r["kind"] for r in rows}
    assert kinds == {"product", "softmax", "other", "total"}
    products = [r for r in rows if r["kind"] == "product"]
    assert len(products) == 5 and all(float(r["gflop_per_s"]) > 0 for r in products)
    total = next(r for r in rows if r["kind"] == "total")
    parts = sum(float(r["ms"]) for r in rows if r["kind"] != "total")
    assert abs(parts - float(total["ms"])) < 1e-6 * float(total["ms"])  # the shares add up
    assert f"### {level}," in out and (tmp_path / "cpu-phases.md").read_text() == out
