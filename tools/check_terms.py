"""Check that a chapter links every glossary term where it first uses it.

book/glossary.md promises: "A term is linked to this page where a chapter first uses it". For
every term of its ``{glossary}`` block and every checked notebook, the first use of the term in
the notebook's markdown prose (case-insensitive, its English plural allowed: "s", "es" after
s/x/z/ch/sh, "ies" for a final consonant + "y"; a closing "(qualifier)" dropped; see
``term_pattern``) must be a ``{term}`` link
(``{term}`term``` or ``{term}`text <term>```). Headings, directive lines, inline code, maths,
``{cite}``/``{doc}``/``{ref}`` roles and link targets are not prose and are skipped.

Every chapter in notebooks/ is checked (``CHECKED``).

Usage: python tools/check_terms.py [ROOT]   (ROOT defaults to the repository root)
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

# Every chapter of the book, relative to the repository root.
CHECKED = tuple(
    f"notebooks/{path.name}"
    for path in sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))
)

TERM_ROLE_RE = re.compile(r"\{term\}`(?P<text>[^`<]*?)\s*(?:<(?P<target>[^>`]+)>)?`")
# Spans that are not prose: other roles, inline code, display and inline maths, link targets.
SKIP_RES = (
    re.compile(r"\{(?!term\})[a-z:-]+\}`[^`]*`"),
    re.compile(r"(?<!\})`[^`\n]*`"),
    re.compile(r"\$\$.*?\$\$", re.DOTALL),
    re.compile(r"\$[^$\n]*\$"),
    re.compile(r"\]\([^)\s]*\)"),
)
# Lines that are not prose: headings, fences and directive options, targets "(label)=".
SKIP_LINE_RE = re.compile(r"^\s*(#|```|:[\w-]+:|\([\w-]+\)=)")


def glossary_terms(glossary: str) -> list[str]:
    """The terms of the ``{glossary}`` block of book/glossary.md (its unindented lines)."""
    start = glossary.index("```{glossary}")
    end = glossary.index("\n```", start + 1)
    lines = glossary[start:end].splitlines()[1:]
    return [line.strip() for line in lines if line.strip() and not line[0].isspace()]


def term_pattern(term: str) -> str:
    """A regular expression for ``term`` and its plural, as whole words (spaces match any space).

    The last word takes its English plural: "energy" -> "energies" (consonant + "y" -> "ies"),
    "pass" -> "passes" (after s, x, z, ch, sh: "es"), otherwise "FLOP" -> "FLOPs". A closing
    qualifier in parentheses only tells the glossary's senses apart and is not part of the use:
    "success (of a run)" is used as "success" or "successes".
    """
    *head, last = re.sub(r"\s*\([^()]*\)$", "", term).split()
    if re.search(r"[^aeiou]y$", last, re.IGNORECASE):
        last_re = re.escape(last[:-1]) + "(?:y|ies)"
    elif re.search(r"(?:s|x|z|ch|sh)$", last, re.IGNORECASE):
        last_re = re.escape(last) + "(?:es)?"
    else:
        last_re = re.escape(last) + "s?"
    words = r"\s+".join([*(re.escape(word) for word in head), last_re])
    return rf"(?<![\w-]){words}(?![\w-])"


def _mask(text: str, start: int, end: int) -> str:
    return text[:start] + " " * (end - start) + text[end:]


def first_unlinked_uses(markdown: list[str], terms: list[str]) -> list[tuple[str, int, str]]:
    """``(term, cell, context)`` for each term whose first use in ``markdown`` is not linked.

    ``markdown`` holds the sources of a notebook's markdown cells (index = position in the list).
    """
    first: dict[str, tuple[int, int, bool, str]] = {}
    for cell, source in enumerate(markdown):
        text = "\n".join(
            " " * len(line) if SKIP_LINE_RE.match(line) else line for line in source.split("\n")
        )
        events: list[tuple[int, str, bool]] = []
        for match in TERM_ROLE_RE.finditer(text):
            target = " ".join((match.group("target") or match.group("text")).lower().split())
            events.append((match.start(), target, True))
            text = _mask(text, match.start(), match.end())
        for pattern in SKIP_RES:
            for match in pattern.finditer(text):
                text = _mask(text, match.start(), match.end())
        for term in terms:
            use = re.search(term_pattern(term), text, re.IGNORECASE)
            if use:
                events.append((use.start(), term.lower(), False))
        for position, term, linked in sorted(events):
            if term not in first:
                context = source[max(0, position - 40) : position + 60].replace("\n", " ")
                first[term] = (cell, position, linked, context)
    known = {term.lower(): term for term in terms}
    return [
        (known[term], cell, context)
        for term, (cell, _, linked, context) in first.items()
        if not linked and term in known
    ]


def check(root: Path) -> list[str]:
    """One message per first use of a glossary term that is not linked."""
    terms = glossary_terms((root / "book" / "glossary.md").read_text(encoding="utf-8"))
    problems = []
    for name in CHECKED:
        cells = json.loads((root / name).read_text(encoding="utf-8"))["cells"]
        markdown_index = [i for i, c in enumerate(cells) if c["cell_type"] == "markdown"]
        markdown = ["".join(cells[i]["source"]) for i in markdown_index]
        for term, k, context in first_unlinked_uses(markdown, terms):
            problems.append(
                f"{name} cell {markdown_index[k]}: first use of the glossary term {term!r} is "
                f"not a {{term}} link: ...{context}..."
            )
    return problems


def main(argv: list[str]) -> int:
    root = Path(argv[1]) if len(argv) > 1 else Path(__file__).resolve().parent.parent
    problems = check(root)
    for problem in problems:
        print(problem)
    if problems:
        print(f"{len(problems)} glossary term(s) not linked at their first use")
        return 1
    print(f"glossary links: first uses linked in {len(CHECKED)} notebooks")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
