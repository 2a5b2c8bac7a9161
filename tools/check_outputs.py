"""Find checked notebook outputs that another machine may print differently.

nbval compares every code cell's stored output with a fresh run, except the cells marked
``# NBVAL_IGNORE_OUTPUT``.  A checked cell must therefore print only what every machine
prints alike; this check flags, in the *stored* output of each checked cell,

  * a **rounding-error magnitude**: a number in scientific notation whose exponent is -6 or
    lower (``2.2e-15``, ``3.1E-08``, ``1.400e-06``).  Such a number is the size of a float
    error, and it changes with the CPU (AVX2 or AVX-512 kernels), the BLAS code path, the
    thread count and even the cells run before it.  A bound that the cell checks is fine and
    is not flagged: the number follows ``<``, ``<=``, ``≤``, "below", "under", "within",
    "less than" or a ``tol``/``atol``/``rtol`` name, or is followed by ``: True``/``: False``
    (``max |difference| below 1e-12: True``, ``match the reference to 1e-6: True``);
  * **anything on stderr**: a warning or a log line depends on the state of caches (a library
    rebuilt, a file downloaded), on the cells run before it and on the library versions;
  * a **timing**: a number followed by a unit of time (``28.4 ms``, ``3 µs``, ``0.33 s``,
    ``12 seconds``), a rate per second (``GFLOP/s``, ``GB/s``, ``it/s``, "per second") or the
    word "took".

It also checks that each notebook's stored outputs come from **one run in order**: the code
cells' execution counts increase and their execution start times (``metadata.execution``,
``iopub.execute_input``, which nbconvert records) never go backwards.  A cell re-run on its own
after the rest breaks this, and leaves the cells that use its results with outputs of another
run; re-execute the whole notebook instead.

A cell whose output is stable for a reason the check cannot see (a number computed from
constants or read from a committed file, a float64 value far above its rounding error)
carries a comment saying so, which exempts it::

    # stable-output: the roofline floors are computed from the datasheets' constants

The reason must be given (at least a few words).  A timing or an exact error belongs in a
``# NBVAL_IGNORE_OUTPUT`` cell beside the checked assertion instead.

Usage: python tools/check_outputs.py [PATH ...]   (notebooks or folders of them; default: the
repository's notebooks/).  Exit status 1 when anything is flagged.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
IGNORE_MARKERS = ("NBVAL_IGNORE_OUTPUT", "NBVAL_SKIP")
STABLE_RE = re.compile(r"^[ \t]*#[ \t]*stable-output:[ \t]*(?P<reason>.*)$", re.MULTILINE)
MIN_REASON = 10  # characters: "stable-output: ok" is not a reason

# A number in scientific notation: mantissa, then e/E and a signed exponent (U+2212 too).
SCI_RE = re.compile(
    r"(?<![\w.])(?P<number>[-+]?\d+(?:\.\d*)?[eE](?P<sign>[-+\u2212]?)(?P<exponent>\d+))(?![\w.])"
)
SMALLEST_EXPONENT = -6  # e-06 and below: float32's rounding (~6e-08) and float64's (~1e-16)
# What may stand right before a bound that the cell checks.
BOUND_RE = re.compile(
    r"(?:<=?|≤|\bbelow|\bunder|\bwithin|\bless than|\b[ar]?tol(?:erance)?\s*=?)\s*$",
    re.IGNORECASE,
)
# ... or right after one: "match the reference to 1e-6: True".
CHECKED_RE = re.compile(r"\s*:\s*(?:True|False)\b")
NUMBER = r"\d[\d,]*(?:\.\d+)?"
TIMING_RES = (
    re.compile(
        rf"{NUMBER}\s?(?:ms|µs|μs|us|ns|s|secs?|seconds?|minutes?|mins?|hours?)\b(?!/)",
    ),
    re.compile(
        r"(?<![A-Za-z])(?:[kMGTP]?FLOPS?|[kMGT]?i?B|it|images?|samples?|steps?)/s\b", re.IGNORECASE
    ),
    re.compile(r"\bs/it\b|\bper second\b|\btook\b", re.IGNORECASE),
)


@dataclass(frozen=True)
class Finding:
    """One flagged cell: where it is, what it printed and why that is machine-dependent."""

    path: Path
    cell: int  # index among all cells (as in the .ipynb)
    code_cell: int  # index among code cells (as nbval numbers them)
    text: str
    why: str

    def __str__(self) -> str:
        return f"{self.path}: cell {self.cell} (nbval's cell {self.code_cell}): {self.why}"


def _source(cell: dict) -> str:
    source = cell.get("source", "")
    return "".join(source) if isinstance(source, list) else source


def output_text(cell: dict) -> str:
    """The text a cell's stored outputs show: streams, and the text forms of display data."""
    parts = []
    for output in cell.get("outputs", []):
        if output.get("output_type") == "stream":
            parts.append(_joined(output.get("text", "")))
        for mime in ("text/plain", "text/markdown", "text/html", "text/latex"):
            if mime in output.get("data", {}):
                parts.append(_joined(output["data"][mime]))
    return "\n".join(parts)


def _joined(text: str | list[str]) -> str:
    return "".join(text) if isinstance(text, list) else text


