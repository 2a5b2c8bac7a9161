"""Check that _toc.yml, the files on disk and the chapter numbers in the prose agree.

Fails (exit 1) when

  * a file listed in _toc.yml does not exist (Jupyter Book would fail on it), or
  * a notebook in notebooks/ or a page in book/ is missing from _toc.yml
    (with ``only_build_toc_files: true`` it would silently not be built), or
  * the rendered chapter numbers break the book's rule that ``notebooks/NN_*.ipynb`` is
    chapter NN: the toc's numbered parts (``numbered: true``, counted on across parts by
    ``html.use_multitoc_numbering``) must give each ``NN_*`` notebook the number NN, and a
    notebook ``NNx_*`` (a letter after the number) must be a section of chapter NN, listed
    under ``sections:`` of the ``NN_*`` entry, so that it takes no chapter number of its own;
  * book/intro.md has a "Map of the chapters" table and a numbered toc entry has no row in it:
    chapter N needs a row "N. ...", and chapter N's sections under ``sections:`` need as many
    rows "... (a section of chapter N)";
  * prose names a chapter number that does not match: a link whose text is "chapter N" (or just
    "N", as in "chapters {doc}`1 <...>` and {doc}`3 <...>`") must point to ``notebooks/NN_*``
    with NN = N, and every plain "chapter N" / "chapters N and M" / "§N" must name a chapter
    that exists, written as the book renders it ("chapter 4", not "chapter 04" or "chapter 4b").
    The prose is that of every notebook (markdown cells, code cells, which build sentences, and
    their text outputs), the pages in book/, README.md, benchmarks/*.md and the library's
    docstrings and comments (ccnet_edu/).

Usage: python tools/check_toc.py [ROOT]   (ROOT defaults to the repository root)
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import yaml

SUFFIXES = (".ipynb", ".md")
# Folders whose pages must all be in the book.
BOOK_DIRS = {"notebooks": "*.ipynb", "book": "*.md"}

# notebooks/NN_name: chapter NN; notebooks/NNx_name: a section of chapter NN.
CHAPTER_FILE_RE = re.compile(r"^notebooks/(?P<nn>\d{2})_")
SECTION_FILE_RE = re.compile(r"^notebooks/(?P<nn>\d{2})[a-z]+_")

# Links: {doc}`text <target>` (MyST role) and [text](target) (Markdown).
LINK_RES = (
    re.compile(r"\{doc\}`(?P<text>[^`<]*?)\s*<(?P<target>[^>`]+)>`"),
    re.compile(r"\[(?P<text>[^\]\n]+)\]\((?P<target>[^)\s]+)\)"),
)
# The text of a link that names a chapter: "chapter 3", "Chapters 3", or a bare "3".
LINK_TEXT_RE = re.compile(r"^\s*(?:chapters?\s+)?(?P<num>\d+[a-z]?)\s*$", re.IGNORECASE)
# Plain prose: "chapter 3", "chapters 3, 5 and 7", "chapters 1 to 3", "§3".
NUMBER = r"\d+[a-z]?\b"
PROSE_RE = re.compile(
    rf"(?:\bchapters?\s+|§\s*)(?P<nums>{NUMBER}(?:(?:\s*,\s*|\s+and\s+|\s+to\s+|\s*-\s*){NUMBER})*)",
    re.IGNORECASE,
)
SPLIT_RE = re.compile(r"\s*,\s*|\s+and\s+|\s+to\s+|\s*-\s*")


def toc_entries(node: object) -> Iterator[str]:
    """Yield every ``root`` / ``file`` entry of a jb-book table of contents."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("root", "file") and isinstance(value, str):
                yield value
            else:
                yield from toc_entries(value)
    elif isinstance(node, list):
        for item in node:
            yield from toc_entries(item)


def resolve(root: Path, entry: str) -> Path | None:
    """The file a toc entry names (entries may omit the suffix), or None."""
    path = root / entry
    if path.suffix in SUFFIXES and path.is_file():
        return path
    for suffix in SUFFIXES:
        candidate = path.with_name(path.name + suffix)
        if candidate.is_file():
            return candidate
    return None


def _strip_suffix(entry: str) -> str:
    for suffix in SUFFIXES:
        if entry.endswith(suffix):
            return entry[: -len(suffix)]
    return entry


