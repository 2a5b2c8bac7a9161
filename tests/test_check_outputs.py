"""tools/check_outputs.py: checked notebook outputs that another machine may print differently.

Small made-up notebooks show each rule; the repository's own notebooks must pass.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("check_outputs", ROOT / "tools" / "check_outputs.py")
check_outputs = importlib.util.module_from_spec(_spec)
sys.modules["check_outputs"] = check_outputs  # dataclasses look their module up
_spec.loader.exec_module(check_outputs)

# The stored output of chapter 4b's flex check on main before the fix (c37c90e): nbval failed
# on it on an Intel Xeon, which printed 2.2e-15 and 1.6e-15 where this machine had stored these.
MAIN_04B_CELL = (
    "out, att = Fn.criss_cross_attention(query, key, value, impl='flex', return_attention=True)\n"
    "print(f'flex vs reference (float64, B=2, 7x9): out {(out - ref_out).abs().max():.1e}, '\n"
    "      f'attention {(att - ref_att).abs().max():.1e}')",
    "flex vs reference (float64, B=2, 7x9): out 1.6e-15, attention 1.0e-15\n",
)


def code_cell(source: str, text: str, kind: str = "stream") -> dict:
    if kind in ("stream", "stderr"):
        name = "stdout" if kind == "stream" else "stderr"
        outputs = [{"output_type": "stream", "name": name, "text": text}]
    else:  # display data, as Markdown(...) leaves it
        outputs = [
            {
                "output_type": "display_data",
                "metadata": {},
                "data": {"text/markdown": text, "text/plain": "<Markdown object>"},
            }
        ]
    return {
        "cell_type": "code",
        "source": source,
        "metadata": {},
        "outputs": outputs,
        "execution_count": 1,
    }


def write_notebook(path: Path, *cells: dict) -> Path:
    notebook = {
        "cells": [{"cell_type": "markdown", "source": "# A", "metadata": {}}, *cells],
        "metadata": {},
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    path.write_text(json.dumps(notebook), encoding="utf-8")
    return path


def flagged(tmp_path: Path, source: str, text: str, kind: str = "stream") -> list:
    path = write_notebook(tmp_path / "n.ipynb", code_cell(source, text, kind))
    return check_outputs.check_notebook(path)


def test_the_cell_that_failed_on_main_is_flagged(tmp_path):
    (finding,) = flagged(tmp_path, *MAIN_04B_CELL)
    assert finding.cell == 1 and finding.code_cell == 0
    assert "1.6e-15" in finding.why and "NBVAL_IGNORE_OUTPUT" in finding.why
    assert check_outputs.main([str(tmp_path / "n.ipynb")]) == 1


@pytest.mark.parametrize(
    "text",
    [
        "error 3.1E-08",
        "max |d| = 2.2e-15",
        "corner 1.400e-06",
        "diff 7e-07 here",
        "in markdown: $4e-07$",
        "−1.2e−09",
    ],
)
def test_rounding_error_magnitudes_are_flagged(tmp_path, text):
    assert flagged(tmp_path, "print(x)", text)
    assert flagged(tmp_path, "display(x)", text, kind="markdown")


@pytest.mark.parametrize(
    "text",
    [
        "max |difference| below 1e-12: True",
        "error < 1e-6",
        "within 1e-9 of it",
        "match the reference to 1e-6: True",
        "atol=1e-12",
        "a rate of 1.5e+03",
        "3.3e-05 apart",
        "1e-5",
        "0e-10",
        "tensor shape (1, 3)",
        "x86-64-v4 build",
    ],
)
def test_bounds_and_ordinary_numbers_pass(tmp_path, text):
    assert flagged(tmp_path, "print(x)", text) == []


@pytest.mark.parametrize(
    "text",
    [
        "forward took a while",
        "median 28.4 ms",
        "3 µs per call",
        "self-test: 0.33 s",
        "12 seconds",
        "a matmul at 90.6 GFLOP/s",
        "3.35 TB/s",
        "100%|#| 6/6 [00:01, 4.2it/s]",
        "1,000 images per second",
    ],
)
def test_timings_are_flagged(tmp_path, text):
    (finding,) = flagged(tmp_path, "print(x)", text)
    assert "timings" in finding.why


def test_stderr_in_a_checked_cell_is_flagged(tmp_path):
    warning = "RuntimeWarning: rebuilt cca_lines_emulate.so (it has no verification record)"
    (finding,) = flagged(tmp_path, "import ccnet_edu", warning, kind="stderr")
    assert "stderr" in finding.why
    assert flagged(tmp_path, "import ccnet_edu", "loaded", kind="stream") == []


@pytest.mark.parametrize("marker", ["# NBVAL_IGNORE_OUTPUT", "# NBVAL_SKIP"])
def test_cells_nbval_does_not_compare_are_not_checked(tmp_path, marker):
    assert flagged(tmp_path, f"{marker}\nprint(x)", "took 3 ms, error 2e-16") == []


def test_a_stable_output_marker_with_a_reason_exempts_the_cell(tmp_path):
    source = "# stable-output: computed from the datasheets' constants\nprint(x)"
    assert flagged(tmp_path, source, "floor 5.27 us") == []


@pytest.mark.parametrize("source", ["# stable-output:\nprint(x)", "# stable-output: ok\nprint(x)"])
def test_a_stable_output_marker_needs_a_reason(tmp_path, source):
    (finding,) = flagged(tmp_path, source, "floor 5.27 us")
    assert "needs a reason" in finding.why


def test_markdown_cells_and_clean_code_cells_pass(tmp_path):
    path = write_notebook(
        tmp_path / "n.ipynb",
        {"cell_type": "markdown", "source": "took 3 ms, 2e-16", "metadata": {}},
        code_cell("print(x)", "max |difference| below 1e-12: True\n"),
    )
    assert check_outputs.check_notebook(path) == []
    assert check_outputs.main([str(tmp_path)]) == 0


def test_a_path_that_is_no_notebook_is_an_error(tmp_path, capsys):
    assert check_outputs.main([str(tmp_path / "missing.ipynb")]) == 2
    assert "not a notebook or a folder" in capsys.readouterr().err


def test_the_books_notebooks_pass():
    found = check_outputs.notebooks([ROOT / "notebooks"])
    assert len(found) >= 12
    findings = [f for path in found for f in check_outputs.check_notebook(path)]
    assert findings == [], "\n".join(map(str, findings))


def test_a_file_that_is_no_json_is_an_error(tmp_path, capsys):
    (tmp_path / "broken.ipynb").write_text('{"cells": [', encoding="utf-8")
    assert check_outputs.main([str(tmp_path / "broken.ipynb")]) == 2
    assert "cannot read a notebook" in capsys.readouterr().err


def ran(source: str, count: int | None, started: str | None) -> dict:
    cell = code_cell(source, "")
    cell["execution_count"] = count
    if started is not None:
        cell["metadata"] = {"execution": {"iopub.execute_input": started}}
    return cell


def test_a_cell_re_run_on_its_own_is_caught(tmp_path):
    # As 11_deployment stood at e1d481b: a measurement re-run 22 minutes after the cell below it
    # whose sentence restated the earlier run; the execution counts looked like one run.
    path = write_notebook(
        tmp_path / "n.ipynb",
        ran("x = 1", 12, "2026-12-06T23:43:05.100000Z"),
        ran("ms = 2", 13, "2026-12-07T00:05:28.565755Z"),
        {"cell_type": "markdown", "metadata": {}, "source": "text"},
        ran("print(ms)", 14, "2026-12-06T23:43:07.526306Z"),
    )
    [finding] = check_outputs.check_notebook(path)
    assert (finding.cell, finding.code_cell) == (4, 2) and "re-run on its own" in finding.why


def test_execution_counts_must_increase(tmp_path):
    path = write_notebook(
        tmp_path / "n.ipynb", ran("a = 1", 5, None), ran("b = 2", 3, None), ran("c = 3", 6, None)
    )
    [finding] = check_outputs.check_notebook(path)
    assert finding.cell == 2 and "execution count 3 after 5" in finding.why


def test_one_run_in_order_passes(tmp_path):
    path = write_notebook(
        tmp_path / "n.ipynb",
        ran("a = 1", 1, "2026-12-07T00:00:00Z"),
        ran("b = 2", None, None),  # never run: skipped
        ran("c = 3", 2, None),  # no start time recorded: only its count is checked
        ran("d = 4", 3, "2026-12-07T00:00:00Z"),  # same instant as the first: not backwards
        ran("e = 5", 4, "2026-12-07T00:00:01Z"),
    )
    assert check_outputs.check_notebook(path) == []