def small_numbers(text: str) -> Iterator[str]:
    """Numbers in scientific notation with exponent <= -6 that are not a checked bound."""
    for match in SCI_RE.finditer(text):
        if match.group("sign") not in ("-", "\u2212"):
            continue
        if -int(match.group("exponent")) > SMALLEST_EXPONENT:
            continue
        if float(match.group("number").replace("\u2212", "-")) == 0:
            continue
        if BOUND_RE.search(text[max(0, match.start() - 40) : match.start()]):
            continue
        if CHECKED_RE.match(text, match.end()):
            continue
        yield match.group("number")


def timings(text: str) -> Iterator[str]:
    """The parts of ``text`` that read as a timing or a rate."""
    for pattern in TIMING_RES:
        for match in pattern.finditer(text):
            yield match.group(0)


def check_cell(cell: dict) -> str | None:
    """Why a checked code cell's stored output may differ on another machine, or None."""
    if cell.get("cell_type") != "code":
        return None
    source = _source(cell)
    if any(marker in source for marker in IGNORE_MARKERS):
        return None
    marker = STABLE_RE.search(source)
    if marker is not None:
        if len(marker.group("reason").strip()) < MIN_REASON:
            return "'# stable-output:' needs a reason (why this output is the same everywhere)"
        return None
    text = output_text(cell)
    problems = []
    if any(
        o.get("output_type") == "stream" and o.get("name") == "stderr"
        for o in cell.get("outputs", [])
    ):
        # a warning or a log line: it depends on the state of caches, on what ran before and on
        # the library versions, and nbval compares it like any other output
        problems.append("writes to stderr (a warning or log line)")
    small = list(dict.fromkeys(small_numbers(text)))
    if small:
        problems.append(f"prints rounding-error magnitudes {', '.join(small[:3])}")
    timed = list(dict.fromkeys(timings(text)))
    if timed:
        problems.append(f"prints timings {', '.join(repr(t) for t in timed[:3])}")
    if not problems:
        return None
    return (
        "; ".join(problems)
        + ": print a checked bound, or move the figure to a '# NBVAL_IGNORE_OUTPUT' cell, or "
        "say why it is stable with '# stable-output: <reason>'"
    )


def _started(cell: dict) -> datetime | None:
    """When the cell's execution started, from its ``metadata.execution``, or None."""
    stamp = cell.get("metadata", {}).get("execution", {}).get("iopub.execute_input")
    if not isinstance(stamp, str):
        return None
    try:
        return datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        return None


def run_order(cells: list[dict]) -> Iterator[tuple[int, int, str]]:
    """``(cell, code_cell, why)`` for each code cell that was run before the one above it.

    Code cells without an execution count (never run) are skipped; among the others the
    execution counts must increase and the recorded start times must not decrease.
    """
    last = None  # (cell index, execution count) of the last code cell run
    last_started = None  # (cell index, start time) of the last code cell with a start time
    code_index = -1
    for index, cell in enumerate(cells):
        if cell.get("cell_type") != "code":
            continue
        code_index += 1
        count = cell.get("execution_count")
        if not isinstance(count, int):
            continue
        started = _started(cell)
        if last is not None and count <= last[1]:
            yield (
                index,
                code_index,
                f"execution count {count} after {last[1]} (cell {last[0]}): the outputs are not "
                "from one run in order; re-execute the whole notebook",
            )
        elif started is not None and last_started is not None and started < last_started[1]:
            yield (
                index,
                code_index,
                f"started at {started.isoformat()}, before cell {last_started[0]} "
                f"({last_started[1].isoformat()}): a cell was re-run on its own; re-execute the "
                "whole notebook",
            )
        last = (index, count)
        if started is not None:
            last_started = (index, started)


def check_notebook(path: Path) -> list[Finding]:
    """Every flagged cell of one notebook, then every cell out of run order."""
    cells = json.loads(path.read_text(encoding="utf-8")).get("cells", [])
    findings, code_index = [], -1
    for index, cell in enumerate(cells):
        if cell.get("cell_type") == "code":
            code_index += 1
        why = check_cell(cell)
        if why is not None:
            findings.append(Finding(path, index, code_index, output_text(cell), why))
    for index, code, why in run_order(cells):
        findings.append(Finding(path, index, code, "", why))
    return findings


def notebooks(paths: Iterable[Path]) -> list[Path]:
    """The notebooks named, and those in the folders named, in order."""
    found = []
    for path in paths:
        if path.is_dir():
            found.extend(sorted(path.glob("*.ipynb")))
        elif path.suffix == ".ipynb" and path.is_file():
            found.append(path)
        else:
            raise FileNotFoundError(f"not a notebook or a folder: {path}")
    return found


def main(argv: list[str]) -> int:
    paths = [Path(a) for a in argv] or [ROOT / "notebooks"]
    try:
        found = notebooks(paths)
    except FileNotFoundError as error:
        print(f"check_outputs: {error}", file=sys.stderr)
        return 2
    try:
        findings = [f for path in found for f in check_notebook(path)]
    except (ValueError, OSError) as error:  # json.JSONDecodeError is a ValueError
        print(f"check_outputs: cannot read a notebook: {error}", file=sys.stderr)
        return 2
    for finding in findings:
        print(finding)
    print(
        f"check_outputs: {len(found)} notebooks, "
        f"{len(findings)} cell(s) with machine-dependent output or out of run order"
    )
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