def rendered_numbers(toc: dict) -> dict[str, tuple[int | None, str | None]]:
    """What the built book calls each toc entry: ``{entry: (chapter, parent)}``.

    ``chapter`` is the number of a top-level entry of a numbered part (None in an unnumbered
    part); a numbered part continues the count of the numbered parts before it, as
    ``html.use_multitoc_numbering`` does, and an unnumbered part does not count. An entry under
    ``sections:`` gets the number of its chapter and ``parent`` names that chapter (Sphinx numbers
    it N.k, with k after the parent page's own headings); ``parent`` is None for a chapter.
    """
    numbers: dict[str, tuple[int | None, str | None]] = {}
    count = 0

    def sections(item: dict, chapter: int | None, parent: str) -> None:
        for sub in item.get("sections") or []:
            if isinstance(sub, dict) and isinstance(sub.get("file"), str):
                numbers[_strip_suffix(sub["file"])] = (chapter, parent)
                sections(sub, chapter, parent)

    for part in toc.get("parts") or []:
        numbered = bool(part.get("numbered"))
        for item in part.get("chapters") or []:
            if not (isinstance(item, dict) and isinstance(item.get("file"), str)):
                continue
            entry = _strip_suffix(item["file"])
            chapter = None
            if numbered:
                count += 1
                chapter = count
            numbers[entry] = (chapter, None)
            sections(item, chapter, entry)
    return numbers


MAP_HEADING = "## Map of the chapters"
MAP_CHAPTER_RE = re.compile(r"^(?P<num>\d+)\.\s")
MAP_SECTION_RE = re.compile(r"\(a section of chapter (?P<num>\d+)\)")


def map_problems(root: Path, numbers: dict[str, tuple[int | None, str | None]]) -> list[str]:
    """Every numbered chapter and section of the toc has its row in intro.md's chapter map."""
    intro = root / "book" / "intro.md"
    text = intro.read_text(encoding="utf-8") if intro.is_file() else ""
    if MAP_HEADING not in text:
        return []
    table = text.split(MAP_HEADING, 1)[1].split("\n## ", 1)[0]
    first_cells = [
        line.strip().strip("|").split("|")[0].strip()
        for line in table.splitlines()
        if line.strip().startswith("|")
    ]
    chapter_rows = {int(m["num"]) for cell in first_cells if (m := MAP_CHAPTER_RE.match(cell))}
    section_rows: dict[int, int] = {}
    for cell in first_cells:
        if m := MAP_SECTION_RE.search(cell):
            section_rows[int(m["num"])] = section_rows.get(int(m["num"]), 0) + 1
    problems = []
    sections: dict[int, list[str]] = {}
    for entry, (chapter, parent) in numbers.items():
        if chapter is None:
            continue
        if parent is None and chapter not in chapter_rows:
            problems.append(f"book/intro.md's chapter map has no row '{chapter}. ...' for {entry}")
        elif parent is not None:
            sections.setdefault(chapter, []).append(entry)
    for chapter, entries in sorted(sections.items()):
        if section_rows.get(chapter, 0) != len(entries):
            problems.append(
                f"book/intro.md's chapter map has {section_rows.get(chapter, 0)} row(s) "
                f"'(a section of chapter {chapter})' for the {len(entries)} section(s) "
                f"{', '.join(entries)}"
            )
    return problems


def numbering_problems(numbers: dict[str, tuple[int | None, str | None]]) -> list[str]:
    """The rule: ``notebooks/NN_*`` renders as chapter NN, ``NNx_*`` as a section of it."""
    problems = []
    for entry, (chapter, parent) in numbers.items():
        if m := CHAPTER_FILE_RE.match(entry):
            want = int(m["nn"])
            if parent is not None:
                problems.append(f"{entry} is a section of {parent}, not chapter {want}")
            elif chapter != want:
                got = "no number" if chapter is None else f"chapter {chapter}"
                problems.append(
                    f"{entry} renders as {got}, but a notebook NN_* must be chapter NN = {want} "
                    "(check numbered: and the order of the parts in _toc.yml)"
                )
        elif m := SECTION_FILE_RE.match(entry):
            want = int(m["nn"])
            if parent is None or not CHAPTER_FILE_RE.match(parent) or chapter != want:
                got = "a chapter of its own" if parent is None else f"a section of {parent}"
                problems.append(
                    f"{entry} is {got}; a notebook NNx_* belongs under `sections:` of the "
                    f"notebooks/{m['nn']}_* entry (so that it does not take a chapter number)"
                )
    return problems


# ---------------------------------------------------------------------------------- prose


def _notebook_text(path: Path) -> str:
    """Markdown and code of every cell, and the text of its outputs, one cell after another."""
    cells = json.loads(path.read_text(encoding="utf-8")).get("cells", [])
    pieces = []
    for cell in cells:
        pieces.append("".join(cell.get("source", "")))
        for output in cell.get("outputs", []):
            pieces.append("".join(output.get("text", "")))
            for mime, value in output.get("data", {}).items():
                if mime in ("text/markdown", "text/plain", "text/html"):
                    pieces.append("".join(value))
    return "\n".join(pieces)


def prose_files(root: Path) -> list[Path]:
    """Every file whose prose may name a chapter."""
    files = sorted((root / "notebooks").glob("*.ipynb")) + sorted((root / "book").glob("*.md"))
    files += [p for p in (root / "README.md",) if p.is_file()]
    files += sorted((root / "benchmarks").glob("*.md"))
    files += sorted((root / "ccnet_edu").rglob("*.py"))
    return files


