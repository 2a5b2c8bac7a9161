"""Checks on the book's sources that need no execution: citations, generated prose, figures, setup.

* every bib key a chapter cites (in its prose or in the Markdown its cells print) is listed in
  that chapter's ``## References`` cell, and so is every external link (for a link into a GitHub
  repository, that repository, as a link or as the URL of a bibliography entry the References
  cite);
* a ``remove-input`` cell that prints prose (``Markdown(``) asserts what it states, so that a
  different outcome fails loudly instead of printing a contradiction;
* no figure sets a font size below 8;
* no formula of the book's own writes the exponential as ``e^``: book/notation.md promises that
  ``e`` is always an energy and the exponential is written ``exp`` (a paper's numbered equation,
  quoted with its ``\\tag``, keeps the paper's symbols);
* ``book/setup.md`` names the extras the Makefile installs.

Every notebook in ``notebooks/`` is held to every rule.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
BIB = (ROOT / "book" / "references.bib").read_text(encoding="utf-8")
CITE = re.compile(r"\{cite(?::[a-z]+|[tp])?\}`([^`]+)`")
LINK = re.compile(r"\]\((https?://[^)\s]+)\)|<(https?://[^>\s]+)>")
REPO = re.compile(r"https://github\.com/([^/]+/[^/#?]+)")
FONTSIZE = re.compile(r"fontsize\s*=\s*(\d+(?:\.\d+)?)")
MATHS = re.compile(r"\$\$.*?\$\$|\$[^$\n]+\$", re.DOTALL)
EXP_AS_E = re.compile(r"(?<![A-Za-z\\])e\^")
BOOK_PAGES = sorted((ROOT / "book").glob("*.md"))


def _cells(path: Path) -> list[dict]:
    return json.loads(path.read_text(encoding="utf-8"))["cells"]


def _keys(text: str) -> set[str]:
    return {key.strip() for match in CITE.findall(text) for key in match.split(",")}


def _text(cell: dict) -> str:
    """A cell's prose: a markdown cell's source, or the Markdown a code cell printed."""
    if cell["cell_type"] == "markdown":
        return "".join(cell["source"])
    return "\n".join(
        "".join(output.get("data", {}).get("text/markdown", ""))
        for output in cell.get("outputs", [])
    )


def _bib_entries(keys: set[str]) -> str:
    entries = re.split(r"\n@", BIB)
    return "\n".join(
        e for e in entries if any(e.split("{", 1)[-1].startswith(k + ",") for k in keys)
    )


def references_gaps(path: Path) -> tuple[set[str], set[str]]:
    """(cite keys, external links) a chapter uses in its prose but not in its References.

    A chapter without a ``## References`` cell lists nothing, so all it cites and links is a gap.
    """
    cells = _cells(path)
    refs_cells = [
        c
        for c in cells
        if c["cell_type"] == "markdown"
        and "".join(c["source"]).lstrip().startswith("## References")
    ]
    refs = "".join(refs_cells[-1]["source"]) if refs_cells else ""
    body = "\n".join(_text(c) for c in cells if not refs_cells or c is not refs_cells[-1])
    ref_keys = _keys(refs)
    listed = refs + "\n" + _bib_entries(ref_keys)
    missing_links = set()
    for groups in LINK.findall(body):
        url = next(u for u in groups if u)
        if url in listed or url.split("#")[0] in listed:
            continue
        repo = REPO.match(url)
        if repo and f"github.com/{repo.group(1)}" in listed:
            continue
        missing_links.add(url)
    return _keys(body) - ref_keys, missing_links


def unguarded_prose(path: Path) -> list[int]:
    """Indices of remove-input cells that print Markdown without an assert."""
    return [
        index
        for index, cell in enumerate(_cells(path))
        if cell["cell_type"] == "code"
        and "remove-input" in cell.get("metadata", {}).get("tags", [])
        and "Markdown(" in "".join(cell["source"])
        and "assert" not in "".join(cell["source"])
    ]


def small_fonts(path: Path) -> list[tuple[int, str]]:
    """``(cell index, text)`` of every ``fontsize=`` below 8 in a code cell."""
    return [
        (index, match.group(0))
        for index, cell in enumerate(_cells(path))
        if cell["cell_type"] == "code"
        for match in FONTSIZE.finditer("".join(cell["source"]))
        if float(match.group(1)) < 8
    ]


def exponentials_as_e(text: str) -> list[str]:
    """The formulas of ``text`` that write the exponential as ``e^`` (quoted numbered equations,
    those with a ``\\tag``, excepted)."""
    return [
        match.group(0)
        for match in MATHS.finditer(text)
        if EXP_AS_E.search(match.group(0)) and "\\tag{" not in match.group(0)
    ]


def chapter_exponentials_as_e(path: Path) -> list[tuple[int, str]]:
    """``(cell index, formula)`` of every ``e^`` exponential in a chapter's prose."""
    return [
        (index, formula)
        for index, cell in enumerate(_cells(path))
        for formula in exponentials_as_e(_text(cell))
    ]


def _ids(paths: list[Path]) -> list:
    return [pytest.param(p, id=p.stem) for p in paths]


def test_the_book_has_its_chapters():
    assert len(NOTEBOOKS) >= 13, [p.name for p in NOTEBOOKS]


