"""Check that _toc.yml and the files on disk agree.

Fails (exit 1) when
  * a file listed in _toc.yml does not exist (Jupyter Book would fail on it), or
  * a notebook in notebooks/ or a page in book/ is missing from _toc.yml
    (with ``only_build_toc_files: true`` it would silently not be built).

Usage: python tools/check_toc.py [ROOT]   (ROOT defaults to the repository root)
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import yaml

SUFFIXES = (".ipynb", ".md")
# Folders whose pages must all be in the book.
BOOK_DIRS = {"notebooks": "*.ipynb", "book": "*.md"}


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


def check(root: Path) -> list[str]:
    """Return a list of problems (empty when the toc and the files agree)."""
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
    return problems


def main(argv: list[str]) -> int:
    root = Path(argv[1]) if len(argv) > 1 else Path(__file__).resolve().parent.parent
    problems = check(root)
    for problem in problems:
        print(f"check_toc: {problem}", file=sys.stderr)
    if problems:
        return 1
    print(f"check_toc: _toc.yml and the files in {root} agree")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
