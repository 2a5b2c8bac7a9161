"""Every source a chapter cites in its prose is listed in its References section.

A ``{cite}`` key used anywhere in a chapter (markdown cells and the markdown
that code cells display) must be cited in the chapter's last "## References"
cell too, and every external link must appear there, or, for a link into a
GitHub repository, that repository must (as a link, or as the URL of a
bibliography entry the References cite).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIB = (ROOT / "book" / "references.bib").read_text(encoding="utf-8")
# The chapters held to this rule; the others join as their References are completed.
CHAPTERS = [
    "02_criss_cross_attention",
    "03_recurrent_propagation",
    "04b_fast_on_a_gpu",
    "06_squeeze_and_attention",
    "07_attention_maps",
    "08_what_it_costs",
    "09_training",
    "10_which_attention_to_pick",
    "11_deployment",
]
_CITE = re.compile(r"\{cite(?::[a-z]+)?\}`([^`]+)`")
_LINK = re.compile(r"\]\((https?://[^)\s]+)\)|<(https?://[^>\s]+)>")
_REPO = re.compile(r"https://github\.com/([^/]+/[^/#?]+)")


def _text(cell: dict) -> str:
    text = "".join(cell["source"])
    for output in cell.get("outputs", []):
        markdown = output.get("data", {}).get("text/markdown")
        if markdown:
            text += "\n" + "".join(markdown)
    return text if cell["cell_type"] == "markdown" or cell.get("outputs") else ""


def _keys(text: str) -> set[str]:
    return {key.strip() for group in _CITE.findall(text) for key in group.split(",")}


def _bib_urls(keys: set[str]) -> str:
    entries = re.split(r"\n@", BIB)
    return "\n".join(
        e for e in entries if any(e.split("{", 1)[-1].startswith(k + ",") for k in keys)
    )


def references_gaps(notebook: Path) -> tuple[set[str], set[str]]:
    """(cite keys, external links) a chapter uses in its prose but not in its References."""
    cells = json.loads(notebook.read_text(encoding="utf-8"))["cells"]
    markdown = [c for c in cells if c["cell_type"] == "markdown"]
    refs_cells = [c for c in markdown if "".join(c["source"]).lstrip().startswith("## References")]
    assert refs_cells, f"{notebook.name} has no '## References' cell"
    refs = "".join(refs_cells[-1]["source"])
    body = "\n".join(_text(c) for c in cells if c is not refs_cells[-1])
    ref_keys = _keys(refs)
    listed = refs + "\n" + _bib_urls(ref_keys)
    missing_links = set()
    for groups in _LINK.findall(body):
        url = next(u for u in groups if u)
        if url in listed or url.split("#")[0] in listed:
            continue
        repo = _REPO.match(url)
        if repo and f"github.com/{repo.group(1)}" in listed:
            continue
        missing_links.add(url)
    return _keys(body) - ref_keys, missing_links


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_chapter_lists_what_it_cites(chapter):
    keys, links = references_gaps(ROOT / "notebooks" / f"{chapter}.ipynb")
    assert not keys, f"{chapter}: cited in the prose, not in its References: {sorted(keys)}"
    assert not links, f"{chapter}: linked in the prose, not in its References: {sorted(links)}"


def test_the_check_finds_a_missing_key_and_link(tmp_path):
    cells = [
        {"cell_type": "markdown", "source": ["As {cite}`a2020,b2021` and [x](https://x.org/y)."]},
        {"cell_type": "markdown", "source": ["## References\n", "* {cite}`a2020`\n"]},
    ]
    path = tmp_path / "nb.ipynb"
    path.write_text(json.dumps({"cells": cells}), encoding="utf-8")
    assert references_gaps(path) == ({"b2021"}, {"https://x.org/y"})
