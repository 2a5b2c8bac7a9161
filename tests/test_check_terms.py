"""tools/check_terms.py: a checked chapter links each glossary term at its first use."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("check_terms", ROOT / "tools" / "check_terms.py")
check_terms = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(check_terms)

TERMS = ["attention map", "criss-cross attention", "non-local block", "FLOP"]


def test_the_repository_passes() -> None:
    assert check_terms.check(ROOT) == []


def test_the_glossary_terms_are_read() -> None:
    terms = check_terms.glossary_terms((ROOT / "book" / "glossary.md").read_text())
    assert {"criss-cross attention", "attention map", "off the cross", "FLOP"} <= set(terms)
    assert not any(term.startswith((" ", "See")) for term in terms)


def test_first_use_linked_passes() -> None:
    cells = [
        "# Criss-cross attention\n\nA {term}`non-local block` and its {term}`attention map`.",
        "The non-local block again, an attention map, {term}`FLOPs <FLOP>` and then FLOPs.",
        "{term}`Criss-cross attention <criss-cross attention>` at last; criss-cross attention.",
    ]
    assert check_terms.first_unlinked_uses(cells, TERMS) == []


def test_unlinked_first_use_is_caught() -> None:
    cells = [
        "A non-local block (`non-local block` in code is not prose) and $FLOP$ in maths.",
        "Then the\nnon-local block, criss-cross attention maps and 2 FLOPs.",
        "Later a {term}`non-local block` and {term}`attention map`, {term}`FLOP`.",
    ]
    found = {(term, cell) for term, cell, _ in check_terms.first_unlinked_uses(cells, TERMS)}
    # "attention maps" (plural) in cell 1 comes before its link in cell 2; the heading-free
    # "criss-cross attention" of cell 1 is never linked; FLOPs in maths/code do not count.
    assert found == {
        ("non-local block", 0),
        ("criss-cross attention", 1),
        ("attention map", 1),
        ("FLOP", 1),
    }


def test_english_plurals_are_uses() -> None:
    terms = ["energy", "far query", "width pass", "FLOP", "day"]
    cells = [
        "The energies, two far\nqueries, both width passes, 3 FLOPs and two days.",
        "Then {term}`energy`, {term}`far query`, {term}`width pass`, {term}`FLOP`, {term}`day`.",
    ]
    found = {(term, cell) for term, cell, _ in check_terms.first_unlinked_uses(cells, terms)}
    assert found == {(term, 0) for term in terms}
    # A linked plural is a linked first use.
    linked = ["{term}`energies <energy>` and {term}`far queries <far query>`; energies."]
    assert check_terms.first_unlinked_uses(linked, ["energy", "far query"]) == []


def test_term_pattern_plurals() -> None:
    import re

    def matches(term: str, text: str) -> bool:
        return re.fullmatch(check_terms.term_pattern(term), text, re.IGNORECASE) is not None

    assert matches("energy", "energy") and matches("energy", "Energies")
    assert matches("far query", "far  queries") and matches("far query", "far\nquery")
    assert matches("width pass", "width passes") and matches("FLOP", "FLOPs")
    assert matches("day", "days") and not matches("day", "daies")
    assert not matches("energy", "energys") and not matches("width pass", "width passs")
    # A closing qualifier in parentheses separates the glossary's senses; prose does not repeat it.
    assert matches("success (of a run)", "success") and matches("success (of a run)", "successes")
    # Only whole words: a hyphenated compound or a longer word is not a use.
    assert re.search(check_terms.term_pattern("energy"), "energy-based energyless") is None


def test_headings_and_directives_are_not_prose() -> None:
    cells = ["# Attention map\n\n```{exercise} The attention map\n:label: attention-map\n```"]
    assert check_terms.first_unlinked_uses(cells, TERMS) == []


def test_main_exit_codes(tmp_path: Path, capsys) -> None:
    assert check_terms.main(["check_terms.py", str(ROOT)]) == 0
    notebook = tmp_path / check_terms.CHECKED[0]
    notebook.parent.mkdir(parents=True)
    (tmp_path / "book").mkdir()
    (tmp_path / "book" / "glossary.md").write_text(
        "# Glossary\n\n```{glossary}\nFLOP\n  One operation.\n```\n"
    )
    notebook.write_text('{"cells": [{"cell_type": "markdown", "source": ["3 FLOPs"]}]}')
    for name in check_terms.CHECKED[1:]:
        (tmp_path / name).write_text('{"cells": []}')
    assert check_terms.main(["check_terms.py", str(tmp_path)]) == 1
    assert "'FLOP' is not a {term} link" in capsys.readouterr().out