@pytest.mark.parametrize("path", _ids(NOTEBOOKS))
def test_every_citation_and_link_is_in_the_chapters_references(path):
    keys, links = references_gaps(path)
    assert not keys, f"{path.stem}: cited in the prose, not in its References: {sorted(keys)}"
    assert not links, f"{path.stem}: linked in the prose, not in its References: {sorted(links)}"


@pytest.mark.parametrize("path", _ids(NOTEBOOKS))
def test_generated_prose_asserts_what_it_states(path):
    assert not unguarded_prose(path)


@pytest.mark.parametrize("path", _ids(NOTEBOOKS))
def test_figure_fonts_are_at_least_8(path):
    assert not small_fonts(path)


@pytest.mark.parametrize("path", _ids(NOTEBOOKS))
def test_the_exponential_is_written_exp(path):
    assert not chapter_exponentials_as_e(path)


@pytest.mark.parametrize("path", _ids(BOOK_PAGES))
def test_the_exponential_is_written_exp_on_the_book_pages(path):
    assert not exponentials_as_e(path.read_text(encoding="utf-8"))


def test_the_rules_catch_what_they_are_for(tmp_path):
    cells = [
        {"cell_type": "markdown", "source": ["As {cite}`a, b` and [x](https://x.org/y) show."]},
        {"cell_type": "markdown", "source": ["See [r](https://github.com/o/r/blob/m/f.py)."]},
        {
            "cell_type": "markdown",
            "source": ["## References\n* {cite}`a`\n* <https://github.com/o/r>\n"],
        },
        {
            "cell_type": "code",
            "metadata": {"tags": ["remove-input"]},
            "source": ["display(Markdown('it falls'))"],
            "outputs": [{"data": {"text/markdown": ["see {cite:p}`c`"]}}],
        },
        {"cell_type": "code", "metadata": {}, "source": ["ax.legend(fontsize=6)"]},
        {
            "cell_type": "markdown",
            "source": [
                "$\\log(e^a + e^{b})$, $\\exp e(u, p)$, $\\mathrm{lse}^2$, $(e^{x})$ and\n",
                "$$f = e^{\\theta^T \\phi} \\tag{3}$$",
            ],
        },
    ]
    path = tmp_path / "bad.ipynb"
    path.write_text(json.dumps({"cells": cells}), encoding="utf-8")
    assert references_gaps(path) == ({"b", "c"}, {"https://x.org/y"})
    assert unguarded_prose(path) == [3]
    assert small_fonts(path) == [(4, "fontsize=6")]
    assert chapter_exponentials_as_e(path) == [(5, "$\\log(e^a + e^{b})$"), (5, "$(e^{x})$")]
    no_refs = tmp_path / "none.ipynb"
    no_refs.write_text(json.dumps({"cells": cells[:2]}), encoding="utf-8")
    assert references_gaps(no_refs) == (
        {"a", "b"},
        {"https://x.org/y", "https://github.com/o/r/blob/m/f.py"},
    )


def test_setup_page_names_the_extras_the_makefile_installs():
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    extras = re.search(r"^EXTRAS\s*:=\s*(\S+)", makefile, re.M).group(1)
    setup = (ROOT / "book" / "setup.md").read_text(encoding="utf-8")
    named = set(re.findall(r"installs \.\[([a-z,]+)\]", setup))
    assert named, "book/setup.md names no installed extras"
    assert all(group.startswith(extras) for group in named), (extras, named)
    by_hand = re.search(r'pip install -c constraints\.txt -e "\.\[([a-z,]+)\]"', setup)
    assert by_hand and set(extras.split(",")) <= set(by_hand.group(1).split(","))


def test_bibliography_parses_with_unique_keys():
    """references.bib as sphinxcontrib-bibtex reads it (pybtex, strict): a dropped brace or a
    duplicate key fails here instead of in the book build."""
    pybtex_database = pytest.importorskip("pybtex.database")
    from pybtex import errors

    errors.set_strict_mode(True)
    try:
        data = pybtex_database.parse_string(BIB, "bibtex")
    finally:
        errors.set_strict_mode(False)
    assert len(data.entries) == len(re.findall(r"^@\w+\{", BIB, flags=re.M))


def _stripped_lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


def test_shown_library_source_is_the_current_source():
    """A stored `show_source` output is the library's code as it is now: a notebook not
    re-executed after its library changed would show the reader stale code (nbval finds
    it too, but only after executing every chapter)."""
    library = [_stripped_lines(p.read_text(encoding="utf-8"))
               for p in sorted((ROOT / "ccnet_edu").rglob("*.py"))]  # fmt: skip
    library_text = ["\n".join(lines) for lines in library]
    stale = []
    for path in NOTEBOOKS:
        for index, cell in enumerate(_cells(path)):
            if cell["cell_type"] != "code" or "show_source(" not in "".join(cell["source"]):
                continue
            for block in re.findall(r"```python\n(.*?)```", _text(cell), flags=re.DOTALL):
                shown = "\n".join(_stripped_lines(block))
                if shown and not any(shown in text for text in library_text):
                    stale.append(f"{path.name} cell {index}: {block.splitlines()[0][:60]}")
    assert not stale, stale