def _target_chapter(target: str) -> tuple[str, int | None]:
    """``("chapter"|"section"|"other", NN)`` for a link target such as ``../notebooks/03_x``."""
    name = target.split("#")[0].rstrip("/").split("/")[-1]
    name = re.sub(r"\.(ipynb|md|html)$", "", name)
    if m := re.match(r"^(\d{2})_", name):
        return "chapter", int(m[1])
    if m := re.match(r"^(\d{2})[a-z]+_", name):
        return "section", int(m[1])
    return "other", None


def _number_problem(text: str, chapters: set[int]) -> str | None:
    """Why the chapter number ``text`` (as written in prose) is wrong, or None."""
    if not re.fullmatch(r"\d+", text):
        return f"'{text}' is no chapter number (a notebook NNx_* is a section of chapter NN)"
    if text.startswith("0"):
        return f"the book renders chapter {int(text)}, not {text}"
    if int(text) not in chapters:
        return f"there is no chapter {text}"
    return None


def _prose_numbers(text: str) -> list[str]:
    """The chapter numbers that ``text`` names ("chapter 3", "chapters 1 and 3", "§3")."""
    return [num for m in PROSE_RE.finditer(text) for num in SPLIT_RE.split(m["nums"])]


def prose_problems(root: Path, chapters: set[int]) -> list[str]:
    """Chapter numbers in prose that do not match the rendered numbering."""
    problems = []
    for path in prose_files(root):
        rel = path.relative_to(root).as_posix()
        text = _notebook_text(path) if path.suffix == ".ipynb" else path.read_text(encoding="utf-8")
        # Link texts first; then the prose without them, so that no number counts twice.
        for link_re in LINK_RES:
            for m in link_re.finditer(text):
                named = LINK_TEXT_RE.match(m["text"])
                nums = [named["num"]] if named else _prose_numbers(m["text"])
                if not nums:
                    continue
                kind, nn = _target_chapter(m["target"])
                shown = m[0].replace("\n", " ")
                if kind == "other":
                    if re.search(r"chapter", m["text"], re.IGNORECASE):
                        problems.append(
                            f"{rel}: {shown}: the link names a chapter but points "
                            "to no notebooks/NN_* chapter"
                        )
                    continue
                if kind == "section":
                    problems.append(
                        f"{rel}: {shown}: the target is a section of chapter {nn}, "
                        f"not a chapter (write 'chapter {nn}' and link notebooks/"
                        f"{nn:02d}_*, or link the section by its title)"
                    )
                else:
                    problems += [
                        f"{rel}: {shown}: the text says {num!r} but the target is chapter {nn}"
                        for num in nums
                        if num != str(nn)
                    ]
            text = link_re.sub(" ", text)
        for m in PROSE_RE.finditer(text):
            for num in SPLIT_RE.split(m["nums"]):
                why = _number_problem(num, chapters)
                if why:
                    problems.append(f"{rel}: '{m[0].strip()}': {why}")
    return problems


def check(root: Path) -> list[str]:
    """Return a list of problems (empty when the toc, the files and the prose agree)."""
    toc_path = root / "_toc.yml"
    if not toc_path.is_file():
        return [f"{toc_path} does not exist"]
    toc = yaml.safe_load(toc_path.read_text(encoding="utf-8"))
    if not isinstance(toc, dict) or toc.get("format") != "jb-book":
        return [f"{toc_path}: expected a mapping with 'format: jb-book'"]

    problems = []
    listed: set[Path] = set()
    seen: set[str] = set()
    for entry in toc_entries(toc):
        if entry in seen:
            problems.append(f"_toc.yml lists {entry!r} twice")
        seen.add(entry)
        path = resolve(root, entry)
        if path is None:
            problems.append(f"_toc.yml lists {entry!r} but no such .ipynb/.md file exists")
        else:
            listed.add(path.resolve())

    for folder, pattern in BOOK_DIRS.items():
        for path in sorted((root / folder).glob(pattern)):
            if path.resolve() not in listed:
                rel = path.relative_to(root).as_posix()
                problems.append(f"{rel} is not in _toc.yml (it would not be built)")

    numbers = rendered_numbers(toc)
    problems += numbering_problems(numbers)
    problems += map_problems(root, numbers)
    chapters = {chapter for chapter, parent in numbers.values() if chapter and parent is None}
    problems += prose_problems(root, chapters)
    return problems


def main(argv: list[str]) -> int:
    root = Path(argv[1]) if len(argv) > 1 else Path(__file__).resolve().parent.parent
    problems = check(root)
    for problem in problems:
        print(f"check_toc: {problem}", file=sys.stderr)
    if problems:
        return 1
    print(f"check_toc: _toc.yml, the files and the chapter numbers in the prose of {root} agree")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
