"""tools/check_toc.py: the toc, the files and the chapter numbers in the prose agree.

The real repository must pass; small made-up books show that each rule fails when broken.
"""

from __future__ import annotations

import importlib.util
import json
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("check_toc", ROOT / "tools" / "check_toc.py")
check_toc = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(check_toc)

GOOD_TOC = """
format: jb-book
root: book/intro
parts:
  - caption: Start
    chapters:
      - file: book/setup
  - caption: One
    numbered: true
    chapters:
      - file: notebooks/01_first
      - file: notebooks/02_second
        sections:
          - file: notebooks/02b_more
  - caption: Two
    numbered: true
    chapters:
      - file: notebooks/03_third
"""


def _notebook(*markdown: str, code: str = "", output: str = "") -> str:
    cells = [{"cell_type": "markdown", "metadata": {}, "source": text} for text in markdown]
    if code:
        outputs = [{"output_type": "stream", "name": "stdout", "text": output}] if output else []
        cells.append(
            {
                "cell_type": "code",
                "metadata": {},
                "source": code,
                "outputs": outputs,
                "execution_count": 1,
            }
        )
    return json.dumps({"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5})


def _book(tmp_path: Path, toc: str = GOOD_TOC, **pages: str) -> Path:
    """A tiny book: the toc, book/intro.md, book/setup.md and four notebooks (or ``pages``)."""
    files = {
        "_toc.yml": textwrap.dedent(toc),
        "book/intro.md": "# Intro\n\nSee {doc}`chapter 3 <../notebooks/03_third>`.\n",
        "book/setup.md": "# Setup\n",
        "notebooks/01_first.ipynb": _notebook("# First\n\nOn to {doc}`chapter 2 <02_second>`."),
        "notebooks/02_second.ipynb": _notebook("# Second\n\nChapters 1 and 3 frame this one."),
        "notebooks/02b_more.ipynb": _notebook("# More\n\nA section of chapter 2."),
        "notebooks/03_third.ipynb": _notebook("# Third\n\nBack to [chapter 1](01_first.ipynb)."),
    }
    files.update({name.replace("__", "/"): text for name, text in pages.items()})
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return tmp_path


def test_the_repository_passes() -> None:
    assert check_toc.check(ROOT) == []


def test_the_repository_renders_every_notebook_nn_as_chapter_nn() -> None:
    """The rule itself on the real toc, independently of the checker's messages."""
    import yaml

    numbers = check_toc.rendered_numbers(yaml.safe_load((ROOT / "_toc.yml").read_text()))
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        chapter, parent = numbers[f"notebooks/{path.stem}"]
        assert chapter == int(path.stem[:2]), path.name
        if path.stem[2] == "_":  # NN_*: a chapter
            assert parent is None, path.name
        else:  # NNx_*: a section of notebooks/NN_*
            assert parent is not None and parent.startswith(f"notebooks/{path.stem[:2]}_")


def test_a_tiny_book_passes(tmp_path: Path) -> None:
    assert check_toc.check(_book(tmp_path)) == []


def test_numbering_continues_across_numbered_parts_only(tmp_path: Path) -> None:
    import yaml

    numbers = check_toc.rendered_numbers(yaml.safe_load(GOOD_TOC))
    assert numbers["book/setup"] == (None, None)
    assert numbers["notebooks/01_first"] == (1, None)
    assert numbers["notebooks/02b_more"] == (2, "notebooks/02_second")
    assert numbers["notebooks/03_third"] == (3, None)


@pytest.mark.parametrize(
    ("toc", "expected"),
    [
        # the section listed as a chapter of its own: everything after it shifts by one
        (
            GOOD_TOC.replace(
                "        sections:\n          - file: notebooks/02b_more\n",
                "      - file: notebooks/02b_more\n",
            ),
            [
                "notebooks/02b_more is a chapter of its own",
                "notebooks/03_third renders as chapter 4",
            ],
        ),
        # a part left unnumbered
        (
            GOOD_TOC.replace("  - caption: Two\n    numbered: true\n", "  - caption: Two\n"),
            ["notebooks/03_third renders as no number"],
        ),
        # a page before the chapters in a numbered part takes number 1
        (
            GOOD_TOC.replace(
                "  - caption: One\n    numbered: true\n    chapters:\n",
                "  - caption: One\n    numbered: true\n    chapters:\n      - file: book/setup\n",
            ).replace("  - caption: Start\n    chapters:\n      - file: book/setup\n", ""),
            ["notebooks/01_first renders as chapter 2"],
        ),
    ],
)
def test_a_wrong_numbering_fails(tmp_path: Path, toc: str, expected: list[str]) -> None:
    problems = check_toc.check(_book(tmp_path, toc=toc))
    for text in expected:
        assert any(text in p for p in problems), (text, problems)


@pytest.mark.parametrize(
    ("page", "text", "expected"),
    [
        (
            "book__intro.md",
            "See {doc}`chapter 2 <../notebooks/03_third>`.",
            "the text says '2' but the target is chapter 3",
        ),
        (
            "book__intro.md",
            "See {doc}`chapters 1 <../notebooks/01_first>` and {doc}`2 <../notebooks/03_third>`.",
            "the text says '2' but the target is chapter 3",
        ),
        (
            "book__intro.md",
            "See {doc}`the idea of chapter 2 <../notebooks/03_third>`.",
            "the text says '2' but the target is chapter 3",
        ),
        (
            "book__intro.md",
            "See [chapter 3](../notebooks/02_second.ipynb).",
            "the text says '3' but the target is chapter 2",
        ),
        (
            "book__intro.md",
            "See {doc}`chapter 2 <../notebooks/02b_more>`.",
            "the target is a section of chapter 2",
        ),
        (
            "book__intro.md",
            "See {doc}`chapter 2 <notation>`.",
            "points to no notebooks/NN_* chapter",
        ),
        ("book__intro.md", "As chapter 4 shows.", "there is no chapter 4"),
        ("book__intro.md", "Chapters 1, 3 and 7 agree.", "there is no chapter 7"),
        ("book__intro.md", "As §5 shows.", "there is no chapter 5"),
        ("book__intro.md", "Chapter 02 opened it.", "the book renders chapter 2, not 02"),
        ("book__intro.md", "Chapter 2b opened it.", "'2b' is no chapter number"),
        ("README.md", "The book's chapter 9.", "README.md: 'chapter 9'"),
        ("ccnet_edu__mod.py", '"""Shown in chapter 8."""\n', "ccnet_edu/mod.py"),
        (
            "notebooks__03_third.ipynb",
            _notebook("# Third", code="print('see chapter 6')"),
            "there is no chapter 6",
        ),
        (
            "notebooks__03_third.ipynb",
            _notebook("# Third", code="print(x)", output="as chapter 12 shows"),
            "there is no chapter 12",
        ),
    ],
)
def test_a_wrong_chapter_number_in_prose_fails(
    tmp_path: Path, page: str, text: str, expected: str
) -> None:
    if page.endswith(".md") and not text.startswith("#"):
        text = "# Page\n\n" + text + "\n"
    problems = check_toc.check(_book(tmp_path, **{page: text}))
    assert any(expected in p for p in problems), problems


def test_the_right_chapter_numbers_in_prose_pass(tmp_path: Path) -> None:
    text = (
        "# Intro\n\nSee {doc}`chapters 1 <../notebooks/01_first>` and "
        "{doc}`3 <../notebooks/03_third>`, [Chapter 2](../notebooks/02_second.ipynb), "
        "{doc}`the section <../notebooks/02b_more>` of chapter 2, chapters 1 to 3, §3 and "
        "the paper's Sec. 3.3.\n"
    )
    assert check_toc.check(_book(tmp_path, **{"book__intro.md": text})) == []


def test_main_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert check_toc.main(["check_toc.py", str(_book(tmp_path))]) == 0
    bad = _book(tmp_path, **{"book__intro.md": "# Intro\n\nChapter 9.\n"})
    assert check_toc.main(["check_toc.py", str(bad)]) == 1
    assert "there is no chapter 9" in capsys.readouterr().err


MAP = """# Intro

## Map of the chapters

| Chapter | What you learn |
| --- | --- |
| 1. First | one |
| 2. Second | two |
| More (a section of chapter 2) | more |
| 3. Third | three |

## Next
"""


def test_the_repository_has_a_chapter_map() -> None:
    assert check_toc.MAP_HEADING in (ROOT / "book" / "intro.md").read_text(encoding="utf-8")


def test_a_complete_chapter_map_passes(tmp_path: Path) -> None:
    assert check_toc.check(_book(tmp_path, **{"book__intro.md": MAP})) == []


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("| 3. Third | three |\n", "no row '3. ...' for notebooks/03_third"),
        (
            "| More (a section of chapter 2) | more |\n",
            "0 row(s) '(a section of chapter 2)' for the 1 section(s) notebooks/02b_more",
        ),
    ],
)
def test_a_toc_entry_without_a_map_row_is_caught(tmp_path: Path, row: str, message: str) -> None:
    problems = check_toc.check(_book(tmp_path, **{"book__intro.md": MAP.replace(row, "")}))
    assert any(message in problem for problem in problems), problems
